"""Build hook for the optional cffi extension; all metadata lives in pyproject.toml.

The /dev/kvm binding is compiled against <linux/kvm.h>. Where that header is missing (macOS, a
container without linux-libc-dev) the package still installs, for reference-only use, and
`kvmtest.kvm` says plainly that the binding is absent.
"""

import os
import sys

from setuptools import setup


def kvm_header_present() -> bool:
    if not sys.platform.startswith("linux") or os.environ.get("KVMTEST_NO_BINDING"):
        return False
    include_dirs = ["/usr/include", "/usr/local/include"] + os.environ.get("CPATH", "").split(":")
    return any(os.path.exists(os.path.join(d, "linux", "kvm.h")) for d in include_dirs if d)


if kvm_header_present():
    setup(cffi_modules=["kvmtest/kvm/_build.py:ffibuilder"])
else:
    print(
        "kvmtest: <linux/kvm.h> not found; installing without the /dev/kvm binding", file=sys.stderr
    )
    setup()
