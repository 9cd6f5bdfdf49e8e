"""A change that brings in a finding a later stage fixes.

tests/data/fix/q35-join-adds-shared-line.xml: the NEC USB card's three
functions (08:01.0/.1/.2, pins A, B, C, INTx only) each at function 0 of a
slot of its own, all three on GSI 20 (VA4002, VA5001), and the GPU with its
HDMI audio (05:00.1, pin B, on INTx) alone on GSI 21 at 00:08. Joining the
card in slot 4 gives its pin B function GSI 21 (Q35: slot 4 pin B -> PIRQF),
the audio's line: a new VA5001 on the audio, which the guest-line stage
(stage 4) removes by moving the GPU's slot to a free line. That is the
corpus case of user-domains/manu-romero_win7-uefi.xml, in a small domain.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fix.conftest import DATA, HOST_ROOT, REPO
from vfio_advisor.facts.domain import parse_tree, serialize
from vfio_advisor.findings import Severity
from vfio_advisor.fix.advice import advised_remedy
from vfio_advisor.fix.planner import Analyzer, fix_for_finding, plan_domain
from vfio_advisor.fix.xmledit import apply_ops

XML = DATA / "q35-join-adds-shared-line.xml"
AUDIO = ("VA5001", "0000:05:00.1")
CARD = ("VA4002", "0000:08:01.0")

# The same domain with every other guest line taken by an INTx user: the
# ICH9 USB set at 00:1d (pins A-D there are GSI 16-19) and the SB Live
# (08:00.0, INTx only, pin A) at 00:03.0 on GSI 23. After the join, no slot
# gives the audio a line of its own, so the guest-line stage cannot remove
# what the join brings in.
NO_FREE_LINE = """    <controller type='usb' index='0' model='ich9-ehci1'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x1d' function='0x7'/>
    </controller>
    <controller type='usb' index='0' model='ich9-uhci1'>
      <master startport='0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x1d' function='0x0' multifunction='on'/>
    </controller>
    <controller type='usb' index='0' model='ich9-uhci2'>
      <master startport='2'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x1d' function='0x1'/>
    </controller>
    <controller type='usb' index='0' model='ich9-uhci3'>
      <master startport='4'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x1d' function='0x2'/>
    </controller>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source>
        <address domain='0x0000' bus='0x08' slot='0x00' function='0x0'/>
      </source>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
    </hostdev>
