"""A file descriptor owned by exactly one object and closed exactly once."""

import os


class OwnedFd:
    """Base of Kvm, Vm and Vcpu: each owns one fd, like the kernel's objects.

    After close() the fd number becomes -1, so a wrapper called on a closed handle still issues
    its ioctl and gets the kernel's own EBADF, rather than a Python-side guess.
    """

    _fd: int = -1

    def __init__(self, fd: int):
        self._fd = fd

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            self._release()
            os.close(fd)

    def _release(self) -> None:
        """Free what hangs on the fd (mappings, children); subclasses override."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
