"""The fleet tier: two simulated passthrough hosts seen through the engines
admins already run, all real programs from Debian's packages, started here
on 127.0.0.1 only and stopped after.

- Prometheus (2.42, package prometheus) scrapes one node_exporter (1.5,
  package prometheus-node-exporter) per host, whose textfile collector serves
  that host's vfio-advisor metrics file; the shipped rules
  (monitoring/prometheus/vfio-advisor.rules.yml) are loaded as they are.
- systemd-journal-upload sends each host's journal (written by a private
  systemd-journald per host, with its own hostname and machine ID) to one
  systemd-journal-remote (systemd 252, package systemd-journal-remote).

Host A replays the lab's stays-intx scenario (the edu stays on INTx), host B
the switch scenario (INTx, then MSI: the near miss). Each host's metrics come
from the product's Watcher over the real captures (tests/fleet/hostsim.py),
rendered by vfio_advisor.sinks.prometheus and written with its
write_atomically, one moment per scrape.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.fleet.hostsim import CAPTURES, DOMAINS, REPO, SimulatedHost
from tests.support.journal import SCRIPT as PRIVATE_JOURNAL
from tests.support.journal import journal_available
from vfio_advisor.sinks.prometheus import write_atomically

RULES = REPO / "monitoring/prometheus/vfio-advisor.rules.yml"
DASHBOARD = REPO / "monitoring/grafana/vfio-advisor.json"
JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
JOURNAL_UPLOAD = "/lib/systemd/systemd-journal-upload"

HOSTS = {  # instance label -> (lab domain, moments, domain name in its XML)
    "hosta": ("edu", [f"stays-intx-{i}" for i in (1, 2, 3, 4)], "lab-edu"),
    "hostb": ("switch", [f"switch-{i}" for i in (1, 2, 3, 4, 5)], "lab-switch"),
}
WAIT = 20.0  # seconds, for any single thing to happen


def need(*programs: str) -> None:
    for program in programs:
        if shutil.which(program) is None and not os.access(program, os.X_OK):
            package = {"prometheus": "prometheus", "prometheus-node-exporter": "prometheus-node-exporter",
                       JOURNAL_REMOTE: "systemd-journal-remote",
                       JOURNAL_UPLOAD: "systemd-journal-remote"}.get(program, program)
            pytest.skip(f"{program} not installed (Debian package {package}; make test installs it)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def wait_for(what: str, predicate, timeout: float = WAIT, every: float = 0.1):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = predicate()
        except OSError as exc:  # not listening yet
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


class Programs:
    """Processes started by this test; each stopped (TERM, then KILL) after."""

    def __init__(self, logdir: Path):
        self.logdir, self.procs = logdir, []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.procs.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        return (self.logdir / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            self.stop(proc)


class Prometheus:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path: str, **params) -> dict:
        doc = json.loads(get(f"{self.base}/api/v1/{path}?{urllib.parse.urlencode(params)}"))
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr} | ({"time": repr(at)} if at is not None else {})
        return self.api("query", **params)["result"]


# --- Prometheus and node_exporter -------------------------------------------

@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Both hosts replayed to their last moment while Prometheus scrapes them.
    Yields (Prometheus, {instance: [(moment, written timestamp)]})."""
    need("prometheus", "prometheus-node-exporter")
    work = tmp_path_factory.mktemp("fleet")
    programs = Programs(work)
    try:
        targets, hosts, files = [], {}, {}
        for instance, (domain, moments, _) in HOSTS.items():
            textdir = work / instance / "textfile"
            textdir.mkdir(parents=True)
            port = free_port()
            # Only the textfile collector: the others read the real host's
            # /proc and /sys, which are not the simulated host's.
            programs.start(f"node-exporter-{instance}", [
                "prometheus-node-exporter", "--collector.disable-defaults", "--collector.textfile",
                f"--collector.textfile.directory={textdir}", f"--web.listen-address=127.0.0.1:{port}"])
            targets.append(f"  - targets: ['127.0.0.1:{port}']\n    labels: {{instance: {instance}}}\n")
            hosts[instance] = SimulatedHost(domain, moments)
            files[instance] = textdir / "vfio-advisor.prom"
        config = work / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {RULES}\n"
            "scrape_configs:\n- job_name: node\n  static_configs:\n" + "".join(targets))
        port = free_port()
        programs.start("prometheus", [
            "prometheus", f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}"])
        prom = Prometheus(port)
        try:
            wait_for("Prometheus ready", lambda: get(f"{prom.base}/-/ready"))
        except AssertionError:
            raise AssertionError("Prometheus did not start:\n" + programs.log("prometheus"))
        assert prom.api("rules")["groups"][0]["name"] == "vfio-advisor"  # the shipped file loaded

        written: dict[str, list[tuple[str, float]]] = {i: [] for i in HOSTS}
        while not all(h.done for h in hosts.values()):
            stamps = {}
            for instance, host in hosts.items():
                if host.done:
                    continue
                moment = host.step()
                stamps[instance] = round(time.time(), 3)
                write_atomically(str(files[instance]), host.metrics(stamps[instance]))
                written[instance].append((moment, stamps[instance]))
            # one scrape of each moment: Prometheus holds the timestamp just written
            for instance, stamp in stamps.items():
                wait_for(f"{instance} scraped at {stamp}", lambda: [
                    r for r in prom.query(f'vfio_advisor_last_sample_timestamp_seconds{{instance="{instance}"}}')
                    if float(r["value"][1]) == stamp])
        yield prom, written
    finally:
        programs.stop_all()


def test_promql_returns_the_per_device_rate(fleet):
    """irate() over the counter equals the increase between the last two
    scrapes of host A's edu, as the captures count it, per second of scrape
    time."""
    prom, written = fleet
    sel = 'vfio_advisor_device_interrupts_total{instance="hosta",domain="lab-edu",bdf="0000:00:03.0",mode="intx"}'
    (raw,) = prom.query(f"{sel}[5m]")
    samples = [(float(t), float(v)) for t, v in raw["values"]]
    final = float(sum(int(f) for f in (CAPTURES / "stays-intx-4/proc/interrupts").read_text()
                      .split("vfio-intx(0000:00:03.0)")[0].splitlines()[-1].split()[1:] if f.isdigit()))
    first = next(i for i, (_, v) in enumerate(samples) if v == final)
    (t0, v0), (t1, v1) = samples[first - 1], samples[first]
    assert v1 > v0
    # Evaluated 0.1 s after that scrape, well before the next (1 s), so that
    # the conversion of the query time to milliseconds cannot drop it.
    (rate,) = prom.query(f"irate({sel}[1m])", at=t1 + 0.1)
    assert float(rate["value"][1]) == pytest.approx((v1 - v0) / (t1 - t0), rel=1e-9), (samples, rate)
    # the dashboard's per-device query, over both hosts: every device of both
    # domains has a rate series at the moment it last counted on INTx
    per_device = prom.query("sum by (instance, domain, bdf, mode) "
                            "(rate(vfio_advisor_device_interrupts_total[1m]))", at=t1 + 0.1)
    got = {(r["metric"]["instance"], r["metric"]["bdf"], r["metric"]["mode"]) for r in per_device}
    assert ("hosta", "0000:00:03.0", "intx") in got
    assert {i for i, _, _ in got} == {"hosta", "hostb"}
    assert float(next(r for r in per_device if r["metric"]["instance"] == "hosta")["value"][1]) > 0


def test_intx_alert_fires_for_the_stuck_device_only(fleet):
    """Host A's edu stays on INTx (VA6001 open): the alert fires. Host B's
    switched to MSI, which closed its VA6001: no alert for it."""
    prom, written = fleet
    firing = wait_for("the INTx alert", lambda: prom.query(
        'ALERTS{alertname="VfioAdvisorDeviceStaysOnIntx",alertstate="firing"}'))
    assert [(a["metric"]["instance"], a["metric"]["domain"]) for a in firing] == [("hosta", "lab-edu")]
    assert firing[0]["metric"]["severity"] == "warning"
    alerts = prom.api("alerts")["alerts"]
    assert {(a["labels"]["alertname"], a["labels"]["instance"]) for a in alerts} == {
        ("VfioAdvisorDeviceStaysOnIntx", "hosta")}
    # the device's mode as both hosts last reported it
    modes = {(r["metric"]["instance"], r["metric"]["bdf"]): r["metric"]["mode"]
             for r in prom.query("vfio_advisor_device_mode == 1")}
    assert modes == {("hosta", "0000:00:03.0"): "intx", ("hostb", "0000:00:03.0"): "none",
                     ("hostb", "0000:00:05.0"): "msix"}


def test_every_dashboard_query_runs_on_prometheus(fleet):
    prom, _ = fleet
    doc = json.loads(DASHBOARD.read_text())
    for panel in doc["panels"]:
        for target in panel["targets"]:
            expr = (target["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*")
                    .replace("$domain", ".*"))
            result = prom.query(expr)  # a PromQL error fails inside api()
            if panel["title"].startswith("Not countable"):
                # every lab vector is counted (QEMU's emulated IOMMU cannot post interrupts)
                assert result == [], result
            else:
                assert result, f"panel {panel['title']!r} shows nothing"


# --- systemd-journal-remote ---------------------------------------------------

def journal_of(work: Path, hostname: str, domain: str, moments: list[str]) -> Path:
    """Replay one host's scenario through the product's journal sink into a
    private journald with its own hostname (UTS namespace) and machine ID
    (bind-mounted /etc/machine-id, which journald stamps as _MACHINE_ID and
    names its directory after). Returns that journal directory."""
    machine_id = uuid.uuid4().hex
    (work / "machine-id").write_text(machine_id + "\n")
    cmd = [sys.executable, "-m", "tests.lab.replay", str(DOMAINS / f"{domain}.xml"), "0.3", "1e9", "-",
           *[str(CAPTURES / m) for m in moments]]
    outer = ("set -e; hostname \"$1\"; mount --bind \"$2\" /etc/machine-id; shift 2; exec \"$@\"")
    run = subprocess.run(["unshare", "--mount", "--uts", "--propagation", "private", "--", "/bin/sh", "-c",
                          outer, "sh", hostname, str(work / "machine-id"), str(PRIVATE_JOURNAL),
                          str(work / "j"), "--", *cmd],
                         capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert run.returncode == 0 and (work / "j/rc").read_text().strip() == "0", run.stderr
    directory = work / "j/varlog/journal" / machine_id
    assert any(directory.glob("*.journal")), run.stderr
    return directory


def test_journal_remote_finds_both_hosts_by_domain_and_rule(tmp_path):
    need(JOURNAL_REMOTE, JOURNAL_UPLOAD, "journalctl", "unshare")
    reason = journal_available()
    if reason:
        pytest.skip(f"private journald: {reason}")
    journals = {}
    for instance, (domain, moments, _) in HOSTS.items():
        (tmp_path / instance).mkdir()
        journals[instance] = journal_of(tmp_path / instance, f"fleet-{instance}", domain, moments)
    central = tmp_path / "central"
    central.mkdir()
    programs = Programs(tmp_path)
    try:
        port = free_port()
        remote = programs.start("journal-remote", [
            JOURNAL_REMOTE, f"--listen-http=127.0.0.1:{port}", f"--output={central}/",
            "--split-mode=host"])
        wait_for("journal-remote listening", lambda: socket.create_connection(("127.0.0.1", port), 1).close()
                 or True)
        for instance, directory in journals.items():
            upload = subprocess.run([JOURNAL_UPLOAD, f"--url=http://127.0.0.1:{port}",
                                     f"--directory={directory}", "--follow=no"],
                                    capture_output=True, text=True, timeout=WAIT)
            assert upload.returncode == 0, upload.stderr
        programs.stop(remote)  # closes the output files cleanly
        assert remote.returncode == 0, programs.log("journal-remote")
    finally:
        programs.stop_all()

    def central_entries(*matches: str) -> list[dict]:
        out = subprocess.run(["journalctl", f"--directory={central}", "-o", "json", "--no-pager", *matches],
                             capture_output=True, text=True, timeout=WAIT)
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    # one rule, every host: both edus stayed on INTx past the settle time
    stays = central_entries("VFIO_ADVISOR_RULE=VA6001")
    assert sorted((e["_HOSTNAME"], e["VFIO_ADVISOR_DOMAIN"]) for e in stays) == [
        ("fleet-hosta", "lab-edu"), ("fleet-hostb", "lab-switch")]
    assert len({e["_MACHINE_ID"] for e in stays}) == 2
    # one domain: only host B's, with every field the daemon wrote
    switch = central_entries("VFIO_ADVISOR_DOMAIN=lab-switch")
    assert {e["_HOSTNAME"] for e in switch} == {"fleet-hostb"}
    assert {e["VFIO_ADVISOR_RULE"] for e in switch} >= {"VA6001", "VA6002", "VA6006"}
    fixed = next(e for e in switch if e["VFIO_ADVISOR_RULE"] == "VA6002")
    for field in ("VFIO_ADVISOR_SOURCE", "VFIO_ADVISOR_SEVERITY", "VFIO_ADVISOR_HOST_BDF",
                  "VFIO_ADVISOR_DOMAIN_UUID", "VFIO_ADVISOR_REMEDY", "MESSAGE_ID"):
        assert fixed.get(field), field
    assert fixed["VFIO_ADVISOR_SOURCE"] == "daemon"
    # domain and rule together, one host
    both = central_entries("VFIO_ADVISOR_DOMAIN=lab-edu", "VFIO_ADVISOR_RULE=VA6001")
    assert [(e["_HOSTNAME"], e["VFIO_ADVISOR_HOST_BDF"]) for e in both] == [("fleet-hosta", "0000:00:03.0")]
    # --split-mode=host names the file after the sender as journal-remote
    # sees it (systemd 252 src/journal-remote/journal-remote-main.c,
    # request_handler: the client certificate's name with --trust, else the
    # peer address): both simulated hosts are 127.0.0.1, so one file, and the
    # hosts are told apart by the entries' _HOSTNAME and _MACHINE_ID above.
    assert sorted(p.name for p in central.glob("*.journal")) == ["remote-127.0.0.1.journal"]
