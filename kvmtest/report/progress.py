"""A live progress line on stderr while traces run, only when stderr is a terminal.

    [ 37/120] pass 35 fail 1 err 0 skip 1  msi-init-sipi

Redrawn in place with '\\r' after every result; traces finish on several threads, so every
update holds a lock. When the stream is not a terminal (a pipe, a CI log, a file) the object
does nothing at all: no output, no state.
"""

import shutil
import sys
import threading

from kvmtest.trace.result import Status

from ._format import one_line


def format_progress(done: int, total: int, counts: dict, name: str = "") -> str:
    """The progress line for `done` of `total` results, `counts` by Status (pure)."""
    width = len(str(total))
    line = (
        f"[{done:>{width}}/{total}] pass {counts.get(Status.PASS, 0)} "
        f"fail {counts.get(Status.FAIL, 0)} err {counts.get(Status.ERROR, 0)} "
        f"skip {counts.get(Status.SKIP, 0)}"
    )
    return f"{line}  {one_line(name)}" if name else line


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class Progress:
    """`Progress(total)` then `advance(result)` per finished trace and `close()` at the end.

    `stream` defaults to sys.stderr as it is when the object is made. Usable as a context
    manager, which closes it.
    """

    def __init__(self, total: int, stream=None):
        self.stream = sys.stderr if stream is None else stream
        self.total = total
        self.enabled = _is_tty(self.stream)
        self._lock = threading.Lock()
        self._done = 0
        self._counts: dict = {}
        self._shown = 0  # length of the line on screen, to blank it out

    def advance(self, result) -> None:
        """Count one finished result and redraw the line."""
        if not self.enabled:
            return
        with self._lock:
            self._done += 1
            self._counts[result.status] = self._counts.get(result.status, 0) + 1
            line = format_progress(self._done, self.total, self._counts, result.name)
            self._draw(line[: self._columns()])

    def close(self) -> None:
        """Erase the line, leaving the terminal as it was; later calls do nothing."""
        if not self.enabled:
            return
        with self._lock:
            if self._shown:
                self._draw("")
                self.stream.write("\r")
                self.stream.flush()
            self.enabled = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _draw(self, line: str) -> None:
        padding = " " * max(self._shown - len(line), 0)
        self.stream.write("\r" + line + padding)
        self.stream.flush()
        self._shown = len(line)

    @staticmethod
    def _columns() -> int:
        return max(shutil.get_terminal_size(fallback=(80, 24)).columns - 1, 20)
