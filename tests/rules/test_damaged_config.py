"""Damaged config space is named, never guessed: one "capabilities unreadable:
<reason>" fact, VA8002 with a remedy that fits the cause, and no rule that
reads the missing capabilities as absent."""

from __future__ import annotations

import pytest

from tests.rules.examples import AUDIO, EXAMPLES
from vfio_advisor.engine import run_rules

DAMAGE = {
    "config-truncated-40-bytes": "config space truncated at 40 bytes",
    "config-255-bytes": "config space truncated at 255 bytes",
    "capability-list-loops": "capability list loops at 0x50",
}


def _audio_findings(tmp_path, name):
    facts = EXAMPLES[name](tmp_path)
    return facts, [f for f in run_rules(facts) if f.subject == AUDIO]


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_damage_is_one_fact_and_va8002_without_run_as_root(tmp_path, name):
    facts, findings = _audio_findings(tmp_path, name)
    audio = facts.device(AUDIO).device
    assert audio.capabilities_unreadable == DAMAGE[name]
    assert [u for u in audio.unreadable if "capabilit" in u or u.startswith("config")] == [
        f"capabilities unreadable: {DAMAGE[name]}"]
    va8002 = [f for f in findings if f.rule_id == "VA8002"]
    assert len(va8002) == 1
    assert f"capabilities unreadable: {DAMAGE[name]}" in va8002[0].message
    # Root reads the same damaged bytes: telling the user to run as root is wrong.
    assert "root would read the same" in va8002[0].remedy
    assert "Run as root" not in va8002[0].remedy
    # Nothing guesses from the missing list: no VA1001 (MSI capable), and no
    # finding calls the device INTx-only or MSI-less.
    assert "VA1001" not in {f.rule_id for f in findings}
    assert not [f.message for f in findings if "no MSI" in f.remedy or "no MSI" in f.message]


def test_unprivileged_read_still_says_run_as_root(tmp_path):
    facts, findings = _audio_findings(tmp_path, "config-64-bytes")
    (va8002,) = [f for f in findings if f.rule_id == "VA8002"]
    assert va8002.remedy.startswith("Run as root")
    assert "damaged" not in va8002.remedy
