"""The remedies point to the exact change.

- The rules' own remedies (what the hook writes to the journal, with no
  plan: it must never load libvirt) end with the `vfio-advisor fix DOMAIN`
  pointer, for the five rules that have a domain XML fix.
- VA5001's prose names per-device addresses chosen jointly: on
  tests/data/fix/q35-two-intx.xml it used to send both devices to
  0000:00:01.0, where they would share again. Here the prose moves are made
  (all, and each alone) and re-analysed, and libvirt accepts them.
- advise plans the domains that have a fixable finding (only those), shows
  the verified change or why there is none, and its JSON carries "fix".
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from contextlib import redirect_stdout

import pytest
from lxml import etree

from tests.fix.conftest import DATA, HOST_ROOT, REPO, demo_domain
from vfio_advisor.fix.analysis import Analyzer, PciAddress, Severity
from vfio_advisor.fix.planner import FIXABLE_RULES
from vfio_advisor.fix import verify
from vfio_advisor.fix.xmledit import Op, apply_ops, next_controller_index, parse_tree, serialize

NODE = f"test://{REPO / 'examples/demo-host/node.xml'}"
POINTER = "Exact verified change: `vfio-advisor fix {}` (add --apply to define it)."

# One domain per fixable rule, each raising it on the demo host.
RAISES = {
    "VA4001": lambda: demo_domain("oldbox"),
    "VA4002": lambda: (DATA / "q35-split-card.xml").read_text(),
    "VA4003": lambda: (DATA / "q35-split-irqchip.xml").read_text(),
    "VA5001": lambda: (DATA / "q35-two-intx.xml").read_text(),
    "VA5003": lambda: (DATA / "q35-pxb-hostdev.xml").read_text(),
}


def serious(findings):
    return {(f.rule_id, f.subject) for f in findings if f.severity >= Severity.WARNING}


def renamed(xml: str, name: str) -> str:
    root = parse_tree(xml)
    root.find("name").text = name
    return serialize(root)


@pytest.mark.parametrize("rule", sorted(RAISES))
def test_rule_remedy_ends_with_the_fix_pointer(analyzer, rule):
    # A domain name with a space: the pointer is a command to copy, so the
    # name is one shell word.
    xml = renamed(RAISES[rule](), "my vm")
    findings = analyzer.analyse(xml).findings
    mine = [f for f in findings if f.rule_id == rule]
    assert mine, f"{rule} does not fire on its domain"
    for f in mine:
        assert f.remedy.endswith(" " + POINTER.format("'my vm'")), f.remedy
    for f in findings:
        if f.rule_id not in FIXABLE_RULES:
            assert "vfio-advisor fix" not in f.remedy, f  # no pointer where fix has nothing


def _prose_moves(findings) -> dict[str, tuple[int, int]]:
    """host BDF -> (root-bus slot, function) that VA5001's prose names."""
    out = {}
    for f in findings:
        if f.rule_id == "VA5001":
            m = re.search(r"slot='0x([0-9a-f]{2})' function='0x([0-9a-f])'", f.remedy)
            assert m, f.remedy
            out[f.subject] = (int(m.group(1), 16), int(m.group(2), 16))
    return out


def _make_moves(xml: str, moves: dict[str, tuple[int, int]]) -> str:
    """Each named device behind a new pcie-root-port at its slot, as the prose
    says (Q35)."""
    root = parse_tree(xml)
    for bdf, (slot, func) in sorted(moves.items()):
        index = next_controller_index(root)
        root = apply_ops(root, [
            Op("add-pci-controller", index=index, model="pcie-root-port",
               address=PciAddress(0, 0, slot, 0)),
            Op("set-address", key=("hostdev", bdf), address=PciAddress(0, index, 0, func))])
    return serialize(root)


def test_va5001_prose_sends_two_sharing_devices_to_two_lines(analyzer):
    xml = (DATA / "q35-two-intx.xml").read_text()
    before = analyzer.analyse(xml)
    moves = _prose_moves(before.findings)
    assert set(moves) == {"0000:08:00.0", "0000:08:01.0"}
    assert len({slot for slot, _ in moves.values()}) == 2, moves  # was 0000:00:01.0 for both
    promised = {f.subject: int(re.search(r"GSI (\d+) alone", f.remedy).group(1))
                for f in before.findings if f.rule_id == "VA5001"}
    assert len(set(promised.values())) == 2, promised
    # All the moves together, and each alone: never wrong for the domain.
    for subset in (moves, *({b: m} for b, m in moves.items())):
        fixed = _make_moves(xml, subset)
        after = analyzer.analyse(fixed)
        assert not [f for f in after.findings if f.rule_id == "VA5001"], (subset, after.findings)
        assert serious(after.findings) <= serious(before.findings)
        lines = {fn.host_address: fn.irq for fn in after.facts.guest_intx.functions
                 if fn.host_address in subset}
        assert lines == {b: promised[b] for b in subset}  # the lines the prose promised
    fixed = _make_moves(xml, moves)
    for check in (verify.schema(fixed), verify.testdriver(fixed)):
        assert check.ok, check


