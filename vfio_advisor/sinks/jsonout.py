"""JSON sink."""

from __future__ import annotations

import json
from typing import TextIO

from vfio_advisor.sinks.base import ReportSink
from vfio_advisor.sinks.report import Report, report_json


def write_json(report: Report, out: TextIO) -> None:
    json.dump(report_json(report), out, indent=2, sort_keys=False)
    out.write("\n")


class JsonSink(ReportSink):
    """`advise --format json` (schema in docs/json-schema.md)."""

    def render(self) -> None:
        write_json(self.report, self.out)
