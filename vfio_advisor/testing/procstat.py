"""/proc/stat's text for host trees (hosttree.write_proc_stat, bench/).
Its own module, importing nothing of the tool: bench/scale_bench.py's daemon child writes
it at every sample and measures its own RSS."""

from __future__ import annotations

from typing import Mapping


def proc_stat_text(totals: Mapping[int, int] | list[int], cpus: int, nr_irqs: int | None = None) -> str:
    """/proc/stat as fs/proc/stat.c show_stat prints it (Linux 6.1): the
    "cpu" lines (times left at zero: the tool reads none of them), then
    "intr <sum>" and one total per IRQ number up to nr_irqs, a number
    without a descriptor as 0 (show_all_irqs), then the other counters.
    `totals`: IRQ number -> total, or a list indexed by IRQ number (the
    scale bench's daemon child keeps one: 4,104 numbers in a dict were
    half a MiB of the RSS it measures)."""
    if isinstance(totals, list):
        values = totals + [0] * ((nr_irqs or 0) - len(totals))
    else:
        nr = max(nr_irqs or 0, max(totals, default=-1) + 1)
        values = [totals.get(n, 0) for n in range(nr)]
    zeros = " 0" * 10
    lines = [f"cpu {zeros}"] + [f"cpu{c}{zeros}" for c in range(cpus)]
    lines.append(f"intr {sum(values)} " + " ".join(map(str, values)))
    lines += ["ctxt 0", "btime 0", "processes 0", "procs_running 1", "procs_blocked 0",
              "softirq 0 0 0 0 0 0 0 0 0 0 0"]
    return "\n".join(lines) + "\n"
