"""The progress line: drawn with '\\r' on a terminal, silent otherwise, safe across threads."""

import io
import re
import threading

from kvmtest.report import Progress
from kvmtest.report.progress import format_progress
from kvmtest.trace.result import Status
from tests.report import samples

FRAME = re.compile(r"^\[ *\d+/400\] pass \d+ fail \d+ err \d+ skip \d+  t\d-\d+ *$")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_format_progress():
    counts = {Status.PASS: 35, Status.FAIL: 1, Status.SKIP: 1}
    line = format_progress(37, 120, counts, "trace-name")
    assert line == "[ 37/120] pass 35 fail 1 err 0 skip 1  trace-name"
    assert format_progress(0, 3, {}) == "[0/3] pass 0 fail 0 err 0 skip 0"


def test_silent_when_not_a_terminal():
    stream = io.StringIO()
    progress = Progress(2, stream=stream)
    assert not progress.enabled
    progress.advance(samples.result("a", Status.PASS))
    progress.close()
    assert stream.getvalue() == ""


def test_closed_or_odd_streams_count_as_not_a_terminal():
    closed = io.StringIO()
    closed.close()
    assert not Progress(1, stream=closed).enabled
    assert not Progress(1, stream=object()).enabled


def test_redraws_in_place_and_erases_on_close():
    stream = Terminal()
    with Progress(3, stream=stream) as progress:
        progress.advance(samples.result("long-trace-name", Status.PASS))
        progress.advance(samples.result("b", Status.FAIL))
    out = stream.getvalue()
    frames = out.split("\r")[1:]
    assert frames[0] == "[1/3] pass 1 fail 0 err 0 skip 0  long-trace-name"
    assert frames[1].rstrip() == "[2/3] pass 1 fail 1 err 0 skip 0  b"
    assert len(frames[1]) == len(frames[0])  # padded over the longer previous line
    assert frames[2].strip() == "" and frames[3] == ""  # blanked, cursor back at column 0
    progress.advance(samples.result("c", Status.PASS))
    assert stream.getvalue() == out  # closed: nothing more


def test_thread_safe_counts():
    stream = Terminal()
    progress = Progress(400, stream=stream)
    statuses = [Status.PASS, Status.FAIL, Status.ERROR, Status.SKIP]

    def work(n):
        for i in range(50):
            progress.advance(samples.result(f"t{n}-{i}", statuses[i % 4]))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    frames = stream.getvalue().split("\r")[1:]
    assert len(frames) == 400
    assert all(FRAME.match(frame) for frame in frames)  # no line torn by another thread
    assert [int(frame[1:4]) for frame in frames] == list(range(1, 401))
    assert frames[-1].startswith("[400/400] pass 104 fail 104 err 96 skip 96  t")
    progress.close()
