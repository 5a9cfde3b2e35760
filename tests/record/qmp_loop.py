"""Drive a QEMU's QMP socket: ROUNDS rounds of `info registers -a` (every vCPU's state), GAP
seconds apart, then `quit`. Used by tests/record (recording (c)).

Why the gap: QEMU reads a vCPU's registers from KVM (a round of GET ioctls on each vCPU
thread) only when its copy is not already fresh. cpu_synchronize_state() does the GETs and sets
the vCPU's `vcpu_dirty`; the flag is cleared only when the vCPU thread next enters KVM_RUN,
after writing the registers back (SET ioctls, kvm_arch_put_registers). A query that arrives
before the vCPU thread has re-entered KVM_RUN is answered from QEMU's copy with no ioctl at
all. Without a gap the rounds follow one another within a millisecond and only the first one
reads (the recorder, stopping at each SET of the write-back, makes that window longer). A halted
vCPU is no exception: HLT is handled inside KVM, so the thread re-enters KVM_RUN and blocks
there, and the next query kicks it out again. (query-cpus-fast, which the loop once sent
too, reads no registers by design.)

    python tests/record/qmp_loop.py SOCKET [ROUNDS [GAP]]
"""

import json
import socket
import sys
import time

ROUNDS = 5
GAP = 0.1  # seconds; QEMU's vCPU threads re-enter KVM_RUN well within it on an idle host


def main(path: str, rounds: int = ROUNDS, gap: float = GAP) -> int:
    for _ in range(200):
        try:
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(path)
            break
        except OSError:
            time.sleep(0.05)
    else:
        print(f"qmp_loop: cannot connect to {path}", file=sys.stderr)
        return 1
    f = sock.makefile("rw")
    f.readline()

    def command(name, **arguments):
        f.write(json.dumps({"execute": name, "arguments": arguments}) + "\n")
        f.flush()
        while True:
            reply = json.loads(f.readline())
            if "return" in reply or "error" in reply:
                return reply

    command("qmp_capabilities")
    for _ in range(rounds):
        time.sleep(gap)
        command("human-monitor-command", **{"command-line": "info registers -a"})
    command("quit")
    return 0


if __name__ == "__main__":
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else ROUNDS
    gap = float(sys.argv[3]) if len(sys.argv) > 3 else GAP
    sys.exit(main(sys.argv[1], rounds, gap))
