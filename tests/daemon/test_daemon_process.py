"""The daemon as systemd runs it: a subprocess with NOTIFY_SOCKET and
WATCHDOG_USEC, reloaded with SIGHUP, stopped with SIGTERM."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fleet.exposition import parse
from vfio_advisor import __version__

REPO = Path(__file__).resolve().parents[2]
CAPTURES = REPO / "lab/captures"


def receive(sock, want, timeout=20.0):
    got, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        sock.settimeout(max(end - time.monotonic(), 0.01))
        try:
            data = sock.recv(4096).decode()
        except socket.timeout:
            break
        got.extend(data.splitlines())
        if any(line == want for line in got):
            return got
    raise AssertionError(f"{want!r} not received; got {got}")


def test_notify_reload_and_stop(tmp_path):
    notify_path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    config = tmp_path / "config.toml"
    config.write_text("[daemon]\ninterval = 0.2\nsettle = 30\n")
    env = dict(os.environ, NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="400000", NO_COLOR="1")
    proc = subprocess.Popen([sys.executable, "-m", "vfio_advisor", "daemon", "--connect",
                             "test:///default", "--config", str(config), "--state-dir",
                             str(tmp_path / "state"), "--metrics-file", str(tmp_path / "m.prom")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        got = receive(sock, "READY=1")
        assert "STATUS=watching 1 VM, 0 devices" in got
        got = receive(sock, "WATCHDOG=1", timeout=3)
        config.write_text("[daemon]\ninterval = 0.5\nsettle = 10\n")
        proc.send_signal(signal.SIGHUP)
        got = receive(sock, "READY=1")
        assert "RELOADING=1" in got
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        receive(sock, "STOPPING=1")
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "configuration reloaded: interval 0.5 s, settle 10 s" in err
    assert "Traceback" not in err
    meta, samples = parse((tmp_path / "m.prom").read_text())
    assert meta["vfio_advisor_device_interrupts_total"][0] == "counter"
    # test:///default's domain "test" has no hostdev: no device series
    assert [x for x in samples if x[0].startswith("vfio_advisor_device_")] == []
    assert ("vfio_advisor_build_info", {"version": __version__}, 1.0) in samples


def test_bad_config_is_a_usage_error(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[daemon]\ninterval = 'often'\n")
    out = subprocess.run([sys.executable, "-m", "vfio_advisor", "daemon", "--connect",
                          "test:///default", "--config", str(config)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2
    assert "interval must be a float" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("kind", ["file", "missing", "snapshot", "config"])
def test_host_root_that_is_no_directory_is_refused(tmp_path, kind):
    """Every other command refuses such a --host-root in one line; the
    daemon started on it and sampled nothing, as if no device were there.
    A snapshot is refused too: it holds one reading of /proc/interrupts."""
    root = {"file": tmp_path / "passwd", "missing": tmp_path / "nowhere",
            "snapshot": tmp_path / "host.tar.gz", "config": tmp_path / "passwd"}[kind]
    if kind != "missing":
        root.write_bytes(b"\x1f\x8b" if kind == "snapshot" else b"root:x:0:0::/root:/bin/sh\n")
    config = tmp_path / "config.toml"
    config.write_text(f'[daemon]\nhost_root = "{root}"\n' if kind == "config" else "")
    flag = [] if kind == "config" else ["--host-root", str(root)]
    out = subprocess.run([sys.executable, "-m", "vfio_advisor", "daemon", "--connect", "test:///default",
                          "--config", str(config), "--state-dir", str(tmp_path / "state"), *flag],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    where = f"[daemon] host_root in {config}" if kind == "config" else "--host-root"
    why = "does not exist or is not a directory: the daemon samples a live tree's"
    [line] = out.stderr.splitlines()
    assert line.startswith(f"vfio-advisor: host root {root} ({where}) {why}"), line
    assert not (tmp_path / "state").exists()  # refused before it started


def test_unreachable_libvirt_is_one_line_per_retry(tmp_path):
    """A test:/// node file that does not exist: libvirt's libxml2 prints
    its own "I/O warning" to fd 2 beside the libvirtError; the daemon's
    stderr (the journal under systemd) holds only its own retry lines."""
    proc = subprocess.Popen([sys.executable, "-m", "vfio_advisor", "daemon", "--connect",
                             f"test://{tmp_path / 'missing.xml'}", "--config", "/dev/null",
                             "--state-dir", str(tmp_path / "state")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        assert "retrying in 1 s" in first, first
        time.sleep(1.5)  # the second attempt, after the first back-off
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=10)
    lines = [first.rstrip("\n"), *rest.splitlines()]
    assert all(line.startswith("vfio-advisor: ") for line in lines), lines
    assert sum(line.startswith(f"vfio-advisor: cannot connect to test://{tmp_path}") for line in lines) >= 2


# A domain name with every character the text format escapes in a label
# value except the line feed, which libvirt refuses in names
# (virXMLCheckIllegalChars(name, "\n")).
ODD_NAME = 'lab "edu" \\ one'


def wait_for(predicate, what, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_metrics_file_values_and_label_escaping(tmp_path):
    """The real daemon over the lab's stays-intx moments (the edu stays on
    INTx and counts): the file holds the kernel's count as the counter, the
    mode, the open VA6001, the wall-clock sample time and the version, with
    the domain name escaped; an independent reader gets the name back."""
    xml = (REPO / "tests/data/domains/lab/edu.xml").read_text().replace(
        "<name>lab-edu</name>", "<name>lab &quot;edu&quot; \\ one</name>")
    (tmp_path / "node.xml").write_text(f"<node>\n{xml}\n</node>\n")
    root = tmp_path / "root"
    root.symlink_to(CAPTURES / "stays-intx-3")
    metrics = tmp_path / "m.prom"
    (tmp_path / "none.toml").write_text("")
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "vfio_advisor", "daemon", "--connect",
                             f"test://{tmp_path / 'node.xml'}", "--host-root", str(root),
                             "--interval", "0.1", "--settle", "0", "--state-dir", str(tmp_path / "state"),
                             "--metrics-file", str(metrics), "--config", str(tmp_path / "none.toml")],
                            env=dict(os.environ, NO_COLOR="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        def series():
            if not metrics.exists():
                return None
            _, samples = parse(metrics.read_text())
            return {(n, tuple(sorted(labels.items()))): v for n, labels, v in samples}

        dev = (("bdf", "0000:00:03.0"), ("domain", 'lab "edu" \\ one'))
        total = ("vfio_advisor_device_interrupts_total", tuple(sorted(dev + (("mode", "intx"),))))
        wait_for(lambda: (series() or {}).get(total) == 600.0, "the count of stays-intx-3")
        tmp = tmp_path / "next"
        tmp.symlink_to(CAPTURES / "stays-intx-4")
        os.replace(tmp, root)
        finding = ("vfio_advisor_findings",
                   (("domain", 'lab "edu" \\ one'), ("rule", "VA6001"), ("severity", "warning")))
        got = wait_for(lambda: (lambda s: s if s and s.get(finding) == 1.0 else None)(series()),
                       "VA6001 open in the file")
        text = metrics.read_text()
        # It follows the domain, yet lxml (and the libxslt it brings) never
        # loads into it: the domain was gathered in a child (daemon/gather_child.py).
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        modules = {line.split()[-1] for line in maps.splitlines() if line.endswith(".so") or ".so." in line}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert "Traceback" not in err, err
    assert [m for m in modules if "lxml" in m or "libxslt" in m] == []
    assert any("libvirt" in m for m in modules)  # the read is real: libvirt is mapped
    # the kernel's count of IRQ 23 in stays-intx-4 (sum of per_cpu_count)
    assert got[total] == 3600.0
    mode = ("vfio_advisor_device_mode", tuple(sorted(dev + (("mode", "intx"),))))
    assert got[mode] == 1.0
    assert [v for (n, labels), v in got.items() if n == "vfio_advisor_device_mode" and v == 1.0] == [1.0]
    assert got[("vfio_advisor_device_interrupts_observable", dev)] == 1.0
    assert started <= got[("vfio_advisor_last_sample_timestamp_seconds", ())] <= time.time()
    assert got[("vfio_advisor_build_info", (("version", __version__),))] == 1.0
    # the raw text: quote and backslash escaped as the format says
    assert 'domain="lab \\"edu\\" \\\\ one"' in text
    assert oct(metrics.stat().st_mode & 0o777) == "0o644"
    assert not list(tmp_path.glob(".vfio-advisor-*"))  # no temporary file left behind
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian package prometheus): values checked, format not")
    run = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and not run.stdout and not run.stderr, (run.stdout, run.stderr)


def test_reload_failure_keeps_the_old_config(tmp_path):
    """SIGHUP with a broken config: one log line, no RELOADING=1, the old
    interval and settle stay in force (the daemon keeps sampling every 0.2 s
    and the next good reload starts from them)."""
    notify_path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    config = tmp_path / "config.toml"
    config.write_text("[daemon]\ninterval = 0.2\nsettle = 30\n")
    metrics = tmp_path / "m.prom"
    proc = subprocess.Popen([sys.executable, "-m", "vfio_advisor", "daemon", "--connect",
                             "test:///default", "--config", str(config), "--metrics-file", str(metrics)],
                            env=dict(os.environ, NOTIFY_SOCKET=notify_path, NO_COLOR="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        receive(sock, "READY=1")
        config.write_text("[daemon]\ninterval = 'often'\nsettle = 1\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        # still sampling at the old 0.2 s: the file is rewritten within 0.6 s
        stamp = metrics.stat().st_mtime_ns
        wait_for(lambda: metrics.stat().st_mtime_ns != stamp, "a sample after the failed reload", 0.6)
        config.write_text("[daemon]\nsettle = 7\n")
        proc.send_signal(signal.SIGHUP)
        got = receive(sock, "READY=1")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "Traceback" not in err, err
    failed = [line for line in err.splitlines() if "reload failed" in line]
    assert len(failed) == 1, err
    assert "keeping the old config" in failed[0] and "interval must be a float" in failed[0]
    assert got.count("RELOADING=1") == 1  # the good reload only
    reloaded = [line for line in err.splitlines() if "configuration reloaded" in line]
    # the good reload: its settle, and the default interval (the file no longer sets one)
    assert reloaded == ["vfio-advisor: configuration reloaded: interval 5 s, settle 7 s"], err


def test_reload_moves_to_a_new_host_root_and_refuses_a_bad_one(tmp_path):
    """A SIGHUP whose config names another host_root: the daemon follows the
    running domain from the new tree (its count there, 3600 in stays-intx-4,
    where the start's tree had 600), as a restart on it would; it kept
    sampling the old tree until restarted. A host_root that is no directory
    is refused as at start, and the old root stays in force."""
    xml = (REPO / "tests/data/domains/lab/edu.xml").read_text()
    (tmp_path / "node.xml").write_text(f"<node>\n{xml}\n</node>\n")
    metrics = tmp_path / "m.prom"
    config = tmp_path / "config.toml"
    config.write_text(f'[daemon]\nhost_root = "{CAPTURES / "stays-intx-3"}"\n')
    notify_path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    proc = subprocess.Popen([sys.executable, "-m", "vfio_advisor", "daemon", "--connect",
                             f"test://{tmp_path / 'node.xml'}", "--interval", "0.1", "--settle", "0",
                             "--state-dir", str(tmp_path / "state"), "--metrics-file", str(metrics),
                             "--config", str(config)],
                            env=dict(os.environ, NOTIFY_SOCKET=notify_path, NO_COLOR="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    total = ("vfio_advisor_device_interrupts_total",
             (("bdf", "0000:00:03.0"), ("domain", "lab-edu"), ("mode", "intx")))

    def count():
        if not metrics.exists():
            return None
        _, samples = parse(metrics.read_text())
        return {(n, tuple(sorted(labels.items()))): v for n, labels, v in samples}.get(total)

    try:
        receive(sock, "READY=1")
        wait_for(lambda: count() == 600.0, "the count of stays-intx-3")
        config.write_text(f'[daemon]\nhost_root = "{tmp_path / "config.toml"}"\n')  # a file
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        stamp = metrics.stat().st_mtime_ns
        wait_for(lambda: metrics.stat().st_mtime_ns != stamp, "a sample after the refused reload", 2)
        assert count() == 600.0  # still the old tree
        config.write_text(f'[daemon]\nhost_root = "{CAPTURES / "stays-intx-4"}"\n')
        proc.send_signal(signal.SIGHUP)
        got = receive(sock, "READY=1")
        wait_for(lambda: count() == 3600.0, "the count of stays-intx-4 after the reload")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert got.count("RELOADING=1") == 1, got  # the good reload only
    [failed] = [line for line in err.splitlines() if "reload failed" in line]
    assert failed.startswith(f"vfio-advisor: reload failed, keeping the old config: host root "
                             f"{config} ([daemon] host_root in {config}) does not exist or is not "
                             "a directory"), failed
    [reloaded] = [line for line in err.splitlines() if "configuration reloaded" in line]
    assert reloaded == (f"vfio-advisor: configuration reloaded: interval 0.1 s, settle 0 s; host root "
                        f"{CAPTURES / 'stays-intx-4'} (was {CAPTURES / 'stays-intx-3'}): every running "
                        "domain is gathered and followed afresh from it"), err
