"""tests/system/without-host-journal.sh, `make test`'s wrapper: with a
journald socket present it either hides it (root: a tmpfs over
/run/systemd/journal in a private mount namespace) or refuses to run the
tests (exit 125, one line) - never runs them next to the host's journal.

Each case builds its own /run/systemd in a private mount namespace (a tmpfs,
so the machine's is untouched) with or without a real listening unix socket
at journal/socket, and runs the wrapper in it as root, or as nobody (setpriv:
not root, so no namespace of its own).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import nobody

SCRIPT = Path(__file__).resolve().parents[1] / "system/without-host-journal.sh"
# Listens on journal/socket as journald does (SOCK_DGRAM), and runs the rest.
WITH_SOCKET = """
import os, socket, subprocess, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/run/systemd/journal/socket")
sys.exit(subprocess.run(sys.argv[1:]).returncode)
"""


@pytest.fixture
def world():
    if os.geteuid() != 0:
        pytest.skip("needs root (a private mount namespace holding its own /run/systemd)")
    for tool in ("unshare", "setpriv", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (util-linux, mount)")
    with nobody.tree() as top:
        shutil.copy(SCRIPT, top / "wrapper.sh")
        (top / "wrapper.sh").chmod(0o755)
        out = top / "out"
        out.mkdir()
        os.chown(out, nobody.NOBODY, nobody.NOBODY)
        yield top


def run(top: Path, *, socket: bool, as_nobody: bool) -> subprocess.CompletedProcess:
    """In a fresh /run/systemd (journal/socket listening if `socket`): the
    wrapper runs a command that records what it sees of /run/systemd/journal."""
    probe = f"ls -A /run/systemd/journal > {top}/out/seen 2>&1; echo ran"
    wrapper = ["sh", str(top / "wrapper.sh"), "sh", "-c", probe]
    if as_nobody:
        wrapper = ["setpriv", f"--reuid={nobody.NOBODY}", f"--regid={nobody.NOBODY}", "--clear-groups",
                   *wrapper]
    inner = "mount -t tmpfs -o mode=0755 vfio-advisor-test /run/systemd && mkdir /run/systemd/journal && "
    inner += (f'exec {sys.executable} -c "$0" "$@"' if socket else 'exec "$@"')
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner]
    cmd += [WITH_SOCKET if socket else "sh"] + wrapper  # $0 of sh -c, then the wrapper
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/",
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"})


def test_root_runs_the_command_with_the_journal_sockets_hidden(world):
    out = run(world, socket=True, as_nobody=False)
    assert (out.returncode, out.stdout) == (0, "ran\n"), out.stderr
    assert (world / "out/seen").read_text() == ""  # an empty tmpfs over the socket
    assert out.stderr == ""


def test_without_a_namespace_it_refuses_next_to_a_journald_socket(world):
    out = run(world, socket=True, as_nobody=True)
    assert out.returncode == 125
    assert out.stdout == "" and not (world / "out/seen").exists()  # the command never ran
    (line,) = out.stderr.splitlines()
    assert line.startswith("without-host-journal: /run/systemd/journal/socket is there and cannot be hidden")


def test_without_a_namespace_and_without_journald_it_runs(world):
    out = run(world, socket=False, as_nobody=True)
    assert (out.returncode, out.stdout) == (0, "ran\n"), out.stderr
    assert out.stderr == ""
