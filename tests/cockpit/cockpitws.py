"""Serve the Cockpit page with Debian's own cockpit-ws and cockpit-bridge on
loopback, for `make cockpit-demo` and the browser tier.

cockpit-ws --local-session=cockpit-bridge runs one bridge as the user who
started it, with no login (cockpit-ws(8), "--local-session"); --no-tls keeps
it plain HTTP. The bridge finds packages in $XDG_DATA_DIRS/cockpit/ and merges
$XDG_CONFIG_DIRS/cockpit/<package>.override.json into the manifest
(cockpit 287, src/bridge/cockpitpackages.c), which is how the page learns
where the daemon's status file is and which libvirt URI and host tree to ask
about: a temporary share/ holds a link to the repository's cockpit/ and etc/
holds the override.

    python -m tests.cockpit.cockpitws demo [--port 9090]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "cockpit"
DEMO = REPO / "examples/demo-host"
COCKPIT_WS = "/usr/lib/cockpit/cockpit-ws"
COCKPIT_BRIDGE = "/usr/bin/cockpit-bridge"


def missing() -> str | None:
    """Why cockpit cannot be served here, or None."""
    for path, package in ((COCKPIT_WS, "cockpit-ws"), (COCKPIT_BRIDGE, "cockpit-bridge"),
                          ("/usr/share/cockpit/base1/manifest.json", "cockpit-bridge's base1"),
                          ("/usr/share/cockpit/shell/manifest.json", "cockpit-system")):
        if not os.path.exists(path):
            return f"{path} missing (Debian package {package})"
    return None


def cockpit_version() -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "cockpit-ws"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CockpitServer:
    """cockpit-ws on 127.0.0.1:port serving `page` as the package vfio-advisor,
    with `config` as its manifest override and `path` first in the bridge's PATH."""

    def __init__(self, work: Path, config: dict, port: int | None = None, path: list[str] | None = None,
                 page: Path = PAGE, user: list[str] | None = None):
        self.work = Path(work)
        self.port = port or free_port()
        share = self.work / "share/cockpit"
        etc = self.work / "etc/cockpit"
        share.mkdir(parents=True, exist_ok=True)
        etc.mkdir(parents=True, exist_ok=True)
        link = share / "vfio-advisor"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(page.resolve())
        (etc / "vfio-advisor.override.json").write_text(json.dumps({"config": config}))
        env = dict(os.environ)
        env["XDG_DATA_DIRS"] = f"{self.work / 'share'}:/usr/share"
        env["XDG_CONFIG_DIRS"] = str(self.work / "etc")
        env["PATH"] = ":".join((path or []) + ["/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        self.env = env
        self.user = user or []
        self.log = self.work / "cockpit-ws.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def page_url(self, fragment: str = "") -> str:
        """The page alone (no shell frame): what the tests drive."""
        return f"{self.url}/cockpit/@localhost/vfio-advisor/index.html" + (f"#{fragment}" if fragment else "")

    def start(self) -> CockpitServer:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.user + [COCKPIT_WS, "--no-tls", "--address", "127.0.0.1", "--port", str(self.port),
                             "--local-session=" + COCKPIT_BRIDGE],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + 15
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cockpit-ws exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"cockpit-ws did not listen on 127.0.0.1:{self.port} within 15 s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # Its own session (start_new_session): the bridge and what the bridge
        # spawned go with it, and nothing else.
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def __enter__(self) -> CockpitServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def demo_config(status_file: str) -> dict:
    return {"connect": f"test://{DEMO / 'node.xml'}", "host_root": str(DEMO / "root"),
            "status_file": status_file, "state_dir": None}


def demo(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="make cockpit-demo")
    parser.add_argument("--port", type=int, default=9090)
    args = parser.parse_args(argv)
    why = missing()
    if why:
        print(f"cockpit-demo: {why}; install cockpit-ws cockpit-bridge cockpit-system (make deps)", file=sys.stderr)
        return 2
    # SIGTERM/SIGHUP (a `kill`, a closed terminal, make stopped) end the
    # demo like Ctrl-C does, so that cockpit-ws, in a session of its own,
    # is stopped with it and not left listening.
    def stop(signum, _frame):
        raise KeyboardInterrupt(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    parent = os.getppid()
    venv_bin = str(Path(sys.executable).parent)
    with tempfile.TemporaryDirectory(prefix="vfio-advisor-cockpit-demo-") as work:
        # The demo host has no daemon: the page says so and shows advise's view.
        server = CockpitServer(Path(work), demo_config(f"{work}/state/status.json"), args.port, [venv_bin])
        try:
            server.start()
        except RuntimeError as exc:
            print(f"cockpit-demo: {exc}", file=sys.stderr)
            return 1
        print(f"vfio-advisor's Cockpit page on the demo host (cockpit {cockpit_version()}):")
        print(f"  {server.url}/vfio-advisor            (in Cockpit's shell)")
        print(f"  {server.page_url()}   (the page alone)")
        print("Ctrl-C stops it.", flush=True)
        try:
            while server.proc.poll() is None and os.getppid() == parent:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "demo":
        sys.exit(demo(sys.argv[2:]))
    print("usage: python -m tests.cockpit.cockpitws demo [--port PORT]", file=sys.stderr)
    sys.exit(2)
