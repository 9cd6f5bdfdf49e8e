"""A bounded client for the QEMU guest agent (qemu-ga).

Two transports speak the same QGA JSON protocol:
- `LibvirtAgent`: libvirt's virDomainQemuAgentCommand (python:
  libvirt_qemu.qemuAgentCommand), what users run. libvirt (9.0,
  src/qemu/qemu_driver.c qemuDomainQemuAgentCommand) marks the domain tainted
  "custom-ga-command" on the first such call; the mark goes when it stops.
- `SocketAgent`: a qemu-ga unix socket opened directly (`qemu-ga -m
  unix-listen -p SOCK`), for an agent reachable without libvirt.

Every call has a deadline; every failure is a `GuestAgentError` whose str()
is one line and whose `kind` names the case (see KINDS).
"""

from __future__ import annotations

import base64
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from vfio_advisor.errors import AdvisorError

AGENT_CHANNEL = "org.qemu.guest_agent.0"
# qemu-ga keeps at most 16 MiB of a guest-exec child's output per stream and
# then sets out-truncated (qga/commands.c GUEST_EXEC_MAX_OUTPUT, QEMU 7.2).
# Nothing this tool runs prints more than a few hundred KiB: past this, stop.
MAX_OUTPUT_BYTES = 4 * 1024 * 1024
DEFAULT_TIMEOUT = 20.0  # seconds for one agent command, guest-exec polling included

KINDS = ("no-channel", "not-connected", "timeout", "blocked", "permission", "exit-status",
         "too-large", "not-running", "read-only", "no-domain", "connection", "protocol")


class GuestAgentError(AdvisorError):
    def __init__(self, kind: str, message: str, *, commands: Sequence[Sequence[str]] = ()):
        super().__init__(message)
        assert kind in KINDS, kind
        self.kind = kind
        # For "blocked": what the user can run by hand instead.
        self.commands = tuple(tuple(c) for c in commands)


class Transport(Protocol):
    label: str

    def call(self, payload: dict, timeout: float) -> object: ...


@dataclass(frozen=True)
class ExecResult:
    argv: tuple[str, ...]
    exitcode: int | None
    stdout: bytes
    stderr: bytes
    signal: int | None = None


def _blocked(command: str, text: str) -> bool:
    # qemu-ga answers a command disabled with -b/--blacklist (7.2) or outside
    # --allow-rpcs (8.1+) with CommandNotFound "The command X has been disabled
    # for this instance" (qapi/qmp-dispatch.c do_qmp_dispatch); RHEL's
    # qemu-guest-agent ships guest-exec disabled in /etc/sysconfig/qemu-ga.
    return "has been disabled" in text or ("CommandNotFound" in text and command in text)


class LibvirtAgent:
    """qemu-ga through libvirt for one domain (a read-write connection)."""

    def __init__(self, domain, label: str):
        self.domain = domain
        self.label = label

    def call(self, payload: dict, timeout: float) -> object:
        import libvirt  # noqa: PLC0415 - lazy: the hook never loads libvirt
        import libvirt_qemu  # noqa: PLC0415

        command = payload.get("execute", "?")
        seconds = max(1, int(round(timeout)))
        started = time.monotonic()
        try:
            reply = libvirt_qemu.qemuAgentCommand(self.domain, json.dumps(payload), seconds, 0)
        except libvirt.libvirtError as exc:
            raise classify_libvirt_error(exc, command, self.label,
                                         time.monotonic() - started) from None
        if reply is None:
            raise GuestAgentError("protocol", f"{self.label}: the agent sent no reply to {command}")
        try:
            doc = json.loads(reply)
        except ValueError:
            raise GuestAgentError("protocol", f"{self.label}: the agent's reply to {command} "
                                  "is not JSON") from None
        if not isinstance(doc, dict) or "return" not in doc:
            raise GuestAgentError("protocol", f"{self.label}: unexpected reply to {command}")
        return doc["return"]


