"""Reporters: pure functions from a RunSummary (kvmtest.trace.result) to text.

- render_text: the human report, aligned lines and a compact diff per mismatch
- render_ktap: KTAP version 1 for kselftest runners and KernelCI
- render_json: one JSON document for machines
- render_junit / write_junit: JUnit XML for CI front ends
- Progress: a live line on stderr, only when stderr is a terminal
"""

from .json_report import render_json, write_json
from .junit import render_junit, write_junit
from .ktap import KtapStream, render_ktap
from .markdown import render_markdown
from .progress import Progress
from .text import render_text

__all__ = [
    "KtapStream",
    "Progress",
    "render_json",
    "render_junit",
    "render_ktap",
    "render_markdown",
    "render_text",
    "write_json",
    "write_junit",
]
