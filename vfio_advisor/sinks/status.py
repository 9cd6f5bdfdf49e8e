"""Status sink: a small JSON file in the daemon's state directory that the
Cockpit page (cockpit/) reads with cockpit.file. It holds a rolling window
of each followed device's interrupt rate and mode, and when each finding
opened and closed, so the page can plot "flat, climbing or storming" and
mark the findings on the plot. Its format is docs/cockpit.md's.

Every device's window holds the rates of the same samples (the last
len(window) of them, see _prune), and a device's mode changes rarely, so
the file says each sample's time once, at the top (`times`), and each
device's mode once a run (`modes`): a device's `rates` are the rates at the
last len(rates) entries of `times`. device_points() turns a device back
into the [time, rate, mode] points the page plots. Written as a
[time, rate, mode] list per point, the file was 3.4 times the size (2.0
against 0.6 MB at 512 devices with full windows, bench/status_bench.py),
and its write half the sink's CPU (1.0-1.2 against 0.6-0.65 ms a sample).

A sink like the others (sinks/base.py's protocol): `begin(facts)` for each
followed domain (the host's IOMMU and posting state come with it),
`emit(finding, domain)` as the daemon emits it, `event(event)` for a
"sample" event (each device's rate and mode, the findings still open) and
the daemon's "service" events, `close(summary)` at stop (the file then says
the daemon stopped, and every finding still open closes there).

The whole file is replaced at each write (a temporary file exchanged with
it, sinks/base.py's write_atomically): cockpit.file's read (cockpit-bridge's
fsread1 channel reads the file in one go) must never see half a file. It
is written at a sample when it was read since its last write, else only
every half of the page's staleness limit (StatusFileSink._due). Not
fsynced: it is only worth its last few minutes.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from typing import Iterable

from vfio_advisor.sinks.base import atime_updates, read_since_written, write_atomically

SCHEMA = "vfio-advisor/status/2"
STATUS_FILE = "status.json"
# Ten minutes at the default 5 s interval: 120 rates a device. The cap
# bounds the file (and the page's parse) when the interval is short.
WINDOW_SECONDS = 600.0
MAX_POINTS = 240
# Closed findings kept for the marks on the plot; older ones leave with the window.
MAX_FINDINGS = 200


class StatusFileSink:
    """Writes `path` (None: a sink that keeps nothing, for a daemon without
    a state directory)."""

    def __init__(self, path: str | None, connect: str | None = None, host_root: str | None = None,
                 interval: float | None = None, window: float = WINDOW_SECONDS,
                 clock=time.time, unread_rewrite: float | None = None):
        self.path = path
        self.window = window
        self.clock = clock
        self.daemon = {"pid": os.getpid(), "running": True, "started": round(clock(), 3),
                       "updated": None, "interval": interval, "connect": connect,
                       "host_root": host_root, "window_seconds": window}
        self.devices: dict[tuple[str, str], _Window] = {}
        # The rounded wall-clock time of each kept sample, oldest first: the
        # last MAX_POINTS samples, less those older than the window. Every
        # window's rates are at the last len(window) of them (_prune); the
        # file's `times` are their JSON, kept as the windows keep theirs.
        self.times: deque[float] = deque(maxlen=MAX_POINTS)
        self._time_texts = _Texts()
        self._samples = 0  # the samples so far: the number of the last one
        self.findings: list[dict] = []
        self.domains: dict[str, dict] = {}
        self.host: dict | None = None
        self.last_event: dict | None = None
        self._order: list[_Window] | None = None  # the devices' windows by (domain, bdf); None: to sort
        self._fixed: str | None = None  # the "host" and "domains" members' JSON; None: to redo
        # Unread, the file is rewritten after half the page's staleness
        # limit (cockpit/vfio-advisor.js: max(3 x interval, 30 s)), so a page
        # that opens never finds it stale.
        # (0: at every sample.)
        self.unread_rewrite = max(1.5 * (interval or 5.0), 15.0) if unread_rewrite is None else unread_rewrite
        self._written: float | None = None  # the sample time of the last write
        self._atime_updates: bool | None = None  # atime_updates(path), once

    @classmethod
    def for_config(cls, cfg) -> StatusFileSink:
        """The daemon's status file: STATE_DIR/status.json (config.Config)."""
        path = os.path.join(cfg.state_dir, STATUS_FILE) if cfg.state_dir else None
        return cls(path, cfg.connect, cfg.host_root, cfg.interval)

    # --- the sink protocol ------------------------------------------------

    def begin(self, facts) -> None:
        """A followed domain's facts (facts.model.DomainFacts): its devices'
        guest addresses, for the page's device list before the first sample."""
        domain, host = facts.domain, facts.host
        # The host's IOMMU and posting state as the daemon's gathering read
        # it (facts/platform.py): `advise --format json` has remapping, not posting.
        iommu, posting = getattr(host, "iommu", None), getattr(host, "posting", None)
        self.host = {
            "iommu": None if iommu is None else {
                "vendor": iommu.vendor, "units": list(iommu.units), "dma_remapping": iommu.dma_remapping,
                "interrupt_remapping": iommu.interrupt_remapping,
                "allow_unsafe_interrupts": iommu.allow_unsafe_interrupts,
                "evidence": list(iommu.dma_evidence) + list(iommu.ir_evidence)},
            "posting": None if posting is None else {
                "verdict": posting.verdict, "vendor": posting.vendor, "evidence": list(posting.evidence)},
        }
        self.domains[domain.name] = {
            "uuid": domain.uuid,
            "devices": {d.address: d.guest_address for d in facts.devices},
        }
        self._fixed = None

    def emit(self, finding, domain=None) -> None:
        now = self.clock()
        # Events ("switched to MSI") carry no standing condition: they never show in
        # the open list, so they close at the next sample (a mark, not a span).
        self.findings.append({"domain": finding.domain, "subject": finding.subject,
                              "rule": finding.rule_id, "severity": str(finding.severity),
                              "message": finding.message, "opened": round(now, 3), "closed": None})
        del self.findings[:-MAX_FINDINGS]

    def event(self, event) -> None:
        kind = getattr(event, "kind", None)
        if kind == "sample":
            self._sample(event.devices(), event.open_findings(), event.wall_time)
        elif kind == "service":
            self.last_event = {"event": event.name, "message": event.message, "time": round(self.clock(), 3)}

    def _sample(self, devices: Iterable, open_findings: Iterable = (), now: float | None = None) -> None:
        """One sample: `devices` are runtime.DeviceSnapshot-like (domain, bdf,
        mode, count, rate, observable); `open_findings` the findings whose
        condition still holds (see _close_findings). `now` is
        the wall clock (time.time()), which the page compares with its own."""
        now = self.clock() if now is None else now
        t = round(now, 3)
        self.times.append(t)
        # json.dumps escapes every non-ASCII character (ensure_ascii), so
        # each text below is ASCII and its bytes are its characters.
        time_text = _json_number(t)
        self._time_texts.append(("," + time_text).encode())
        sample = self._samples = self._samples + 1
        entries = self.devices
        distinct = 0
        devices = devices if isinstance(devices, list) else list(devices)
        # The daemon gives the same devices in the same (sorted) order sample
        # after sample, the order of the windows (_order): those are matched
        # by position, each checked against its window's key, without a key
        # tuple and a dict lookup per device. From the first that differs
        # (a device came, went or moved), by key.
        start = 0
        order = self._order
        if order is not None and len(order) == len(devices):
            for entry, d in zip(order, devices):
                domain, bdf = entry.key
                if d.domain != domain or d.bdf != bdf or d.mode != entry.mode:
                    break
                _take(entry, d, sample)
                start += 1
            distinct = start
        for d in devices[start:] if start else devices:
            key = (d.domain, d.bdf)
            entry = entries.get(key)
            mode = d.mode
            if entry is None:
                entry = entries[key] = _Window(d.domain, d.bdf)
                entry.set_mode(mode, sample, time_text)  # its first run
                self._order = None
            elif entry.sample == sample:
                # Given twice in one sample: the first counts. A second rate
                # would put the window's rates off the end of `times`.
                continue
            elif mode != entry.mode:
                entry.set_mode(mode, sample, time_text)
            distinct += 1
            _take(entry, d, sample)
        if distinct != len(entries):
            for key in [k for k, e in entries.items() if e.sample != sample]:
                del entries[key]  # the domain stopped or the device left it: back, it starts a new window
            self._order = None
        names = {name for name, _ in entries}
        for name in [n for n in self.domains if n not in names]:
            del self.domains[name]
            self._fixed = None
        self._prune(now)
        self._close_findings(open_findings, now)
        self.daemon["updated"] = t
        if self._due(now):
            self.write()
            self._written = now

    def _due(self, now: float) -> bool:
        """Is the file to be rewritten at this sample? When it was read since
        its last write (sinks/base.py read_since_written: its atime), else
        once `unread_rewrite` (half the page's staleness limit) has passed.
        Nobody reads it while no Cockpit page is open, most of the time:
        rewriting it at each sample (1.8 MB at 512 devices, as schema 1
        wrote it) was the sink's whole cost. The page polls every 2 s, so while it is open the file
        follows every sample at the default interval. On a noatime mount
        (no read ever shows) it is rewritten at every sample, as before.
        A wall clock that stepped back also writes."""
        if self._written is None or now < self._written or now - self._written >= self.unread_rewrite:
            return True
        if self._atime_updates is None:
            self._atime_updates = atime_updates(self.path)
        return not self._atime_updates or read_since_written(self.path)

    def close(self, summary=None) -> None:
        self.daemon["running"] = False
        self.daemon["updated"] = round(self.clock(), 3)
        for f in self.findings:
            if f["closed"] is None:
                f["closed"] = self.daemon["updated"]
        self.write()

    # --- the file ---------------------------------------------------------

    def _prune(self, now: float) -> None:
        oldest = now - self.window
        # A window's rates are the last len(window) samples' (a device gets
        # one at every sample from the first that shows it until it
        # leaves), so self.times[-k] is the time of its oldest. Each window
        # drops its oldest rates while they are older than the window, as a
        # list of (time, rate) would from its front, and the one past
        # MAX_POINTS, whose time self.times (a deque of MAX_POINTS) let go.
        # self.times then drops the times older than the window from its
        # front: the same cut for a window as long as it, so every window
        # stays within it (a shorter window never keeps more: the cut of a
        # longer one ends at or before its start, or is its own).
        times = self.times
        kept = len(times)
        sample = self._samples
        drops: dict[int, int] = {}  # rates to drop from a window of n, the same for every such window
        for entry in self.devices.values():
            n = len(entry.lengths)
            drop = drops.get(n)
            if drop is None:
                k = min(n, kept)
                drop = n - k
                while k and times[-k] < oldest:
                    drop += 1
                    k -= 1
                drops[n] = drop
            if drop:
                entry.drop(drop, sample - (n - drop) + 1)
        while times and times[0] < oldest:
            times.popleft()
        excess = len(self._time_texts.lengths) - len(times)
        if excess:
            self._time_texts.drop(excess)
        self.findings = [f for f in self.findings if f["closed"] is None or f["closed"] >= oldest]

    def _close_findings(self, open_findings: Iterable, now: float) -> None:
        # The daemon's open findings: (domain, subject, rule) keys, as
        # runtime.Watcher.open holds them, or OpenFinding-like objects
        # (domain, rule[, subject]). Without a subject a finding closes only
        # when no finding of its rule is open in its domain any more.
        exact, by_rule = set(), set()
        for f in open_findings:
            if isinstance(f, tuple) and len(f) == 3 and not hasattr(f, "rule"):
                domain, subject, rule = f
                exact.add((domain, subject, rule))
            elif getattr(f, "subject", None) is not None:
                exact.add((f.domain, f.subject, f.rule))
            else:
                by_rule.add((f.domain, f.rule))
        for f in self.findings:
            if f["closed"] is not None:
                continue
            if (f["domain"], f["subject"], f["rule"]) not in exact and (f["domain"], f["rule"]) not in by_rule:
                f["closed"] = round(now, 3)

    def render(self) -> str:
        """The file's text: the document with each window spliced in from
        its stored JSON (see _Window)."""
        return b"".join(self._buffers()).decode()

    def _buffers(self) -> list:
        """render()'s bytes in pieces: the document up to its times, the
        times' bytes, then for each device its header (the "],...}," that
        ends what came before, then its fields up to its rates) and its
        window's rates as _Window keeps them. A device's end (its modes)
        starts the next header. write_atomically hands them to writev(2) as
        they are: the file (about 0.6 MB at 512 devices with 120 rates each)
        is never one object, and a device costs the Python side its small
        header only. Built whole at each sample, the text and its UTF-8
        copy came from the heap, not mmap, once glibc's malloc had raised
        its mmap threshold past them (mallopt(3), M_MMAP_THRESHOLD:
        dynamic), and the heap grew by 10 MiB over 240 samples around the
        long-lived objects allocated between them. Written one device at a
        time (a str rendered, encoded and written each), the 512 write(2)
        calls and encodes were half the sink's CPU."""
        # json.dumps's text for the document but its times and devices,
        # member by member (what it writes for a dict: its members' texts
        # between braces). The host and the domains change only at begin()
        # and when a domain leaves: at 128 domains they are most of it (25 KB).
        if self._fixed is None:
            self._fixed = ',"host":' + _dumps(self.host) + ',"domains":' + _dumps(self.domains)
        rest = ('{"schema":' + _dumps(SCHEMA) + ',"daemon":' + _dumps(self.daemon) + self._fixed
                + ',"findings":' + _dumps(self.findings) + ',"last_event":' + _dumps(self.last_event)
                + ',"times":[')
        buffers = [rest.encode(), self._time_texts.text]
        order = self._order
        if order is None:
            order = self._order = [entry for _, entry in sorted(self.devices.items())]
        append = buffers.append
        end = b'],"devices":['  # what closes the piece before the next device
        for entry in order:
            # bytes' %d is int.__repr__, json.dumps's text for an int.
            count = entry.count
            append(b"%b%b%d%b" % (end, entry.lead, count, _TAILS[entry.observable]) if type(count) is int
                   else end + entry.lead + _json_number(count).encode() + _TAILS[entry.observable])
            append(entry.text)
            end = entry.modes_end
        append((end[:-1] if order else end) + b"]}")  # the last device has no "," after it
        return buffers

    def write(self) -> None:
        if not self.path:
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            # 0644: Cockpit's page reads it as the logged-in user; it holds
            # domain names, addresses and rates, nothing the journal does not.
            write_atomically(self.path, self._buffers(), mode=0o644, prefix=".status-", durable=False)
        except OSError:
            pass  # a full or read-only state directory costs the page its plot, never the daemon


