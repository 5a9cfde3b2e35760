"""`python -m kvmtest.matrix ...`: what ci/boot-kernel and ci/kernel-matrix run."""

import sys

from kvmtest.matrix.cli import standalone

sys.exit(standalone())
