"""The kernel matrix's summary: one row per kernel (outcome counts, the judging profile) and a
trace-by-kernel grid of every trace that did not pass everywhere.

Input is result data, not live runs: a list of :class:`KernelOutcome`, each built from the JSON
report that `kvmtest run --json-file` wrote for one kernel (:func:`traces_from_report`; the
KTAP it streamed, :func:`parse_ktap`, only when the run died before writing it), so the table
can be re-rendered from a results directory (``matrix.json``) without booting anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PASS, FAIL, SKIP, ERROR = "pass", "fail", "skip", "error"
STATUSES = (PASS, FAIL, SKIP, ERROR)
# One-word cells for the grid; "-" means the trace did not run on that kernel.
CELL = {PASS: "ok", FAIL: "FAIL", SKIP: "skip", ERROR: "ERROR", None: "-"}

_RESULT = re.compile(r"^(not ok|ok) (\d+) (\S+)(?: # (\w+))?")


@dataclass
class KernelOutcome:
    """One kernel's run: where it ran, the profile that judged it and each trace's status."""

    kernel: str
    release: str
    profile: str
    backend: str = ""
    method: str = ""
    exit_code: int | None = None
    traces: dict = field(default_factory=dict)  # trace name -> one of STATUSES
    boot_seconds: float | None = None
    suite_seconds: float | None = None
    total_seconds: float | None = None
    notes: list = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for value in self.traces.values() if value == status)

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict) -> KernelOutcome:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def parse_ktap(text: str) -> dict:
    """Top-level results of a KTAP document: {test name: status}. Subtests are ignored."""
    results = {}
    for line in text.splitlines():
        match = _RESULT.match(line)  # top level only: subtests are indented
        if not match:
            continue
        verdict, _, name, directive = match.groups()
        directive = (directive or "").upper()
        if directive == "SKIP":
            results[name] = SKIP
        elif directive in ("ERROR", "TIMEOUT"):
            results[name] = ERROR
        elif verdict == "ok":
            results[name] = PASS
        else:
            results[name] = FAIL
    return results


# KCIDB priority: the worst status of a trace's repeats is the trace's status.
_WORST = (FAIL, ERROR, PASS, SKIP)


def traces_from_report(report: dict) -> dict:
    """{trace name: status} from kvmtest's JSON report, repeats folded to the worst."""
    seen: dict = {}
    for result in report.get("results", []):
        status = result.get("status")
        if status in STATUSES:
            seen.setdefault(result.get("name", "?"), set()).add(status)
    return {name: next(s for s in _WORST if s in found) for name, found in seen.items()}


def backend_from_report(report: dict) -> str:
    """The vendor module (kvm_amd, kvm_intel, ...) that ran the traces, or the backend."""
    backend = report.get("backend", "")
    host = report.get("host") if isinstance(report.get("host"), dict) else {}
    if backend == "kvm" and host.get("backend"):
        return str(host["backend"])
    return backend


def backend_from_banner(stderr: str) -> str:
    """The vendor module named in kvmtest run's banner ('kvmtest: kvm: 6.1.0, kvm_amd; ...')."""
    match = re.search(r"kvm: [^,\s]+, (\w+);", stderr)
    if match:
        return match.group(1)
    return "reference" if "reference" in stderr else ""


def render_summary(outcomes: list, all_traces: bool = False) -> str:
    """The summary: the per-kernel table, then the grid of traces that did not pass everywhere
    (every trace with `all_traces`)."""
    lines = ["Kernel matrix: kernel by trace outcome (profile = the model profile that judged it)"]
    header = ["kernel", "release", "kvm", "profile", "pass", "fail", "skip", "error", "exit"]
    header += ["boot s", "suite s"]
    rows = []
    for o in outcomes:
        rows.append(
            [
                o.kernel,
                o.release,
                o.backend or "?",
                o.profile,
                *(str(o.count(s)) for s in STATUSES),
                "-" if o.exit_code is None else str(o.exit_code),
                _seconds(o.boot_seconds),
                _seconds(o.suite_seconds),
            ]
        )
    lines.extend(_table(header, rows, numeric_from=4))
    names = sorted({name for o in outcomes for name in o.traces})
    shown = [
        name
        for name in names
        if all_traces or any(o.traces.get(name) != PASS for o in outcomes if o.traces)
    ]
    if shown:
        lines.append("")
        lines.append(
            "Traces by kernel" + ("" if all_traces else " (those that did not pass everywhere)")
        )
        grid_header = ["trace", *(o.kernel for o in outcomes)]
        grid = [[name, *(CELL[o.traces.get(name)] for o in outcomes)] for name in shown]
        lines.extend(_table(grid_header, grid))
    elif names:
        lines.append("")
        lines.append(f"All {len(names)} traces passed on every kernel.")
    for o in outcomes:
        for note in o.notes:
            lines.append(f"note: {o.kernel}: {note}")
    return "\n".join(lines)


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _table(header: list, rows: list, numeric_from: int | None = None) -> list:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def fmt(row):
        cells = []
        for index, (cell, width) in enumerate(zip(row, widths, strict=True)):
            right = numeric_from is not None and index >= numeric_from
            cells.append(cell.rjust(width) if right else cell.ljust(width))
        return "  ".join(cells).rstrip()

    return [fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]