def _take(entry: "_Window", d, sample: int) -> None:
    """A device's snapshot `d` (runtime.DeviceSnapshot) into its window, at sample number `sample`."""
    entry.sample = sample
    observable = entry.observable = bool(d.observable)
    entry.count = d.count
    # A posted-MSI device's host counters say nothing (runtime.DeviceSnapshot):
    # its rate is unknown (null), never a flat 0.
    if observable:
        rate = round(float(d.rate), 3)
        # bytes' %r is repr(): json.dumps's text for a finite float
        # (json/encoder.py), in one step.
        entry.append(b",%r" % rate if rate - rate == 0.0 else ("," + _json_number(rate)).encode())
    else:
        entry.append(b",null")


# The end of a device's header after its count, observable or not.
_TAILS = {True: b',"observable":true,"rates":[', False: b',"observable":false,"rates":['}


class _Texts:
    """JSON values (the times, a window's rates), each turned into its JSON
    bytes once, when it comes, joined by "," in one bytearray, with each
    one's length: a value is appended at its end and the oldest cut from
    its front.

    CPython's bytearray cuts its front by moving its start, without a copy
    of the rest (Objects/bytearrayobject.c, since 3.4); once appends reach
    the end of its allocation it is copied to a new one 1/8 larger than the
    text (PyByteArray_Resize), about every 15 samples at 120 values. Over
    300 samples at 512 devices with the windows full, the sinks' RSS stayed
    flat (within 0.2 MiB); kept instead in blocks of bytes under 512 bytes
    each (CPython's small-object pools, handed to writev one by one) it
    grew by 0.4 MiB and the sink took 1.2-1.5 times the CPU. As a deque of
    (time, text) per point, the windows of 512 devices at 240 points were
    40 KiB a device of the daemon's RSS, and joining them at each sample a
    third of the sample's CPU (bench/scale_bench.py). As one string per
    device, rebuilt at each sample, each a few KiB from malloc, the heap
    fragmented: RSS grew by 3 MiB over 240 samples at 512 devices with the
    windows full."""

    __slots__ = ("text", "lengths")

    def __init__(self):
        self.text = bytearray()  # the values' JSON, joined by ","
        self.lengths: deque[int] = deque()  # each value's length, oldest first

    def append(self, value: bytes) -> None:
        """`value` is the value's JSON after a "," (its separator from the one before)."""
        lengths = self.lengths
        if lengths:
            self.text += value
        else:
            self.text += value[1:]
        lengths.append(len(value) - 1)

    def drop(self, n: int) -> None:
        """Drops the `n` oldest values (n <= their number)."""
        lengths = self.lengths
        size = n  # a separator after each, but the last value has none
        for _ in range(n):
            size += lengths.popleft()
        # CPython (>= 3.4) moves the bytearray's start here: no copy of the rest.
        del self.text[:size if lengths else size - 1]


