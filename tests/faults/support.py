"""The fault tier's daemon: `vfio-advisor daemon` as a process over a host
tree (the X99-QD4 board's Navi 23 GPU and HDMI audio, real config dumps) and
libvirt's test driver holding the domain, with the journal sink on stderr
(no journald: make test runs under tests/system/without-host-journal.sh) and
systemd's notifications on a socket the test owns."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.hosttree import Host, build
from tests.rules.examples import AUDIO, _gpu_audio, _ioapic_row, _ir_interrupts
from vfio_advisor.testing.scenes import domain_xml, gpu_audio_hostdevs

REPO = Path(__file__).resolve().parents[2]
CPUS = 8


def audio_intx_rows(count: int) -> dict:
    """The audio function on its INTx line 28 (vfio-intx), `count` on CPU 0."""
    return {28: _ioapic_row(28, [count] + [0] * (CPUS - 1), [f"vfio-intx({AUDIO})"])}


def build_host(root: Path) -> Path:
    build(root, Host(devices=_gpu_audio(gpu_irq=45, audio_irq=28, gpu_msi=(45,)),
                     interrupts=_ir_interrupts(audio_intx_rows(0))))
    return root


def node_file(path: Path, names=("win11",)) -> Path:
    """libvirt's test driver node file: each domain in it runs at open."""
    path.write_text("<node>\n" + "".join(domain_xml(n, gpu_audio_hostdevs()) for n in names) + "</node>\n")
    return path


class Daemon:
    """The daemon process; `notes` the NOTIFY_SOCKET datagrams received."""

    def __init__(self, work: Path, root: Path, uri: str, state_dir: Path | None, interval: float = 0.1,
                 settle: float = 0.3, extra_env: dict | None = None, python: str = sys.executable):
        self.work = work
        self.notify_path = str(work / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.notify_path)
        self.notes: list[str] = []
        self.metrics = work / "m.prom"
        config = work / "config.toml"
        config.write_text(f"[daemon]\ninterval = {interval}\nsettle = {settle}\n")
        self.stderr_path = work / "daemon.err"
        self.stderr = open(self.stderr_path, "w")
        args = [python, "-m", "vfio_advisor", "daemon", "--connect", uri, "--host-root", str(root),
                "--config", str(config), "--metrics-file", str(self.metrics)]
        if state_dir is not None:
            args += ["--state-dir", str(state_dir)]
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path, NO_COLOR="1",
                   PYTHONPATH=str(REPO), **(extra_env or {}))
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=self.stderr, cwd=REPO)

    def receive(self, timeout: float = 0.0) -> list[str]:
        end = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(end - time.monotonic(), 0.001))
            try:
                self.notes.extend(self.sock.recv(65536).decode().splitlines())
            except (socket.timeout, BlockingIOError):
                if time.monotonic() >= end:
                    return self.notes

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "") -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.receive(0.05)
            if predicate():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log()[-2000:]}")
        raise AssertionError(f"timed out waiting for {what}; notes {self.notes[-5:]}; log {self.log()[-2000:]}")

    def log(self) -> str:
        return self.stderr_path.read_text()

    def metrics_text(self) -> str:
        try:
            return self.metrics.read_text()
        except FileNotFoundError:
            return ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.sock.close()
        self.stderr.close()
        return self.proc.returncode
