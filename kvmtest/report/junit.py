"""JUnit XML for CI front ends (GitLab, Jenkins, LAVA): one <testsuite name="kvmtest">.

Every trace result is a <testcase> whose identity is the same on every host and under every
profile: classname is the directory of the trace's relative path, dotted ("kvmtest.corpus" for
the built-in corpus; dots inside a directory name become "_", so Jenkins does not split it),
name is the trace name plus " [repeat N]" when the trace ran more than once (N counts from 1),
file the relative path and line the trace's line. The profile, backend and host are properties
of the suite. A mismatch is a <failure> listing every mismatch, a harness crash an <error>, a
missing capability <skipped>. Characters XML 1.0 cannot carry are escaped as text.

The document validates against Jenkins xUnit's junit-10.xsd (tests/report/junit-10.xsd): no
"skipped" on <testsuites>, times in seconds with three decimals.
"""

import math
import re
import xml.etree.ElementTree as ET

from kvmtest import rules
from kvmtest.trace.result import Status

from ._format import one_line, rules_label
from ._group import group_results
from ._outcomes import forbidden_rows, summary_line
from ._paths import classname, relative_path

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
    outer = {key: value for key, value in totals.items() if key != "skipped"}
    root = ET.Element("testsuites", {"name": SUITE, **outer})
    suite = ET.SubElement(root, "testsuite", {"name": SUITE, **totals})
    if summary.started:
        suite.set("timestamp", xml_text(summary.started))
    host = summary.host if isinstance(summary.host, dict) else {}
    if host.get("hostname"):
        suite.set("hostname", xml_text(host["hostname"]))
    properties = ET.SubElement(suite, "properties")
    _property(properties, "backend", summary.backend)
    _property(properties, "profile", summary.profile)
    if summary.judged:
        _property(properties, "judged", summary.judged)
    if summary.not_judged:
        _property(properties, "not_judged", summary.not_judged)
    if summary.interrupted:
        _property(properties, "interrupted", summary.interrupted)
    for key, value in host.items():
        _property(properties, f"host.{key}", value)
    repeated = {(g.name, g.path) for g in group_results(summary.results) if g.repeated}
    for result in summary.results:
        repeat = (result.name, result.path) in repeated
        _testcase(suite, result, repeat, summary.bases)
    return root


def _property(parent, name, value) -> None:
    ET.SubElement(parent, "property", {"name": xml_text(name), "value": xml_text(value)})


def _testcase(suite, result, repeated: bool, bases) -> None:
    name = result.name + (f" [repeat {result.repeat + 1}]" if repeated else "")
    file = relative_path(result.path, bases)
    attributes = {
        "classname": xml_text(classname(file)),
        "name": xml_text(name),
        "file": xml_text(file),
        "time": _time(result.elapsed),
    }
    if result.line:
        attributes["line"] = str(result.line)
    case = ET.SubElement(suite, "testcase", attributes)
    if result.status is Status.FAIL:
        failure = ET.SubElement(case, "failure", {"type": "mismatch"})
        failure.set("message", xml_text(_failure_message(result)))
        failure.text = xml_text(_failure_text(result))
    elif result.status is Status.ERROR:
        kind = "timeout" if result.timed_out else "error"
        error = ET.SubElement(case, "error", {"type": kind})
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
        expected, observed = m.sides
        lines.append(f"  {expected + ':':<18} {m.show(m.expected)}")
        lines.append(f"  {observed + ':':<18} {m.show(m.observed)}")
        anchors = [rules.link(r) or r for r in rules.rules_for(m.field, result.rules)]
        lines.append(f"  rules: {', '.join(anchors)}")
    if result.outcomes:
        lines.append("outcomes: " + summary_line(result.outcomes, result.allowed))
    if result.message:
        lines.append(str(result.message))
    return "\n".join(lines)


def _time(seconds) -> str:
    """Seconds as JUnit wants them: a plain non-negative decimal, to the millisecond."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        value = 0.0
    return f"{value:.3f}" if math.isfinite(value) and value > 0 else "0.000"
