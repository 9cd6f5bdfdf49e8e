"""Metrics sink: the Prometheus textfile (node_exporter's textfile collector)
written from the Watcher's per-device snapshot (runtime.DeviceSnapshot:
domain, bdf, mode, cumulative count, rate, observable) and its open
findings. The exposition is sinks/prometheus.py (docs/metrics.md); this
module only adapts the snapshot to it, so the renderer is swapped in one
place (MetricsFileSink's `render`)."""

from __future__ import annotations

import time
from typing import Callable, Iterable

from vfio_advisor.sinks.prometheus import DeviceMetrics, render, write_atomically


def render_metrics(devices: Iterable, findings: Iterable = (), now: float | None = None) -> str:
    """The textfile for a snapshot; `now` is the last sample's wall-clock
    time (time.time(); default: now)."""
    from vfio_advisor import __version__  # noqa: PLC0415

    metrics = [DeviceMetrics(d.domain, d.bdf, d.mode, d.count, d.observable) for d in devices]
    return render(metrics, findings, time.time() if now is None else now, __version__)


class MetricsFileSink:
    """Writes the whole file atomically: node_exporter must never read half a file."""

    def __init__(self, path: str, render: Callable[..., str] = render_metrics):
        self.path = path
        self.render = render

    def write(self, devices: Iterable, findings: Iterable = (), now: float | None = None) -> None:
        if self.render is render_metrics:
            text = render_metrics(devices, findings, now)
        else:  # a renderer of the snapshot alone
            text = self.render(devices)
        write_atomically(self.path, text, durable=False)

    def emit(self, finding, domain=None) -> None:
        pass  # findings go to the journal; the file carries the open ones (Watcher.open_findings)

    def close(self) -> None:
        pass
