"""Drive a QEMU's QMP socket: N rounds of `info registers -a` (every vCPU's state, so a round
of GET ioctls on each vCPU thread), then `quit`. Used by tests/record and the benchmark."""

import json
import socket
import sys
import time


def main(path: str, rounds: int) -> int:
    for _ in range(200):
        try:
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(path)
            break
        except OSError:
            time.sleep(0.05)
    else:
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
        command("query-cpus-fast")
        command("human-monitor-command", **{"command-line": "info registers -a"})
    command("quit")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
