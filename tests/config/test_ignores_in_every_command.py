"""One config file means the same to `advise`, the hook and the daemon:
[daemon] disabled_rules and [domains.NAME] ignore silence a rule in all
three (the hook's own test, against the private journald, is in
tests/hook/test_hook.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon.scenarios import Scenario, intx_rows
from vfio_advisor.config import load_config

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples/demo-host"


def advise(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vfio_advisor", "advise", "--connect",
                           f"test://{DEMO / 'node.xml'}", "--host-root", str(DEMO / "root"),
                           "--format", "json", *args],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, NO_COLOR="1"))


def rules_of(out: subprocess.CompletedProcess, domain: str) -> list[str]:
    doc = json.loads(out.stdout)
    (dom,) = [d for d in doc["domains"] if d["name"] == domain]
    return sorted({f["rule"] for f in dom["findings"]} | {f["rule"] for d in dom["devices"]
                                                          for f in d["findings"]})


@pytest.mark.parametrize("config,win11,oldbox", [
    # VA1002 builds on VA1001: silencing VA1001 (the next two rows) silences it too
    ("", ["VA1001", "VA1002"], ["VA2003", "VA4001", "VA5001", "VA5002"]),
    ('[daemon]\ndisabled_rules = ["VA1001", "guest-intx-line-shared"]\n',
     [], ["VA2003", "VA4001", "VA5002"]),
    ('[domains.win11]\nignore = ["msi-capable-device-on-intx"]\n[domains.oldbox]\nignore = ["VA4001"]\n',
     [], ["VA2003", "VA5001", "VA5002"]),
])
def test_advise_config_disables_and_ignores(tmp_path, config, win11, oldbox):
    path = tmp_path / "config.toml"
    path.write_text(config)
    out = advise("--config", str(path))
    assert out.returncode in (0, 1), out.stderr
    assert rules_of(out, "win11") == win11
    assert rules_of(out, "oldbox") == oldbox


def test_advise_config_errors_are_one_line(tmp_path):
    out = advise("--config", str(tmp_path / "missing.toml"))
    assert out.returncode == 2 and "not found" in out.stderr and "Traceback" not in out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\ndisabled_rules = 'VA1001'\n")
    out = advise("--config", str(bad))
    assert out.returncode == 2 and "disabled_rules must be a list" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("config,expect", [
    ("", True),
    ('[daemon]\ndisabled_rules = ["stays-on-intx"]\n', False),
    ('[domains.win11]\nignore = ["VA6001"]\n', False),
    ('[domains.other]\nignore = ["VA6001"]\n', True),
])
def test_daemon_config_disables_and_ignores(tmp_path, config, expect):
    path = tmp_path / "config.toml"
    path.write_text(config)
    s = Scenario(tmp_path, config=load_config(str(path)))
    s.at(0, intx_rows(1000))
    s.at(65, intx_rows(2000))
    found = [e["rule"] for e in s.emitted]
    assert ("VA6001" in found) is expect, found


@pytest.mark.parametrize("config", [
    '[daemon]\ndisabled_rules = ["VA1001"]\n',
    '[domains.win11]\nignore = ["msi-capable-device-on-intx"]\n',
])
def test_daemon_silences_a_rule_that_builds_on_a_silenced_one(tmp_path, config):
    """The daemon decides through the same IgnorePolicy (Watcher._ignored) as
    advise and the hook: VA1002 (no agent channel) builds on VA1001."""
    plain = Scenario(tmp_path / "plain")
    path = tmp_path / "config.toml"
    path.write_text(config)
    s = Scenario(tmp_path / "silenced", config=load_config(str(path)))
    dom = s.watcher.domains["win11"]
    assert not plain.watcher._ignored(plain.watcher.domains["win11"], "VA1002")
    assert s.watcher._ignored(dom, "VA1001") and s.watcher._ignored(dom, "VA1002")
