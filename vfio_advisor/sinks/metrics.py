"""Metrics file sink: the Prometheus textfile (node_exporter's textfile
collector), rewritten at every daemon sample from the SampleEvent's
per-device snapshot (sinks/base.py DeviceSnapshot: domain, bdf, mode,
cumulative count, rate, observable) and its open findings. The exposition
is sinks/prometheus.py (docs/metrics.md); this module only adapts the
snapshot to it, so the renderer is swapped in one place (`render`)."""

from __future__ import annotations

import time
from typing import Callable, Iterable

from vfio_advisor.sinks.base import Event, RunSummary, write_atomically
from vfio_advisor.sinks.prometheus import Kept, render


def render_metrics(devices: Iterable, findings: Iterable = (), now: float | None = None,
                   kept: Kept | None = None) -> str:
    """The textfile for a snapshot; `now` is the last sample's wall-clock
    time (time.time(); default: now); `kept`: prometheus.render's."""
    from vfio_advisor import __version__  # noqa: PLC0415

    # DeviceMetrics' fields as a plain tuple: prometheus.render takes either,
    # and a NamedTuple's __new__ (Python code) was a fifth of the sink's CPU.
    metrics = [(d.domain, d.bdf, d.mode, d.count, d.observable) for d in devices]
    return render(metrics, findings, time.time() if now is None else now, __version__, kept)


class MetricsFileSink:
    """Writes the whole file atomically at each sample: node_exporter must
    never read half a file."""

    def __init__(self, path: str, render: Callable[..., str] = render_metrics):
        self.path = path
        self.render = render
        self.kept = Kept()  # the device lines that stay from sample to sample

    def begin(self, facts) -> None:
        pass  # a followed domain shows up in the next sample's devices

    def emit(self, finding, domain=None) -> None:
        pass  # the file carries the findings still open, from the sample event

    def event(self, event: Event) -> None:
        if event.kind != "sample":
            return
        if self.render is render_metrics:
            text = render_metrics(event.devices(), event.open_findings(), event.wall_time, self.kept)
        else:  # a renderer of the snapshot alone
            text = self.render(event.devices())
        write_atomically(self.path, text, durable=False)

    def close(self, summary: RunSummary | None = None) -> None:
        pass  # the last sample's file stays for node_exporter (its timestamp ages)
