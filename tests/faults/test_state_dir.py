"""The daemon's state directory under faults, with the real daemon process:
full (ENOSPC on a small tmpfs), then read-only, then writable again; and a
state file that is damaged or another version's.

The state file (/var/lib/vfio-advisor/state.json) only carries each device's
settled mode into the domain's next run, so none of this may stop sampling:
the daemon logs one line per condition, goes on, and writes the file once it
can. The file is replaced by rename (sinks.base.write_atomically), so a
reader never finds half of one."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess

import pytest

from tests.faults.support import Daemon, build_host, node_file

STATE_FILE_LINE = "state file"


def _mount_tmpfs(path, size: str) -> None:
    if shutil.which("mount") is None:
        pytest.skip("mount(8) not installed")
    path.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "vfio-advisor-faults", str(path)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root in a mount namespace): {out.stderr.strip()}")


def _fill(path) -> None:
    fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def _remount(path, how: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{how}", str(path)], check=True)


def _last_sample(daemon: Daemon) -> float:
    m = re.search(r"^vfio_advisor_last_sample_timestamp_seconds (\S+)$", daemon.metrics_text(), re.M)
    return float(m.group(1)) if m else 0.0


def _state_is_whole(state) -> None:
    """Every time it is looked at: absent or complete JSON, never a part."""
    try:
        text = (state / "state.json").read_text()
    except FileNotFoundError:
        return
    json.loads(text)


def test_full_then_read_only_then_recovered(tmp_path):
    state = tmp_path / "state"
    _mount_tmpfs(state, "16k")
    daemon = None
    try:
        _fill(state)
        daemon = Daemon(tmp_path, build_host(tmp_path / "host"), f"test://{node_file(tmp_path / 'node.xml')}",
                        state)

        def said(text):
            _state_is_whole(state)
            return text in daemon.log()

        daemon.wait_for(lambda: said("No space left on device"), what="the ENOSPC line")
        before = _last_sample(daemon)
        daemon.wait_for(lambda: said("") and _last_sample(daemon) > before + 0.5, what="sampling on a full disk")
        _remount(state, "ro")
        daemon.wait_for(lambda: said("Read-only file system"), what="the EROFS line")
        before = _last_sample(daemon)
        daemon.wait_for(lambda: said("") and _last_sample(daemon) > before + 0.5, what="sampling on a read-only disk")
        _remount(state, "rw")
        (state / "filler").unlink()
        daemon.wait_for(lambda: said("is written again"), what="the recovery line")
        _state_is_whole(state)
        log = daemon.log()
        assert daemon.stop() == 0
    finally:
        if daemon is not None and daemon.proc.poll() is None:
            daemon.stop()
        subprocess.run(["umount", str(state)], check=False)
    lines = [line for line in log.splitlines() if STATE_FILE_LINE in line]
    # One line per condition: full, read-only, written again.
    assert len(lines) == 3, lines
    assert "No space left on device" in lines[0] and "Read-only file system" in lines[1], lines
    assert "sample failed" not in log and "Traceback" not in log, log
    # The file written after recovery holds both devices' settled modes.
    # (its tmpfs is gone now; the daemon wrote it before stopping, read above)


def test_state_file_written_after_recovery_holds_the_devices(tmp_path):
    state = tmp_path / "state"
    _mount_tmpfs(state, "16k")
    daemon = None
    try:
        _fill(state)
        daemon = Daemon(tmp_path, build_host(tmp_path / "host"), f"test://{node_file(tmp_path / 'node.xml')}",
                        state)
        daemon.wait_for(lambda: "No space left on device" in daemon.log(), what="the ENOSPC line")
        (state / "filler").unlink()
        daemon.wait_for(lambda: (state / "state.json").exists(), what="the state file")
        data = json.loads((state / "state.json").read_text())
        assert daemon.stop() == 0
        leftovers = [p.name for p in state.iterdir() if p.name not in ("state.json", "status.json")]
    finally:
        if daemon is not None and daemon.proc.poll() is None:
            daemon.stop()
        subprocess.run(["umount", str(state)], check=False)
    assert leftovers == []  # no temporary file of a failed write left behind
    (domain,) = data["domains"].values()
    assert {bdf: entry["mode"] for bdf, entry in domain.items()} == {"0000:05:00.0": "msi", "0000:05:00.1": "intx"}


GOOD = {"schema": "vfio-advisor/state/1",
        "domains": {"some-uuid": {"0000:05:00.1": {"mode": "msi"}}}}


@pytest.mark.parametrize("damage", ["truncated", "not-json", "future-version"])
def test_corrupt_state_file_is_set_aside_and_rebuilt(tmp_path, damage):
    state = tmp_path / "state"
    state.mkdir()
    whole = json.dumps(GOOD, indent=1).encode()
    bad = {"truncated": whole[:len(whole) // 2],
           "not-json": b"\x00\xff\xfe binary garbage \x00",
           "future-version": json.dumps({**GOOD, "schema": "vfio-advisor/state/2"}).encode()}[damage]
    (state / "state.json").write_bytes(bad)
    daemon = Daemon(tmp_path, build_host(tmp_path / "host"), f"test://{node_file(tmp_path / 'node.xml')}", state)
    try:
        daemon.wait_for(lambda: (state / "state.json").exists()
                        and (state / "state.json").read_bytes() != bad, what="the rebuilt state file")
        rebuilt = json.loads((state / "state.json").read_text())
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.stop()
    log = daemon.log()
    lines = [line for line in log.splitlines() if STATE_FILE_LINE in line]
    assert len(lines) == 1 and "set aside as" in lines[0], lines
    (aside,) = state.glob("state.json.bad-*")
    assert aside.read_bytes() == bad  # kept as it was, for a look
    assert rebuilt["schema"] == "vfio-advisor/state/1"
    assert "some-uuid" not in rebuilt["domains"]  # nothing of the damaged file read as ours
    (domain,) = rebuilt["domains"].values()
    assert set(domain) == {"0000:05:00.0", "0000:05:00.1"}
    assert "Traceback" not in log