def test_hook_path_loads_neither_libvirt_nor_the_planner():
    # What the hook runs (hook.run: Engine(...).analyse on the XML from stdin),
    # in a fresh interpreter: the pointer is written without planning.
    code = (
        "import sys\n"
        "import vfio_advisor.hook\n"
        "from vfio_advisor.engine import Engine\n"
        "from vfio_advisor.facts.domain import parse_domain_xml\n"
        f"d = parse_domain_xml(open({str(DATA / 'q35-two-intx.xml')!r}).read())\n"
        f"fs = Engine({str(HOST_ROOT)!r}).analyse(d)[1]\n"
        "print([f.remedy for f in fs if f.rule_id == 'VA5001'][0])\n"
        "print(sorted(m for m in sys.modules if m == 'libvirt' or m.startswith('vfio_advisor.fix')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    remedy, loaded = out.stdout.strip().rsplit("\n", 1)
    assert remedy.endswith(POINTER.format("two-intx"))
    assert loaded == "[]", loaded


def _advise(monkeypatch, *args) -> tuple[int, str, list[str]]:
    """advise in this process; returns (exit, stdout, names of the planned domains)."""
    from vfio_advisor import cli
    from vfio_advisor.fix import advice

    planned = []
    real = advice.plan_domain

    def counting(analyzer, xml, *rest, **kw):
        plan = real(analyzer, xml, *rest, **kw)
        planned.append(plan.name)
        return plan

    monkeypatch.setattr(advice, "plan_domain", counting)
    monkeypatch.setenv("NO_COLOR", "1")
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = cli.main(["advise", "--host-root", str(HOST_ROOT), "--config", "/dev/null", *args])
    return code, buf.getvalue(), planned


def test_advise_json_carries_fix_and_plans_only_fixable_domains(monkeypatch):
    code, out, planned = _advise(monkeypatch, "--connect", NODE, "--format", "json")
    assert code == 1
    assert planned == ["oldbox"]  # nvme-linux and win11 have no fixable finding
    doc = json.loads(out)
    for d in doc["domains"]:
        for f in d["findings"] + [g for dev in d["devices"] for g in dev["findings"]]:
            assert "fix" in f
            if f["rule"] not in FIXABLE_RULES:
                assert f["fix"] is None, f
            else:
                assert f["fix"]["verified"] is False and f["fix"]["rule"] == f["rule"]
                assert f["fix"]["kind"] == "manual" and f["fix"]["reason"]
                assert f["remedy"].endswith(f["fix"]["reason"].rstrip(".") + ".")
    oldbox = next(d for d in doc["domains"] if d["name"] == "oldbox")
    (va4001,) = [f for f in oldbox["findings"] if f["rule"] == "VA4001"]
    assert "IDE bus" in va4001["fix"]["reason"]


def test_advise_json_fix_is_the_verified_joint_change(monkeypatch, analyzer):
    path = DATA / "q35-two-intx.xml"
    code, out, planned = _advise(monkeypatch, "--xml", str(path), "--format", "json")
    assert planned == ["two-intx"]
    (dom,) = json.loads(out)["domains"]
    fixes = [f["fix"] for f in dom["findings"] if f["rule"] == "VA5001"]
    assert len(fixes) == 2 and fixes[0] == fixes[1]  # one joint change for both
    fix = fixes[0]
    assert fix["verified"] is True and all(v["ok"] for v in fix["verification"].values())
    assert {r["subject"] for r in fix["resolves"]} == {"0000:08:00.0", "0000:08:01.0"}
    # Replay the operations as advise printed them: VA5001 is gone.
    ops = []
    for o in fix["operations"]:
        a = o["address"]
        addr = PciAddress(int(a[:4], 16), int(a[5:7], 16), int(a[8:10], 16), int(a[11], 16))
        if o["op"] == "add-pci-controller":
            ops.append(Op("add-pci-controller", index=o["index"], model=o["model"], address=addr))
        else:
            assert o["op"] == "set-address" and o["target"].startswith("hostdev ")
            ops.append(Op("set-address", key=("hostdev", o["target"].split()[1]), address=addr))
    after = analyzer.analyse(serialize(apply_ops(parse_tree(path.read_text()), ops)))
    assert not [f for f in after.findings if f.rule_id == "VA5001"]


def test_advise_text_shows_the_change_or_why_none(monkeypatch):
    code, out, _ = _advise(monkeypatch, "--xml", str(DATA / "q35-two-intx.xml"))
    assert code == 1
    assert out.count("Exact verified change: give every assigned INTx device a guest line") == 2
    assert "0000:08:00.0: guest 0000:01:00.0 -> 0000:04:00.0" in out
    assert "vfio-advisor fix --host-root DIR --xml FILE" in out
    assert "`vfio-advisor fix two-intx`" not in out  # the hook's pointer is replaced
    code, out, _ = _advise(monkeypatch, "--connect", NODE, "oldbox")
    assert "No verified domain XML change: Q35 conversion is manual here" in out
    assert "vfio-advisor fix oldbox" not in out  # no pointer to a change that does not exist


def test_advise_names_the_planners_rules():
    # cli.py keeps its own copy so that advise imports the planner only when
    # a domain has a fixable finding; it must be the planner's set.
    from vfio_advisor import cli

    assert cli._FIXABLE_RULES == FIXABLE_RULES
