"""install: never replace another hook; paths with backslash, space and percent survive the hook and unit.

Filed by subject from a code review's regressions: each test reproduces one
defect found."""

from __future__ import annotations

import os
import subprocess
import sys


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, NO_COLOR="1"), **kw)


def test_classic_install_never_replaces_someone_elses_hook(tmp_path):
    hook = tmp_path / "etc/libvirt/hooks/qemu"
    hook.parent.mkdir(parents=True)
    hook.write_text("#!/bin/sh\n# my GPU passthrough hook\n")
    out = cli("install", "--root", str(tmp_path), "--classic")
    assert out.returncode == 2 and "not replacing" in out.stderr
    assert "my GPU passthrough hook" in hook.read_text()


def test_install_paths_with_backslash_space_and_percent(tmp_path):
    from vfio_advisor.install import render_hook, render_unit

    python = r"/opt/my venv %i/b\in/python"
    unit = render_unit(python)
    assert 'ExecStart="/opt/my venv %%i/b\\\\in/python" -m vfio_advisor daemon' in unit
    hook = render_hook(python, "/etc/x y/config.toml")
    assert "VFIO_ADVISOR_PYTHON='/opt/my venv %i/b\\in/python'" in hook
    assert "VFIO_ADVISOR_CONFIG='/etc/x y/config.toml'" in hook
