"""The committed images match their sources, and the Python mirror of the memory map matches
guests/src/layout.inc, so images, loader and docs never drift apart."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kvmtest import guest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "guests" / "build.py"
LAYOUT = ROOT / "guests" / "src" / "layout.inc"
IMAGES = ("stepper", "smp", "landing", "reset")


def have_binutils() -> bool:
    import shutil

    return shutil.which("as") is not None and shutil.which("ld") is not None


@pytest.mark.skipif(not have_binutils(), reason="GNU as/ld not installed (Debian: binutils)")
def test_committed_images_match_a_rebuild(tmp_path):
    subprocess.run([sys.executable, str(BUILD), "--out", str(tmp_path)], check=True)
    for name in IMAGES:
        rebuilt = (tmp_path / f"{name}.bin").read_bytes()
        assert rebuilt == guest.image(name), f"{name}.bin drifted: run python3 guests/build.py"


def test_layout_mirror_matches_assembly():
    pattern = re.compile(r"^\.set\s+(\w+),\s*(0x[0-9a-fA-F]+|\d+)")
    found = {}
    for line in LAYOUT.read_text().splitlines():
        match = pattern.match(line)
        if match:
            found[match.group(1)] = int(match.group(2), 0)
    assert len(found) > 40
    mismatched = {k: v for k, v in found.items() if getattr(guest, k, None) != v}
    assert not mismatched, f"kvmtest/guest/layout.py disagrees with layout.inc on {mismatched}"


def test_images_fit_their_slots_and_jump_where_the_map_says():
    stepper, smp = guest.image("stepper"), guest.image("smp")
    for main in (stepper, smp):
        assert len(main) <= guest.IMAGE_LIMIT
        for entry in (guest.ENTRY_BSP, guest.ENTRY_AP, guest.ENTRY_RESET):
            assert main[entry] in (0xEB, 0xE9), f"no jump at {entry:#x}"
        # IVT entry 3 (int3, the tripwire) points at its stub
        assert int.from_bytes(main[12:14], "little") == guest.STUBS_BASE + 3 * guest.STUB_SIZE
    far_jump_ap = bytes([0xEA]) + guest.ENTRY_AP.to_bytes(2, "little") + bytes(2)
    assert guest.image("landing") == bytes([0x8C, 0xC8]) + far_jump_ap  # mov %cs,%ax; ljmp
    reset = guest.image("reset")
    assert len(reset) == 16 and reset[2:7] == bytes([0xEA, 0x06, 0x10, 0, 0])
