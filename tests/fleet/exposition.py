"""A reader for the Prometheus text format, written from the format's
description (prometheus.io/docs/instrumenting/exposition_formats, text format
0.0.4) and independent of the renderer, so that a test compares the
renderer's output with what a scraper would read."""

from __future__ import annotations

import re

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _labels(text: str, i: int) -> tuple[dict, int]:
    labels: dict[str, str] = {}
    assert text[i] == "{"
    i += 1
    while text[i] != "}":
        m = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="').match(text, i)
        assert m, f"bad label at {text[i:]!r}"
        i, value = m.end(), []
        while text[i] != '"':
            if text[i] == "\\":
                value.append({"\\": "\\", '"': '"', "n": "\n"}[text[i + 1]])  # KeyError: bad escape
                i += 2
            else:
                value.append(text[i])
                i += 1
        labels[m.group(1)] = "".join(value)
        i += 1
        if text[i] == ",":
            i += 1
    return labels, i + 1


def parse(text: str) -> tuple[dict, list[tuple[str, dict, float]]]:
    """({name: (type, help)}, [(name, labels, value)])"""
    meta: dict[str, list] = {}
    samples = []
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            _, kind, name, rest = line.split(" ", 3)
            meta.setdefault(name, [None, None])[0 if kind == "TYPE" else 1] = rest
            continue
        m = _NAME.match(line)
        name, i = m.group(0), m.end()
        labels = {}
        if line[i:i + 1] == "{":
            labels, i = _labels(line, i)
        samples.append((name, labels, float(line[i:].strip())))
    return {k: tuple(v) for k, v in meta.items()}, samples
