"""A rule name that no rule answers to, in the config or in a domain's own
<metadata>, silences nothing. It is said, with the nearest real ID or slug:

- config ([daemon] disabled_rules, [domains.NAME] ignore): a one-line usage
  error in `advise` and the daemon (at start; a SIGHUP reload keeps the old
  config); in the hook a VA9001 entry, and the rest of the file still holds;
- a domain's <metadata> ignore: a warning line in every command (VA9001 in
  the hook), never an error: the domain XML is the user's and must not stop
  advice or a VM start.

The nearest names below are written out, not computed with the product's
own difflib call: they are what a user who made the typo expects to read.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.hook.test_hook import LAB_ERROR_ROOT, LAB_ERROR_XML, call, installed, libvirt_xml  # noqa: F401 - fixture
from vfio_advisor.config import load_config, parse_config
from vfio_advisor.errors import UsageError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples/demo-host"
METADATA = ("<metadata><vfio-advisor:advisor xmlns:vfio-advisor='urn:x-vfio-advisor:domain:1'>"
            "<vfio-advisor:ignore rule='{rule}'/></vfio-advisor:advisor>")


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, NO_COLOR="1"))


def advise(*args: str) -> subprocess.CompletedProcess:
    return cli("advise", "--connect", f"test://{DEMO / 'node.xml'}", "--host-root", str(DEMO / "root"),
               *args)


@pytest.mark.parametrize("toml, where, nearest", [
    ('[daemon]\ndisabled_rules = ["VA9999"]\n', "[daemon] disabled_rules", "VA9002"),
    ('[daemon]\ndisabled_rules = ["msi-capabel-device-on-intx"]\n', "[daemon] disabled_rules",
     "msi-capable-device-on-intx"),
    ('[domains.win11]\nignore = ["VA1001", "va6001"]\n', "[domains.win11] ignore", "VA6001"),
    ('[domains.win11]\nignore = ["storm"]\n', "[domains.win11] ignore", "intx-storm"),
])
def test_unknown_names_are_a_usage_error_naming_the_nearest(toml, where, nearest):
    """"va6001" is unknown too: names match exactly (Rule.named_in), so it
    would silence nothing."""
    import tomllib

    with pytest.raises(UsageError) as err:
        parse_config(tomllib.loads(toml), "c.toml")
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"config file c.toml: {where}: unknown rule")
    assert re.search(rf"nearest: {re.escape(nearest)}\b", line), line


def test_every_real_name_and_every_unknown_one_is_said():
    import tomllib

    from vfio_advisor.rules import RULES

    names = [r.id for r in RULES] + [r.slug for r in RULES]
    cfg = parse_config(tomllib.loads(f"[daemon]\ndisabled_rules = {names!r}\n".replace("'", '"')))
    assert cfg.disabled == frozenset(names)
    with pytest.raises(UsageError) as err:
        parse_config(tomllib.loads('[daemon]\ndisabled_rules = ["VA1001", "VA9999"]\n'
                                   '[domains.a]\nignore = ["nonsense-rule-xyz"]\n'))
    assert '"VA9999"' in str(err.value) and '"nonsense-rule-xyz"' in str(err.value)
    assert '"VA1001"' not in str(err.value)


def test_the_hook_loads_the_rest_of_the_file_past_an_unknown_name(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[daemon]\ndisabled_rules = ["VA1001", "VA9999"]\n[hook]\nblock_on_error = true\n')
    cfg = load_config(str(path), strict=False)
    assert cfg.disabled == {"VA1001", "VA9999"} and cfg.hook_block_on_error


# --- advise -------------------------------------------------------------------

def test_advise_refuses_an_unknown_rule_in_one_line(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[domains.win11]\nignore = ["msi-capabel-device-on-intx"]\n')
    out = advise("--config", str(config))
    assert out.returncode == 2, out.stdout
    assert out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"vfio-advisor: config file {config}: [domains.win11] ignore: unknown rule "
                           '"msi-capabel-device-on-intx"')
    assert "nearest: msi-capable-device-on-intx (VA1001)" in line


def test_advise_warns_of_an_unknown_rule_in_the_domains_metadata(tmp_path):
    """The advice itself is unchanged: the metadata's typo silences nothing,
    VA1001 is still there, and the exit status is the advice's. The typo is a
    doubled digit: VA1100 ties VA1001 and VA1002 by difflib's ratio."""
    xml = (DEMO / "node.xml").read_text()
    win11 = xml[xml.index("<domain"):xml.index("</domain>") + len("</domain>")]
    assert "<name>win11</name>" in win11
    path = tmp_path / "win11.xml"
    path.write_text(win11.replace("<metadata>", METADATA.format(rule="VA10001"), 1))
    out = cli("advise", "--xml", str(path), "--host-root", str(DEMO / "root"))
    assert out.returncode == 1, out.stderr  # VA1001, a warning
    assert "VA1001" in out.stdout
    assert out.stderr.splitlines() == [
        'vfio-advisor: warning: win11: <metadata> ignore: unknown rule "VA10001", nearest: VA1001 '
        "(msi-capable-device-on-intx); it silences nothing"]


# --- the daemon ---------------------------------------------------------------

