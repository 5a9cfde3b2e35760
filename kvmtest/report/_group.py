"""Repeats of one trace (--repeat) grouped together, with the status the group shows."""

from dataclasses import dataclass

from kvmtest.trace.result import Status

# KCIDB priority: the worst status of the repeats is the status of the group.
_PRIORITY = (Status.FAIL, Status.ERROR, Status.PASS, Status.SKIP)


def worst_status(statuses) -> Status:
    """FAIL over ERROR over PASS over SKIP; SKIP for an empty list."""
    present = set(statuses)
    return next((s for s in _PRIORITY if s in present), Status.SKIP)


@dataclass(frozen=True)
class TraceGroup:
    """Every result of one trace (same name and path), in repeat order."""

    name: str
    path: str
    results: tuple

    @property
    def status(self) -> Status:
        return worst_status(r.status for r in self.results)

    @property
    def repeated(self) -> bool:
        return len(self.results) > 1

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status is status)

    def with_status(self, *statuses) -> list:
        return [r for r in self.results if r.status in statuses]

    @property
    def elapsed(self) -> float:
        return sum(r.elapsed for r in self.results)

    @property
    def outcomes(self) -> dict:
        """Outcome counts summed over the repeats."""
        total: dict = {}
        for result in self.results:
            for label, count in result.outcomes.items():
                total[label] = total.get(label, 0) + count
        return total

    @property
    def allowed(self) -> dict:
        """The allowed set: an outcome any repeat forbids stays forbidden."""
        merged: dict = {}
        for result in self.results:
            for label, ok in result.allowed.items():
                merged[label] = merged.get(label, True) and bool(ok)
        return merged


def group_results(results) -> list:
    """Results grouped by trace, groups in order of first appearance, each group by repeat."""
    groups: dict = {}
    for result in results:
        groups.setdefault((result.name, result.path), []).append(result)
    return [
        TraceGroup(name, path, tuple(sorted(members, key=lambda r: r.repeat)))
        for (name, path), members in groups.items()
    ]
