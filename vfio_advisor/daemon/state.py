"""What the daemon keeps: the facts of each followed domain (without the
host's interrupt table), and each device's settled mode across runs (the
state file under /var/lib/vfio-advisor). It also reads there what
`fix --guest --apply` recorded (guest/changes.py, the one reader of that
record): the state directory is the daemon's own, not the host tree, so
it is read here and not through HostRoot."""

from __future__ import annotations

import errno
import json
import os
import time
from typing import Callable

from vfio_advisor.facts.model import DomainFacts
from vfio_advisor.guest import changes as guest_changes
from vfio_advisor.rules.stepping import GuestChange
from vfio_advisor.sinks.base import write_atomically


def facts_to_keep(facts: DomainFacts) -> DomainFacts:
    """The facts a followed domain keeps for its whole run: without the host's
    parsed /proc/interrupts (and a second read), which the sampler reads anew
    every sample and no runtime rule looks up in the gathered facts. Kept, it
    was the whole table per followed domain: 2000 IrqLine tuples of 256 counts
    each on a 256-CPU host with 2000 rows, where the daemon's RSS was 79.2 MiB
    against 44.2 on a 32-CPU, 300-row host (make bench's soak)."""
    host = facts.host
    if host.interrupts is None and host.later is None:
        return facts
    return facts._replace(host=host._replace(interrupts=None, later=None))


SCHEMA = "vfio-advisor/state/1"
# A domain not followed for this long is forgotten (its devices' last
# modes, StateStore.prune): a host that starts VMs under new UUIDs (CI, a
# VM per job) would otherwise keep an entry per VM ever run, and a VM not
# run for three months compares little with its last run.
FORGET_AFTER = 90 * 86400.0
# How often the daemon looks for such domains (at a domain event).
PRUNE_EVERY = 86400.0


