"""The daemon as systemd runs it: a subprocess with NOTIFY_SOCKET and
WATCHDOG_USEC, reloaded with SIGHUP, stopped with SIGTERM."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


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
    metrics = (tmp_path / "m.prom").read_text()
    assert "# TYPE vfio_advisor_device_interrupts_per_second gauge" in metrics


def test_bad_config_is_a_usage_error(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[daemon]\ninterval = 'often'\n")
    out = subprocess.run([sys.executable, "-m", "vfio_advisor", "daemon", "--connect",
                          "test:///default", "--config", str(config)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2
    assert "interval must be a float" in out.stderr and "Traceback" not in out.stderr
