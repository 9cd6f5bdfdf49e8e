"""Run a command beside a real private systemd-journald and read back what
it logged (tests/support/private-journal.sh does the namespace work)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("private-journal.sh")


@dataclass
class JournalRun:
    rc: int
    entries: list[dict]
    explained: str
    stdout: str
    stderr: str

    def by_rule(self, rule_id: str) -> list[dict]:
        return [e for e in self.entries if e.get("VFIO_ADVISOR_RULE") == rule_id]


def journal_available() -> str | None:
    """Why a private journald cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (mount namespaces)"
    for tool in ("unshare", "journalctl"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if not os.path.exists("/lib/systemd/systemd-journald"):
        return "systemd-journald not installed"
    return None


def missing_tools(*tools: str) -> str | None:
    """Why a tier that needs these commands and a private journald cannot run."""
    for tool in tools:
        if shutil.which(tool) is None:
            return f"{tool} not installed (make test installs what the tiers need)"
    return journal_available()


def build_catalog_db(root: Path, catalog_text: str) -> Path:
    """journalctl --root=ROOT --update-catalog, as `install` does on a host."""
    cat = root / "usr/lib/systemd/catalog"
    cat.mkdir(parents=True, exist_ok=True)
    (cat / "vfio-advisor.catalog").write_text(catalog_text)
    subprocess.run(["journalctl", f"--root={root}", "--update-catalog"], check=True,
                   capture_output=True)
    return root / "var/lib/systemd/catalog"


def run_in_journal(work: Path, cmd: list[str], *, stdin: bytes = b"",
                   catalog_db: Path | None = None, env: dict | None = None,
                   timeout: float = 120) -> JournalRun:
    reason = journal_available()
    if reason:
        pytest.skip(f"private journald: {reason}")
    work.mkdir(parents=True, exist_ok=True)
    args = [str(SCRIPT), str(work)]
    if catalog_db is not None:
        args.append(str(catalog_db))
    args += ["--", *cmd]
    # Files, not pipes: a process left behind (a daemon, a QEMU) that inherited
    # them would keep subprocess.run waiting for EOF.
    with open(work / "stdout", "wb") as out, open(work / "stderr", "wb") as err:
        subprocess.run(args, input=stdin, stdout=out, stderr=err, timeout=timeout, env=env)
    stdout = (work / "stdout").read_bytes()
    stderr = (work / "stderr").read_bytes()
    rc_file = work / "rc"
    assert rc_file.exists(), f"private journal run failed: {stderr.decode(errors='replace')}"
    entries = [json.loads(line) for line in (work / "entries.json").read_text().splitlines() if line.strip()]
    return JournalRun(rc=int(rc_file.read_text()), entries=entries,
                      explained=(work / "explained.txt").read_text(errors="replace"),
                      stdout=stdout.decode(errors="replace"),
                      stderr=stderr.decode(errors="replace"))