def test_daemon_refuses_an_unknown_rule_at_start(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[daemon]\ndisabled_rules = ["VA9999"]\n')
    out = cli("daemon", "--connect", "test:///default", "--config", str(config), "--state-dir",
              str(tmp_path / "state"), timeout=30)
    assert out.returncode == 2
    (line,) = out.stderr.splitlines()
    assert line == (f'vfio-advisor: config file {config}: [daemon] disabled_rules: unknown rule "VA9999", '
                    "nearest: VA9002 (run-summary)")


def _wait_for(proc, err_path: Path, text: str, timeout: float = 30) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        err = err_path.read_text()
        if text in err:
            return err
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged; stderr: {err_path.read_text()}")


def test_daemon_reload_keeps_the_old_config_and_warns_of_metadata(tmp_path):
    """A running daemon: a SIGHUP with a misspelt rule keeps the config it
    has (one line naming the nearest), and a followed domain whose
    <metadata> names an unknown rule gets a warning line. Without a journald
    socket (make test hides the host's) the daemon logs to stderr."""
    node = (DEMO / "node.xml").read_text().replace("<metadata>", METADATA.format(rule="stays-on-intz"), 1)
    (tmp_path / "node.xml").write_text(node)
    config = tmp_path / "config.toml"
    config.write_text("[daemon]\ninterval = 0.2\n")
    err_path = tmp_path / "stderr"
    with open(err_path, "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "vfio_advisor", "daemon", "--connect",
                                 f"test://{tmp_path / 'node.xml'}", "--host-root", str(DEMO / "root"),
                                 "--config", str(config), "--state-dir", str(tmp_path / "state")],
                                stdout=subprocess.DEVNULL, stderr=err_file, text=True,
                                env=dict(os.environ, NO_COLOR="1"))
    try:
        if os.path.exists("/run/systemd/journal/socket"):
            pytest.skip("a journald socket is reachable: the daemon logs there, not to stderr")
        err = _wait_for(proc, err_path, "started: watching")
        warned = [line for line in err.splitlines() if "<metadata>" in line]
        assert warned == ['vfio-advisor: win11: <metadata> ignore: unknown rule "stays-on-intz", nearest: '
                          "stays-on-intx (VA6001); it silences nothing"], err
        config.write_text('[daemon]\ninterval = 0.2\ndisabled_rules = ["msi-to-intx-regresion"]\n')
        proc.send_signal(signal.SIGHUP)
        err = _wait_for(proc, err_path, "reload failed")
        (line,) = [x for x in err.splitlines() if "reload failed" in x]
        assert line == (f"vfio-advisor: reload failed, keeping the old config: config file {config}: "
                        '[daemon] disabled_rules: unknown rule "msi-to-intx-regresion", nearest: '
                        "msi-to-intx-regression (VA6003)")
        assert proc.poll() is None  # still running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0
    assert "Traceback" not in err_path.read_text()


# --- the hook (a real private journald, tests/support/journal.py) -----------

def test_hook_says_an_unknown_rule_as_va9001_and_keeps_the_rest(installed, tmp_path):  # noqa: F811
    """The config's other settings hold: VA1001 stays disabled, and
    block_on_error stays on, yet the VA9001 (an error-level entry) does not
    block the start."""
    _, _, config = installed
    config.write_text(config.read_text() + "block_on_error = true\n"
                      '[daemon]\ndisabled_rules = ["VA1001", "VA9999"]\n')
    run = call(installed, tmp_path, "win11", stdin=libvirt_xml("win11"))
    assert run.rc == 0
    assert not run.by_rule("VA1001")
    (entry,) = run.by_rule("VA9001")
    assert entry["MESSAGE"].endswith(f'config file {config}: [daemon] disabled_rules: unknown rule "VA9999", '
                                     "nearest: VA9002 (run-summary)"), entry["MESSAGE"]
    assert "config ignored" not in entry["MESSAGE"]
    # block_on_error still holds for a real error finding: VA2002 on the
    # lab's nointxmask-after capture (the kernel's own EBUSY), the same config
    # with the unknown name in it.
    config.write_text(f'[hook]\nhost_root = "{LAB_ERROR_ROOT}"\nblock_on_error = true\n'
                      '[daemon]\ndisabled_rules = ["VA1001", "VA9999"]\n')
    run = call(installed, tmp_path, "lab-shared", stdin=LAB_ERROR_XML, work="lab")
    assert run.rc == 1 and run.by_rule("VA2002") and run.by_rule("VA9001")


def test_hook_says_an_unknown_rule_in_the_domains_metadata(installed, tmp_path):  # noqa: F811
    _, _, config = installed
    config.write_text(config.read_text() + "block_on_error = true\n")
    xml = libvirt_xml("win11").decode()
    xml = xml.replace("<metadata>", METADATA.format(rule="VA1O01"), 1)
    run = call(installed, tmp_path, "win11", stdin=xml.encode())
    assert run.rc == 0
    assert run.by_rule("VA1001")  # silenced nothing
    (entry,) = run.by_rule("VA9001")
    assert entry["MESSAGE"].endswith('win11: <metadata> ignore: unknown rule "VA1O01", nearest: VA1001 '
                                     "(msi-capable-device-on-intx); it silences nothing"), entry["MESSAGE"]


def test_hook_says_a_misspelt_key_as_va9001_and_keeps_the_rest(installed, tmp_path):  # noqa: F811
    """'[hook] blocks_on_error = true' would leave blocking off without a
    word; the hook names it and still applies the file's valid settings."""
    _, _, config = installed
    config.write_text(config.read_text() + "blocks_on_error = true\n"
                      '[daemon]\ndisabled_rules = ["VA1001"]\n')
    run = call(installed, tmp_path, "win11", stdin=libvirt_xml("win11"))
    assert run.rc == 0
    assert not run.by_rule("VA1001")
    (entry,) = run.by_rule("VA9001")
    assert entry["MESSAGE"].endswith(f'config file {config}: [hook] unknown key "blocks_on_error", '
                                     "nearest: block_on_error"), entry["MESSAGE"]