def classify_libvirt_error(exc, command: str, label: str, waited: float) -> GuestAgentError:
    """One line per libvirt failure. Codes: libvirt 9.0 include/libvirt/virterror.h;
    messages: src/qemu/qemu_agent.c and qemu_domain.c (qemuDomainAgentAvailable)."""
    import libvirt  # noqa: PLC0415

    code = exc.get_error_code()
    text = exc.get_error_message() or str(exc)
    if _blocked(command, text):
        return GuestAgentError("blocked", f"{label}: the guest's agent refuses {command}: "
                               "it is disabled in the guest's qemu-ga configuration (allow-list)")
    if code == libvirt.VIR_ERR_OPERATION_DENIED or "read only access" in text:
        return GuestAgentError("read-only", f"{label}: the connection is read-only; the guest "
                               "agent needs a read-write connection (root, or polkit's "
                               "org.libvirt.unix.manage)")
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return GuestAgentError("no-domain", f"{label}: no such domain")
    if "not configured" in text:  # qemuDomainAgentAvailable: no org.qemu.guest_agent.0 channel
        return GuestAgentError("no-channel", f"{label}: the domain has no guest agent channel "
                               f"({AGENT_CHANNEL}); 'vfio-advisor fix --guest' prints the XML to add")
    if code == libvirt.VIR_ERR_OPERATION_INVALID and "not running" in text:
        return GuestAgentError("not-running", f"{label}: the domain is not running")
    if code == libvirt.VIR_ERR_AGENT_UNRESPONSIVE:
        if "not connected" in text or "not available" not in text:
            return GuestAgentError("not-connected", f"{label}: the guest agent is not connected "
                                   "(qemu-ga not running in the guest, or the guest still booting)")
        return GuestAgentError("timeout", f"{label}: the guest agent did not answer {command} "
                               f"within {waited:.1f} s")
    if code == libvirt.VIR_ERR_OPERATION_TIMEOUT:
        return GuestAgentError("timeout", f"{label}: libvirt timed out waiting for the agent "
                               f"({command}, {waited:.1f} s)")
    return GuestAgentError("connection", f"{label}: {command}: {text.splitlines()[0] if text else code}")


class SocketAgent:
    """qemu-ga on a unix socket, speaking the QGA protocol itself."""

    def __init__(self, path: str):
        self.path = path
        self.label = f"agent socket {path}"
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._sync_id = int(time.time()) & 0x7FFFFFFF

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self, deadline: float) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                sock.connect(self.path)
            except OSError as exc:
                sock.close()
                raise GuestAgentError("not-connected", f"{self.label}: cannot connect: "
                                      f"{exc.strerror or exc}") from None
            self._sock = sock
            # guest-sync first: a reply left over from an earlier client that
            # timed out would otherwise be taken for ours (qga/qapi-schema.json,
            # guest-sync).
            self._sync_id += 1
            self._send({"execute": "guest-sync", "arguments": {"id": self._sync_id}}, deadline)
            while self._receive("guest-sync", deadline, started=time.monotonic()).get("return") != self._sync_id:
                pass
        return self._sock

    def _send(self, payload: dict, deadline: float) -> None:
        assert self._sock is not None
        self._sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            self._sock.sendall(json.dumps(payload).encode() + b"\n")
        except OSError as exc:
            self.close()
            raise GuestAgentError("not-connected", f"{self.label}: {exc.strerror or exc}") from None

    def _receive(self, command: str, deadline: float, started: float) -> dict:
        assert self._sock is not None
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise GuestAgentError("timeout", f"{self.label}: the agent did not answer {command} "
                                      f"within {time.monotonic() - started:.1f} s")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                continue
            except OSError as exc:
                self.close()
                raise GuestAgentError("not-connected", f"{self.label}: {exc.strerror or exc}") from None
            if not chunk:
                self.close()
                raise GuestAgentError("not-connected", f"{self.label}: the agent closed the connection")
            self._buffer += chunk
            if len(self._buffer) > 4 * MAX_OUTPUT_BYTES:
                self.close()
                raise GuestAgentError("too-large", f"{self.label}: reply to {command} exceeds "
                                      f"{4 * MAX_OUTPUT_BYTES} bytes")
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            doc = json.loads(line.lstrip(b"\xff"))  # 0xFF: guest-sync-delimited's marker
        except ValueError:
            raise GuestAgentError("protocol", f"{self.label}: the reply to {command} is not JSON") from None
        return doc if isinstance(doc, dict) else {}

    def call(self, payload: dict, timeout: float) -> object:
        command = payload.get("execute", "?")
        started = time.monotonic()
        deadline = started + timeout
        self._connect(deadline)
        self._send(payload, deadline)
        doc = self._receive(command, deadline, started)
        if "error" in doc:
            err = doc["error"] if isinstance(doc["error"], dict) else {}
            text = f"{err.get('class', '')}: {err.get('desc', '')}"
            if _blocked(command, text):
                raise GuestAgentError("blocked", f"{self.label}: the guest's agent refuses {command}: "
                                      "it is disabled in the guest's qemu-ga configuration (allow-list)")
            raise GuestAgentError("protocol", f"{self.label}: {command}: {err.get('desc', 'error')}")
        return doc.get("return")


