"""The tree builder moved to vfio_advisor/testing/hosttree.py (public, so the
demo host and the benchmarks need not import tests/); kept for imports."""

from vfio_advisor.testing.hosttree import *  # noqa: F401,F403
from vfio_advisor.testing.hosttree import (  # noqa: F401
    CONFIGS, CORPUS, DATA, INTERRUPT_CAPTURES, UNPRIVILEGED_CONFIG_BYTES, load_dump,
)
