"""Metrics sink: the Prometheus textfile (node_exporter's textfile collector)
written from a per-device snapshot (runtime.DeviceSnapshot: domain, bdf,
mode, cumulative count, rate, observable). The renderer is one function, so
another exposition (sinks/prometheus.py) can replace it in one place."""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Iterable

MODES = ("intx", "msi", "msix", "none")


def _label(text: str) -> str:
    # Prometheus text format: label values escape \\, " and newline.
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(devices: Iterable) -> str:
    lines = [
        "# HELP vfio_advisor_device_interrupts_per_second Interrupt rate of an assigned device's vfio vectors.",
        "# TYPE vfio_advisor_device_interrupts_per_second gauge",
    ]
    mode_lines = [
        "# HELP vfio_advisor_device_mode Interrupt mode of an assigned device (1 for the current mode).",
        "# TYPE vfio_advisor_device_mode gauge",
    ]
    for d in devices:
        labels = f'domain="{_label(d.domain)}",host_bdf="{d.bdf}"'
        lines.append(f"vfio_advisor_device_interrupts_per_second{{{labels}}} {d.rate:.3f}")
        for mode in MODES:
            mode_lines.append(f'vfio_advisor_device_mode{{{labels},mode="{mode}"}} '
                              f'{1 if d.mode == mode else 0}')
    return "\n".join(lines + mode_lines) + "\n"


class MetricsFileSink:
    """Writes the whole file atomically: node_exporter must never read half a file."""

    def __init__(self, path: str, render: Callable[[Iterable], str] = render_metrics):
        self.path = path
        self.render = render

    def write(self, devices: Iterable) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".vfio-advisor-")
        with os.fdopen(fd, "w") as f:
            f.write(self.render(devices))
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.path)

    def emit(self, finding, domain=None) -> None:
        pass  # findings go to the journal; metrics carry the device snapshot only

    def close(self) -> None:
        pass
