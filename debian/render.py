#!/usr/bin/python3
"""Render the packaged files from the program (debian/rules calls it):
   render.py OUTDIR DEBIAN_VERSION
OUTDIR/qemu-hook, config.toml, vfio-advisor.catalog, vfio-advisor.8, and
vfio-advisor.service (the unit dh_installsystemd installs is the same text,
checked here). Refuses when the package version is not __version__."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vfio_advisor import __version__  # noqa: E402
from vfio_advisor.catalog import render_catalog  # noqa: E402
from vfio_advisor.install import DEFAULT_CONFIG_TEXT, render_hook, render_unit  # noqa: E402
from vfio_advisor.manpage import render as render_manpage  # noqa: E402

out, version = Path(sys.argv[1]), sys.argv[2]
if version != __version__:
    sys.exit(f"debian/changelog says {version}, vfio_advisor.__version__ is {__version__}: "
             "add a changelog entry (dch -v " + __version__ + ")")
unit = render_unit()
if "ExecStart=/usr/bin/vfio-advisor daemon" not in unit:
    sys.exit("the packaged unit must run /usr/bin/vfio-advisor")
if Path("debian/vfio-advisor.service").read_text() != unit:
    sys.exit("debian/vfio-advisor.service is not vfio_advisor/data/vfio-advisor.service")
out.mkdir(parents=True, exist_ok=True)
(out / "qemu-hook").write_text(render_hook("/usr/bin/python3", "/etc/vfio-advisor/config.toml",
                                           "/usr/lib/python3/dist-packages"))
(out / "config.toml").write_text(DEFAULT_CONFIG_TEXT)
(out / "vfio-advisor.catalog").write_text(render_catalog())
(out / "vfio-advisor.8").write_text(render_manpage())
