"""The hook, run as libvirt runs it: installed by `vfio-advisor install`,
called as `qemu.d/vfio-advisor NAME OP SUBOP -` with only LC_ALL, PATH and
HOME in its environment and the domain XML on stdin, next to a real private
systemd-journald whose entries (and `journalctl -x` catalog text) we read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.journal import run_in_journal
from vfio_advisor.rules import RULES_BY_ID

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples/demo-host"
HOOK_ENV = ["env", "-i", "LC_ALL=C", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME=/root"]


def libvirt_xml(name: str) -> bytes:
    """The domain XML as libvirt formats it (the test driver uses the same
    virDomainDefFormat as libvirtd)."""
    import libvirt

    conn = libvirt.open(f"test://{DEMO / 'node.xml'}")
    try:
        return conn.lookupByName(name).XMLDesc(0).encode()
    finally:
        conn.close()


@pytest.fixture
def installed(tmp_path):
    """Hook, config and catalog installed under a private root."""
    root = tmp_path / "root"
    config = tmp_path / "hook-config.toml"  # the path the hook reads at run time
    out = subprocess.run([sys.executable, "-m", "vfio_advisor", "install", "--root", str(root),
                          "--config", str(config)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "restart" in out.stdout  # libvirtd only looks for hooks at its start
    config.write_text(f'[hook]\nhost_root = "{DEMO / "root"}"\n')
    hook = root / "etc/libvirt/hooks/qemu.d/vfio-advisor"
    assert os.access(hook, os.X_OK)
    return root, hook, config


def call(installed, tmp_path, name, op="prepare", subop="begin", stdin=b"", work="j"):
    root, hook, _ = installed
    return run_in_journal(tmp_path / work, [*HOOK_ENV, str(hook), name, op, subop, "-"],
                          stdin=stdin, catalog_db=root / "var/lib/systemd/catalog")


def test_prepare_logs_findings_with_fields_and_catalog(installed, tmp_path):
    run = call(installed, tmp_path, "win11", stdin=libvirt_xml("win11"))
    assert run.rc == 0
    (entry,) = run.by_rule("VA1001")
    rule = RULES_BY_ID["VA1001"]
    assert entry["SYSLOG_IDENTIFIER"] == "vfio-advisor"
    assert entry["MESSAGE_ID"] == rule.message_id
    assert entry["PRIORITY"] == "4"
    assert entry["VFIO_ADVISOR_DOMAIN"] == "win11"
    assert entry["VFIO_ADVISOR_DOMAIN_UUID"]
    assert entry["VFIO_ADVISOR_HOST_BDF"] == "0000:05:00.1"
    assert entry["VFIO_ADVISOR_GUEST_ADDRESS"] == "0000:03:00.1"
    assert entry["VFIO_ADVISOR_SOURCE"] == "hook"
    assert "MSISupported" in entry["VFIO_ADVISOR_REMEDY"]
    assert "win11 0000:05:00.1: VA1001" in entry["MESSAGE"]
    (summary,) = run.by_rule("VA9002")
    # VA1001 and VA1002 (info: win11 has no guest agent channel for `fix --guest`)
    assert summary["VFIO_ADVISOR_FINDINGS"] == "2" and summary["VFIO_ADVISOR_DEVICES"] == "2"
    # journalctl -x: the catalog entry, with the fields substituted
    assert "Subject: VA1001" in run.explained
    assert "vfio-pci starts every assigned device on INTx" in " ".join(run.explained.split())
    assert "Host device: 0000:05:00.1" in " ".join(run.explained.split())


# An error-level finding on a real kernel state: the lab's nointxmask-after
# capture, where the kernel refused the second edu's INTx with EBUSY
# ("genirq: Flags mismatch irq 23" in its dmesg), with the lab's domain.
LAB_ERROR_ROOT = REPO / "lab/captures/nointxmask-after"
LAB_ERROR_XML = (REPO / "tests/data/domains/lab/shared.xml").read_bytes()


def _on_lab_error_host(installed, extra: str = "") -> None:
    _, _, config = installed
    config.write_text(f'[hook]\nhost_root = "{LAB_ERROR_ROOT}"\n{extra}')


def test_warning_level_start_risk_on_the_demo(installed, tmp_path):
    """oldbox's SB Live! (PCI PM 1.0) only likely lacks INTx masking: a
    warning (VA2003), which never blocks."""
    run = call(installed, tmp_path, "oldbox", stdin=libvirt_xml("oldbox"))
    assert run.rc == 0
    (entry,) = run.by_rule("VA2003")
    assert entry["PRIORITY"] == "4"
    assert "Device or resource busy" in entry["MESSAGE"]
    assert not run.by_rule("VA2002")
    assert run.by_rule("VA4001")


def test_error_finding_priority_and_no_block_by_default(installed, tmp_path):
    _on_lab_error_host(installed)
    run = call(installed, tmp_path, "lab-shared", stdin=LAB_ERROR_XML)
    assert run.rc == 0
    (entry,) = run.by_rule("VA2002")
    assert entry["PRIORITY"] == "3"
    assert "Device or resource busy" in entry["MESSAGE"]


def test_block_on_error_is_opt_in(installed, tmp_path):
    _on_lab_error_host(installed, "block_on_error = true\n")
    run = call(installed, tmp_path, "lab-shared", stdin=LAB_ERROR_XML)
    assert run.rc == 1
    assert run.by_rule("VA2002")
    # a warning alone does not block
    _, _, config = installed
    config.write_text(f'[hook]\nhost_root = "{DEMO / "root"}"\nblock_on_error = true\n')
    run = call(installed, tmp_path, "oldbox", stdin=libvirt_xml("oldbox"), work="w")
    assert run.rc == 0 and run.by_rule("VA2003")
    # a healthy domain still starts
    run = call(installed, tmp_path, "nvme-linux", stdin=libvirt_xml("nvme-linux"), work="k")
    assert run.rc == 0


def recording_interpreter(tmp_path: Path) -> tuple[Path, Path]:
    """An interpreter that writes a line to a log each time it starts, then
    runs this Python: the evidence of whether the hook's shell front started
    Python at all (hook.py itself also ignores other operations, so the
    journal alone cannot tell)."""
    log = tmp_path / "python-started.log"
    python = tmp_path / "bin" / "recording-python"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    return python, log


@pytest.fixture
def recorded(tmp_path):
    """The hook installed with the recording interpreter."""
    python, log = recording_interpreter(tmp_path)
    root = tmp_path / "root"
    config = tmp_path / "hook-config.toml"
    out = subprocess.run([sys.executable, "-m", "vfio_advisor", "install", "--root", str(root),
                          "--config", str(config), "--python", str(python)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    config.write_text(f'[hook]\nhost_root = "{DEMO / "root"}"\n')
    log.unlink(missing_ok=True)  # install itself may have run it
    return (root, root / "etc/libvirt/hooks/qemu.d/vfio-advisor", config), log


def test_prepare_begin_starts_python(recorded, tmp_path):
    """The control for the next test: the recorder is the hook's interpreter."""
    installed, log = recorded
    run = call(installed, tmp_path, "win11", stdin=libvirt_xml("win11"))
    assert run.rc == 0 and run.by_rule("VA1001")
    assert log.read_text().splitlines() == [
        f"-m vfio_advisor.hook --config {tmp_path / 'hook-config.toml'} win11 prepare begin -"]


