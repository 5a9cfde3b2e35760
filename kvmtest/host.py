"""What this host's KVM is: probed once, shared by `kvmtest doctor` and `kvmtest run`.

The probe never raises: every problem becomes a line in `problems`, so callers can print a
verdict instead of a traceback.
"""

import errno
import os
import platform
from dataclasses import asdict, dataclass, field

from reference import ModelError
from reference.regs import SEGMENT_TYPES

# Capabilities kvmtest uses, and whether full conformance mode needs them.
CAPABILITIES = [
    ("KVM_CAP_IRQCHIP", True, "in-kernel PIC/IOAPIC/LAPIC"),
    ("KVM_CAP_MP_STATE", True, "KVM_GET/SET_MP_STATE"),
    ("KVM_CAP_SIGNAL_MSI", True, "host-injected INIT/SIPI"),
    ("KVM_CAP_IMMEDIATE_EXIT", True, "kicking a vCPU out of KVM_RUN"),
    ("KVM_CAP_VCPU_EVENTS", True, "KVM_GET/SET_VCPU_EVENTS"),
    ("KVM_CAP_EXT_CPUID", True, "KVM_GET_SUPPORTED_CPUID / SET_CPUID2"),
    ("KVM_CAP_USER_MEMORY", True, "guest memory slots"),
    ("KVM_CAP_SPLIT_IRQCHIP", False, "split-irqchip traces"),
    ("KVM_CAP_X2APIC_API", False, "32-bit x2APIC IDs in MSIs"),
    ("KVM_CAP_SET_BOOT_CPU_ID", False, "choosing the BSP"),
    ("KVM_CAP_X86_SMM", False, "SMI and INIT latching traces"),
    ("KVM_CAP_MULTI_ADDRESS_SPACE", False, "SMM address space"),
    ("KVM_CAP_NR_VCPUS", False, "recommended vCPUs"),
    ("KVM_CAP_MAX_VCPUS", False, "maximum vCPUs"),
]

BACKENDS = ("kvm_intel", "kvm_amd", "kvm_pvm")
# The register-image flavour the reference model uses for each backend (kvm_pvm reports
# VMX-like segment types: docs/host-findings.md#backend).
FLAVOURS = {"kvm_intel": "vmx", "kvm_amd": "svm", "kvm_pvm": "pvm"}
# What a fresh vCPU's KVM_GET_SREGS reports as (CS, SS, TR) types, per vendor family
# (reference/regs.py SEGMENT_TYPES, docs/semantics.md#d7-13): the calibration probe.
RESET_TYPES = {
    "vmx": tuple(SEGMENT_TYPES["vmx"][s] for s in ("cs", "ss", "tr")),
    "svm": tuple(SEGMENT_TYPES["svm"][s] for s in ("cs", "ss", "tr")),
}


@dataclass
class HostInfo:
    kernel: str
    machine: str
    device: str
    device_present: bool = False
    device_access: bool = False
    binding: bool = False
    api_version: int | None = None
    backend: str = "unknown"
    # How the backend (and so the flavour) was decided, in words (kvmtest doctor), the vendor
    # modules /sys/module lists, and the (cs, ss, tr) types a fresh vCPU reported.
    backend_decided_by: str = ""
    vendor_modules: list = field(default_factory=list)
    reset_segment_types: dict | None = None
    capabilities: dict = field(default_factory=dict)
    x2apic: bool | None = None
    problems: list = field(default_factory=list)
    advice: list = field(default_factory=list)

    @property
    def full_mode(self) -> bool:
        return not self.problems

    @property
    def flavour(self) -> str:
        return FLAVOURS.get(self.backend, "vmx")

    def to_json(self) -> dict:
        data = asdict(self)
        data["full_mode"] = self.full_mode
        data["flavour"] = self.flavour
        data["default_profile"], data["profile_problem"] = None, None
        try:
            data["default_profile"] = default_profile(self.kernel)
        except ModelError as exc:  # a release no profile covers: say so, judge nothing by it
            data["profile_problem"] = str(exc)
        return data


def default_profile(release: str) -> str:
    """The model profile that judges a kernel of this release (``reference.profile_for_release``:
    ModelError for a release no profile covers, rather than a neighbour's verdict)."""
    from reference import profile_for_release

    return profile_for_release(release).name


def vendor_modules(sys_module: str = "/sys/module") -> list:
    """The vendor modules /sys/module lists. A built-in module with parameters is listed even
    when its init failed (a kernel with kvm_intel and kvm_amd both =y, under TCG: only
    kvm_amd registered), so this alone does not say which vendor KVM runs."""
    return [name for name in BACKENDS if os.path.isdir(os.path.join(sys_module, name))]


def reset_segment_types(device: str | None = None) -> tuple | None:
    """(CS, SS, TR) types of a fresh vCPU's KVM_GET_SREGS, or None if KVM cannot say.

    The calibration probe: the vendor code that registered with KVM writes the reset image
    (vmx_vcpu_reset / init_vmcb), and the types differ (VMX 0xb/3/0xb, SVM 0xa/2/3)."""
    try:
        from kvmtest import kvm as binding

        if not binding.available():
            return None
        with binding.Kvm(device or binding.DEVICE) as kvm, kvm.create_vm() as vm:
            sregs = vm.create_vcpu(0).get_sregs()
            return (sregs.cs.type, sregs.ss.type, sregs.tr.type)
    except (OSError, RuntimeError):  # KvmError, BindingUnavailable, no device or no access
        return None


