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

    python -m tests.cockpit.cockpitws demo [--port 9090] [--cockpit installed|337]
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
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "cockpit"
DEMO = REPO / "examples/demo-host"
COCKPIT_WS = "/usr/lib/cockpit/cockpit-ws"
COCKPIT_BRIDGE = "/usr/bin/cockpit-bridge"
SYSTEM_BUS = "/run/dbus/system_bus_socket"  # dbus-daemon(1): the system bus's default address
# Anyone may connect and talk; nothing owns a name but what a test starts.
PRIVATE_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


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


@dataclass(frozen=True)
class Cockpit:
    """One Cockpit to serve the page with: its cockpit-ws, the bridge that
    --local-session runs, and the data directories where that bridge finds
    its packages (base1, shell, system) besides the page."""

    name: str
    ws: str
    bridge: str
    data_dirs: tuple[str, ...]


def installed() -> Cockpit:
    """The system's own (bookworm's 287 here)."""
    return Cockpit(cockpit_version(), COCKPIT_WS, COCKPIT_BRIDGE, ("/usr/share",))


def unpacked(prefix: Path, version: str) -> Cockpit:
    """One unpacked under `prefix` (tests/cockpit/backports.py). Only the
    prefix's share/ is searched: the installed 287's base1 and shell in
    /usr/share must not mix in."""
    return Cockpit(version, str(prefix / "usr/lib/cockpit/cockpit-ws"), str(prefix / "cockpit-bridge-337"),
                   (str(prefix / "usr/share"),))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CockpitServer:
    """cockpit-ws on 127.0.0.1:port serving `page` as the package vfio-advisor,
    with `config` as its manifest override and `path` first in the bridge's PATH."""

    def __init__(self, work: Path, config: dict, port: int | None = None, path: list[str] | None = None,
                 page: Path = PAGE, user: list[str] | None = None, cockpit: Cockpit | None = None):
        self.work = Path(work)
        self.cockpit = cockpit or installed()
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
        env["XDG_DATA_DIRS"] = ":".join((str(self.work / "share"),) + self.cockpit.data_dirs)
        env["XDG_CONFIG_DIRS"] = str(self.work / "etc")
        env["PATH"] = ":".join((path or []) + ["/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        # The bridge also reads ~/.config/cockpit/*.override.json and
        # ~/.local/share/cockpit/: empty ones of this server's, so that
        # neither the tester's own files nor an unreadable $HOME (the bridge
        # run as nobody keeps root's HOME; cockpit 337's Python bridge dies on
        # the PermissionError) decide what is served.
        for var, sub in (("XDG_CONFIG_HOME", "config-home"), ("XDG_DATA_HOME", "data-home")):
            (self.work / sub).mkdir(exist_ok=True)
            env[var] = str(self.work / sub)
        self.env = env
        self.bus: subprocess.Popen | None = None
        self.user = user or []
        self.log = self.work / "cockpit-ws.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def page_url(self, fragment: str = "") -> str:
        """The page alone (no shell frame): what the tests drive."""
        return f"{self.url}/cockpit/@localhost/vfio-advisor/index.html" + (f"#{fragment}" if fragment else "")

    def start_system_bus(self) -> None:
        """A private dbus-daemon standing in for the system bus where the
        machine has none (a container without systemd as PID 1). The shell
        opens D-Bus channels on the system bus at once (hostname1, systemd1);
        cockpit 287's C bridge answers them with an error, cockpit 337's
        Python bridge (cockpit/channels/dbus.py, sd_bus_attach_event on no
        bus) fails the channel, gets it opened again and exits on "channel
        is already open", which ends the session. A bus with no services
        gives both the ordinary "no such name" answers a host gives for a
        service it lacks."""
        if "DBUS_SYSTEM_BUS_ADDRESS" in os.environ or os.path.exists(SYSTEM_BUS) or not shutil.which("dbus-daemon"):
            return
        socket_path = self.work / "system_bus_socket"
        config = self.work / "system-bus.conf"
        config.write_text(PRIVATE_BUS_CONFIG.format(socket=socket_path))
        self.bus = subprocess.Popen(["dbus-daemon", f"--config-file={config}", "--nofork", "--nopidfile"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        end = time.monotonic() + 10
        while not socket_path.exists() and time.monotonic() < end and self.bus.poll() is None:
            time.sleep(0.02)
        if not socket_path.exists():
            self.stop_system_bus()
            raise RuntimeError("the private dbus-daemon did not start")
        socket_path.chmod(0o777)  # the unprivileged leg's bridge runs as nobody
        self.env["DBUS_SYSTEM_BUS_ADDRESS"] = f"unix:path={socket_path}"

    def stop_system_bus(self) -> None:
        if self.bus is not None and self.bus.poll() is None:
            self.bus.terminate()
            self.bus.wait(5)

    def start(self) -> CockpitServer:
        self.start_system_bus()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.user + [self.cockpit.ws, "--no-tls", "--address", "127.0.0.1", "--port", str(self.port),
                             "--local-session=" + self.cockpit.bridge],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + 15
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                self.stop_system_bus()
                raise RuntimeError(f"cockpit-ws exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"cockpit-ws did not listen on 127.0.0.1:{self.port} within 15 s")

    def stop(self) -> None:
        try:
            self.stop_cockpit()
        finally:
            self.stop_system_bus()

    def stop_cockpit(self) -> None:
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
    parser.add_argument("--cockpit", choices=("installed", "337"), default="installed",
                        help="the installed cockpit, or bookworm-backports' 337 unpacked beside it")
    args = parser.parse_args(argv)
    why = missing()
    if why:
        print(f"cockpit-demo: {why}; install cockpit-ws cockpit-bridge cockpit-system (make deps)", file=sys.stderr)
        return 2
    build = installed()
    if args.cockpit == "337":
        from tests.cockpit import backports

        try:
            build = unpacked(backports.prepare(), "337")
        except backports.Unavailable as exc:
            print(f"cockpit-demo: cockpit 337: {exc}", file=sys.stderr)
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
        server = CockpitServer(Path(work), demo_config(f"{work}/state/status.json"), args.port, [venv_bin],
                               cockpit=build)
        try:
            server.start()
        except RuntimeError as exc:
            print(f"cockpit-demo: {exc}", file=sys.stderr)
            return 1
        print(f"vfio-advisor's Cockpit page on the demo host (cockpit {build.name}):")
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
    print("usage: python -m tests.cockpit.cockpitws demo [--port PORT] [--cockpit installed|337]", file=sys.stderr)
    sys.exit(2)
