#!/usr/bin/env python3
"""Assemble the guest images from guests/src/*.s into flat binaries.

GNU as (binutils) rather than NASM: it is already on every machine that builds the cffi
binding (gcc needs it), so the byte-compare test can always run; `.code16` covers real mode.
Output is deterministic: no timestamps, no build IDs, one flat section linked at address 0.

    python3 guests/build.py                # rebuild kvmtest/guest_images/*.bin (committed)
    python3 guests/build.py --out DIR      # build elsewhere (the byte-compare test does this)
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "guests" / "src"
DEFAULT_OUT = ROOT / "kvmtest" / "guest_images"

# image name -> largest size it may have (it must fit the slot of the memory map)
IMAGES = {
    "stepper": 0x3000,  # 0 .. IMAGE_LIMIT
    "smp": 0x3000,
    "landing": 0x100,  # start of each vector page
    "reset": 0x10,  # the last 16 bytes of the reset ROM
}


class BuildError(RuntimeError):
    """The assembler or linker is missing or failed."""


def tools_available() -> bool:
    """True when GNU as and ld are on PATH (the byte-compare test skips without them)."""
    return shutil.which("as") is not None and shutil.which("ld") is not None


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}")


def build_image(name: str, out_dir: Path) -> Path:
    """Assemble and link one image; return the path of the flat binary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.bin"
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / f"{name}.o"
        _run(["as", "--32", "-I", str(SOURCES), "-o", str(obj), str(SOURCES / f"{name}.s")])
        _run(
            ["ld", "-m", "elf_i386", "-Ttext=0", "-e", "0", "--build-id=none"]
            + ["--oformat=binary", "-o", str(target), str(obj)]
        )
    size = target.stat().st_size
    if size > IMAGES[name]:
        raise BuildError(f"{name}.bin is {size:#x} bytes, its slot holds {IMAGES[name]:#x}")
    return target


def build_all(out_dir: Path = DEFAULT_OUT) -> list[Path]:
    if not tools_available():
        raise BuildError("GNU as/ld not found (Debian: apt-get install binutils)")
    return [build_image(name, out_dir) for name in IMAGES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args(argv)
    try:
        for path in build_all(args.out):
            print(f"{path} ({path.stat().st_size} bytes)")
    except BuildError as exc:
        print(f"build.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
