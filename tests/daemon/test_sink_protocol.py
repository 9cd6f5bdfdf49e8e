"""Every sink takes the whole protocol (sinks/base.py): begin, emit, every
event kind, close; each does what its format says with what it gets, and
ignores the kinds it has no use for. Run on a real Watcher's run (the
scenario's host tree), not on hand-made findings."""

from __future__ import annotations

import io
import json

from tests.daemon.scenarios import Scenario, intx_rows
from vfio_advisor import journal_fields as F
from vfio_advisor.findings import Inconclusive, RunCounts
from vfio_advisor.rules import run_summary
from vfio_advisor.sinks.base import PROTOCOL, FixesPlanned, RunSummary, SampleEvent, ServiceEvent
from vfio_advisor.sinks.journal import JournalSink
from vfio_advisor.sinks.jsonout import JsonSink
from vfio_advisor.sinks.metrics import MetricsFileSink
from vfio_advisor.sinks.text import TextSink


def _run(tmp_path):
    """A settled INTx device that counts (VA6001 open), and its domain's facts."""
    s = Scenario(tmp_path)
    count = 0
    for t in range(0, 70, 5):
        count += 3000
        s.at(t, intx_rows(count))
    return s, s.watcher.domains["win11"].facts


def _events(s, finding):
    sample = SampleEvent(2.0, 0.0, 5.0, s.watcher.snapshot, s.watcher.open_findings)
    return [ServiceEvent("started", "started: watching 1 running domains", 6), sample,
            Inconclusive("VA6001", "win11", finding.subject, "idle: inconclusive"),
            FixesPlanned({finding.key: None})]


def _finding(s):
    from vfio_advisor.rules import RULES_BY_ID

    return RULES_BY_ID["VA6001"].finding("win11", "0000:05:00.1", "still on INTx")


def test_every_sink_has_exactly_the_protocol():
    for cls in (TextSink, JsonSink, JournalSink, MetricsFileSink):
        for name in PROTOCOL:
            assert callable(getattr(cls, name, None)), (cls.__name__, name)


def test_the_journal_sink_logs_findings_service_events_notes_and_the_summary(tmp_path):
    s, facts = _run(tmp_path)
    entries = []
    sink = JournalSink("hook", sender=lambda fields: entries.append(dict(f.split("=", 1) for f in fields)))
    f = _finding(s)
    sink.begin(facts)
    sink.emit(f, s.domain)
    for event in _events(s, f):
        sink.event(event)
    counts = RunCounts.of([f])
    sink.close(RunSummary(run_summary("win11", counts, 2), s.domain, (f,), counts, 2))
    kinds = [e.get(F.EVENT) or e[F.RULE] for e in entries]
    # the sample and the fix plans are not the journal's business
    assert kinds == ["VA6001", "started", "inconclusive", "VA9002"], kinds
    summary = entries[-1]
    assert (summary[F.FINDINGS], summary[F.WARNINGS], summary[F.ERRORS], summary[F.DEVICES]) == ("1", "1", "0", "2")
    assert summary[F.MESSAGE] == "win11: 1 finding (0 error, 1 warning, 0 info) for 2 assigned PCI devices"
    assert summary[F.PRIORITY] == "5"  # a warning: notice


def test_the_metrics_sink_writes_at_a_sample_event_only(tmp_path):
    s, facts = _run(tmp_path)
    path = tmp_path / "out.prom"
    sink = MetricsFileSink(str(path))
    f = _finding(s)
    sink.begin(facts)
    sink.emit(f, s.domain)
    events = _events(s, f)
    for event in events:
        if event.kind != "sample":
            sink.event(event)
    assert not path.exists()
    sink.event(events[1])
    text = path.read_text()
    assert 'vfio_advisor_device_interrupts_total{domain="win11",bdf="0000:05:00.1",mode="intx"} 42000' in text
    assert 'vfio_advisor_findings{domain="win11",rule="VA6001",severity="warning"} 1' in text
    assert "vfio_advisor_last_sample_timestamp_seconds 2" in text
    sink.close(None)
    assert path.read_text() == text  # the last sample's file stays


def test_report_sinks_group_findings_and_take_the_fix_plans(tmp_path):
    s, facts = _run(tmp_path)
    f = _finding(s)
    out = io.StringIO()
    sink = JsonSink(out, str(s.root), None)
    sink.begin(facts)
    sink.emit(f, s.domain)
    plan = {"rule": "VA6001", "kind": "example"}
    for event in _events(s, f)[:3]:
        sink.event(event)
    sink.event(FixesPlanned({f.key: plan}))
    sink.close(None)
    doc = json.loads(out.getvalue())
    (dev,) = [d for d in doc["domains"][0]["devices"] if d["host_address"] == f.subject]
    (got,) = dev["findings"]
    assert got["rule"] == "VA6001" and got["fix"] == plan
    text = io.StringIO()
    sink = TextSink(text, str(s.root), None)
    sink.begin(facts)
    sink.emit(f, s.domain)
    sink.close(None)
    assert "VA6001" in text.getvalue() and "still on INTx" in text.getvalue()
