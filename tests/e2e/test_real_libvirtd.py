"""End to end: Debian's libvirtd and QEMU (TCG), our hook installed, a VM
started. The hook must run at `prepare begin`, leave its findings in a real
(private) journald with the catalog text, and the VM must start.

Needs root, libvirt-daemon-system and qemu-system-x86 (installed by
`make test`). The first start probes QEMU's capabilities (~10-30 s).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.journal import missing_tools, run_in_journal

REPO = Path(__file__).resolve().parents[2]
DOMAIN = REPO / "tests/data/domains/e2e-pxb-pcie.xml"
WITH_LIBVIRTD = REPO / "tests/support/with-libvirtd.sh"
TIMER = Path(__file__).with_name("start-and-time.sh")
STARTS = 3


def _missing() -> str | None:
    return missing_tools("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64")


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("e2e")
    root = work / "root"
    config = work / "config.toml"  # defaults: host root /, advice only
    out = subprocess.run([sys.executable, "-m", "vfio_advisor", "install", "--root", str(root),
                          "--config", str(config)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    hooks = root / "etc/libvirt/hooks"
    hook = hooks / "qemu.d/vfio-advisor"
    timings = work / "timings.txt"
    run = run_in_journal(work / "journal",
                         [str(WITH_LIBVIRTD), str(work), str(hooks), "--",
                          str(TIMER), str(DOMAIN), str(hook), str(STARTS), str(timings)],
                         catalog_db=root / "var/lib/systemd/catalog", timeout=600)
    return run, timings.read_text().split("\n") if timings.exists() else []


def test_vm_started_every_time(started):
    run, lines = started
    assert run.rc == 0, (run.rc, run.stderr[-2000:])
    states = [line.split(" ", 1)[1] for line in lines if line.startswith("state ")]
    assert states == ["running"] * (2 * STARTS)


def test_hook_ran_and_journal_holds_the_finding(started):
    run, _ = started
    entries = [e for e in run.by_rule("VA5003") if e.get("VFIO_ADVISOR_DOMAIN") == "e2e-pxb"]
    # one per INTx-only function behind the pxb-pcie (the e1000), per hooked start
    assert len(entries) == STARTS
    assert {e["VFIO_ADVISOR_SOURCE"] for e in entries} == {"hook"}
    assert any("(e1000)" in e["MESSAGE"] for e in entries)
    summaries = [e for e in run.by_rule("VA9002") if e.get("VFIO_ADVISOR_DOMAIN") == "e2e-pxb"]
    assert len(summaries) == STARTS  # prepare begin only, once per start
    assert "Subject: VA5003" in run.explained


def test_report_time_added_to_virsh_start(started, request):
    _, lines = started
    hook = [int(x.split()[1]) for x in lines if x.startswith("hook ")]
    noop = [int(x.split()[1]) for x in lines if x.startswith("noop ")]
    assert len(hook) == len(noop) == STARTS
    added = (statistics.median(hook) - statistics.median(noop)) / 1000
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    message = (f"virsh create: median {statistics.median(hook) / 1000:.0f} ms with the hook, "
               f"{statistics.median(noop) / 1000:.0f} ms with a no-op hook: the hook adds "
               f"{added:.0f} ms per start")
    if reporter:
        reporter.write_line(f"\n[e2e] {message}")
    # Generous bound: the analysis must not be what makes a start slow.
    assert added < 2000, message


def test_daemon_survives_a_libvirtd_restart(tmp_path):
    """The daemon follows a running VM over qemu:///system (read-only), sees a
    device hotplugged into it, then libvirtd is killed and started again under
    it, and it reconnects and resyncs."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    run = run_in_journal(tmp_path / "journal",
                         [str(WITH_LIBVIRTD), str(tmp_path), str(hooks), "--",
                          str(Path(__file__).with_name("daemon-reconnect.sh")), str(tmp_path),
                          str(DOMAIN), sys.executable], timeout=600)
    assert run.rc == 0, run.stderr[-2000:]
    events = [e.get("VFIO_ADVISOR_EVENT") for e in run.entries if e.get("VFIO_ADVISOR_EVENT")]
    assert events[0] == "started" and events[-1] == "stopped", events
    assert "disconnected" in events and "reconnected" in events
    assert "devices-changed" in events  # a hotplugged virtio-rng: the XML was re-read
    (reconnected,) = [e for e in run.entries if e.get("VFIO_ADVISOR_EVENT") == "reconnected"]
    assert "watching 1 domains" in reconnected["MESSAGE"]  # the VM kept running; resynced
    assert (tmp_path / "daemon.rc").read_text().strip() == "daemon exit 0"
