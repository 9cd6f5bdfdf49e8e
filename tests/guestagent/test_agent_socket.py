"""The agent's refusals on real parts, without a VM:

- Debian's qemu-ga 7.2 on a unix socket, started with `-b guest-exec,...`
  (7.2 has -b/--blacklist; --allow-rpcs came in 8.1): `guest` must say the
  guest's allow-list blocks guest-exec and print the commands to run by hand.
- A socket that accepts and never answers: `guest --timeout 1` must give up
  after about a second and say how long it waited.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.guestagent.support import QEMU_GA, REPO, missing, stop_qemu_ga
from vfio_advisor.guest.agent import GuestAgent, GuestAgentError, SocketAgent
from vfio_advisor.guest.linux import INVENTORY_ARGV


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


@pytest.fixture
def qemu_ga(tmp_path):
    def start(*extra: str) -> str:
        reason = missing(QEMU_GA)
        if reason:
            pytest.skip(reason)
        sock = tmp_path / "qga.sock"
        state = tmp_path / "state"
        state.mkdir(exist_ok=True)
        proc = subprocess.Popen([QEMU_GA, "-m", "unix-listen", "-p", str(sock), "-t", str(state), *extra],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        for _ in range(100):
            # The socket file appears at bind(2), before listen(2): until
            # then a connect is refused. Ready is when one is accepted.
            if sock.exists():
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(str(sock))
                    return str(sock)
                except OSError:
                    pass
                finally:
                    probe.close()
            time.sleep(0.05)
        raise AssertionError(f"qemu-ga did not listen: {proc.stderr.read() if proc.poll() is not None else ''}")
    procs: list[subprocess.Popen] = []
    yield start
    for proc in procs:
        stop_qemu_ga(proc)


def test_blocked_guest_exec_names_the_allow_list_and_the_commands(qemu_ga):
    sock = qemu_ga("-b", "guest-exec,guest-exec-status")
    out = _cli("guest", "blocked-vm", "--agent-socket", sock, "--ids", "8086:293e")
    assert out.returncode == 2, out
    lines = out.stderr.splitlines()
    assert "guest-exec is disabled in the guest's qemu-ga allow-list" in lines[0]
    assert "Traceback" not in out.stderr
    assert lines[1].startswith("run in the guest by hand")
    assert lines[2].startswith("  /bin/sh -c ") and "/proc/interrupts" in out.stderr


def test_blocked_reported_by_the_agent_itself(qemu_ga):
    """The same refusal as qemu-ga words it (CommandNotFound ... has been
    disabled), when the command is sent anyway."""
    sock = qemu_ga("-b", "guest-exec")
    agent = GuestAgent(SocketAgent(sock), timeout=10)
    _version, enabled, disabled = agent.info()
    assert "guest-exec" in disabled and "guest-exec" not in enabled
    with pytest.raises(GuestAgentError) as err:
        agent.execute(INVENTORY_ARGV)
    assert err.value.kind == "blocked"
    agent.transport.close()


def test_unblocked_agent_runs_the_inventory(qemu_ga):
    """The control for the two tests above: the same agent without -b runs the
    inventory script (on this host, as a stand-in Linux guest)."""
    sock = qemu_ga()
    agent = GuestAgent(SocketAgent(sock), timeout=20)
    out = agent.run(INVENTORY_ARGV).decode()
    assert out.startswith("K\t") and "\nI\n" in out
    agent.transport.close()


def test_an_agent_on_its_own_socket_taints_nothing(qemu_ga):
    """libvirt marks a domain tainted only when virDomainQemuAgentCommand
    drives its agent; on its own socket (--agent-socket) libvirt is not
    involved, so the report must not say it was."""
    from vfio_advisor.guest.inspect import TAINT_NOTE, inspect  # noqa: PLC0415

    agent = GuestAgent(SocketAgent(qemu_ga()), timeout=30)
    report = inspect(agent, "socket-guest", [], [])
    agent.transport.close()
    assert report.available and TAINT_NOTE not in report.notes


def test_a_function_without_a_driver_has_no_driver_version(qemu_ga):
    """This host stands in for the guest: a PCI function no driver is bound
    to gets no driver version (not the kernel's release, which is the
    version of a built-in driver only)."""
    import os  # noqa: PLC0415

    from vfio_advisor.guest.inspect import Target, inspect  # noqa: PLC0415

    base = "/sys/bus/pci/devices"
    bare = [b for b in sorted(os.listdir(base)) if not os.path.exists(f"{base}/{b}/driver")]
    if not bare:
        pytest.skip("every PCI function of this host has a driver: no driverless function to read")
    ids = [int(open(f"{base}/{bare[0]}/{f}").read(), 16) for f in ("vendor", "device")]
    agent = GuestAgent(SocketAgent(qemu_ga()), timeout=30)
    report = inspect(agent, "socket-guest", [Target(f"ids:{ids[0]:04x}:{ids[1]:04x}", None, *ids)], [])
    agent.transport.close()
    [dev] = report.devices
    assert dev.guest_driver is None and dev.guest_driver_version is None, dev


def test_silent_agent_times_out_and_says_how_long(tmp_path):
    path = str(tmp_path / "silent.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():  # accept, read, never answer
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except socket.timeout:
                continue
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        # --ids: a socket with nothing to look for is refused before the agent is asked.
        out = _cli("guest", "silent-vm", "--agent-socket", path, "--timeout", "1", "--ids", "8086:293e")
        waited = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert "did not answer" in line and "within 1." in line, line
    assert waited < 15  # bounded: the interpreter's start plus one second


def test_timeout_must_be_bounded(tmp_path):
    out = _cli("guest", "x", "--agent-socket", str(tmp_path / "none"), "--timeout", "0")
    assert out.returncode == 2 and "between 0 and 600" in out.stderr
    out = _cli("guest", "x", "--agent-socket", str(tmp_path / "none"), "--ids", "8086:293e")
    assert out.returncode == 2 and "cannot connect" in out.stderr and len(out.stderr.splitlines()) == 1


def test_non_zero_exit_and_too_large_output_are_one_line(qemu_ga):
    """Through a real qemu-ga (on this host as a stand-in guest): a command
    that fails, and one whose output passes the 4 MiB cap."""
    agent = GuestAgent(SocketAgent(qemu_ga()), timeout=30)
    with pytest.raises(GuestAgentError) as err:
        agent.run(["/bin/sh", "-c", "echo 'no such key' >&2; exit 3"])
    assert err.value.kind == "exit-status"
    assert str(err.value).endswith("exited with status 3 in the guest: no such key")
    assert err.value.commands == ()  # nothing printed after the one line
    with pytest.raises(GuestAgentError) as err:
        agent.run(["/bin/sh", "-c", "head -c 5000000 /dev/zero"])
    assert err.value.kind == "too-large" and "\n" not in str(err.value)
    agent.transport.close()


def test_a_long_script_failing_is_one_bounded_line_with_its_first_error(qemu_ga):
    """Through a real qemu-ga: a many-line `sh -c` script that fails is named
    by its first line only, and the guest's first line of stderr (the reason,
    not whatever the script printed after it) is what the message says."""
    script = "\n".join(["printf 'K\\tx\\n'"] * 30 + ["cat /proc/no-such-file", "echo later >&2", "exit 1"])
    agent = GuestAgent(SocketAgent(qemu_ga()), timeout=30)
    with pytest.raises(GuestAgentError) as err:
        agent.run(["/bin/sh", "-c", script])
    agent.transport.close()
    message = str(err.value)
    assert err.value.kind == "exit-status" and "\n" not in message, message
    assert ": /bin/sh -c printf 'K\\tx\\n' … exited with status 1 in the guest: " in message, message
    assert "/proc/no-such-file: No such file or directory" in message and len(message) < 300, message
    assert err.value.commands == ()  # rerunning a failed command by hand is no remedy
