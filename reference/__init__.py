"""Pure-Python reference model of KVM's x86 INIT/SIPI handling, per kernel profile.

Standard library only. ``Machine`` is one VM; ``PROFILES`` names the kernels it can imitate,
each a record of the ``SWITCHES``; ``profile_for_release`` picks one for a kernel release and
``apply_switches`` derives a "what if" variant (``--set``); ``FLAVOURS`` are the register-image
flavours (vmx, svm, pvm). ``ARCHITECTURES`` are the manuals' profiles (``sdm``, ``apm``,
architecture.py), whose ``UNSPECIFIED`` values are never compared. See ``machine.py`` for the
theory of operation and docs/model.md for the transition tables.
"""

from .architecture import (
    ARCHITECTURES,
    UNSPECIFIED,
    WAIT_FOR_SIPI,
    ArchProfile,
    is_architectural,
)
from .encodings import Irq, decode_icr, decode_msi, encode_icr, encode_msi
from .errors import ModelError
from .machine import (
    ANY,
    KEEP,
    Machine,
    MpState,
    Phase,
    RunResult,
    Step,
    VCpu,
)
from .profiles import (
    BACKEND_FLAVOURS,
    FLAVOURS,
    PROFILES,
    SWITCHES,
    Profile,
    Switch,
    apply_switches,
    flavour_for_backend,
    get_profile,
    profile_for_release,
)
from .regs import GUEST, DTable, Segment

__all__ = [
    "ANY",
    "ARCHITECTURES",
    "ArchProfile",
    "UNSPECIFIED",
    "WAIT_FOR_SIPI",
    "is_architectural",
    "BACKEND_FLAVOURS",
    "DTable",
    "FLAVOURS",
    "GUEST",
    "Irq",
    "KEEP",
    "Machine",
    "ModelError",
    "MpState",
    "PROFILES",
    "Phase",
    "Profile",
    "RunResult",
    "Segment",
    "SWITCHES",
    "Step",
    "Switch",
    "VCpu",
    "apply_switches",
    "decode_icr",
    "decode_msi",
    "encode_icr",
    "encode_msi",
    "flavour_for_backend",
    "get_profile",
    "profile_for_release",
]
