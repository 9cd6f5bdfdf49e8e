"""The daemon's systemd unit: verified offline and hardened."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vfio_advisor.install import render_unit

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd/vfio-advisor.service"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze not installed")


@pytest.fixture
def rendered(tmp_path):
    path = tmp_path / "vfio-advisor.service"
    path.write_text(render_unit(sys.executable))
    return path


def test_checked_in_unit_is_the_packaged_one():
    packaged = REPO / "vfio_advisor/data/vfio-advisor.service"
    assert UNIT.read_text() == packaged.read_text()


def test_unit_facts():
    text = UNIT.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text
    assert "AmbientCapabilities=CAP_SYS_ADMIN" in text
    # both break what the daemon reads (platform notes)
    assert not re.search(r"^PrivateUsers=yes", text, re.M)
    assert not re.search(r"^ProcSubset=pid", text, re.M)


def test_systemd_analyze_verify_is_silent(rendered):
    # verify also runs man(1) on each man: Documentation= (systemd 252,
    # analyze-verify.c): MANPATH points it at the page the package ships.
    from vfio_advisor.manpage import render as render_manpage

    man8 = rendered.parent / "man/man8"
    man8.mkdir(parents=True)
    (man8 / "vfio-advisor.8").write_text(render_manpage())
    out = subprocess.run(["systemd-analyze", "verify", str(rendered)], capture_output=True,
                         text=True, cwd=rendered.parent, env={**os.environ, "MANPATH": str(man8.parent)})
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""


def test_security_exposure_at_most_1_5(rendered):
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(rendered)],
                         capture_output=True, text=True, cwd=rendered.parent)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", out.stdout)
    assert m, out.stdout[-500:] + out.stderr
    assert float(m.group(1)) <= 1.5, out.stdout
