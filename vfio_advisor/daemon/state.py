"""What the daemon keeps: the facts of each followed domain (without the
host's interrupt table), and each device's settled mode across runs (the
state file under /var/lib/vfio-advisor). It also reads there what
`fix --guest --apply` recorded (guest/changes.py, the one reader of that
record): the state directory is the daemon's own, not the host tree, so
it is read here and not through HostRoot."""

from __future__ import annotations

import json
import os

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


class StateStore:
    """Per-device settled modes across runs (the daemon's /var/lib/vfio-advisor)."""

    def __init__(self, directory: str | None):
        self.directory = directory
        self.path = os.path.join(directory, "state.json") if directory else None
        self.data: dict = {"schema": "vfio-advisor/state/1", "domains": {}}
        if self.path and os.path.exists(self.path):
            try:
                with open(self.path) as f:
                    loaded = json.load(f)
                if isinstance(loaded, dict) and isinstance(loaded.get("domains"), dict):
                    self.data = loaded
            except (OSError, ValueError):
                pass  # a damaged state file only costs the cross-run comparison

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
        self.save()

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
