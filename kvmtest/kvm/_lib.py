"""Loads the compiled cffi module and gives every wrapper one way to issue an ioctl."""

from .errors import BindingUnavailable, KvmError

try:
    from ._kvm_cffi import ffi, lib
except ImportError as exc:  # built without <linux/kvm.h>, or not built at all
    ffi = lib = None
    _IMPORT_ERROR = exc
else:
    _IMPORT_ERROR = None


def require() -> None:
    """Raise BindingUnavailable with the reason when the compiled module is missing."""
    if lib is None:
        raise BindingUnavailable(
            "the /dev/kvm binding was not compiled into this installation "
            f"({_IMPORT_ERROR}); reinstall on Linux with the kernel headers "
            "(Debian: apt-get install linux-libc-dev gcc) or use --backend reference"
        )


class _Requests(dict):
    """ioctl name -> request number, looked up in the compiled module once."""

    def __missing__(self, name: str) -> int:
        self[name] = number = getattr(lib, name)
        return number


_REQUESTS = _Requests()


def ioctl_raw(fd: int, name: str, arg=None, *, integer: int | None = None) -> int:
    """Issue ioctl `name`; return its result or -errno; never raises (selftests' `__` layer)."""
    if integer is not None:
        ret = lib.kvmtest_ioctl_int(fd, _REQUESTS[name], integer)
    else:
        ret = lib.kvmtest_ioctl_ptr(fd, _REQUESTS[name], ffi.NULL if arg is None else arg)
    return ret if ret >= 0 else -ffi.errno


def ioctl(fd: int, name: str, arg=None, *, integer: int | None = None) -> int:
    """Issue ioctl `name`; raise KvmError on failure (the checked layer)."""
    if integer is not None:
        ret = lib.kvmtest_ioctl_int(fd, _REQUESTS[name], integer)
    else:
        ret = lib.kvmtest_ioctl_ptr(fd, _REQUESTS[name], ffi.NULL if arg is None else arg)
    if ret < 0:
        raise KvmError(name, ffi.errno)
    return ret
