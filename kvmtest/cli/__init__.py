"""The command line: argument parsing, one table of exit codes, every error on stderr."""

from .main import main

__all__ = ["main"]
