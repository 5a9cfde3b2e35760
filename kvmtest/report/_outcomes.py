"""Outcome counts of a concurrent trace next to the model's allowed set."""

from dataclasses import dataclass


@dataclass(frozen=True)
class OutcomeRow:
    label: str
    count: int
    allowed: bool


def outcome_rows(outcomes: dict, allowed: dict) -> list:
    """One row per outcome seen or allowed, most frequent first.

    An outcome seen but missing from `allowed` is forbidden: the model did not predict it.
    Allowed outcomes never seen are listed with count 0, so the table shows the whole set.
    """
    labels = set(outcomes) | {label for label, ok in allowed.items() if ok}
    rows = [
        OutcomeRow(str(label), int(outcomes.get(label, 0)), bool(allowed.get(label, False)))
        for label in labels
    ]
    return sorted(rows, key=lambda row: (-row.count, row.label))


def forbidden_rows(outcomes: dict, allowed: dict) -> list:
    """The outcomes that happened although the model forbids them."""
    return [row for row in outcome_rows(outcomes, allowed) if row.count and not row.allowed]


def summary_line(outcomes: dict, allowed: dict) -> str:
    """'a=80 b=40 lost-sipi=1 (FORBIDDEN)': the histogram on one line."""
    return " ".join(
        f"{row.label}={row.count}" + ("" if row.allowed else " (FORBIDDEN)")
        for row in outcome_rows(outcomes, allowed)
    )