@pytest.mark.parametrize("op, subop", [("start", "begin"), ("started", "begin"), ("stopped", "end"),
                                       ("release", "end"), ("reconnect", "begin"),
                                       ("frobnicate", "now"), ("prepare", "end"), ("begin", "prepare")])
def test_other_operations_exit_from_the_shell_without_python(recorded, tmp_path, op, subop):
    installed, log = recorded
    run = call(installed, tmp_path, "win11", op, subop, stdin=libvirt_xml("win11"))
    assert run.rc == 0
    assert run.entries == []
    assert not log.exists(), f"Python started for {op} {subop}: {log.read_text()!r}"


@pytest.mark.parametrize("stdin, words", [
    (b"", "empty input"),
    (b"\x00\xff garbage \x01" * 100, "not well-formed"),
    (b"<node/>", "not <domain>"),
    (b"<domain type='kvm'><name>x</name>" + b"<!-- pad -->" * 1_500_000 + b"</domain>", "16777216 bytes"),
])
def test_bad_stdin_exits_zero_and_logs_an_error(installed, tmp_path, stdin, words):
    run = call(installed, tmp_path, "broken", stdin=stdin)
    assert run.rc == 0
    (err,) = run.by_rule("VA9001")
    assert err["PRIORITY"] == "3"
    assert words in err["MESSAGE"]
    assert run.by_rule("VA9002"), "the summary entry is logged even then"


def test_ten_megabyte_stdin(installed, tmp_path):
    """10 MB of stdin (a 10 MiB comment in a real domain XML): refused by the
    parser's size limits with an error entry, quickly, and the start goes on."""
    xml = libvirt_xml("oldbox").replace(b"</domain>", b"<!--" + b"x" * (10 << 20) + b"--></domain>")
    run = call(installed, tmp_path, "oldbox", stdin=xml)
    assert run.rc == 0
    (err,) = run.by_rule("VA9001")
    assert "too big" in err["MESSAGE"]


