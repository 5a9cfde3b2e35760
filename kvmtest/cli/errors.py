"""The command line's one table of exit codes, and the error it turns into EXIT_USAGE.

UsageError is the suite layer's (kvmtest.suite): bad arguments or input, reported as one line
on stderr.
"""

from kvmtest.suite import UsageError  # noqa: F401  (re-exported for the commands)

# kselftest's codes where they mean the same thing (0 pass, 1 fail, 4 skip); README and
# --help list them from here.
EXIT_PASS = 0  # everything judged passed
EXIT_FAIL = 1  # a mismatch, an error, or (doctor) only reference-only mode is possible
EXIT_USAGE = 2  # bad usage, or a malformed or unreadable input file
EXIT_SKIP = 4  # nothing was judged: everything skipped
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
