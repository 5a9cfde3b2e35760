"""A vCPU's binary statistics (KVM_GET_STATS_FD, Linux 5.14+), read one counter at a time.

The harness uses one counter, ``exits``: KVM counts every exit from guest mode, so a vCPU
thread that burns CPU inside KVM_RUN while the counter stands still never entered the guest:
it spins in KVM's own loop (docs/semantics.md#rule-18) rather than running slow guest code.
The descriptors are parsed once (construct, kvmtest.kvm.layouts); a read is one pread.
"""

from __future__ import annotations

import functools
import os

from construct import ConstructError

from . import _lib, layouts
from .fd import OwnedFd


class VcpuStats(OwnedFd):
    """The stats fd of one vCPU: offsets of the counters by name, values on demand."""

    def __init__(self, fd: int):
        super().__init__(fd)
        raw_header = os.pread(fd, layouts.kvm_stats_header.sizeof(), 0)
        header = layouts.kvm_stats_header.parse(raw_header)
        stride = layouts.kvm_stats_desc.sizeof() + header.name_size
        table = os.pread(fd, stride * header.num_desc, header.desc_offset)
        self.offsets = _offsets(raw_header, table)

    def read(self, name: str) -> int:
        """The counter's current value (the first u64 of the statistic)."""
        data = os.pread(self._fd, 8, self.offsets[name])
        return int.from_bytes(data, "little")


@functools.lru_cache(maxsize=8)
def _offsets(raw_header: bytes, table: bytes) -> dict[str, int]:
    """Counter name -> file offset of its value. Every vCPU of one KVM module has the same
    table, so a process parses it once (about a millisecond with construct)."""
    header = layouts.kvm_stats_header.parse(raw_header)
    stride = layouts.kvm_stats_desc.sizeof() + header.name_size
    offsets = {}
    for index in range(header.num_desc):
        start = index * stride
        desc = layouts.kvm_stats_desc.parse(table[start : start + stride])
        name = table[start + layouts.kvm_stats_desc.sizeof() : start + stride]
        name = name.split(b"\0", 1)[0].decode("ascii", "replace")
        offsets[name] = header.data_offset + desc.offset
    return offsets


def open_vcpu_stats(vcpu) -> VcpuStats | None:
    """The vCPU's stats, or None on a kernel without KVM_GET_STATS_FD (before 5.14) or without
    an ``exits`` counter: the harness then knows no spinning thread (the settle bound decides)."""
    if _lib.lib is None or not hasattr(_lib.lib, "KVM_GET_STATS_FD"):
        return None
    ret = vcpu._ioctl_raw("KVM_GET_STATS_FD")
    if ret < 0:
        return None
    try:
        stats = VcpuStats(ret)
    except (OSError, ConstructError):  # a layout this code does not know: as if absent
        os.close(ret)
        return None
    return stats if "exits" in stats.offsets else None
