"""Bad values in the config file are one-line usage errors of the daemon.

Filed by subject from a code review's regressions: each test reproduces one
defect found."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, NO_COLOR="1"), **kw)


@pytest.mark.parametrize("toml, words", [
    ("[daemon]\ndisabled_rules = 5\n", "disabled_rules must be a list"),
    ('[daemon]\ndisabled_rules = "VA6001"\n', "disabled_rules must be a list"),
    ('domains = "x"\n', "[domains] must be a table"),
    ("[daemon]\nsettle = nan\n", "settle must be >= 0 s, not nan"),
])
def test_bad_daemon_config_values(tmp_path, toml, words):
    config = tmp_path / "c.toml"
    config.write_text(toml)
    out = cli("daemon", "--connect", "test:///default", "--config", str(config))
    assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr
