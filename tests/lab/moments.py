"""The lab's captured scenarios (lab/captures, made by `make lab`; how, in
lab/captures/ORIGIN.md), named once for the tests that replay them: a
scenario "switch" is its moments switch-1, switch-2, ... in order."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

CAPTURES = Path(__file__).resolve().parents[2] / "lab/captures"


def moments(scenario: str) -> list[str]:
    """The scenario's moments in capture order; one unnumbered capture
    ("modes") is a scenario of one moment."""
    numbered = sorted((int(m.group(1)), p.name) for p in CAPTURES.iterdir()
                      if p.is_dir() and (m := re.fullmatch(re.escape(scenario) + r"-(\d+)", p.name)))
    if numbered:
        return [name for _, name in numbered]
    if (CAPTURES / scenario).is_dir():
        return [scenario]
    raise ValueError(f"no lab capture for scenario {scenario!r}")


# Scenarios with moments a sampler steps through (more than one capture).
STEPPED = ("stays-intx", "switch", "storm-shared", "isolcpus", "nomsi")


class Replay:
    """Copies of a scenario's moments under `tmp`, and `root`: a symlink to
    the first, which step(i) swaps to the i-th in one rename, as the daemon
    sees a live tree change under it."""

    def __init__(self, tmp: Path, names: list[str]):
        self.tmp = tmp
        self.copies = []
        for name in names:
            shutil.copytree(CAPTURES / name, tmp / name, symlinks=True)
            self.copies.append(tmp / name)
        self.root = tmp / "root"
        self.root.symlink_to(self.copies[0])

    def step(self, i: int) -> None:
        nxt = self.tmp / "next"
        nxt.symlink_to(self.copies[i])
        os.replace(nxt, self.root)
