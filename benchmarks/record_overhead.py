"""What recording costs: one QEMU run untraced, under `kvmtest record` and under
`strace -f -e trace=ioctl`, wall-clock time of each and the ratios.

    python benchmarks/record_overhead.py [--all-ioctls] [--runs N] [--smp N] [--menu-ms MS]
                                         [--io-loop N]

The run is QEMU with its default firmware (SeaBIOS) and no boot disk: SeaBIOS brings the APs up
and QEMU exits by itself after the failed boot (-no-reboot). With --all-ioctls every KVM_RUN
stops too (about 20,000 stops for this run on the development host); the ptrace stops the
recorder took are printed.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

QEMU = [
    "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host,-arch-capabilities", "-m", "64",
    "-display", "none", "-nodefaults", "-no-user-config", "-no-reboot", "-nographic",
    "-boot", "menu=off,reboot-timeout=0",
]  # fmt: skip


def io_loop_rom(iterations: int) -> bytes:
    """A 64 KiB BIOS that executes `out 0x80, al` `iterations` times (each one a KVM_RUN exit
    to QEMU) and then exits QEMU through isa-debug-exit at port 0xf4: a run with as many exits
    as asked, for measuring what each recorded stop costs."""
    rom = bytearray(b"\xf4" * 0x10000)  # hlt everywhere else
    code = bytes(
        [0xB9, iterations & 0xFF, iterations >> 8]  # mov cx, iterations
        + [0xE6, 0x80, 0x49, 0x75, 0xFB]  # loop: out 0x80, al; dec cx; jnz loop
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
        help="instead of SeaBIOS, a BIOS doing N port writes (N KVM_RUN exits, up to 65535)",
    )
    args = parser.parse_args()
    qemu = QEMU + ["-smp", str(args.smp)]
    if args.menu_ms:
        at = qemu.index("menu=off,reboot-timeout=0")
        qemu[at] = f"menu=on,splash-time={args.menu_ms},reboot-timeout=0"
    if args.io_loop:
        rom = os.path.join(tempfile.mkdtemp(), "io-loop.bin")
        with open(rom, "wb") as out:
            out.write(io_loop_rom(args.io_loop))
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
            best[name] = min(best.get(name, elapsed), elapsed)
            if name == "kvmtest record":
                stops = next((ln for ln in err.splitlines() if "ptrace stops" in ln), stops)
    base = best["untraced"]
    print(f"command: {' '.join(qemu)}   (best of {args.runs})")
    for name, elapsed in best.items():
        print(f"  {name:28s} {elapsed:7.3f} s   {elapsed / base:5.2f}x untraced")
    if "strace -f -e trace=ioctl" in best:
        ratio = best["kvmtest record"] / best["strace -f -e trace=ioctl"]
        print(f"  kvmtest record / strace: {ratio:.2f}")
    print(f"  {stops.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
