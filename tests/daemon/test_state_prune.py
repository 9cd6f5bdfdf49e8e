"""The state file forgets domains that have not run for FORGET_AFTER, so a
host that starts VMs under ever new UUIDs (a VM per CI job) does not keep an
entry per VM it ever ran; a domain still followed, or with a guest change
recorded by `fix --guest --apply` (confirmed at its next start), is kept.
A Watcher over a host tree with a fake wall clock, the state written as the
daemon writes it (daemon/state.py)."""

from __future__ import annotations

import json

from tests.daemon.scenarios import AUDIO, Scenario, intx_rows
from tests.rules.examples import domain_xml, gpu_audio_hostdevs
from vfio_advisor.daemon.state import FORGET_AFTER, PRUNE_EVERY
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.guest import changes as guest_changes

DAY = 86400.0


def settled(tmp_path):
    """win11 followed until its devices' modes are recorded, at wall time 1000."""
    s = Scenario(tmp_path, state_dir=tmp_path / "state")
    wall = [1000.0]
    s.watcher.wall_clock = lambda: wall[0]
    for t in range(0, 80, 5):
        s.at(t, intx_rows(3000 * t))
    key = s.watcher.domains["win11"].key
    assert key in saved(tmp_path)["domains"]
    return s, wall, key


def saved(tmp_path) -> dict:
    return json.loads((tmp_path / "state/state.json").read_text())


def start_another(s, name: str) -> None:
    s.watcher.add_domain(parse_domain_xml(domain_xml(name, gpu_audio_hostdevs())))


def test_a_domain_not_run_for_long_is_forgotten(tmp_path):
    s, wall, key = settled(tmp_path)
    s.watcher.remove_domain("win11")  # stops at 1000: its entry ages from there
    wall[0] = 1000.0 + FORGET_AFTER - DAY
    start_another(s, "job-1")
    assert key in saved(tmp_path)["domains"]  # 89 days: still kept
    wall[0] = 1000.0 + FORGET_AFTER + PRUNE_EVERY
    start_another(s, "job-2")
    state = saved(tmp_path)
    assert key not in state["domains"] and key not in state["followed"]


def test_a_domain_followed_all_along_is_kept(tmp_path):
    s, wall, key = settled(tmp_path)
    s.watcher.add_domain(s.domain, run_id=2)  # a new run at 1000, followed since
    assert saved(tmp_path)["followed"][key]["last"] == 1000
    wall[0] = 1000.0 + 2 * FORGET_AFTER
    start_another(s, "job-1")
    assert key in saved(tmp_path)["domains"]


def test_a_domain_with_a_recorded_guest_change_is_kept(tmp_path):
    s, wall, key = settled(tmp_path)
    guest_changes.record(str(tmp_path / "state"), "win11",
                         [{"key": AUDIO, "host_bdf": AUDIO, "os": "windows", "target": "MSISupported=1"}])
    s.watcher.remove_domain("win11")
    wall[0] = 1000.0 + 2 * FORGET_AFTER
    start_another(s, "job-1")
    assert key in saved(tmp_path)["domains"]


def test_an_entry_without_a_time_ages_from_the_first_prune(tmp_path):
    """A state file written before the times were kept: its domains are not
    forgotten at the first start, only FORGET_AFTER after it."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text(json.dumps({
        "schema": "vfio-advisor/state/1",
        "domains": {"old-uuid": {"0000:05:00.1": {"mode": "msi", "flagged_intx": False}}}}))
    s = Scenario(tmp_path, state_dir=state)  # its first follow prunes, at wall time 1.0
    assert "old-uuid" in saved(tmp_path)["domains"]
    s.watcher.wall_clock = lambda: 1.0 + FORGET_AFTER + PRUNE_EVERY
    start_another(s, "job-1")
    assert "old-uuid" not in saved(tmp_path)["domains"]
