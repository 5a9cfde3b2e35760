"""The kernel matrix: boot kernels under QEMU, run the suite inside, summarise the results."""
