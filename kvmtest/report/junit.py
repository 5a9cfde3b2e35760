"""JUnit XML for CI front ends (GitLab, Jenkins, LAVA): one <testsuite name="kvmtest">.

Every trace result is a <testcase>: classname is the profile (or "kvmtest.<backend>" when the
result has none), name is the trace name plus " [repeat N]" when the trace ran more than once
(N counts from 1). A mismatch is a <failure> listing every mismatch, a harness crash an
<error>, a missing capability <skipped>. Characters XML 1.0 cannot carry are escaped as text.
"""

import math
import re
import xml.etree.ElementTree as ET

from kvmtest import rules
from kvmtest.trace.result import Status

from ._format import one_line, rules_label
from ._group import group_results
from ._outcomes import forbidden_rows, summary_line

SUITE = "kvmtest"

# Characters outside XML 1.0's Char production (controls other than tab/LF/CR, surrogates,
# U+FFFE/U+FFFF): ElementTree would write them and produce a file no parser accepts.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value) -> str:
    """Any value as text XML 1.0 can carry."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def render_junit(summary) -> str:
    """The JUnit document as a string (UTF-8 declared, no final newline)."""
    root = _document(summary)
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body


def write_junit(summary, path) -> None:
    """Write the JUnit document for `summary` to `path`."""
    with open(path, "w", encoding="utf-8") as out:
        out.write(render_junit(summary) + "\n")


def _document(summary) -> ET.Element:
    count = summary.count
    totals = {
        "tests": str(len(summary.results)),
        "failures": str(count(Status.FAIL)),
        "errors": str(count(Status.ERROR)),
        "skipped": str(count(Status.SKIP)),
        "time": _time(summary.elapsed),
    }
    root = ET.Element("testsuites", {"name": SUITE, **totals})
    suite = ET.SubElement(root, "testsuite", {"name": SUITE, **totals})
    host = summary.host if isinstance(summary.host, dict) else {}
    if host.get("hostname"):
        suite.set("hostname", xml_text(host["hostname"]))
    properties = ET.SubElement(suite, "properties")
    _property(properties, "backend", summary.backend)
    _property(properties, "profile", summary.profile)
    for key, value in host.items():
        _property(properties, f"host.{key}", value)
    repeated = {(g.name, g.path) for g in group_results(summary.results) if g.repeated}
    for result in summary.results:
        _testcase(suite, result, (result.name, result.path) in repeated, summary.backend)
    return root


def _property(parent, name, value) -> None:
    ET.SubElement(parent, "property", {"name": xml_text(name), "value": xml_text(value)})


def _testcase(suite, result, repeated: bool, backend: str) -> None:
    name = result.name + (f" [repeat {result.repeat + 1}]" if repeated else "")
    classname = result.profile or f"kvmtest.{result.backend or backend}"
    case = ET.SubElement(
        suite,
        "testcase",
        {
            "classname": xml_text(classname),
            "name": xml_text(name),
            "file": xml_text(result.path),
            "time": _time(result.elapsed),
        },
    )
    if result.status is Status.FAIL:
        failure = ET.SubElement(case, "failure", {"type": "mismatch"})
        failure.set("message", xml_text(_failure_message(result)))
        failure.text = xml_text(_failure_text(result))
    elif result.status is Status.ERROR:
        error = ET.SubElement(case, "error", {"type": "error"})
        error.set("message", xml_text(one_line(result.message) or "harness error"))
        error.text = xml_text(result.message)
    elif result.status is Status.SKIP:
        ET.SubElement(case, "skipped", {"message": xml_text(one_line(result.message))})
    if result.outcomes:
        out = ET.SubElement(case, "system-out")
        out.text = xml_text("outcomes: " + summary_line(result.outcomes, result.allowed))


def _failure_message(result) -> str:
    n = len(result.mismatches)
    if n:
        first = result.mismatches[0].describe()
        return f"{n} mismatch{'es' if n > 1 else ''}: {one_line(first)}"
    forbidden = forbidden_rows(result.outcomes, result.allowed)
    if forbidden:
        return "forbidden outcome " + ", ".join(f"{r.label} x{r.count}" for r in forbidden)
    return one_line(result.message) or "failed"


def _failure_text(result) -> str:
    lines = [
        f"trace {result.name} ({result.path})",
        f"profile {result.profile}, rules {rules_label(result.rules)}",
    ]
    for m in result.mismatches:
        lines.append(m.describe())
        lines.append(f"  expected (model): {m.show(m.expected)}")
        lines.append(f"  observed (KVM):   {m.show(m.observed)}")
        anchors = [rules.link(r) or r for r in rules.rules_for(m.field, result.rules)]
        lines.append(f"  rules: {', '.join(anchors)}")
    if result.outcomes:
        lines.append("outcomes: " + summary_line(result.outcomes, result.allowed))
    if result.message:
        lines.append(str(result.message))
    return "\n".join(lines)


def _time(seconds) -> str:
    """Seconds as JUnit wants them: a plain non-negative decimal."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        value = 0.0
    return f"{value:.6f}" if math.isfinite(value) and value > 0 else "0.000000"
