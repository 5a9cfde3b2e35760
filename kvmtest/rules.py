"""The rules of docs/semantics.md by number, for reports: title, anchor, and which rules a
mismatch of a given field can be about.

The titles and anchors are generated from the documents (kvmtest/_rule_titles.py, by
`python -m kvmtest.coverage --rules-module`), so an installed kvmtest without docs/ still has
them. Pure data: no imports from the rest of kvmtest.

FIELD_RULES is written by hand from the rule texts: for each observable a trace compares, the
rules whose text speaks of that observable. A mismatch is linked to the rules of its trace that
are in that set; when none is, to all the rules of its trace (the trace as a whole pins them),
so a mismatch is never linked to a rule its trace does not claim.
"""

from __future__ import annotations

from ._rule_titles import LINKS, TITLES

DOCS_URL_BASE = "docs/"  # LINKS are relative to docs/

_MP_STATE = {
    "1", "d7.1", "8", "9", "10", "11", "12", "15", "16", "17", "18", "19", "20", "21", "22",
    "23", "24", "25", "26", "27", "29", "d7.2", "d7.4", "d7.5", "d7.6", "d7.8", "d8.1", "d8.5",
}  # fmt: skip
_GUEST_RAN = {  # the guest's reports and where its thread sleeps
    "1", "3", "4", "7", "9", "12", "13", "18", "19", "20", "22", "29", "d7.1", "d7.2",
    "d7.6", "d7.7", "d8.7",
}  # fmt: skip
_REGISTERS = {
    "4", "8", "10", "13", "14", "25", "26", "d7.3", "d7.4", "d7.5", "d7.8",
    "d7.9", "d7.10", "d7.11", "d7.13", "d8.2", "d8.4",
}  # fmt: skip
_RESULT = {  # an ioctl's return value, KVM_SIGNAL_MSI's delivery count
    "2", "3", "5", "6", "28", "30", "31", "32", "33", "34", "35", "36", "37", "38", "39",
    "41", "d7.12", "d8.6",
}  # fmt: skip
_EVENTS = {"15", "30", "31", "32", "d7.14"}

FIELD_RULES = {
    "mp_state": _MP_STATE,
    "report": _GUEST_RAN,
    "thread": _GUEST_RAN,
    "result": _RESULT,
    "events": _EVENTS,
    "registers": _REGISTERS,
}


def field_kind(field: str) -> str | None:
    """'cs.base' -> 'registers', 'events.sipi_vector' -> 'events', 'mp_state (model vs pin)'
    -> 'mp_state'; None for what concerns a whole trace (a block's outcome, a property)."""
    name = field.split(" (", 1)[0]
    if name in FIELD_RULES:
        return name
    if name.startswith("events."):
        return "events"
    if name in ("outcome",) or name.startswith("property"):
        return None
    return "registers"  # rip, rflags, rdx, cr0, cs.selector, gdt.base, ...


def rules_for(field: str, trace_rules) -> list[str]:
    """The rules of a trace (its `rules:` list) that a mismatch of `field` concerns."""
    trace_rules = [str(r) for r in trace_rules]
    kind = field_kind(field)
    if kind is not None:
        chosen = [r for r in trace_rules if r in FIELD_RULES[kind]]
        if chosen:
            return chosen
    return trace_rules


def title(rule: str) -> str:
    return TITLES.get(str(rule), "")


def link(rule: str) -> str:
    """'docs/semantics.md#rule-22', or '' for a rule number the documents do not have."""
    found = LINKS.get(str(rule))
    return DOCS_URL_BASE + found if found else ""


def describe(rule: str) -> str:
    """'rule 22: HLT does not enter HALTED when events are already pending
    (docs/semantics.md#rule-22)'."""
    rule = str(rule)
    name = (
        f"quirk {rule}"
        if rule.startswith("d7")
        else (f"observation {rule}" if rule.startswith("d8") else f"rule {rule}")
    )
    text, where = title(rule), link(rule)
    if not text:
        return f"{name} (not in docs/semantics.md)"
    return f"{name}: {text} ({where})"
