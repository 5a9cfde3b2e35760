"""A strict reader of the KTAP v1 subset kvmtest writes, so tests can check structure, not text.

It refuses anything ktap.rst does not allow: a missing version line or plan, numbers out of
order, a plan that disagrees with the results, '#' or non-ASCII in a name, a subtest whose
result line does not name it, an unknown line.
"""

import re
from dataclasses import dataclass, field

VERSION = "KTAP version 1"
PLAN = re.compile(r"^1\.\.(\d+)$")
NAME = r"[!-\"$-~]+"  # printable ASCII, no space, no '#'
RESULT = re.compile(rf"^(ok|not ok) (\d+) ({NAME})(?: # (SKIP|ERROR)(?: ([^#]*))?)?$")
SUBTEST = re.compile(rf"^# Subtest: ({NAME})$")


class KtapError(AssertionError):
    pass


@dataclass
class Test:
    number: int
    name: str
    ok: bool
    directive: str | None
    reason: str | None
    diagnostics: list = field(default_factory=list)  # the '# ...' lines just before the result
    subtests: list = field(default_factory=list)


@dataclass
class Document:
    plan: int
    tests: list
    trailer: list  # diagnostics after the last result


def parse(text: str, nested: bool = False) -> Document:
    lines = text.split("\n")
    if lines[-1] == "":
        raise KtapError("output ends in a newline (print() adds one: a blank line)")
    for line in lines:
        if not line.isascii() or any(ord(c) < 32 for c in line):
            raise KtapError(f"non-ASCII or control character in {line!r}")
    plan, tests, pos, _ = _block(lines, 0, 0, version=not nested)
    trailer = []
    while pos < len(lines):
        if not lines[pos].startswith("# "):
            raise KtapError(f"line {pos + 1} after the last result: {lines[pos]!r}")
        trailer.append(lines[pos])
        pos += 1
    return Document(plan, tests, trailer)


def _block(lines, pos, indent, version):
    prefix = " " * indent

    def line_at(i):
        if i >= len(lines):
            raise KtapError("output ends inside a test block")
        if not lines[i].startswith(prefix) or lines[i][indent : indent + 1] == " ":
            raise KtapError(f"line {i + 1} not indented by {indent}: {lines[i]!r}")
        return lines[i][indent:]

    if version:  # the parent's diagnostics and result line are read by the caller
        if line_at(pos) != VERSION:
            raise KtapError(f"line {pos + 1}: expected {VERSION!r}, got {lines[pos]!r}")
        pos += 1
    name = None
    if indent and (match := SUBTEST.match(line_at(pos))):
        name, pos = match.group(1), pos + 1
    match = PLAN.match(line_at(pos))
    if not match:
        raise KtapError(f"line {pos + 1}: expected a plan, got {lines[pos]!r}")
    planned, pos = int(match.group(1)), pos + 1
    tests, diagnostics = [], []
    while len(tests) < planned:
        if pos < len(lines) and lines[pos].startswith(prefix + "  "):
            subplan, subtests, pos, subname = _block(lines, pos, indent + 2, version=True)
            while line_at(pos).startswith("# "):
                diagnostics.append(line_at(pos))
                pos += 1
            test = _result(line_at(pos), pos, len(tests) + 1, diagnostics)
            if subplan != len(subtests):
                raise KtapError(f"subtest {test.name}: plan {subplan}, {len(subtests)} results")
            if subname is not None and subname != test.name:
                raise KtapError(f"line {pos + 1}: subtest {subname} closed as {test.name}")
            test.subtests = subtests
        else:
            text = line_at(pos)
            if text.startswith("# "):
                diagnostics.append(text)
                pos += 1
                continue
            test = _result(text, pos, len(tests) + 1, diagnostics)
        tests.append(test)
        diagnostics = []
        pos += 1
    return planned, tests, pos, name


def _result(text, pos, number, diagnostics) -> Test:
    match = RESULT.match(text)
    if not match:
        raise KtapError(f"line {pos + 1}: not a result line: {text!r}")
    if int(match.group(2)) != number:
        raise KtapError(f"line {pos + 1}: test number {match.group(2)}, expected {number}")
    return Test(
        number=number,
        name=match.group(3),
        ok=match.group(1) == "ok",
        directive=match.group(4),
        reason=match.group(5),
        diagnostics=list(diagnostics),
    )