@dataclass
class GuestAgent:
    """The RPCs this tool uses, over either transport, with one deadline each."""

    transport: Transport
    timeout: float = DEFAULT_TIMEOUT
    sleep: Callable[[float], None] = time.sleep
    calls: list[str] = field(default_factory=list)  # what ran, for the report

    @property
    def label(self) -> str:
        return self.transport.label

    def _call(self, command: str, arguments: dict | None = None, timeout: float | None = None):
        payload: dict = {"execute": command}
        if arguments:
            payload["arguments"] = arguments
        self.calls.append(command)
        return self.transport.call(payload, self.timeout if timeout is None else timeout)

    def info(self) -> tuple[str, frozenset[str], frozenset[str]]:
        """(qemu-ga version, enabled RPCs, disabled RPCs) from guest-info."""
        reply = self._call("guest-info")
        if not isinstance(reply, dict):
            raise GuestAgentError("protocol", f"{self.label}: guest-info reply is not an object")
        enabled, disabled = set(), set()
        for entry in reply.get("supported_commands") or ():
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                (enabled if entry.get("enabled", True) else disabled).add(entry["name"])
        return str(reply.get("version", "?")), frozenset(enabled), frozenset(disabled)

    def osinfo(self) -> dict:
        reply = self._call("guest-get-osinfo")
        return reply if isinstance(reply, dict) else {}

    def devices(self) -> list[dict]:
        reply = self._call("guest-get-devices")
        return [d for d in reply if isinstance(d, dict)] if isinstance(reply, list) else []

    def execute(self, argv: Sequence[str], stdin: bytes | None = None) -> ExecResult:
        """guest-exec with capture-output, then guest-exec-status until it
        exits or the deadline passes. argv goes to the guest as a list: qemu-ga
        spawns it without a shell (qga/commands.c qmp_guest_exec,
        g_spawn_async_with_pipes)."""
        argv = tuple(argv)
        if not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
            raise ValueError(f"bad argv {argv!r}")
        started = time.monotonic()
        args: dict = {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
        if stdin is not None:
            args["input-data"] = base64.b64encode(stdin).decode()
        reply = self._call("guest-exec", args)
        pid = reply.get("pid") if isinstance(reply, dict) else None
        if not isinstance(pid, int):
            raise GuestAgentError("protocol", f"{self.label}: guest-exec gave no pid")
        delay = 0.05
        while True:
            left = self.timeout - (time.monotonic() - started)
            if left <= 0:
                raise GuestAgentError("timeout", f"{self.label}: {argv[0]} did not finish in the guest "
                                      f"within {self.timeout:.1f} s (pid {pid} left running)")
            status = self._call("guest-exec-status", {"pid": pid}, timeout=left)
            if isinstance(status, dict) and status.get("exited"):
                break
            self.sleep(min(delay, max(0.0, left)))
            delay = min(delay * 2, 0.5)
        if status.get("out-truncated") or status.get("err-truncated"):
            raise GuestAgentError("too-large", f"{self.label}: {argv[0]}'s output is too large "
                                  "(qemu-ga truncated it at 16 MiB)")
        out = _b64(status.get("out-data"), self.label, argv[0])
        err = _b64(status.get("err-data"), self.label, argv[0])
        return ExecResult(argv, status.get("exitcode"), out, err, status.get("signal"))

    def run(self, argv: Sequence[str], stdin: bytes | None = None) -> bytes:
        """execute(), and a one-line error for a non-zero exit or a refusal."""
        result = self.execute(argv, stdin)
        if result.exitcode == 0 and result.signal is None:
            return result.stdout
        said = (result.stderr or result.stdout).decode("utf-8", "replace")
        detail = first_lines(said)
        if "permission denied" in said.lower() or "access is denied" in said.lower():
            raise GuestAgentError(
                "permission", f"{self.label}: the guest refused {argv[0]}: {detail} (on RHEL-family "
                "guests SELinux confines qemu-ga, virt_qemu_ga_t: allow it with setsebool "
                "virt_qemu_ga_run_unconfined on, or run the commands by hand)",
                commands=[argv])
        how = f"signal {result.signal}" if result.signal is not None else f"status {result.exitcode}"
        # No commands to run by hand: the same command fails there too, and
        # printing a many-line script after the message buried its reason.
        raise GuestAgentError("exit-status", f"{self.label}: {brief_argv(argv)} exited with {how} "
                              f"in the guest{': ' + detail if detail else ''}")

    def reboot_through_libvirt(self) -> None:
        """libvirt's agent reboot (virDomainReboot with
        VIR_DOMAIN_REBOOT_GUEST_AGENT): qemu-ga runs the guest's own
        shutdown -r (posix) or ExitWindowsEx (win32)."""
        import libvirt  # noqa: PLC0415

        domain = getattr(self.transport, "domain", None)
        if domain is None:
            raise GuestAgentError("connection", f"{self.label}: --reboot needs a libvirt domain")
        started = time.monotonic()
        try:
            domain.reboot(libvirt.VIR_DOMAIN_REBOOT_GUEST_AGENT)
        except libvirt.libvirtError as exc:
            raise classify_libvirt_error(exc, "guest-shutdown", self.label,
                                         time.monotonic() - started) from None


def _b64(data, label: str, program: str) -> bytes:
    if not data:
        return b""
    if not isinstance(data, str) or len(data) > MAX_OUTPUT_BYTES * 4 // 3 + 4:
        raise GuestAgentError("too-large", f"{label}: {program}'s output is larger than "
                              f"{MAX_OUTPUT_BYTES // (1024 * 1024)} MiB")
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        raise GuestAgentError("protocol", f"{label}: {program}'s output is not base64") from None


def brief_argv(argv: Sequence[str], limit: int = 100) -> str:
    """argv in one bounded line: each argument up to its first line break
    (the inventory's `sh -c` script is 30 lines), the whole cut at `limit`."""
    parts = [a.split("\n", 1)[0] + (" …" if "\n" in a else "") for a in argv]
    text = " ".join(parts)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def first_lines(text: str, limit: int = 200) -> str:
    """The first non-empty line of a program's stderr, bounded, saying how
    many more there were: a failing script's first complaint is its cause,
    what it prints after is consequence."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    head = lines[0] if len(lines[0]) <= limit else lines[0][:limit - 1] + "…"
    return head + (f" (+{len(lines) - 1} more line{'s' if len(lines) > 2 else ''})" if len(lines) > 1 else "")
