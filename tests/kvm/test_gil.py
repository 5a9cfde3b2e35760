"""Who holds the GIL during an ioctl (kvmtest.kvm._lib): a vCPU ioctl that has to wait for a
vCPU whose thread sits in KVM_RUN must not freeze the other threads of the process."""

import subprocess
import sys
import textwrap

from tests.conftest import require_kvm

SCENARIO = textwrap.dedent(
    """
    import threading, time
    from kvmtest.kvm import Kvm
    from kvmtest.kvm.threadstate import wait_asleep

    kvm = Kvm()
    vm = kvm.create_vm()
    vm.create_irqchip()
    vm.set_user_memory_region(0, 0, 1 << 20)
    vcpus = [vm.create_vcpu(i) for i in range(2)]
    ap = vcpus[1]
    ids = {}

    def run():
        ids["run"] = threading.get_native_id()
        ap.run()  # UNINITIALIZED: blocks in KVM_RUN until kicked

    runner = threading.Thread(target=run)
    runner.start()
    assert wait_asleep(lambda: ids.get("run"), lambda: ap.in_kvm_run, 5.0)
    got = []
    reader = threading.Thread(target=lambda: got.append(ap.get_mp_state()))
    reader.start()  # waits for the vCPU mutex inside the kernel
    time.sleep(0.2)  # needs the GIL: a reader holding it would freeze us here
    assert reader.is_alive() and not got, got
    ap.kick()
    runner.join(5)
    reader.join(5)
    assert not runner.is_alive() and got, got
    print("ok", int(got[0]))
    """
)


def test_a_vcpu_ioctl_waiting_for_a_running_vcpu_leaves_the_gil_free():
    require_kvm()
    done = subprocess.run(
        [sys.executable, "-c", SCENARIO], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and done.stdout.startswith("ok 1"), done.stdout + done.stderr
