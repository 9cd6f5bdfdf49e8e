"""python -m vfio_advisor.fix ARGS: the same as `vfio-advisor fix ARGS`."""

import sys

from vfio_advisor.cli import main

sys.exit(main(["fix", *sys.argv[1:]]))
