"""Run the product as a real unprivileged user, not by patching `open`.

Root reads mode-000 files (CAP_DAC_OVERRIDE) and reads all 4096 bytes of a
PCI config space (CAP_SYS_ADMIN, drivers/pci/pci-sysfs.c config_read()), so a
permission test must drop both for real. setpriv(1) (util-linux) switches to
nobody (65534) with no supplementary groups; the kernel clears the effective
and permitted capabilities when every UID leaves 0 (capabilities(7),
"Effect of user ID changes on capabilities"). Each test then runs the product
in that subprocess and reads its answer as JSON.

Trees for nobody live in a world-traversable directory of their own: pytest's
tmp_path sits under /tmp/pytest-of-root, mode 0700, which nobody cannot enter.
The program itself may sit in such a directory too: a clone under /root
(0700 on Debian) or under `mktemp -d` (0700), with its venv. nobody then runs
a copy: the package and the venv's modules it imports, copied by install's
own copy_program (what a clone install gives the daemon's DynamicUser=) into
a 0755 directory under /var/tmp, on the interpreter the venv was made from.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534
SETPRIV = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]


def _prefix() -> list[str]:
    # Already unprivileged (a non-root CI user): run as that user.
    return SETPRIV if os.geteuid() == 0 else []


# What a run as nobody imports: the program and what its commands import
# (the libvirt test driver, lxml, the journal sink's systemd module).
_PROBE = "import os, vfio_advisor, libvirt, libvirtaio, lxml.etree, systemd.journal; print(os.geteuid())"


def _probe(python: str, pythonpath: str | None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([*_prefix(), python, "-c", _PROBE], capture_output=True, text=True,
                              env=_env(pythonpath), cwd="/", timeout=60)
    except OSError as exc:  # not root: exec of a path this user cannot reach
        return subprocess.CompletedProcess([python], 126, "", str(exc))


@functools.cache
def _runtime() -> tuple[str, str | None, str | None]:
    """(interpreter, PYTHONPATH, why neither works) for runs as nobody: this
    checkout's own Python when nobody can reach it, else a copy nobody can."""
    direct = _probe(sys.executable, os.environ.get("PYTHONPATH"))
    if direct.returncode == 0:
        return sys.executable, os.environ.get("PYTHONPATH"), None
    from vfio_advisor.install import LIB, base_interpreter, copy_program  # noqa: PLC0415

    python = base_interpreter()
    top = Path(tempfile.mkdtemp(prefix="vfio-advisor-nobody-python-", dir="/var/tmp"))
    atexit.register(shutil.rmtree, top, True)
    top.chmod(0o755)
    try:
        copy_program(top, python)
    except Exception as exc:  # noqa: BLE001 - said as the skip reason
        return python, None, f"cannot copy the program for nobody to {top}: {exc}"
    lib = str(top / LIB)
    copy = _probe(python, lib)
    if copy.returncode != 0:
        why = (direct.stderr.strip().splitlines() or [""])[-1]
        return python, lib, ("nobody can run neither this checkout's Python (a clone or venv under a 0700 "
                             f"directory?): {why}, nor {python} on a copy in {lib}: "
                             f"{(copy.stderr.strip().splitlines() or [''])[-1]}")
    return python, lib, None


def python() -> str:
    """The interpreter nobody runs (with env()'s PYTHONPATH)."""
    return _runtime()[0]


def unavailable() -> str | None:
    """Why the product cannot run as nobody here, or None."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    interpreter, pythonpath, why = _runtime()
    if why:
        return why
    probe = _probe(interpreter, pythonpath)
    if os.geteuid() == 0 and probe.stdout.strip() != str(NOBODY):
        return f"setpriv did not switch to {NOBODY}"
    return None


def require() -> None:
    reason = unavailable()
    if reason:
        pytest.skip(reason)


def _env(pythonpath: str | None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/", "LC_ALL": "C.UTF-8",
           "NO_COLOR": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    # The checkout under test: the editable install's finder, PYTHONPATH when
    # a test run points at another copy, or nobody's copy (_runtime).
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def env(**extra: str) -> dict[str, str]:
    """The environment of a run as nobody, plus `extra`."""
    return {**_env(_runtime()[1]), **extra}


def command(*args: str) -> list[str]:
    """`args` run as nobody (setpriv when root)."""
    return [*_prefix(), *args]


def run(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `args` as nobody, from /, capturing text output."""
    return subprocess.run(command(*args), capture_output=True, text=True, env=env(), cwd="/",
                          input=stdin, timeout=timeout)


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """`vfio-advisor ARGS` as nobody."""
    return run(python(), "-m", "vfio_advisor", *args, **kwargs)


def python_json(code: str, *argv: str) -> object:
    """Run a Python snippet as nobody; it prints one JSON document."""
    out = run(python(), "-c", code, *argv)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@contextlib.contextmanager
def tree() -> Iterator[Path]:
    """A fresh directory nobody can enter (0755 up to /tmp), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="vfio-advisor-nobody-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        # Restore what tests took away, so the tree can be removed as any user.
        for dirpath, dirnames, _ in os.walk(path):
            for d in dirnames:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(dirpath, d), 0o755)
        shutil.rmtree(path, ignore_errors=True)
