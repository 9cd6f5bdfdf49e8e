"""One sink protocol (emit/close) for text, JSON, journal and metrics; the
metrics text comes from the per-device snapshot alone."""

from __future__ import annotations

import io
import json

from tests.daemon.scenarios import Scenario, intx_rows
from vfio_advisor.sinks.base import SampleEvent, Sink
from vfio_advisor.sinks.journal import JournalSink
from vfio_advisor.sinks.jsonout import JsonSink
from vfio_advisor.sinks.metrics import MetricsFileSink, render_metrics
from vfio_advisor.sinks.text import TextSink
from vfio_advisor.sinks.base import DeviceSnapshot


def test_every_sink_follows_the_protocol(tmp_path):
    sinks = [TextSink(io.StringIO(), "/", None), JsonSink(io.StringIO(), "/", None),
             JournalSink("advise", sender=lambda fields: None),
             MetricsFileSink(str(tmp_path / "m.prom"))]
    for sink in sinks:
        assert isinstance(sink, Sink), type(sink).__name__


def test_report_sinks_render_what_they_were_given():
    out = io.StringIO()
    sink = JsonSink(out, "/tree", None, errors=[("bad.xml", "not a domain")])
    sink.close()
    doc = json.loads(out.getvalue())
    assert doc["host"] is None and doc["domains"] == []
    assert doc["errors"] == [{"source": "bad.xml", "message": "not a domain"}]


def test_metrics_come_from_the_snapshot(tmp_path):
    s = Scenario(tmp_path)
    s.at(0, intx_rows(1000))
    s.at(5, intx_rows(6000))
    snap = s.watcher.snapshot()
    audio = next(d for d in snap if d.bdf == "0000:05:00.1")
    assert (audio.mode, audio.count, audio.rate, audio.observable) == ("intx", 6000, 1000.0, True)
    text = render_metrics(snap, s.watcher.open_findings(), 1.0)
    assert s.metrics() == text
    # a counter (Prometheus practice: rate() over it), not a per-second gauge
    assert 'vfio_advisor_device_interrupts_total{domain="win11",bdf="0000:05:00.1",mode="intx"} 6000' in text
    assert 'vfio_advisor_device_mode{domain="win11",bdf="0000:05:00.1",mode="intx"} 1' in text
    assert 'vfio_advisor_device_mode{domain="win11",bdf="0000:05:00.1",mode="msi"} 0' in text
    assert "vfio_advisor_last_sample_timestamp_seconds 1" in text
    path = tmp_path / "m.prom"
    MetricsFileSink(str(path)).event(SampleEvent(1.0, 0.0, None, lambda: snap, s.watcher.open_findings))
    assert path.read_text() == text


def test_metrics_renderer_is_swapped_in_one_place(tmp_path):
    path = tmp_path / "m.prom"
    snap = [DeviceSnapshot("a\"b", "0000:01:00.0", "msi", 5, 0.5, observable=False)]
    MetricsFileSink(str(path), render=lambda devs: "".join(f"{d.bdf} {d.observable}\n" for d in devs)).event(
        SampleEvent(1.0, 0.0, None, lambda: snap, list))
    assert path.read_text() == "0000:01:00.0 False\n"
    assert 'domain="a\\"b"' in render_metrics(snap)
