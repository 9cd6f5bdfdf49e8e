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
"""

from __future__ import annotations

import contextlib
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


def unavailable() -> str | None:
    """Why the product cannot run as nobody here, or None."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    probe = subprocess.run([*_prefix(), sys.executable, "-c", "import os, vfio_advisor; print(os.geteuid())"],
                           capture_output=True, text=True, env=_env(), cwd="/", timeout=60)
    if probe.returncode != 0:
        return ("nobody cannot run this checkout's Python (a clone or venv under a 0700 "
                f"directory?): {probe.stderr.strip().splitlines()[-1:]}")
    if os.geteuid() == 0 and probe.stdout.strip() != str(NOBODY):
        return f"setpriv did not switch to {NOBODY}"
    return None


def require() -> None:
    reason = unavailable()
    if reason:
        pytest.skip(reason)


def _env() -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/", "LC_ALL": "C.UTF-8",
           "NO_COLOR": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    # The checkout under test: the editable install's finder, or PYTHONPATH
    # when a test run points at another copy.
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def run(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `args` as nobody, from /, capturing text output."""
    return subprocess.run([*_prefix(), *args], capture_output=True, text=True, env=_env(), cwd="/",
                          input=stdin, timeout=timeout)


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """`vfio-advisor ARGS` as nobody."""
    return run(sys.executable, "-m", "vfio_advisor", *args, **kwargs)


def python_json(code: str, *argv: str) -> object:
    """Run a Python snippet as nobody; it prints one JSON document."""
    out = run(sys.executable, "-c", code, *argv)
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
