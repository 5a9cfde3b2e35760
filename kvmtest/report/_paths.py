"""Trace paths as the machine-readable reports show them: relative, and stable across hosts.

A path is shown relative to the first of the run's bases (RunSummary.bases) that contains it,
with '/' separators; a path under none of them stays as it is. "file:line" locations are split
into the file and the line, and a trace's JUnit classname comes from the directory of its
relative path ("kvmtest/corpus/msi-init-sipi.yaml" -> "kvmtest.corpus").
"""

import os

DEFAULT_CLASSNAME = "kvmtest.traces"


def relative_path(path, bases=()) -> str:
    text = str(path)
    if not text:
        return text
    absolute = os.path.abspath(text)
    for base in bases:
        try:
            inside = os.path.commonpath([absolute, base]) == base
        except ValueError:  # different drives, or a mix of absolute and relative
            continue
        if inside:
            return os.path.relpath(absolute, base).replace(os.sep, "/")
    return text.replace(os.sep, "/")


def split_location(location) -> tuple[str, int | None]:
    """'path/to/file.yaml:17' -> ('path/to/file.yaml', 17); no line: (location, None)."""
    text = str(location)
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit() and head:
        return head, int(tail)
    return text, None


def classname(relative: str) -> str:
    """The directory of a relative trace path, dotted; DEFAULT_CLASSNAME when it has none."""
    directory = os.path.dirname(relative.replace("\\", "/"))
    parts = [p.replace(".", "_") for p in directory.split("/") if p and p not in (".", "..")]
    return ".".join(parts) or DEFAULT_CLASSNAME
