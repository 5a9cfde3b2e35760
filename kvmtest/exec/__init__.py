"""Performing operations on /dev/kvm: the VM builder, vCPU worker threads, settling."""
