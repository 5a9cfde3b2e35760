"""The three real clients recorded on a KVM host: (a) QEMU's SeaBIOS with no boot disk, (b) the
project's smp image as QEMU's -bios, (c) (b) kept running while qmp_loop.py reads every vCPU's
registers in rounds. The live tests record them; run this file to record the fixtures again:

    python tests/record/clients.py [DIRECTORY]     (default: tests/record/fixtures)
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from kvmtest.record.bios import EXIT_STATUS, qemu_command, seabios_command, smp_bios

HERE = Path(__file__).parent

CPUS = 4
CLIENTS = ("qemu-seabios-smp4", "qemu-smp-bios-smp4", "qemu-smp-bios-qmp-smp4")


def record(name: str, directory: Path, out: Path, timeout: float = 120) -> tuple:
    """Record client `name` (files it needs go to `directory`) into `out`: the finished
    `kvmtest record` and the exit status the client itself gives."""
    qmp = None
    if name == "qemu-seabios-smp4":
        command, status = seabios_command(CPUS), 0
    else:
        bios = directory / "smp-bios.bin"
        bios.write_bytes(smp_bios(CPUS))
        if name == "qemu-smp-bios-smp4":
            command, status = qemu_command(str(bios), CPUS), EXIT_STATUS
        else:
            socket = directory / "qmp.sock"
            qmp_arg = ["-qmp", f"unix:{socket},server=on,wait=off"]
            command, status = qemu_command(str(bios), CPUS, qmp_arg, exits=False), 0
            qmp = subprocess.Popen([sys.executable, str(HERE / "qmp_loop.py"), str(socket)])
    try:
        done = subprocess.run(
            [sys.executable, "-m", "kvmtest", "record", "-o", str(out), "--", *command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        if qmp is not None:
            try:
                qmp.wait(timeout=10)
            except subprocess.TimeoutExpired:
                qmp.kill()
    return done, status


def main(argv) -> int:
    target = Path(argv[0]) if argv else HERE / "fixtures"
    work = Path(tempfile.mkdtemp(prefix="rec-"))  # the BIOS and socket, named in the fixtures
    try:
        for name in CLIENTS:
            done, status = record(name, work, target / f"{name}.yaml")
            print(f"{name}: {done.stderr.strip().splitlines()[-1]}")
            if done.returncode != status:
                print(f"{name}: exit {done.returncode}, not {status}", file=sys.stderr)
                return 1
    finally:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
