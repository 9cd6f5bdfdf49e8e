"""python -m vfio_advisor.fix ARGS: the `fix` command before cli.py wires it."""

import sys

from vfio_advisor.fix.command import main

sys.exit(main())