class StateStore:
    """Per-device settled modes across runs (the daemon's /var/lib/vfio-advisor).

    `note`: the daemon's log line for the file's own trouble. `deferred`:
    record() only marks the data changed and flush() writes it, once per
    sample (the daemon): a record per device, each rewriting and fsyncing
    the whole file, was 512 writes of up to 512 entries when 128 domains
    settled together (bench/scale_bench.py, 6 s of CPU)."""

    def __init__(self, directory: str | None, note: Callable[[str], None] | None = None,
                 deferred: bool = False):
        self.directory = directory
        self.path = os.path.join(directory, "state.json") if directory else None
        self.note = note or (lambda _msg: None)
        self.deferred = deferred
        self.dirty = False
        # The write error said last (its errno name), so that a full or
        # read-only disk is said once per condition, not at every sample.
        self.failing: str | None = None
        self.data: dict = {"schema": SCHEMA, "domains": {}}
        self.pruned_at: float | None = None  # wall-clock time of the last prune()
        if self.path:
            self._load()

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return
        except OSError as exc:
            self.note(f"cannot read the state file {self.path}: {exc.strerror or exc}; "
                      "starting without what it held")
            return
        try:
            loaded = json.loads(raw)
        except ValueError:  # also UnicodeDecodeError: truncated, or not JSON at all
            return self._set_aside("is not JSON (truncated or damaged)")
        if not isinstance(loaded, dict) or not isinstance(loaded.get("domains"), dict):
            return self._set_aside("is not a vfio-advisor state file")
        if loaded.get("schema") != SCHEMA:
            # A newer vfio-advisor's file (a downgrade) may mean other things
            # by the same keys: never read it as ours, never overwrite it.
            return self._set_aside(f"has schema {loaded.get('schema')!r}, not {SCHEMA!r} "
                                   "(another version's)")
        self.data = loaded

    def _set_aside(self, why: str) -> None:
        """Keep the damaged file for a look, under a name never read again,
        and start afresh: it only costs the comparison with the last run."""
        aside = f"{self.path}.bad-{time.strftime('%Y%m%dT%H%M%S')}"
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            self.note(f"the state file {self.path} {why}, and cannot be set aside "
                      f"({exc.strerror or exc}); starting afresh")
            return
        self.note(f"the state file {self.path} {why}; set aside as {aside}, starting afresh")

    def _domain(self, domain_key: str) -> dict:
        entry = self.data["domains"].get(domain_key)
        if not isinstance(entry, dict):  # a damaged file: start this domain afresh
            entry = self.data["domains"][domain_key] = {}
        return entry

    def previous(self, domain_key: str, bdf: str) -> dict:
        # A read (every device, every sample): it must not add an entry, or
        # the next save writes an empty one for every domain ever followed.
        domain = self.data["domains"].get(domain_key)
        entry = domain.get(bdf) if isinstance(domain, dict) else None
        return entry if isinstance(entry, dict) else {}

    def record(self, domain_key: str, bdf: str, entry: dict) -> None:
        """Keep `entry` (rules.RUNTIME.remembered_entry: the settled mode and
        what the runtime rules remember) for the domain's next run."""
        domain = self._domain(domain_key)
        if domain.get(bdf) == entry:
            return
        domain[bdf] = entry
        self.dirty = True
        if not self.deferred:
            self.flush()

    def _followed(self) -> dict:
        # {domain key: {"last": when it was last followed (Unix time), "name": its
        # name}} beside "domains": a file without it (or damaged) starts one.
        followed = self.data.get("followed")
        if not isinstance(followed, dict):
            followed = self.data["followed"] = {}
        return followed

    def seen(self, domain_key: str, name: str, now: float) -> None:
        """The domain is followed now (a start, a resync) or stops now: the
        time its kept entry ages from (prune). Only a domain with an entry:
        one whose devices never settled keeps nothing (previous())."""
        if domain_key not in self.data["domains"]:
            return
        self._followed()[domain_key] = {"last": round(now), "name": name}
        self.dirty = True
        if not self.deferred:
            self.flush()

    def prune_due(self, now: float) -> bool:
        return self.pruned_at is None or not 0 <= now - self.pruned_at < PRUNE_EVERY

    def prune(self, now: float, following: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Forget the domains not followed for FORGET_AFTER seconds (not in
        `following`, the keys followed now), and return their keys. An
        entry without a time (written before times were kept) ages from now.
        A domain with a guest change recorded (`fix --guest --apply`) is
        kept, however long it has not run: its entry holds whether the
        change's outcome was said (the guest-change rules), and the change
        is confirmed at its next start."""
        self.pruned_at = now
        domains, followed = self.data["domains"], self._followed()
        gone, changed = [], False
        for key in list(domains) + [k for k in followed if k not in domains]:
            if key in following:
                continue
            seen = followed.get(key)
            last = seen.get("last") if isinstance(seen, dict) else None
            if not isinstance(last, (int, float)) or isinstance(last, bool):
                followed[key] = {"last": round(now), "name": None}
                changed = True
                continue
            if now - last < FORGET_AFTER:
                continue
            name = seen.get("name")
            if self.directory and isinstance(name, str) and guest_changes.load(self.directory, name):
                continue
            domains.pop(key, None)
            followed.pop(key, None)
            gone.append(key)
        if gone or changed:
            self.dirty = True
            if not self.deferred:
                self.flush()
        return gone

    def flush(self) -> None:
        """Write the data if it changed since the last write that worked.
        A write that fails (ENOSPC, EROFS, EIO) leaves the old file whole
        (write_atomically renames a complete copy over it) and is tried
        again at the next flush; the daemon goes on sampling meanwhile."""
        if not self.dirty or not self.path:
            return
        try:
            self.save()
        except OSError as exc:
            condition = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else type(exc).__name__
            if condition != self.failing:
                self.failing = condition
                self.note(f"cannot write the state file {self.path}: {exc.strerror or exc}; "
                          "sampling goes on, and the file is written once it can be")
            return
        self.dirty = False
        if self.failing is not None:
            self.failing = None
            self.note(f"the state file {self.path} is written again")

    def guest_changes(self, domain_name: str) -> dict[str, GuestChange]:
        """The last recorded guest change per host BDF of a domain (read at
        each start or reboot of it: `fix --guest --apply` records while it
        runs, and the change shows after its restart). An odd entry is
        skipped: a damaged record only costs the confirmation."""
        if not self.directory:
            return {}
        out: dict[str, GuestChange] = {}
        for entry in guest_changes.load(self.directory, domain_name):
            bdf = entry.get("host_bdf")
            try:
                change = GuestChange(str(entry["at"]), float(entry["epoch"]),
                                     str(entry.get("target") or "the setting"),
                                     str(entry.get("os") or "unknown"), entry.get("run_id"))
            except (KeyError, TypeError, ValueError):
                continue
            if isinstance(bdf, str) and (bdf not in out or out[bdf].epoch <= change.epoch):
                out[bdf] = change
        return out

    def save(self) -> None:
        if not self.path:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        write_atomically(self.path, json.dumps(self.data, indent=1, sort_keys=True), mode=0o600,
                         prefix=".state-")
