"""What `fix --guest --apply` changed, kept in the state directory so that
`guest` (and the daemon) can tell "waiting for a restart" from "reset since"."""

from __future__ import annotations

import json
import os
import re

SUBDIR = "guest-changes"


def _path(state_dir: str, domain: str) -> str:
    # libvirt domain names may hold almost anything but '/'; keep the file name tame.
    safe = re.sub(r"[^A-Za-z0-9_.-]", lambda m: f"%{ord(m.group()):02x}", domain)
    return os.path.join(state_dir, SUBDIR, f"{safe}.json")


def load(state_dir: str, domain: str) -> list[dict]:
    try:
        with open(_path(state_dir, domain), encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        return []  # an unreadable record is no record; `guest` then says nothing about changes
    changes = doc.get("changes") if isinstance(doc, dict) else None
    return [c for c in changes if isinstance(c, dict)] if isinstance(changes, list) else []


def last_change(changes: list[dict], key: str) -> dict | None:
    """The newest change recorded for a function key (host BDF or IDs)."""
    found = [c for c in changes if c.get("key") == key]
    return max(found, key=lambda c: c.get("epoch", 0)) if found else None


def record(state_dir: str, domain: str, entries: list[dict], now: float | None = None,
           run_id: int | None = None) -> str:
    """Append entries (each with key, os, driver, driver_version, target,
    before, after, argv) under one timestamp and the domain's run (libvirt's
    domain ID, which a stop and start changes: the daemon's sign that the
    guest restarted); atomic replace. Returns the path.

    The file is world-readable: the admin runs `fix --guest` as root, the
    daemon reads it as its DynamicUser= (systemd.exec(5)), which owns the
    state directory but not this root-made file; mkstemp makes it 0600."""
    # Imported here: the daemon loads this module to read records only.
    import tempfile  # noqa: PLC0415
    import time  # noqa: PLC0415

    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    changes = load(state_dir, domain)
    for entry in entries:
        changes.append({**entry, "at": stamp, "epoch": now,
                        **({"run_id": run_id} if run_id is not None else {})})
    path = _path(state_dir, domain)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"domain": domain, "changes": changes}, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
