"""Whether a thread sleeps in the kernel, from /proc: how the harness knows a vCPU thread is
really blocked inside KVM_RUN (HLT, UNINITIALIZED, INIT_RECEIVED) rather than on its way there.

Guest code runs slowly on an emulating host, so a vCPU told to HLT may still be executing the
instructions before it; observing it then would catch it RUNNABLE. KVM's halt polling keeps a
thread runnable for a moment before it sleeps, which only delays the answer.
"""

import time


def thread_state(tid: int) -> str:
    """The one-letter state of thread `tid` of this process ('R', 'S', ...), or '?'."""
    try:
        with open(f"/proc/self/task/{tid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def wait_asleep(tid_of, in_kvm_run, timeout: float, interval: float = 0.0002) -> bool:
    """Poll until `in_kvm_run()` and the thread `tid_of()` sleeps; False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        tid = tid_of()
        if tid is not None and in_kvm_run() and thread_state(tid) == "S":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
