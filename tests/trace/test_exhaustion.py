"""Running out of threads, memory or fds is an ERROR for the trace that hit it; the run goes
on and every trace still has a result (the Reliability issue: it used to kill the run)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

UNDER_LIMITS = r"""
import resource, threading
from kvmtest.suite import choose_backend, load_traces, run_all

traces, _ = load_traces([])
context = choose_backend("kvm", require_kvm=True).context
real_start = threading.Thread.start
calls = [0]

def start(self):  # every 7th thread cannot be created, as under ulimit -u / -v
    calls[0] += 1
    if calls[0] % 7 == 0:
        raise RuntimeError("can't start new thread")
    return real_start(self)

threading.Thread.start = start
results = run_all(traces, "mainline", context, jobs=4)
threading.Thread.start = real_start
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
import os
in_use = max(int(fd) for fd in os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 2, hard))  # a VM fd, but no vCPU fds
starved = run_all(traces[:5], "mainline", context, jobs=1)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
print(len(traces), len(results), sum(r.status.name == "ERROR" for r in results),
      sum("can't start new thread" in r.message for r in results),
      len(starved), sum(r.status.name == "ERROR" for r in starved))
"""


def test_thread_and_fd_exhaustion_are_errors_of_the_traces_that_hit_them(kvm):
    child = subprocess.run(
        [sys.executable, "-c", UNDER_LIMITS], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert child.returncode == 0, child.stderr[-3000:]
    total, results, errors, thread_errors, starved, starved_errors = map(int, child.stdout.split())
    assert results == total  # nobody lost
    assert 0 < thread_errors <= errors < total  # some hit the limit, the others still ran
    assert starved == 5 and starved_errors == 5
