"""The lab's captured scenarios (lab/captures, made by `make lab`; how, in
lab/captures/ORIGIN.md), named once for the tests that replay them: a
scenario "switch" is its moments switch-1, switch-2, ... in order."""

from __future__ import annotations

import re
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
