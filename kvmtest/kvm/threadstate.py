"""Whether a thread sleeps in the kernel, from /proc: how the harness knows a vCPU thread is
really blocked inside KVM_RUN (HLT, UNINITIALIZED, INIT_RECEIVED) rather than on its way there.

Guest code runs slowly on an emulating host, so a vCPU told to HLT may still be executing the
instructions before it; observing it then would catch it RUNNABLE. KVM's halt polling keeps a
thread runnable for a moment before it sleeps, which only delays the answer. A thread can also
sleep inside KVM_RUN for other reasons (a page fault, a lock, SRCU after a memslot change on a
busy host), so "blocked" means asleep *in kvm_vcpu_block*, read from /proc/.../wchan. Where
wchan does not say, the thread's kernel stack (/proc/.../stack, root only) does: x86 kernels
before 5.16 compute wchan by walking frame pointers, so a kernel built with the ORC unwinder
(Debian's 5.10, say) reports "0" or a wrong function. Only where neither says (no kallsyms, not
root) does any sleep count.
"""

import functools
import threading
import time


def thread_state(tid: int) -> str:
    """The one-letter state of thread `tid` of this process ('R', 'S', ...), or '?'."""
    try:
        with open(f"/proc/self/task/{tid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def on_cpu_ns(tid: int) -> int | None:
    """Nanoseconds thread `tid` of this process has run on a CPU (schedstat), or None."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as schedstat:
            return int(schedstat.read().split()[0])
    except (OSError, IndexError, ValueError):
        return None


# Where a vCPU thread sleeps when KVM blocks it (kvm_vcpu_halt calls kvm_vcpu_block).
BLOCK_FUNCTIONS = frozenset({"kvm_vcpu_block", "kvm_vcpu_halt"})


def thread_wchan(tid: int) -> str:
    """The kernel function thread `tid` of this process sleeps in ('' if unknown)."""
    try:
        with open(f"/proc/self/task/{tid}/wchan") as wchan:
            name = wchan.read().strip()
    except OSError:
        return ""
    return "" if name == "0" else name


@functools.cache
def wchan_names_available() -> bool:
    """Whether this kernel names the function a thread sleeps in: a helper thread asleep on a
    lock is asked. Where it does, an empty answer means the thread woke between the two reads
    (the wait channel of a running thread is "0"), never "asleep somewhere"."""
    event = threading.Event()
    sleeper = threading.Thread(target=event.wait, args=(5.0,), daemon=True)
    sleeper.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            tid = sleeper.native_id
            if tid is not None and thread_state(tid) == "S" and thread_wchan(tid):
                return True
            time.sleep(0.001)
        return False
    finally:
        event.set()
        sleeper.join()


def stack_functions(text: str) -> set:
    """The function names of a /proc/.../stack listing ("[<0>] kvm_vcpu_block+0x4a/0x80 [kvm]");
    a kernel without kallsyms lists bare addresses ("[<0>] 0xffffffff8104b1a3"), which say
    nothing and are left out."""
    names = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            name = parts[1].split("+", 1)[0]
            if not name.startswith("0x"):
                names.add(name)
    return names


def thread_stack(tid: int) -> set | None:
    """The functions on thread `tid`'s kernel stack, or None where the kernel will not say."""
    try:
        with open(f"/proc/self/task/{tid}/stack") as stack:
            text = stack.read()
    except OSError:
        return None
    return stack_functions(text) or None


def blocked_in_kvm(tid: int) -> bool:
    """Thread `tid` sleeps in kvm_vcpu_block: by its wchan; where wchan names another function
    or none at all on a kernel that never names one, by its kernel stack (wchan is unreliable
    before 5.16 on ORC kernels), the thread still asleep after that read; where neither
    says, any sleep counts on a kernel that never names one. An empty wchan on a kernel that
    does name them is a thread that woke between the two reads: not asleep."""
    if thread_state(tid) != "S":
        return False
    where = thread_wchan(tid)
    if where in BLOCK_FUNCTIONS:
        return True
    if not where and wchan_names_available():
        return False
    stack = thread_stack(tid)
    if stack is not None:
        return bool(stack & BLOCK_FUNCTIONS) and thread_state(tid) == "S"
    return not where


def wait_asleep(tid_of, in_kvm_run, timeout: float, interval: float = 0.0002) -> bool:
    """Poll until `in_kvm_run()` and the thread `tid_of()` sleeps; False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        tid = tid_of()
        if tid is not None and in_kvm_run() and blocked_in_kvm(tid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
