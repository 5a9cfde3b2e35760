"""Traces: the public API.

    trace = load_trace("kvmtest/corpus/msi-init-sipi.yaml")   # or built in code from kvmtest.ops
    text = dump_trace(trace)                                  # YAML that loads back equal
    result = run_trace(trace, "mainline", HostContext("reference"))

A malformed file raises TraceError (file, line, reason); run_trace never raises for a problem
in the trace or the host: it returns a TraceResult with status PASS, FAIL, ERROR or SKIP.
"""

import importlib

# name -> the module of this package that defines it. Each is imported when first asked for
# (PEP 562), so `kvmtest record` writes a trace without importing the engine.
_HOMES = {
    "dump_trace": "dump",
    "HostContext": "engine",
    "run_trace": "engine",
    "TraceError": "errors",
    "find_trace_files": "load",
    "load_trace": "load",
    "parse_trace": "load",
    "Mismatch": "result",
    "Status": "result",
    "TraceResult": "result",
}


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        try:
            return importlib.import_module(f".{name}", __name__)  # a submodule
        except ModuleNotFoundError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


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
