"""The daemon says when it holds a finding back for lack of movement: an
MSI-capable device settled on INTx whose line did not count in the last
interval proves nothing (the guest may not have bound a driver yet, or the
device was idle), so VA6001 waits, and the journal gets one info entry that
says so and what to do, instead of silence."""

from __future__ import annotations

from tests.daemon.scenarios import Scenario, intx_rows, msi_rows
from tests.rules.examples import AUDIO
from vfio_advisor import journal_fields as F


def _held(s: Scenario) -> list[dict]:
    return [e for e in s.journal if e.get(F.EVENT) == "inconclusive"]


def test_an_idle_intx_line_is_held_back_aloud_once_then_decided(tmp_path):
    s = Scenario(tmp_path)
    for t in range(0, 80, 5):  # settled at 60 s; the line stays at 5000 (counted since host boot)
        s.at(t, intx_rows(5000))
    assert [e["rule"] for e in s.emitted] == []
    held = _held(s)
    assert len(held) == 1, held  # once, not at every sample
    entry = held[0]
    assert entry[F.RULE] == "VA6001" and entry[F.HOST_BDF] == AUDIO and entry[F.DOMAIN] == "win11"
    assert entry[F.PRIORITY] == "6" and F.MESSAGE_ID not in entry  # a note, not a finding
    assert "inconclusive" in entry[F.MESSAGE] and "use the device" in entry[F.MESSAGE]
    # named as a finding is, so a host with many guests can tell whose it is
    assert entry[F.MESSAGE].startswith(f"win11 {AUDIO}: VA6001 held back: "), entry[F.MESSAGE]
    # the device is used: the line counts, and the finding is decided
    s.at(80, intx_rows(20000))
    assert [e["rule"] for e in s.emitted] == ["VA6001"]
    assert len(_held(s)) == 1


def test_a_counting_line_is_never_called_inconclusive(tmp_path):
    s = Scenario(tmp_path)
    count = 0
    for t in range(0, 80, 5):
        count += 3000
        s.at(t, intx_rows(count))
    assert [e["rule"] for e in s.emitted] == ["VA6001"]
    assert _held(s) == []


def test_nothing_is_held_back_on_msi_or_before_settling(tmp_path):
    s = Scenario(tmp_path)
    for t in range(0, 55, 5):  # booting: INTx is normal, nothing to hold back
        s.at(t, intx_rows(5000))
    for t in range(55, 120, 5):  # the guest driver enabled MSI; idle vectors say nothing of INTx
        s.at(t, msi_rows(100))
    assert _held(s) == []


def test_disabled_rule_holds_back_silently(tmp_path):
    from vfio_advisor.config import Config

    s = Scenario(tmp_path, config=Config(interval=5, settle=60, disabled=frozenset({"VA6001"})))
    for t in range(0, 80, 5):
        s.at(t, intx_rows(5000))
    assert _held(s) == []
