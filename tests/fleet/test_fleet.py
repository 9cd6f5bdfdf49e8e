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
the switch scenario (INTx, then MSI: the near miss), one capture per scrape.
Each host is the real daemon (`vfio-advisor daemon --connect test:///NODE
--host-root ROOT --metrics-file FILE`), ROOT a symlink stepped through the
captures, in its own private journald.
The daemon writes vfio_advisor.sinks.prometheus' format
itself; `promtool check metrics` runs on the file it wrote.
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

from tests.fleet.hostsim import CAPTURES, DOMAINS, REPO
from tests.support.journal import SCRIPT as PRIVATE_JOURNAL
from tests.support.journal import journal_available

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
        # The whole process group: a daemon and its private journald run
        # below a shell that would leave them behind.
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
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


# --- the simulated hosts ------------------------------------------------------

class InJournal:
    """A command run beside a private systemd-journald (tests/support/
    private-journal.sh) in its own UTS namespace and with its own
    /etc/machine-id, so that each simulated host's entries carry their own
    _HOSTNAME and _MACHINE_ID (journald stamps both, and names its directory
    after the machine ID). Never the host's journal."""

    OUTER = 'set -e; hostname "$1"; mount --bind "$2" /etc/machine-id; shift 2; exec "$@"'

    def __init__(self, work: Path, hostname: str):
        self.work, self.hostname = work, hostname
        self.machine_id = uuid.uuid4().hex
        (work / "machine-id").write_text(self.machine_id + "\n")

    def argv(self, cmd: list[str]) -> list[str]:
        return ["unshare", "--mount", "--uts", "--propagation", "private", "--", "/bin/sh", "-c",
                self.OUTER, "sh", self.hostname, str(self.work / "machine-id"), str(PRIVATE_JOURNAL),
                str(self.work / "j"), "--", *cmd]

    @property
    def directory(self) -> Path:
        return self.work / "j/varlog/journal" / self.machine_id

    def finished(self) -> Path:
        rc = self.work / "j/rc"
        assert rc.exists() and rc.read_text().strip() == "0", (self.work / "j/stderr", self.log())
        assert any(self.directory.glob("*.journal")), self.log()
        return self.directory

    def log(self) -> str:
        path = self.work / "j/journald.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def last_sample(path: Path) -> float | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if line.startswith("vfio_advisor_last_sample_timestamp_seconds "):
            return float(line.split()[1])
    return None


class DaemonHost:
    """One simulated host run by the real daemon: `vfio-advisor daemon`
    against libvirt's test driver (a node file holding the lab domain, which
    the test driver runs) with --host-root a symlink that each step points at
    the scenario's next capture, --metrics-file in node_exporter's textfile
    directory, logging into the host's private journald."""

    def __init__(self, work: Path, instance: str, domain: str, moments: list[str], metrics: Path):
        self.work, self.metrics, self.moments, self.index = work, metrics, moments, 0
        self.journal = InJournal(work, f"fleet-{instance}")
        xml = (DOMAINS / f"{domain}.xml").read_text()
        (work / "node.xml").write_text(f"<node>\n{xml}\n</node>\n")
        self.root = work / "root"
        self.root.symlink_to(CAPTURES / moments[0])
        self.pidfile = work / "daemon.pid"
        daemon = [sys.executable, "-m", "vfio_advisor", "daemon", "--connect", f"test://{work / 'node.xml'}",
                  "--host-root", str(self.root), "--interval", str(DAEMON_INTERVAL), "--settle", "0",
                  "--state-dir", str(work / "state"), "--metrics-file", str(metrics)]
        # The daemon runs in the background of the journal's shell, so that the
        # test can stop it (SIGTERM, as systemd does) and the journal be synced.
        script = f'"$@" 2>{work / "daemon.stderr"} & echo $! > {self.pidfile}; wait $!'
        self.argv = self.journal.argv(["/bin/sh", "-c", script, "sh", *daemon])
        self.proc = None

    def start(self, programs: "Programs") -> str:
        """Start; the first metrics file's text."""
        self.proc = programs.start(f"daemon-{self.work.name}", self.argv)
        # until it has sampled the domain's devices in the first capture
        wait_for(f"{self.work.name}'s daemon writing {self.metrics}",
                 lambda: (self.metrics.exists() and "vfio_advisor_device_mode{domain=" in self.metrics.read_text())
                 or (self.proc.poll() is not None and self._died()))
        return self.metrics.read_text()

    def _died(self):
        raise AssertionError(f"daemon exited: {(self.work / 'daemon.stderr').read_text(errors='replace')}")

    @property
    def done(self) -> bool:
        return self.index + 1 >= len(self.moments)

    def step(self) -> tuple[str, float]:
        """Point the host root at the next capture; the moment and the
        timestamp of the first sample the daemon took of it."""
        self.index += 1
        moment = self.moments[self.index]
        tmp = self.work / "root.new"
        tmp.symlink_to(CAPTURES / moment)
        os.replace(tmp, self.root)
        swapped = time.time()
        stamp = wait_for(f"{self.work.name}'s daemon sampling {moment}",
                         lambda: (last_sample(self.metrics) or 0) > swapped and last_sample(self.metrics))
        return moment, stamp

    def stop(self) -> Path:
        """SIGTERM the daemon; its host's journal directory."""
        pid = int(self.pidfile.read_text())
        os.kill(pid, signal.SIGTERM)
        self.proc.wait(timeout=WAIT)
        err = (self.work / "daemon.stderr").read_text(errors="replace")
        assert "Traceback" not in err, err
        return self.journal.finished()


