"""`advise --sample`: when the second reading of /proc/interrupts fails, the
first one's checks stand. Only the counters' rise over the sample is not
measured, and VA8002 says that, not that nothing was checked."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from vfio_advisor.engine import DeviceCache, gather_domain, gather_host
from vfio_advisor.facts import gather
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.pciids import PciIds
from vfio_advisor.rules import RULES

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples/demo-host"


def _win11(tmp_path: Path, between) -> tuple:
    shutil.copytree(DEMO / "root", tmp_path / "root", symlinks=True)
    host = HostRoot(str(tmp_path / "root"))
    real_sleep = gather._sleep
    gather._sleep = lambda seconds, progress: between(tmp_path / "root/proc/interrupts")
    try:
        facts_host = gather_host(host, sample_seconds=10.0)
    finally:
        gather._sleep = real_sleep
    node = (DEMO / "node.xml").read_text()
    (xml,) = [d for d in re.findall(r"<domain .*?</domain>", node, re.S) if "<name>win11</name>" in d]
    facts = gather_domain(parse_domain_xml(xml), facts_host, DeviceCache(host, PciIds(None)))
    return facts, [f for r in RULES if r.check for f in r.check(facts)]


def test_a_second_reading_that_fails_leaves_the_first_ones_checks(tmp_path):
    facts, found = _win11(tmp_path, lambda path: path.write_text(""))
    assert facts.host.interrupts_problem is None
    assert facts.host.sample_problem == "proc/interrupts: empty: no rows"
    assert "VA1001" in [f.rule_id for f in found]  # the audio's vfio-intx, from the first reading
    (note,) = [f for f in found if f.rule_id == "VA8002"]
    assert note.message.startswith("The second reading of /proc/interrupts (--sample) failed "
                                   "(proc/interrupts: empty: no rows)"), note.message
    assert "were not checked" not in note.message


def test_a_second_reading_that_works_says_nothing(tmp_path):
    facts, found = _win11(tmp_path, lambda path: None)
    assert facts.host.sample_problem is None and facts.host.later is not None
    assert "VA8002" not in [f.rule_id for f in found]
