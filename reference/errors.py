"""The model's one error type (design.md: each layer has one)."""


class ModelError(Exception):
    """A request the model cannot answer: an unknown profile, an impossible operation for the
    vCPU's thread (an ioctl while it is inside KVM_RUN would block forever), a livelock."""