def test_missing_sysfs_is_reported_not_fatal(installed, tmp_path):
    _, _, config = installed
    empty = tmp_path / "empty-host"
    empty.mkdir()
    config.write_text(f'[hook]\nhost_root = "{empty}"\n')
    run = call(installed, tmp_path, "win11", stdin=libvirt_xml("win11"))
    assert run.rc == 0
    assert {e["VFIO_ADVISOR_HOST_BDF"] for e in run.by_rule("VA8001")} == {"0000:05:00.0", "0000:05:00.1"}


def test_broken_config_is_reported_and_ignored(installed, tmp_path):
    _, _, config = installed
    config.write_text("[hook\nthis is not toml")
    run = call(installed, tmp_path, "win11", stdin=libvirt_xml("win11"))
    assert run.rc == 0
    assert any("config ignored" in e["MESSAGE"] for e in run.by_rule("VA9001"))


def test_timeout_bounds_the_run(installed, tmp_path):
    _, _, config = installed
    config.write_text(config.read_text() + "timeout = 0.000001\n")
    run = call(installed, tmp_path, "win11", stdin=libvirt_xml("win11"))
    assert run.rc == 0
    assert any("stopped after" in e["MESSAGE"] for e in run.by_rule("VA9001"))


def test_without_journald_falls_back_to_stderr(installed, tmp_path):
    """No journald socket (outside the private namespace, none runs here
    unless the host has one): entries go to stderr, which libvirt logs."""
    if os.path.exists("/run/systemd/journal/socket"):
        pytest.skip("this host runs a journald")
    _, hook, _ = installed
    out = subprocess.run([*HOOK_ENV, str(hook), "oldbox", "prepare", "begin", "-"],
                         input=libvirt_xml("oldbox"), capture_output=True)
    assert out.returncode == 0
    assert b"VA2003" in out.stderr and b"Device or resource busy" in out.stderr


def test_classic_single_hook_file(tmp_path):
    root = tmp_path / "root"
    python, log = recording_interpreter(tmp_path)
    out = subprocess.run([sys.executable, "-m", "vfio_advisor", "install", "--root", str(root),
                          "--classic", "--python", str(python)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    log.unlink(missing_ok=True)
    hook = root / "etc/libvirt/hooks/qemu"
    assert hook.exists() and "vfio_advisor.hook" in hook.read_text()
    fast = subprocess.run([*HOOK_ENV, str(hook), "x", "started", "begin", "-"], input=b"<junk")
    assert fast.returncode == 0
    assert str(python) in hook.read_text()  # the recorder is its interpreter
    assert not log.exists(), "the classic hook started Python for `started begin`"
    out = subprocess.run([sys.executable, "-m", "vfio_advisor", "uninstall", "--root", str(root)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and not hook.exists()


@pytest.mark.parametrize("extra", [
    '[daemon]\ndisabled_rules = ["VA1001"]\n',
    '[domains.win11]\nignore = ["msi-capable-device-on-intx"]\n',
])
def test_config_disabled_rules_and_domain_ignores_apply_to_the_hook(installed, tmp_path, extra):
    """The same config file silences a rule in the hook as in advise and the daemon."""
    run = call(installed, tmp_path, "win11", stdin=libvirt_xml("win11"), work="before")
    assert run.by_rule("VA1001") and run.by_rule("VA1002")
    _, _, config = installed
    config.write_text(config.read_text() + extra)
    run = call(installed, tmp_path, "win11", stdin=libvirt_xml("win11"), work="after")
    assert run.rc == 0
    # VA1002 builds on VA1001 (Rule.builds_on): silencing VA1001 silences it too
    assert not run.by_rule("VA1001") and not run.by_rule("VA1002")
    (summary,) = run.by_rule("VA9002")
    assert summary["VFIO_ADVISOR_FINDINGS"] == "0"


@pytest.mark.parametrize("damage", ["empty", "garbled"])
def test_damaged_proc_interrupts_is_logged_never_fatal(installed, tmp_path, damage):
    """An emptied /proc/interrupts, or a count of win11's vfio-intx row
    garbled: the start goes on (rc 0), VA8002 says what was skipped, and
    no VA1001 is built on a row that was not read."""
    import shutil  # noqa: PLC0415

    _, _, config = installed
    host = tmp_path / "host"
    shutil.copytree(DEMO / "root", host, symlinks=True)
    text = (host / "proc/interrupts").read_text()
    (host / "proc/interrupts").write_text("" if damage == "empty" else text.replace(" 448207 ", " 44x8207 ", 1))
    config.write_text(f'[hook]\nhost_root = "{host}"\n')
    run = call(installed, tmp_path, "win11", stdin=libvirt_xml("win11"))
    assert run.rc == 0
    assert run.by_rule("VA1001") == [] and run.by_rule("VA9001") == []
    (note,) = run.by_rule("VA8002")
    expected = ("proc/interrupts: empty: no rows" if damage == "empty" else
                "IRQ 28: count column 1 is '44x8207', not a number")
    assert expected in note["MESSAGE"]
