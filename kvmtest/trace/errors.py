"""The trace layer's error type: always names the file and line, never needs a traceback."""


class TraceError(Exception):
    """A malformed trace (or a trace this host cannot run) at file:line."""

    def __init__(self, path: str, line: int | None, reason: str):
        self.path, self.line, self.reason = path, line, reason
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {reason}")