class _Window(_Texts):
    """One device's entry of the file: its last mode, count and whether the
    host can count it, its header (the entry's JSON up to its rates, redone
    at each write for the count), its window's rates (_Texts) and its mode
    runs.

    A run is (the number of the sample it started at, its [time, mode]
    JSON); `modes_end` is the entry's JSON from the end of its rates on,
    with those runs. It is redone only when a run starts or leaves: the
    mode changes rarely, and joining every device's runs at each write
    would cost about what leaving the mode out of each point saves."""

    __slots__ = ("key", "head", "lead", "mode", "count", "observable", "sample", "runs", "modes_end")

    def __init__(self, domain: str, bdf: str):
        super().__init__()
        self.key = (domain, bdf)
        # '{"domain":...,"bdf":...' as json.dumps writes it.
        self.head = json.dumps({"domain": domain, "bdf": bdf}, separators=(",", ":"))[:-1]
        self.count, self.observable = 0, True
        self.mode: str | None = None  # set_mode's, at the sample that brings the device
        self.sample = 0  # the number of the last sample that gave the device
        self.runs: list[tuple[int, str]] = []

    def set_mode(self, mode: str, sample: int, time_text: str) -> None:
        """The device is in `mode` from sample number `sample` on, at
        `time_text` (its time's JSON): a run starts, and the header's start
        up to the count says `mode`."""
        text = _json_string(mode)
        self.mode = mode
        self.lead = (self.head + ',"mode":' + text + ',"count":').encode()
        self.runs.append((sample, "[" + time_text + "," + text + "]"))
        self._render_modes()

    def drop(self, n: int, first: int) -> None:
        """Drops the `n` oldest rates (n <= their number), and the mode runs
        that ended before the sample numbered `first`, the first one kept:
        a run ends where the next starts."""
        _Texts.drop(self, n)
        runs = self.runs
        if len(runs) > 1 and runs[1][0] <= first:
            while len(runs) > 1 and runs[1][0] <= first:
                del runs[0]
            self._render_modes()

    def _render_modes(self) -> None:
        # The entry's JSON after its rates, and the "," before the next entry.
        self.modes_end = ('],"modes":[' + ",".join([run for _, run in self.runs]) + "]},").encode()