class VendorDecision(tuple):
    """(backend, how it was decided)."""

    def __new__(cls, backend: str, how: str):
        return super().__new__(cls, (backend, how))

    backend = property(lambda self: self[0])
    how = property(lambda self: self[1])


def decide_backend(modules: list, types: tuple | None) -> VendorDecision:
    """The vendor backend from what KVM reported (``types``) and what /sys/module lists.

    The probe decides between the SVM and the VMX family; /sys/module only names the member
    of the family (kvm_intel or kvm_pvm, which both report VMX types). Without a probe the
    first module listed is all there is, and the decision says so."""
    listed = ", ".join(modules) or "none"
    if types is None:
        backend = modules[0] if modules else "unknown"
        return VendorDecision(
            backend, f"/sys/module only ({listed}): KVM could not be asked (no usable /dev/kvm)"
        )
    shown = "/".join(f"{t:#x}" for t in types)
    family = next((f for f, t in RESET_TYPES.items() if t == types), None)
    if family is None:
        backend = modules[0] if modules else "unknown"
        return VendorDecision(
            backend,
            f"/sys/module ({listed}): a fresh vCPU's CS/SS/TR types {shown} match neither "
            "VMX nor SVM",
        )
    if family == "svm":
        backend = "kvm_amd"
    else:
        backend = next((m for m in ("kvm_pvm", "kvm_intel") if m in modules), "kvm_intel")
    ignored = [m for m in modules if m != backend]
    note = f"; {', '.join(ignored)} listed but not what KVM runs" if ignored else ""
    return VendorDecision(
        backend,
        f"probe: a fresh vCPU reports CS/SS/TR types {shown} ({family.upper()}); "
        f"/sys/module lists {listed}{note}",
    )


def detect_backend(sys_module: str = "/sys/module", device: str | None = None) -> str:
    """The vendor backend KVM runs (kvm_intel, kvm_amd, kvm_pvm or unknown): decided by the
    calibration probe where /dev/kvm is usable, by /sys/module alone otherwise."""
    return decide_backend(vendor_modules(sys_module), reset_segment_types(device)).backend


def probe(device: str | None = None) -> HostInfo:
    from kvmtest import kvm as binding

    device = device or binding.DEVICE
    info = HostInfo(kernel=platform.release(), machine=platform.machine(), device=device)
    info.vendor_modules = vendor_modules()
    info.binding = binding.available()
    info.device_present = os.path.exists(device)
    info.device_access = info.device_present and os.access(device, os.R_OK | os.W_OK)
    if not info.binding:
        info.problems.append("the /dev/kvm binding is not compiled into this installation")
        info.advice.append(
            "install the kernel headers and a compiler (Debian: apt-get install linux-libc-dev "
            "gcc python3-dev), then reinstall kvmtest"
        )
        return _decide(info, None)
    if not info.device_present:
        info.problems.append(f"{device} does not exist")
        info.advice.append(
            "load KVM (modprobe kvm_intel or kvm_amd), enable virtualisation in the firmware, "
            "or in a VM enable nested virtualisation; until then use --backend reference"
        )
        return _decide(info, None)
    if not info.device_access:
        info.problems.append(f"no read/write permission on {device}")
        info.advice.append(
            f"add yourself to the group owning {device} (usually 'kvm': "
            "sudo usermod -aG kvm $USER, then log in again), or run as root"
        )
        return _decide(info, None)
    try:
        with binding.Kvm(device) as kvm:
            info.api_version = kvm.get_api_version()
            for name, required, _ in CAPABILITIES:
                value = kvm.check_extension(getattr(binding.lib, name))
                info.capabilities[name] = value
                if required and not value:
                    info.problems.append(f"{name} is not offered by this KVM")
            info.x2apic = kvm.get_supported_cpuid().has_x2apic()
    except binding.KvmError as exc:
        if exc.errno == errno.ENOTTY:
            info.problems.append(f"{device} is not a KVM device (it does not know KVM ioctls)")
            info.advice.append(
                f"{device} is hidden or replaced (a container bind mount?); give kvmtest the "
                "host's KVM device, or use --backend reference"
            )
        else:
            info.problems.append(str(exc))
            info.advice.append("check dmesg for KVM errors")
    if info.api_version is not None and info.api_version != binding.lib.KVM_API_VERSION:
        info.problems.append(f"KVM API version {info.api_version}, expected 12")
    _decide(info, reset_segment_types(device) if not info.problems else None)
    return info


def _decide(info: HostInfo, types: tuple | None) -> HostInfo:
    decision = decide_backend(info.vendor_modules, types)
    info.backend, info.backend_decided_by = decision
    if types is not None:
        info.reset_segment_types = dict(zip(("cs", "ss", "tr"), types, strict=True))
    return info
