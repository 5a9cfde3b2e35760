"""Divergences already judged: what the fuzzer counts apart instead of shrinking again.

A random trace that diverges the way a judged divergence does (its *first* mismatch, on the
host kind the judgement is about) is counted under that judgement; the rest of that trace is
not judged, and the report says so. Each entry is narrow on purpose: it names the operation,
the field and both values, so a new divergence never hides behind an old one. The judgements
and their evidence are in docs/fuzzing.md; an entry leaves this table when the divergence is
fixed (in KVM, the model or the harness).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple


class Known(NamedTuple):
    key: str
    flavours: tuple  # the host kinds it was judged on (kvm_pvm reports flavour "pvm")
    judgement: str
    matches: Callable  # (trace, first mismatch) -> bool


# Empty since the kvm_pvm self-INIT (7% of random traces, once counted here as
# "pvm-self-init-runs-on") is modelled: quirk d.7.15 of docs/semantics.md, under the pvm flavour.
KNOWN: tuple = ()


def classify(trace, result, flavour: str) -> str | None:
    """The key of the judged divergence `result`'s first mismatch is, or None."""
    if not result.mismatches:
        return None
    first = result.mismatches[0]
    for known in KNOWN:
        if flavour in known.flavours and known.matches(trace, first):
            return known.key
    return None


def judgement(key: str) -> str:
    return next(k.judgement for k in KNOWN if k.key == key)