"""


def no_free_line() -> str:
    return XML.read_text().replace("    <memballoon", NO_FREE_LINE + "    <memballoon", 1)


def reanalyse(xml: str):
    return Analyzer(str(HOST_ROOT)).analyse(xml)


def keys(findings):
    return {f.key for f in findings}


def serious(findings):
    return {f.key for f in findings if f.severity >= Severity.WARNING}


def check(change, name: str):
    return next(c for c in change.checks if c.name == name)


def test_the_join_brings_in_a_shared_line_on_its_own(analyzer):
    """The premise: the card's finding and the audio's line as the file
    has them, and the join alone puts the audio on a shared line."""
    xml = XML.read_text()
    before = reanalyse(xml)
    assert CARD in keys(before.findings) and AUDIO not in keys(before.findings)
    plan = plan_domain(analyzer, xml)
    join = next(c for c in plan.changes + plan.rejected if c.rule == "VA4002")
    alone = reanalyse(serialize(apply_ops(parse_tree(xml), join.ops)))
    assert CARD not in keys(alone.findings)
    assert AUDIO in keys(alone.findings)


def test_the_join_is_offered_with_the_move_that_removes_its_new_finding(analyzer):
    xml = XML.read_text()
    plan = plan_domain(analyzer, xml)
    assert [c.rule for c in plan.changes] == ["VA4002", "VA5001", "VA1002"], plan.unfixed
    assert not plan.rejected and not plan.unfixed and plan.complete
    join, lines = plan.changes[0], plan.changes[1]
    assert all(c.verified for c in plan.changes)
    # what the final XML says: neither the card's finding nor the audio's
    # shared line, nothing of warning or worse the original did not have,
    # and every claimed resolve really gone
    after = reanalyse(plan.fixed_text)
    final = keys(after.findings)
    assert CARD not in final and AUDIO not in final
    assert not [f for f in after.findings if f.rule_id in ("VA4002", "VA5001")]
    assert serious(after.findings) <= serious(plan.before.findings)
    assert not {f.key for c in plan.changes for f in c.resolves} & final
    assert CARD in {f.key for f in join.resolves}
    # the join says what it brought in and which change removed it
    [(introduced, by)] = [(i.finding.key, i.resolved_by) for i in join.introduces]
    assert (introduced, by) == (AUDIO, "VA5001")
    assert AUDIO in {f.key for f in lines.targeted}
    assert not lines.introduces and not plan.changes[2].introduces
    # ...and its reanalysis check does not claim "no new warning or error"
    detail = check(join, "reanalysis").detail
    assert "new: VA5001 0000:05:00.1 (warning), resolved by the later VA5001 change" in detail
    assert "; no new warning or error" not in detail and "left to" not in detail
    assert check(lines, "reanalysis").detail.endswith("; no new warning or error")


def test_the_json_and_the_advice_carry_what_it_introduces(analyzer):
    plan = plan_domain(analyzer, XML.read_text())
    join = plan.changes[0].to_json()
    assert join["introduces"] == [{"rule": "VA5001", "subject": "0000:05:00.1",
                                   "guest_address": "0000:00:08.1", "severity": "warning",
                                   "resolved_by": "VA5001"}]
    assert all("introduces" not in c.to_json() for c in plan.changes[1:])
    card = next(f for f in plan.before.findings if f.key == CARD)
    fix = fix_for_finding(plan, card)
    assert fix["verified"] and fix["introduces"] == join["introduces"]
    text = advised_remedy(card, fix, "vfio-advisor fix NAME")
    assert ("on its own it adds VA5001 0000:05:00.1 (warning), which the VA5001 change of the "
            "same plan resolves") in text


def test_the_command_prints_it_and_exits_0():
    run = subprocess.run([sys.executable, "-m", "vfio_advisor.fix", "--xml", str(XML), "--host-root",
                          str(HOST_ROOT)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "#  1. VA4002: put every function of a card in one guest slot\n" in run.stdout
    assert ("#     introduces VA5001 0000:05:00.1 (warning), which change 2 (VA5001) resolves\n"
            in run.stdout)
    assert "#  2. VA5001: give every assigned INTx device a guest line of its own\n" in run.stdout
    js = subprocess.run([sys.executable, "-m", "vfio_advisor.fix", "--xml", str(XML), "--host-root",
                         str(HOST_ROOT), "--format", "json"], capture_output=True, text=True,
                        timeout=120, cwd=REPO)
    assert js.returncode == 0, js.stderr
    (domain,) = json.loads(js.stdout)["domains"]
    assert domain["complete"] and not domain["rejected"]
    assert [c["rule"] for c in domain["changes"]] == ["VA4002", "VA5001", "VA1002"]
    assert not {("VA4002", "0000:08:01.0"), AUDIO} & {(f["rule"], f["subject"])
                                                      for f in domain["findings_after"]}


def test_refused_when_the_later_stage_cannot_remove_it(analyzer):
    xml = no_free_line()
    plan = plan_domain(analyzer, xml)
    assert "VA4002" not in [c.rule for c in plan.changes]
    [join] = [c for c in plan.rejected if c.rule == "VA4002"]
    detail = check(join, "reanalysis").detail
    assert not check(join, "reanalysis").ok
    assert detail.startswith("new: VA5001 0000:05:00.1 (warning): ")
    assert ("not left to a later change: the VA5001 change leaves it: no free slot on pcie.0 gives "
            "it a line") in detail
    [left] = [u for u in plan.unfixed if u.finding.key == CARD]
    assert left.kind == "unverified" and "the VA5001 change leaves it" in left.reason
    assert not plan.complete
    # nothing offered brings in a finding: the audio's line stays its own
    after = reanalyse(plan.fixed_text)
    assert AUDIO not in keys(after.findings)
    assert serious(after.findings) <= serious(plan.before.findings)
    assert not any(c.introduces for c in plan.changes)
    assert all(check(c, "reanalysis").detail.endswith("; no new warning or error") for c in plan.changes)
    assert not {f.key for c in plan.changes for f in c.resolves} & keys(after.findings)
    # the premise: after the join no slot gives the audio a line of its own
    alone = reanalyse(serialize(apply_ops(parse_tree(xml), join.ops)))
    assert AUDIO in keys(alone.findings)


def test_refused_when_the_later_rule_is_not_asked_for(analyzer):
    plan = plan_domain(analyzer, XML.read_text(), rules={"VA4002"})
    assert not plan.changes and not plan.complete
    [join] = plan.rejected
    detail = check(join, "reanalysis").detail
    assert detail.startswith("new: VA5001 0000:05:00.1 (warning): ")
    assert detail.endswith("(not left to the later VA5001 change: VA5001 is not among the rules "
                           "asked for)")
    [left] = plan.unfixed
    assert left.finding.key == CARD and left.kind == "unverified"
    assert plan.fixed_xml == plan.base_xml


@pytest.mark.parametrize("rules", [{"VA4002", "VA5001"}, None], ids=["two-rules", "all"])
def test_the_plan_is_the_same_whatever_else_is_asked_for(analyzer, rules):
    """Only the two stages involved decide: the guest agent channel (stage
    6) changes nothing in the join and the move."""
    plan = plan_domain(analyzer, XML.read_text(), rules=rules)
    assert [c.rule for c in plan.changes][:2] == ["VA4002", "VA5001"]
    assert [i.finding.key for i in plan.changes[0].introduces] == [AUDIO]


def test_reanalysis_charges_a_change_only_with_what_it_brings_in(analyzer):
    """verify.reanalysis: a finding an earlier change introduced (pending)
    is not the next change's; one a later change is to resolve passes, and
    says so; one no later change resolves fails, with the note."""
    from vfio_advisor.fix.verify import reanalysis  # noqa: PLC0415

    xml = XML.read_text()
    plan = plan_domain(analyzer, xml)
    join = plan.changes[0]
    alone = reanalyse(serialize(apply_ops(parse_tree(xml), join.ops)))
    audio = next(f for f in alone.findings if f.key == AUDIO)
    targeted = join.targeted
    assert reanalysis(plan.before, alone, targeted).detail.startswith("new: VA5001 0000:05:00.1")
    assert not reanalysis(plan.before, alone, targeted).ok
    owed = reanalysis(plan.before, alone, targeted, pending=[audio])
    assert owed.ok and owed.detail == "gone: VA4002 0000:08:01.0; no new warning or error"
    left = reanalysis(plan.before, alone, targeted, later=lambda f: (True, "left to the later VA5001 change"))
    assert left.ok and left.detail == ("gone: VA4002 0000:08:01.0; new: VA5001 0000:05:00.1 (warning), "
                                       "left to the later VA5001 change; no other new warning or error")
    kept = reanalysis(plan.before, alone, targeted, later=lambda f: (False, "why not"))
    assert not kept.ok and kept.detail.endswith("it is on INTx now. (why not)")


# An INTx-only e1000 behind a root port on a pcie-expander-bus (VA5003,
# stage 3): a stage that runs between the join and the guest-line stage.
PXB = """    <controller type='pci' index='1' model='pcie-expander-bus'>
      <target busNr='200'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x0a' function='0x0'/>
    </controller>
    <controller type='pci' index='2' model='pcie-root-port'>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </controller>
    <interface type='user'>
      <model type='e1000'/>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </interface>
"""


def test_a_stage_in_between_is_not_charged_with_it(analyzer):
    """The expander-bus move runs while the audio's new shared line is still
    owed by the join: that finding is the join's, not the move's."""
    xml = XML.read_text().replace("    <memballoon", PXB + "    <memballoon", 1)
    plan = plan_domain(analyzer, xml)
    rules = [c.rule for c in plan.changes]
    assert rules[:3] == ["VA4002", "VA5003", "VA5001"], (rules, plan.rejected)
    join, pxb, lines = plan.changes[:3]
    assert [(i.finding.key, i.resolved_by) for i in join.introduces] == [(AUDIO, "VA5001")]
    assert not pxb.introduces and not lines.introduces
    assert check(pxb, "reanalysis").detail.endswith("; no new warning or error")
    after = reanalyse(plan.fixed_text)
    assert AUDIO not in keys(after.findings) and CARD not in keys(after.findings)
    assert serious(after.findings) <= serious(plan.before.findings)
    assert not {f.key for c in plan.changes for f in c.resolves} & keys(after.findings)