def device_points(doc: dict, device: dict) -> list[list]:
    """The [time, rate, mode] points of `device`, an entry of a status/2
    document's `devices`, oldest first: its rates at the last len(rates)
    `times`, each with the mode of the last run started at or before it.
    A run after the first starts at a sample of the window, found by its
    time: exact while the window's times differ (a wall clock set back can
    repeat a time; a mode change then shows from the first sample of it)."""
    rates, runs = device["rates"], device["modes"]
    times = doc["times"][len(doc["times"]) - len(rates):]
    points, run = [], 0
    for t, rate in zip(times, rates):
        if run + 1 < len(runs) and runs[run + 1][0] == t:
            run += 1
        points.append([t, rate, runs[run][1]])
    return points


# json.dumps(value, separators=(",", ":")) without an encoder made at each call.
_dumps = json.JSONEncoder(separators=(",", ":")).encode

_STRINGS: dict[str, str] = {}


def _json_string(value: str) -> str:
    """json.dumps(value) of a mode: one of a handful, encoded once each."""
    text = _STRINGS.get(value)
    if text is None:
        text = json.dumps(value)
        if len(_STRINGS) < 64:
            _STRINGS[value] = text
    return text


def _json_number(value) -> str:
    """json.dumps(value) of a count, rate or time, without the encoder's
    set-up at each call: json writes a finite float as float.__repr__ and an
    int as int.__repr__ (json/encoder.py); anything else goes through it."""
    kind = type(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float and value - value == 0.0:  # finite (inf - inf and nan - nan are nan)
        return float.__repr__(value)
    return json.dumps(value)
