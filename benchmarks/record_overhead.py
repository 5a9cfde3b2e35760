"""What recording costs: one QEMU run untraced, under `kvmtest record` and under
`strace -f -e trace=ioctl`, wall-clock time of each (best of --runs) and the ratios; and how
many KVM exits the run has, counted, not assumed.

    python benchmarks/record_overhead.py [--all-ioctls] [--runs N] [--smp N] [--menu-ms MS]
                                         [--io-loop N]

The run is QEMU with its default firmware (SeaBIOS) and no boot disk (kvmtest.record.bios):
SeaBIOS brings the APs up and QEMU exits by itself after the failed boot. --io-loop N runs a
BIOS doing N port writes instead (N KVM_RUN exits to QEMU; 250000 is about as long a run as
SeaBIOS's). The exits are counted in one more run, recorded with --all-ioctls: how many times
KVM_RUN was entered, which is how many times it returned to QEMU (exits KVM handles itself
without returning are not counted).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from kvmtest.record.bios import seabios_command


def io_loop_rom(iterations: int) -> bytes:
    """A 64 KiB BIOS that executes `out 0x80, al` `iterations` times (1 to 2**32 - 1, each one
    a KVM_RUN exit to QEMU) and then exits QEMU through isa-debug-exit at port 0xf4: a run
    with as many exits as asked."""
    if not 0 < iterations < 1 << 32:
        raise ValueError(f"--io-loop: {iterations} is not between 1 and {(1 << 32) - 1}")
    rom = bytearray(b"\xf4" * 0x10000)  # hlt everywhere else
    code = bytes(
        [0x66, 0xB9, *iterations.to_bytes(4, "little")]  # mov ecx, iterations
        + [0xE6, 0x80, 0x66, 0x49, 0x75, 0xFA]  # loop: out 0x80, al; dec ecx; jnz loop
        + [0xB0, 0x00, 0xE6, 0xF4, 0xF4]  # mov al, 0; out 0xf4, al (exit); hlt
    )
    rom[0xE000 : 0xE000 + len(code)] = code
    rom[0xFFF0:0xFFF5] = bytes([0xEA, 0x00, 0xE0, 0x00, 0xF0])  # reset: jmp far f000:e000
    return bytes(rom)


def timed(argv) -> tuple[float, str]:
    start = time.monotonic()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return time.monotonic() - start, done.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all-ioctls", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smp", type=int, default=4)
    parser.add_argument(
        "--menu-ms",
        type=int,
        default=0,
        help="let SeaBIOS show its boot menu this long first: a longer run, more KVM_RUN exits",
    )
    parser.add_argument(
        "--io-loop",
        type=int,
        default=0,
        metavar="N",
        help="instead of SeaBIOS, a BIOS doing N port writes (N KVM_RUN exits)",
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    qemu = seabios_command(args.smp)
    if args.menu_ms:
        at = qemu.index("menu=off,reboot-timeout=0")
        qemu[at] = f"menu=on,splash-time={args.menu_ms},reboot-timeout=0"
    if args.io_loop:
        rom = os.path.join(tempfile.mkdtemp(), "io-loop.bin")
        try:
            image = io_loop_rom(args.io_loop)
        except ValueError as exc:
            parser.error(str(exc))
        with open(rom, "wb") as out:
            out.write(image)
        qemu += ["-bios", rom, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
    out = os.path.join(tempfile.mkdtemp(), "rec.yaml")
    record = [sys.executable, "-m", "kvmtest", "record", "-o", out]
    record += ["--all-ioctls"] if args.all_ioctls else []
    runs = {"untraced": qemu, "kvmtest record": record + ["--"] + qemu}
    if shutil.which("strace"):
        runs["strace -f -e trace=ioctl"] = (
            ["strace", "-f", "-qq", "-o", os.devnull]
            + [
                "-e",
                "trace=ioctl",
            ]
            + qemu
        )
    best, stops = {}, ""
    for _ in range(args.runs):
        for name, argv in runs.items():
            elapsed, err = timed(argv)
            if elapsed < best.get(name, float("inf")):
                best[name] = elapsed
                if name == "kvmtest record":  # the best run's summary line
                    stops = next((ln for ln in err.splitlines() if "ptrace stops" in ln), stops)
    counting = record if args.all_ioctls else record + ["--all-ioctls"]
    _, err = timed(counting + ["--"] + qemu)
    found = re.search(r"(\d+) KVM_RUN calls", err)
    exits = int(found.group(1)) if found else None
    base = best["untraced"]
    print(f"command: {' '.join(qemu)}   (best of {args.runs})")
    for name, elapsed in best.items():
        print(f"  {name:28s} {elapsed:7.3f} s   {elapsed / base:5.2f}x untraced")
    if "strace -f -e trace=ioctl" in best:
        ratio = best["kvmtest record"] / best["strace -f -e trace=ioctl"]
        print(f"  kvmtest record / strace: {ratio:.2f}")
    print(f"  {stops.strip()}")
    if exits is None:
        print("  KVM exits: not counted (the counting run printed no KVM_RUN count)")
    else:
        verdict = "at least" if exits >= 20_000 else "fewer than"
        print(
            f"  KVM exits to QEMU (KVM_RUN returns, counted with --all-ioctls): {exits}, "
            f"{verdict} 20,000"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
