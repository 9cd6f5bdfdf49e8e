"""The hook's promise "never fail a VM start", where the Python side fails:
run through the installed shell front (vfio_advisor/data/qemu-hook.sh) as
libvirt runs it (env -i, `NAME prepare begin -`, XML on stdin), with real
processes failing for real:

- an interpreter without lxml (a `--python` venv made without the
  dependencies): a ModuleNotFoundError, not a ValueError, inside the
  analysis; it is logged as VA9001 with its type, and even with
  block_on_error = true an internal error never blocks the start;
- the Python process killed by SIGSEGV or SIGKILL while it reads the XML:
  the shell front exits 0 (only the Python side's 3 means "block");
- a Python that never finishes: timeout(1) in the shell front ends it after
  60 s and the start goes on (the Python side's own [hook] timeout is set
  far away here).

libvirt treats a non-zero exit of the prepare hook as a failed start
(https://libvirt.org/hooks.html, "the guest start will fail").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples/demo-host"
HOOK_ENV = ["env", "-i", "LC_ALL=C", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME=/root"]


@pytest.fixture(autouse=True)
def no_host_journal():
    # The hook logs to journald when its socket is there: only under
    # tests/system/without-host-journal.sh (make test) is it hidden.
    if os.path.exists("/run/systemd/journal/socket"):
        pytest.skip("a journald socket is reachable: run under tests/system/without-host-journal.sh")


def install(tmp_path: Path, config: str, python: str | None = None) -> Path:
    root = tmp_path / "root"
    cfg = tmp_path / "hook-config.toml"
    cmd = [sys.executable, "-m", "vfio_advisor", "install", "--root", str(root), "--config", str(cfg)]
    out = subprocess.run(cmd + (["--python", python] if python else []), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    cfg.write_text(f'[hook]\nhost_root = "{DEMO / "root"}"\n' + config)
    return root / "etc/libvirt/hooks/qemu.d/vfio-advisor"


def domain_xml(name: str) -> bytes:
    from tests.hook.test_hook import libvirt_xml  # noqa: PLC0415

    return libvirt_xml(name)


def test_an_internal_error_other_than_valueerror_is_logged_and_never_blocks(tmp_path):
    bare = tmp_path / "bare"
    made = subprocess.run([_base_python(), "-m", "venv",
                           "--without-pip", str(bare)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    python = bare / "bin/python"
    probe = subprocess.run([str(python), "-c", "import lxml"], capture_output=True, text=True)
    assert probe.returncode != 0, "the bare venv sees lxml: the premise does not hold"
    hook = install(tmp_path, "block_on_error = true\n", str(python))
    # oldbox has VA2003 (a warning) and no error; here the
    # analysis never ran, and the internal error alone must not block.
    out = subprocess.run([*HOOK_ENV, str(hook), "oldbox", "prepare", "begin", "-"],
                         input=domain_xml("oldbox"), capture_output=True, timeout=120)
    err = out.stderr.decode()
    assert out.returncode == 0, err
    assert "vfio-advisor: oldbox: VA9001 ModuleNotFoundError: No module named 'lxml'" in err.splitlines(), err
    assert "blocking" not in err and "Traceback" not in err


def _base_python() -> str:
    from vfio_advisor.install import base_interpreter  # noqa: PLC0415

    return base_interpreter()


def _python_of(wrapper: subprocess.Popen, timeout: float = 30) -> int:
    """The hook's Python process under the shell front (sh -> timeout -> python)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for pid in _descendants(wrapper.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"vfio_advisor.hook" in cmdline:
                return pid
        time.sleep(0.02)
    raise AssertionError("the hook's Python never started")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def start_hook(hook: Path, name: str = "win11") -> subprocess.Popen:
    """The hook, with stdin left open: its Python waits for the rest of the XML."""
    proc = subprocess.Popen([*HOOK_ENV, str(hook), name, "prepare", "begin", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(domain_xml(name)[:200])
    proc.stdin.flush()
    return proc


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL])
def test_a_python_that_dies_by_a_signal_does_not_fail_the_start(tmp_path, sig):
    hook = install(tmp_path, "block_on_error = true\n")
    proc = start_hook(hook)
    try:
        os.kill(_python_of(proc), sig)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert rc == 0


def test_a_python_that_never_finishes_is_ended_by_timeout_and_the_start_goes_on(tmp_path):
    """Takes the shell front's 60 s (timeout -k 2 60 in qemu-hook.sh)."""
    hook = install(tmp_path, "timeout = 100000\n")
    started = time.monotonic()
    proc = start_hook(hook)
    try:
        python = _python_of(proc)
        rc = proc.wait(timeout=90)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert rc == 0
    assert 59 <= took < 75, took
    assert not Path(f"/proc/{python}").exists()  # ended, and reaped by timeout(1)
