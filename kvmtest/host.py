"""What this host's KVM is: probed once, shared by `kvmtest doctor` and `kvmtest run`.

The probe never raises: every problem becomes a line in `problems`, so callers can print a
verdict instead of a traceback.
"""

import errno
import os
import platform
from dataclasses import asdict, dataclass, field

from reference import ModelError

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


def detect_backend(sys_module: str = "/sys/module") -> str:
    for name in BACKENDS:
        if os.path.isdir(os.path.join(sys_module, name)):
            return name
    return "unknown"


def probe(device: str | None = None) -> HostInfo:
    from kvmtest import kvm as binding

    device = device or binding.DEVICE
    info = HostInfo(kernel=platform.release(), machine=platform.machine(), device=device)
    info.backend = detect_backend()
    info.binding = binding.available()
    info.device_present = os.path.exists(device)
    info.device_access = info.device_present and os.access(device, os.R_OK | os.W_OK)
    if not info.binding:
        info.problems.append("the /dev/kvm binding is not compiled into this installation")
        info.advice.append(
            "install the kernel headers and a compiler (Debian: apt-get install linux-libc-dev "
            "gcc python3-dev), then reinstall kvmtest"
        )
        return info
    if not info.device_present:
        info.problems.append(f"{device} does not exist")
        info.advice.append(
            "load KVM (modprobe kvm_intel or kvm_amd), enable virtualisation in the firmware, "
            "or in a VM enable nested virtualisation; until then use --backend reference"
        )
        return info
    if not info.device_access:
        info.problems.append(f"no read/write permission on {device}")
        info.advice.append(
            f"add yourself to the group owning {device} (usually 'kvm': "
            "sudo usermod -aG kvm $USER, then log in again), or run as root"
        )
        return info
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
    return info