DAEMON_INTERVAL = 0.25  # seconds between the daemon's samples


class Fleet:
    def __init__(self):
        self.prom: Prometheus | None = None
        self.no_prometheus = ""  # why not, when prom is None
        self.written: dict[str, list[tuple[str, float]]] = {i: [] for i in HOSTS}
        self.journals: dict[str, Path] = {}
        self.files: dict[str, Path] = {}  # each host's metrics file


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Both hosts run through their scenario, each moment scraped by
    Prometheus; then stopped, their journals kept."""
    need("unshare", "journalctl")
    reason = journal_available()
    if reason:  # the daemon logs to journald: a private one, never the host's
        pytest.skip(f"private journald: {reason}")
    work = tmp_path_factory.mktemp("fleet")
    programs = Programs(work)
    out = Fleet()
    try:
        targets, files = [], {}
        for instance in HOSTS:
            textdir = work / instance / "textfile"
            textdir.mkdir(parents=True)
            files[instance] = textdir / "vfio-advisor.prom"
            if shutil.which("prometheus-node-exporter") is None:
                continue
            port = free_port()
            # Only the textfile collector: the others read the real host's
            # /proc and /sys, which are not the simulated host's.
            programs.start(f"node-exporter-{instance}", [
                "prometheus-node-exporter", "--collector.disable-defaults", "--collector.textfile",
                f"--collector.textfile.directory={textdir}", f"--web.listen-address=127.0.0.1:{port}"])
            targets.append(f"  - targets: ['127.0.0.1:{port}']\n    labels: {{instance: {instance}}}\n")
        for program, package in (("prometheus-node-exporter", "prometheus-node-exporter"),
                                 ("prometheus", "prometheus")):
            if shutil.which(program) is None:
                out.no_prometheus = f"{program} not installed (Debian package {package})"
        if not out.no_prometheus:
            config = work / "prometheus.yml"
            config.write_text(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
                f"rule_files:\n  - {RULES}\n"
                "scrape_configs:\n- job_name: node\n  static_configs:\n" + "".join(targets))
            port = free_port()
            programs.start("prometheus", [
                "prometheus", f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}"])
            out.prom = Prometheus(port)
            try:
                wait_for("Prometheus ready", lambda: get(f"{out.prom.base}/-/ready"))
            except AssertionError:
                raise AssertionError("Prometheus did not start:\n" + programs.log("prometheus"))
            assert out.prom.api("rules")["groups"][0]["name"] == "vfio-advisor"  # the shipped file loaded

        hosts = {i: DaemonHost(work / i, i, d, m, files[i]) for i, (d, m, _) in HOSTS.items()}
        for h in hosts.values():
            h.start(programs)
        for i, host in hosts.items():
            out.written[i].append((HOSTS[i][1][0], last_sample(files[i])))
        scraped(out, {i: last_sample(files[i]) for i in hosts})
        while not all(h.done for h in hosts.values()):
            stamps = {}
            for instance, host in hosts.items():
                if not host.done:
                    moment, stamps[instance] = host.step()
                    out.written[instance].append((moment, stamps[instance]))
            scraped(out, stamps)
        out.files = files
        for instance, host in hosts.items():
            out.journals[instance] = host.stop()
        yield out
    finally:
        programs.stop_all()


def scraped(out: Fleet, stamps: dict[str, float]) -> None:
    """Wait until Prometheus holds, for each host, a file at least this new."""
    if out.prom is None:
        return
    for instance, stamp in stamps.items():
        wait_for(f"{instance} scraped at {stamp}", lambda: [
            r for r in out.prom.query(f'vfio_advisor_last_sample_timestamp_seconds{{instance="{instance}"}}')
            if float(r["value"][1]) >= stamp])


def test_promtool_accepts_each_hosts_file(fleet):
    """`promtool check metrics` on the files node_exporter served."""
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    for instance, path in fleet.files.items():
        text = path.read_text()
        assert "# TYPE vfio_advisor_device_interrupts_total counter" in text
        run = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0 and not run.stdout and not run.stderr, (instance, run.stdout, run.stderr)


def prometheus_of(fleet: Fleet) -> Prometheus:
    if fleet.prom is None:
        pytest.skip(fleet.no_prometheus)
    return fleet.prom


def test_promql_returns_the_per_device_rate(fleet):
    """irate() over the counter equals the increase between the last two
    scrapes of host A's edu, as the captures count it, per second of scrape
    time."""
    prom = prometheus_of(fleet)
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
    # Prometheus keeps sample times as integer milliseconds, and its API
    # prints them as float seconds: t1 - t0 in floats near 1.8e9 s is off by
    # up to ~2e-7 s (1.0019998... for 1.002), so the interval is taken in ms.
    interval = (round(t1 * 1000) - round(t0 * 1000)) / 1000
    assert float(rate["value"][1]) == pytest.approx((v1 - v0) / interval, rel=1e-9), (samples, rate)
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
    prom = prometheus_of(fleet)
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
    prom = prometheus_of(fleet)
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

def test_journal_remote_finds_both_hosts_by_domain_and_rule(fleet, tmp_path):
    need(JOURNAL_REMOTE, JOURNAL_UPLOAD)
    journals = fleet.journals
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
