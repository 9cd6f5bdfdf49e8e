"""`vfio-advisor install` from a clone, the hook template, and the package's
version. (The installed result runs under a real systemd in tests/system.)"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vfio_advisor import __version__
from vfio_advisor.install import (DEFAULT_CONFIG_TEXT, LIB, base_interpreter, render_hook,
                                  render_metrics_dropin)

REPO = Path(__file__).resolve().parents[1]


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True, text=True,
                          timeout=120, **kw)


def test_debian_version_is_the_program_version():
    first = (REPO / "debian/changelog").read_text().splitlines()[0]
    m = re.match(r"vfio-advisor \(([^)]+)\) ", first)
    assert m and m.group(1) == __version__, f"debian/changelog {first!r} vs __version__ {__version__}"


def test_package_hook_is_the_template_as_it_is():
    """One template: its defaults are the package's paths, and rendering it
    with them changes nothing but quoting."""
    template = (REPO / "vfio_advisor/data/qemu-hook.sh").read_text()
    rendered = render_hook("/usr/bin/python3", "/etc/vfio-advisor/config.toml",
                           "/usr/lib/python3/dist-packages")
    assert rendered.replace("'", "") == template.replace("'", "")
    assert "VFIO_ADVISOR_LIB='/usr/lib/python3/dist-packages'" in rendered


@pytest.mark.parametrize("op", [("prepare", "begin"), ("start", "begin")])
def test_hook_does_nothing_once_the_program_is_gone(tmp_path, op):
    """After `apt remove` the conffile stays; it must not run a missing program."""
    marker = tmp_path / "ran"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake.chmod(0o755)
    hook = tmp_path / "hook"
    hook.write_text(render_hook(str(fake), "/nonexistent.toml", str(tmp_path / "removed")))
    hook.chmod(0o755)
    out = subprocess.run([str(hook), "dom", *op, "-"], input="<domain/>", capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == out.stderr == ""
    assert not marker.exists()
    # and with the program present, it runs it
    (tmp_path / "removed/vfio_advisor").mkdir(parents=True)
    (tmp_path / "removed/vfio_advisor/hook.py").write_text("")
    subprocess.run([str(hook), "dom", *op, "-"], input=b"<domain/>", capture_output=True)
    assert marker.exists() == (op[0] == "prepare")


def test_clone_install_copies_what_the_daemon_imports(tmp_path):
    root = tmp_path / "root"
    (root / "etc/vfio-advisor").mkdir(parents=True)
    (root / "etc/vfio-advisor/config.toml").write_text(
        DEFAULT_CONFIG_TEXT.replace('# metrics_file = ', 'metrics_file = '))
    out = cli("install", "--root", str(root))
    assert out.returncode == 0, out.stderr
    lib = root / LIB
    assert (lib / "vfio_advisor/daemon.py").is_file()
    unit = (root / "etc/systemd/system/vfio-advisor.service").read_text()
    python = base_interpreter()
    assert f'ExecStart="{python}" -m vfio_advisor daemon' in unit
    assert f'Environment="PYTHONPATH=/{LIB}"' in unit
    assert str(REPO) not in unit and ".venv" not in unit
    # The copy alone is enough: the base interpreter, outside the clone and
    # its venv, imports everything the daemon needs from it or from the system.
    probe = ("import vfio_advisor.daemon, libvirt, libvirtaio, lxml.etree, systemd.daemon, sys;"
             "print(vfio_advisor.__file__); print(libvirt.__file__)")
    run = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd="/",
                         env={"PYTHONPATH": str(lib), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].startswith(str(lib))
    for path in run.stdout.splitlines():
        assert str(REPO) not in path, path
    dropin = (root / "etc/systemd/system/vfio-advisor.service.d/metrics.conf").read_text()
    assert 'ReadWritePaths="/var/lib/prometheus/node-exporter"' in dropin
    assert (root / "var/lib/prometheus/node-exporter").is_dir()
    out = cli("uninstall", "--root", str(root))
    assert out.returncode == 0 and not lib.exists()
    assert not (root / "etc/systemd/system/vfio-advisor.service.d/metrics.conf").exists()


@pytest.mark.parametrize("python", ["/root/.venv/bin/python", "/home/me/py/bin/python3"])
def test_refuses_an_interpreter_the_sandbox_hides(tmp_path, python):
    out = cli("install", "--root", str(tmp_path), "--python", python)
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1 and "ProtectHome=yes" in out.stderr, out.stderr
    assert not (tmp_path / "etc/systemd/system/vfio-advisor.service").exists()


def test_metrics_dropin_quotes_the_directory():
    text = render_metrics_dropin("/srv/m 100%/x.prom")
    assert 'ReadWritePaths="/srv/m 100%%"' in text
