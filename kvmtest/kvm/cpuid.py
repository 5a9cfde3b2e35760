"""A struct kvm_cpuid2 with its flexible array of entries."""

from . import _lib


class Cpuid:
    """Owns a kvm_cpuid2 buffer; KVM_GET_SUPPORTED_CPUID fills it and KVM_SET_CPUID2 reads it."""

    def __init__(self, max_entries: int):
        ffi = _lib.ffi
        size = ffi.sizeof("struct kvm_cpuid2") + max_entries * ffi.sizeof("struct kvm_cpuid_entry2")
        self._buffer = ffi.new("char[]", size)
        self.pointer = ffi.cast("struct kvm_cpuid2 *", self._buffer)
        self.pointer.nent = max_entries

    def __len__(self) -> int:
        return self.pointer.nent

    def entries(self):
        return [self.pointer.entries[i] for i in range(self.pointer.nent)]

    def find(self, function: int, index: int = 0):
        """The entry for a leaf (and sub-leaf), or None."""
        for entry in self.entries():
            if entry.function == function and entry.index == index:
                return entry
        return None

    def has_x2apic(self) -> bool:
        """CPUID.1:ECX bit 21, the bit a guest checks before enabling x2APIC."""
        leaf1 = self.find(1)
        return bool(leaf1 is not None and leaf1.ecx & (1 << 21))
