"""kvmtest: a conformance tester for Linux KVM's x86 INIT and SIPI handling."""

__version__ = "0.1.0"
