"""Small text helpers shared by the reporters: durations, values, safe one-line text."""

import math
import re
import unicodedata

from kvmtest.trace.result import Status

# The word each reporter shows for a status, padded to the widest ("ERROR").
STATUS_WORD = {
    Status.PASS: "PASS",
    Status.FAIL: "FAIL",
    Status.ERROR: "ERROR",
    Status.SKIP: "SKIP",
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Lone surrogates (undecodable bytes of a path, via surrogateescape) cannot be encoded to UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")
_SPACES = re.compile(r"\s+")


def format_duration(seconds: float) -> str:
    """'850 us', '1.2 ms', '3.40 s', '2 min 05 s': short, and readable at a glance."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


def one_line(text) -> str:
    """Any text as a single printable line: whitespace runs (newlines too) become one space,
    control characters and lone surrogates become visible escapes."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", _SPACES.sub(" ", str(text)))
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text).strip()


def ascii_line(text) -> str:
    """one_line() restricted to ASCII: accents dropped where possible, the rest escaped."""
    folded = unicodedata.normalize("NFKD", one_line(text))
    return "".join(
        c if ord(c) < 128 else ("" if unicodedata.combining(c) else f"\\u{ord(c):04x}")
        for c in folded
    )


def text_lines(text) -> list:
    """A message split into printable lines, blank lines dropped."""
    return [one_line(line) for line in str(text).splitlines() if line.strip()]


def vcpu_label(vcpu) -> str:
    """'vcpu 1', or 'vm-wide' for results that belong to no vCPU (an MSI's delivery count)."""
    return "vm-wide" if vcpu is None else f"vcpu {vcpu}"


def rules_label(rules) -> str:
    return ", ".join(str(rule) for rule in rules) if rules else "none listed"


def repeat_label(result) -> str:
    """Repetitions count from 1 for people (TraceResult.repeat counts from 0)."""
    return f"repeat {result.repeat + 1}"
