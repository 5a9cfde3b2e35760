"""The guests: memory layout, host<->guest protocol, built images, and the loader.

`layout`, `protocol` and `images` are pure data and need no /dev/kvm; `loader` builds VMs
around the images with the bindings. Everything is re-exported here for callers that drive a
guest (``from kvmtest import guest as g; g.GuestVm(...)``).
"""

from .images import image, ram_image, rom_image  # noqa: F401
from .layout import *  # noqa: F401,F403
from .loader import GuestVm, Stepper  # noqa: F401
from .protocol import (  # noqa: F401
    ERRORS,
    REPORTS,
    GuestError,
    Kicked,
    Report,
    SmpResult,
    StrayExecution,
)
