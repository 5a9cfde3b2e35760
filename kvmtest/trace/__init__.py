"""Traces: the public API.

    trace = load_trace("kvmtest/corpus/msi-init-sipi.yaml")   # or built in code from kvmtest.ops
    text = dump_trace(trace)                                  # YAML that loads back equal
    result = run_trace(trace, "mainline", HostContext("reference"))

A malformed file raises TraceError (file, line, reason); run_trace never raises for a problem
in the trace or the host: it returns a TraceResult with status PASS, FAIL, ERROR or SKIP.
"""

from .dump import dump_trace
from .engine import HostContext, run_trace
from .errors import TraceError
from .load import find_trace_files, load_trace, parse_trace
from .result import Mismatch, Status, TraceResult

__all__ = [
    "HostContext",
    "Mismatch",
    "Status",
    "TraceError",
    "TraceResult",
    "dump_trace",
    "find_trace_files",
    "load_trace",
    "parse_trace",
    "run_trace",
]
