"""The remedies point to the exact change.

- A rule's remedy is plain prose; the findings of a rule that names a
  domain XML planner (Rule.fix) carry the `vfio-advisor fix DOMAIN` pointer,
  which every sink prints after the remedy (what the hook writes to the
  journal, with no plan: it must never load libvirt).
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

from vfio_advisor.rules import RULES_BY_ID
from lxml import etree

from tests.fix.conftest import DATA, HOST_ROOT, REPO, demo_domain
from vfio_advisor.facts.domain import PciAddress, parse_tree, serialize
from vfio_advisor.findings import Severity
from vfio_advisor.fix.planner import Analyzer
from vfio_advisor.fix.planner import FIXABLE_RULES
from vfio_advisor.fix import verify
from vfio_advisor.fix.xmledit import Op, apply_ops, next_controller_index

NODE = f"test://{REPO / 'examples/demo-host/node.xml'}"
POINTER = "Exact verified change: `vfio-advisor fix {}` (add --apply to define it)."

# One domain per fixable rule, each raising it on the demo host.
RAISES = {
    "VA1002": lambda: demo_domain("win11"),
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
def test_fixable_finding_carries_the_fix_pointer_beside_plain_prose(analyzer, rule):
    # A domain name with a space: the pointer is a command to copy, so the
    # name is one shell word.
    xml = renamed(RAISES[rule](), "my vm")
    findings = analyzer.analyse(xml).findings
    mine = [f for f in findings if f.rule_id == rule]
    assert mine, f"{rule} does not fire on its domain"
    for f in mine:
        assert "vfio-advisor fix" not in f.remedy, f.remedy  # the remedy stays prose
        assert f.fix_pointer == " " + POINTER.format("'my vm'"), f.fix_pointer
    for f in findings:
        if f.rule_id not in FIXABLE_RULES:
            # no XML fix: a pointer only where the rule names another kind (the guest's)
            other = RULES_BY_ID[f.rule_id].fix
            assert f.fix_pointer == (other.pointer(f.domain) if other else ""), f
            assert "vfio-advisor fix" not in f.remedy, f


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
        "print([f.remedy + f.fix_pointer for f in fs if f.rule_id == 'VA5001'][0])\n"
        "print(sorted(m for m in sys.modules if m == 'libvirt' or m.startswith('vfio_advisor.fix')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    remedy, loaded = out.stdout.strip().rsplit("\n", 1)
    assert remedy.endswith(POINTER.format("two-intx"))  # as the journal sink writes it
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
    # nvme-linux has no fixable finding; win11 has VA1002 (no guest agent channel)
    assert planned == ["oldbox", "win11"]
    doc = json.loads(out)
    for d in doc["domains"]:
        for f in d["findings"] + [g for dev in d["devices"] for g in dev["findings"]]:
            assert "fix" in f
            if f["rule"] not in FIXABLE_RULES:
                assert f["fix"] is None, f
            elif f["rule"] == "VA1002":  # the channel: a verified change
                assert f["fix"]["verified"] is True and f["fix"]["rule"] == f["rule"]
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


def test_fixable_rules_are_the_rules_naming_a_planner():
    # No list of fixable IDs exists besides Rule.fix: the planner's set is
    # derived from the registry, and each rule's planner resolves.
    from vfio_advisor.fix import planner
    from vfio_advisor.rules import RULES
    from vfio_advisor.rules.remedies import DOMAIN_XML

    named = [r for r in RULES if r.fix is not None and r.fix.kind == DOMAIN_XML]
    assert FIXABLE_RULES == {r.id for r in named} and len(named) == len(RAISES)
    assert set(RAISES) == FIXABLE_RULES
    assert [r.id for r in planner.FIX_RULES] == [r.id for r in sorted(named, key=lambda r: r.fix.stage)]
    for r in named:
        assert callable(planner.planner_of(r)), r.id


def test_a_rule_is_fixable_because_it_names_a_planner(analyzer, monkeypatch):
    """Take Rule.fix off one rule and the planner no longer plans it, nor
    does its finding point at `fix`: the rule itself is the only list."""
    from vfio_advisor.fix import planner
    from vfio_advisor.rules import RULES_BY_ID, base

    rule = RULES_BY_ID["VA4003"]
    bare = rule._replace(fix=None)
    monkeypatch.setitem(base._REGISTERED, rule.id, bare)
    monkeypatch.setattr(planner, "RULES", tuple(bare if r.id == rule.id else r
                                                for r in planner.RULES))
    monkeypatch.setattr(planner, "FIX_RULES", planner._domain_xml_rules())
    assert rule.id not in {r.id for r in planner.FIX_RULES}
    xml = (DATA / "q35-split-irqchip.xml").read_text()
    (f,) = [f for f in analyzer.analyse(xml).findings if f.rule_id == rule.id]
    assert f.fix_pointer == ""
    plan = planner.plan_domain(analyzer, xml)
    assert not any(c.rule == rule.id for c in plan.changes)


def test_fix_and_the_shell_spell_no_rule_id():
    """Rule IDs are spelt in rules/ only: fix/, the CLI, the config template
    and the domain model name rules through the registry (Rule.fix, slugs)."""
    import ast

    pkg = REPO / "vfio_advisor"
    files = [*sorted((pkg / "fix").glob("*.py")), pkg / "cli.py", pkg / "config.py",
             pkg / "exitstatus.py", pkg / "sources.py", pkg / "snapshot.py", pkg / "manpage.py",
             pkg / "facts/domain.py"]
    found = [f"{p.relative_to(REPO)}:{node.lineno}: {node.value[:60]!r}"
             for p in files for node in ast.walk(ast.parse(p.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and re.search(r"VA\d{4}", node.value)]
    assert found == []
