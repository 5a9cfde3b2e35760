"""docs/semantics.md and docs/host-findings.md are the rule book every citation points into.

(a) every rule, quirk, section and host-finding number cited in kvmtest/, reference/, tests/,
docs/ and in every trace's ``rules:`` list resolves to an anchor of one of the two files;
(b) the profile switches named in docs/semantics.md are exactly the switches of
``reference.profiles.Profile``; (c) no tracked file points outside the repository.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from reference.profiles import Profile

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
BOOKS = ("semantics.md", "host-findings.md")
SCANNED = ()  # every tracked file: kvmtest/, reference/, tests/, docs/, guests/, ...
NOT_SWITCHES = {"name", "description", "releases", "changes"}

_ANCHOR = re.compile(r'<a id="([^"]+)"></a>')

# Citation forms, each -> anchors. A list after "rule(s)" may use ranges, commas, "and", "/".
_NUM_LIST = r"\d+(?:\s*-\s*\d+)?(?:(?:\s*,\s*|\s+and\s+|\s*/\s*)\d+(?:\s*-\s*\d+)?)*"
_RULES = re.compile(r"\b[Rr]ules?\s+(" + _NUM_LIST + r")\b")
_QUIRK = re.compile(r"\bd\.?([78])\.(\d+)(?:\s*-\s*(?:d\.?[78]\.)?(\d+))?\b")
_SUBSECTION = re.compile(r"\b([a-e])\.(\d)\b(?!\.\d)")
_SECTION = re.compile(r"\b(?:[Ss]ections?|race|table)\s+\(?([a-e])\)?(?![\w.])|, \(([a-e])\)")
_FINDING = re.compile(r"\b[Hh]ost findings?(?:,\s*trap|\s*#|\s+)(\d+)\b|\bfindings (\d+)\b")
_LINK = re.compile(r"\b(semantics|host-findings)\.md#([\w-]+)")


def anchors(name: str) -> set[str]:
    return set(_ANCHOR.findall((DOCS / name).read_text(encoding="utf-8")))


def _numbers(text: str) -> list[int]:
    out = []
    for part in re.split(r"\s*,\s*|\s+and\s+|\s*/\s*", text):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def cited(text: str) -> set[tuple[str | None, str]]:
    """(book or None for "either", anchor) for every citation in a text."""
    found: set[tuple[str | None, str]] = set()
    for m in _RULES.finditer(text):
        found |= {(None, f"rule-{n}") for n in _numbers(m.group(1))}
    for m in _QUIRK.finditer(text):
        section, lo, hi = m.group(1), int(m.group(2)), int(m.group(3) or m.group(2))
        found |= {(None, f"d{section}-{n}") for n in range(lo, hi + 1)}
    for m in _SUBSECTION.finditer(text):
        found.add((None, f"{m.group(1)}{m.group(2)}"))
    for m in _SECTION.finditer(text):
        found.add((None, f"section-{m.group(1) or m.group(2)}"))
    for m in _FINDING.finditer(text):
        found.add(("host-findings.md", f"finding-{m.group(1) or m.group(2)}"))
    for m in _LINK.finditer(text):
        found.add((f"{m.group(1)}.md", m.group(2)))
    return found


def trace_rule_anchor(rule: str) -> str:
    """A ``rules:`` entry (12, d7.3, d8.6) -> its anchor."""
    if re.fullmatch(r"\d+", rule):
        return f"rule-{rule}"
    m = re.fullmatch(r"d\.?([78])\.(\d+)", rule)
    return f"d{m.group(1)}-{m.group(2)}" if m else f"unknown-{rule}"


def unresolved(citations, books=None) -> list:
    books = books or {name: anchors(name) for name in BOOKS}
    everywhere = set().union(*books.values())
    bad = []
    for where, (book, anchor) in citations:
        known = books[book] if book else everywhere
        if anchor not in known:
            bad.append(f"{where}: {book or 'docs'}#{anchor}")
    return sorted(set(bad))


def _tracked(*roots: str) -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", *roots], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / p for p in out.decode().split("\0") if p]


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError):
        return None


# ------------------------------------------------------------------------------------------ (a)


def test_every_cited_number_resolves():
    citations = []
    for path in _tracked(*SCANNED):
        text = _text(path)
        if text is None:
            continue
        rel = path.relative_to(ROOT)
        for lineno, line in enumerate(text.splitlines(), 1):
            citations += [(f"{rel}:{lineno}", c) for c in cited(line)]
    assert len(citations) > 300, "the citation scanner found suspiciously little"
    assert not unresolved(citations)


def test_every_trace_rule_resolves():
    citations = []
    for path in sorted((ROOT / "kvmtest" / "corpus").glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for rule in data.get("rules", []):
            citations.append((path.name, (None, trace_rule_anchor(str(rule)))))
    assert citations
    assert not unresolved(citations)


def test_every_section_b_rule_and_quirk_has_an_anchor():
    book = anchors("semantics.md")
    expected = {f"rule-{n}" for n in range(1, 42)} | {f"d7-{n}" for n in range(1, 16)}
    expected |= {f"section-{s}" for s in "abcde"} | {"a1", "a2", "a3", "c1", "c2", "c3", "c4"}
    expected |= {f"b{n}" for n in range(1, 7)} | {f"d{n}" for n in range(1, 8)}
    assert expected <= book
    findings = anchors("host-findings.md")
    assert {f"d8-{n}" for n in range(1, 8)} | {f"finding-{n}" for n in range(1, 9)} <= findings


def test_the_scanner_catches_unknown_numbers():
    """Each citation form is recognised, and a number the books lack is reported."""
    books = {"semantics.md": {"rule-3", "d7-9", "c2", "section-e"}, "host-findings.md": set()}
    good = "rules 3 and 3, quirk d.7.9, d7.9, table c.2, section (e), semantics.md#rule-3"
    assert unresolved([("x", c) for c in cited(good)], books) == []
    for bad, anchor in [
        ("rule " + "42", "rule-42"),
        ("rules 2-" + "3", "rule-2"),
        ("d.7." + "15", "d7-15"),
        ("d8." + "8", "d8-8"),
        ("c." + "9", "c9"),
        ("section " + "d", "section-d"),
        ("host findings " + "9", "finding-9"),
        ("semantics.md#" + "rule-99", "rule-99"),
    ]:
        found = unresolved([("x", c) for c in cited(bad)], books)
        assert found and anchor in found[0], (bad, found)
    assert trace_rule_anchor("d7.3") == "d7-3" and trace_rule_anchor("12") == "rule-12"
    assert "unknown" in trace_rule_anchor("q7")


# ------------------------------------------------------------------------------------------ (b)

_SWITCH_CHUNK = re.compile(r"Switch(?:es)?:\**(.*?)(?:\n\s*\n|\n- |\n<a |\Z)", re.DOTALL)
_IDENT = re.compile(r"`([a-z_][a-z0-9_]*)`")


def switches_named(text: str) -> set[str]:
    """Backticked names after "Switch:"/"Switches:" and in the switch index table."""
    named = set()
    for m in _SWITCH_CHUNK.finditer(text):
        named |= set(_IDENT.findall(m.group(1)))
    index = text.partition('<a id="switch-index"></a>')[2]
    for line in index.splitlines():
        m = re.match(r"\| `([a-z_0-9]+)` \|", line)
        if m:
            named.add(m.group(1))
    return named


def profile_switches() -> set[str]:
    return {f.name for f in dataclasses.fields(Profile)} - NOT_SWITCHES


def test_named_switches_exist():
    text = (DOCS / "semantics.md").read_text(encoding="utf-8")
    unknown = switches_named(text) - profile_switches()
    assert not unknown, f"docs/semantics.md names switches Profile lacks: {sorted(unknown)}"


def test_every_switch_is_documented():
    text = (DOCS / "semantics.md").read_text(encoding="utf-8")
    index = text.split('<a id="switch-index"></a>', 1)[1]
    in_index = set(re.findall(r"^\| `([a-z_0-9]+)` \|", index, re.MULTILINE))
    missing = profile_switches() - in_index
    assert not missing, f"Profile switches missing from the switch index: {sorted(missing)}"
    missing = profile_switches() - switches_named(text.split('<a id="switch-index"></a>')[0])
    assert not missing, f"Profile switches no rule names: {sorted(missing)}"


def test_switch_parser_sees_rule_lines():
    text = (
        "- **Switches:** `a_b`, `c`\n\nSwitch: `d`.\n- **Switches:** not a switch.\n"
        '<a id="switch-index"></a>\n| `e` | rule 1 |\n'
    )
    assert switches_named(text) == {"a_b", "c", "d", "e"}


# ------------------------------------------------------------------------------------------ (c)

_OUTSIDE = [
    "/wo" + "rk/",
    "shared" + "/notes",
    "kvm-init-sipi" + "-semantics",
    "/ho" + "me/",
    "/t" + "mp/kvmtest",
]


def outside_references(text: str) -> list[str]:
    return [needle for needle in _OUTSIDE if needle in text]


def test_no_tracked_file_points_outside_the_repository():
    bad = []
    for path in _tracked():
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        text = data.decode("utf-8", "replace")
        found = outside_references(text)
        if found:
            bad.append(f"{path.relative_to(ROOT)}: {', '.join(found)}")
    assert not bad


def test_outside_reference_check_can_fail():
    assert outside_references("see " + "/wo" + "rk/shared" + "/notes/x.md")
    assert not outside_references("see docs/semantics.md#rule-22")
