"""Shared by the guest-agent tests: the cached test guest, what is missing,
a scripted agent."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

from lxml import etree

from vfio_advisor.guest.channel import has_agent_channel

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = Path(os.environ.get("VFIO_ADVISOR_TEST_CACHE", "/var/cache/vfio-advisor-tests")) / "guestagent"
QEMU_GA = "/usr/sbin/qemu-ga"


def missing(*tools: str) -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in tools:
        if not (shutil.which(tool) or Path(tool).is_file()):
            return f"{tool} is not installed (make deps installs it)"
    return None


def guest_image() -> tuple[Path | None, str]:
    """The built guest (kernel, initramfs, /etc/modprobe.d disk), cached under a
    name that changes with the build script. (None, why) when it cannot be built."""
    script = HERE / "build-guest.sh"
    digest = hashlib.sha256(script.read_bytes()).hexdigest()[:12]
    image = CACHE / f"image-{digest}"
    out = subprocess.run([str(script), str(image)], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        return None, f"cannot build the test guest (Debian's archive needed): {out.stderr.strip()[-300:]}"
    return image, ""


def stop_qemu_ga(proc: subprocess.Popen) -> None:
    """Stop a qemu-ga the test started. Debian's qemu-ga 7.2 was seen not to
    exit on SIGTERM (2 of 6 stops in one run here, under load): its main thread
    sat in a futex wait with SIGTERM blocked, i.e. inside its own signal
    handler (qga/main.c quits the GLib main loop from that handler). SIGKILL
    then, so that no agent outlives the test holding its socket."""
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def add_agent_channel(domain_xml: str) -> str | None:
    """A test domain's XML with <channel type='unix'><target type='virtio'
    name='org.qemu.guest_agent.0'/></channel> added as the last device; None
    when it already has one. The text is edited in place (before the one
    </devices>), so the diff shows only the added lines and libvirt's own
    quoting and order stay as they were."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    root = etree.fromstring(domain_xml.encode(), parser)
    if has_agent_channel(root):
        return None
    if domain_xml.count("</devices>") != 1:
        if root.find("devices") is not None or "<devices/>" in domain_xml:
            return None  # <devices/> or an odd layout: leave it to the user
        end = domain_xml.rindex("</domain>")
        return (domain_xml[:end] + "  <devices>\n" + _CHANNEL.format(indent="    ")
                + "  </devices>\n" + domain_xml[end:])
    end = domain_xml.index("</devices>")
    line_start = domain_xml.rfind("\n", 0, end) + 1
    outer = domain_xml[line_start:end]
    indent = (outer if outer.strip() == "" else "  ") + "  "
    return domain_xml[:line_start] + _CHANNEL.format(indent=indent) + domain_xml[line_start:]


_CHANNEL = ("{indent}<channel type='unix'>\n{indent}  <target type='virtio' name='org.qemu.guest_agent.0'/>\n"
            "{indent}</channel>\n")


class ScriptedAgent:
    """A qemu-ga stand-in on a unix socket for the guests a real qemu-ga on
    this host cannot be: a Windows guest (guest-get-osinfo says "mswindows"),
    or a program that fails or prints something odd inside the guest. It
    speaks the QGA wire protocol (one JSON object a line, guest-sync first,
    qga/qapi-schema.json); `run(argv)` gives (exitcode, stdout, stderr) for
    each guest-exec. The real qemu-ga is used wherever it can stand in
    (test_agent_socket.py)."""

    def __init__(self, path: str, osinfo: dict, run):
        self.path, self.osinfo, self.run = path, osinfo, run
        self.ran: list[tuple[str, ...]] = []
        self._exited: dict[int, dict] = {}
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        self._server.listen(4)
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._server.close()

    def __enter__(self) -> "ScriptedAgent":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except socket.timeout:
                continue
            with conn, conn.makefile("rwb") as stream:
                for line in stream:
                    stream.write(json.dumps(self._reply(json.loads(line))).encode() + b"\n")
                    stream.flush()

    def _reply(self, request: dict) -> dict:
        command, args = request.get("execute"), request.get("arguments") or {}
        if command == "guest-sync":
            return {"return": args["id"]}
        if command == "guest-info":
            names = ("guest-info", "guest-get-osinfo", "guest-exec", "guest-exec-status", "guest-get-devices")
            return {"return": {"version": "7.2.0", "supported_commands": [
                {"name": n, "enabled": True} for n in names]}}
        if command == "guest-get-osinfo":
            return {"return": self.osinfo}
        if command == "guest-get-devices":
            return {"return": []}
        if command == "guest-exec":
            argv = (args["path"], *args.get("arg", ()))
            self.ran.append(argv)
            code, out, err = self.run(argv)
            pid = len(self.ran)
            self._exited[pid] = {"exited": True, "exitcode": code,
                                 "out-data": base64.b64encode(out).decode(),
                                 "err-data": base64.b64encode(err).decode()}
            return {"return": {"pid": pid}}
        if command == "guest-exec-status":
            return {"return": self._exited[args["pid"]]}
        return {"error": {"class": "CommandNotFound", "desc": f"The command {command} has not been found"}}
