"""The binding layer's error types."""

import errno as _errno
import os


class KvmError(OSError):
    """An ioctl on a KVM file descriptor failed; carries the ioctl's name and errno."""

    def __init__(self, ioctl: str, err: int, detail: str = ""):
        self.ioctl = ioctl
        name = _errno.errorcode.get(err, str(err))
        text = f"{ioctl} failed: {name} ({os.strerror(err)})"
        if detail:
            text += f": {detail}"
        super().__init__(err, text)

    def __str__(self) -> str:
        return self.strerror


class BindingUnavailable(RuntimeError):
    """The compiled binding is absent (installed without <linux/kvm.h>, or not on Linux)."""
