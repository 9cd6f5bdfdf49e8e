"""The command: formats, exit codes, bad input (one line, nothing changed),
and --apply over libvirt's test driver (a real libvirt connection)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.fix.conftest import DATA, HOST_ROOT, REPO
from vfio_advisor.fix import command
from vfio_advisor.cli import build_parser
from vfio_advisor.errors import UsageError
from vfio_advisor.fix.planner import Analyzer

NODE_NS = "http://libvirt.org/schemas/domain/test/1.0"


def fix(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "vfio_advisor.fix", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO, input=stdin)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_diff_is_the_default_and_exit_0_when_all_fixed():
    out = fix("--xml", str(DATA / "q35-two-intx.xml"), "--host-root", str(HOST_ROOT))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# two-intx")
    assert "\n--- two-intx (current)\n+++ two-intx (fixed)\n" in out.stdout
    # in the file's own quote style
    assert "+    <controller type='pci' index='4' model='pcie-root-port'>" in out.stdout


def test_xml_format_prints_only_the_fixed_xml():
    out = fix("--xml", str(DATA / "q35-split-irqchip.xml"), "--host-root", str(HOST_ROOT),
              "--format", "xml")
    assert out.returncode == 0 and out.stderr == ""
    from lxml import etree

    root = etree.fromstring(out.stdout.encode())
    assert root.tag == "domain" and root.find("features/ioapic").get("driver") == "kvm"


def test_json_format_schema():
    out = fix("--xml", str(DATA / "q35-split-card.xml"), "--xml", str(DATA / "q35-split-irqchip-intremap.xml"),
              "--host-root", str(HOST_ROOT), "--format", "json")
    assert out.returncode == 1, out.stderr  # VA4003 is manual with intremap
    doc = json.loads(out.stdout)
    assert doc["schema"] == "vfio-advisor/fix/1"
    card, intremap = doc["domains"]
    assert card["name"] == "split-card" and card["complete"] and card["changed"]
    change, channel = card["changes"]  # in stage order; VA1002: the guest agent channel
    assert change["rule"] == "VA4002" and change["verified"]
    assert channel["rule"] == "VA1002" and {o["op"] for o in channel["operations"]} == {"append-device"}
    assert set(change["verification"]) == {"reanalysis", "layout", "schema", "testdriver",
                                            "qemudriver"}
    assert all(v["ok"] for v in change["verification"].values())
    assert not change["verification"]["qemudriver"]["ran"]
    # the functions move together; the root port the move left empty goes
    assert {o["op"] for o in change["operations"]} == {"set-address", "remove"}
    assert card["fixed_xml"].startswith((DATA / "q35-split-card.xml").read_text()[:40])
    assert [f["rule"] for f in card["not_fixable"]] == ["VA1001"]
    assert not intremap["complete"] and intremap["fixed_xml"] is None
    (left,) = intremap["unfixed"]
    assert left["rule"] == "VA4003" and left["kind"] == "manual" and left["severity"] == "warning"


def test_exit_1_when_a_warning_has_no_verified_fix():
    out = fix("--connect", f"test://{REPO}/examples/demo-host/node.xml", "--host-root", str(HOST_ROOT))
    assert out.returncode == 1
    assert "no verified fix for VA4001 (warning): Q35 conversion is manual here" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--rule", "VA9999"], "unknown rule 'VA9999' in --rule"),
    (["--rule", "VA1001"], "VA1001 has no domain XML fix"),
    (["--format", "yaml"], "invalid choice: 'yaml'"),
    (["--apply"], "--apply defines domains through libvirt"),
])
def test_usage_errors(args, message):
    out = fix("--xml", str(DATA / "q35-two-intx.xml"), "--host-root", str(HOST_ROOT), *args)
    assert out.returncode == 2 and out.stdout == ""
    assert message in one_line(out.stderr)


@pytest.mark.parametrize("content, message", [
    ("<domain", "not well-formed XML"),
    ("<network><name>x</name></network>", "root element is <network>"),
    ("", "empty input"),
])
def test_unparsable_domain(tmp_path, content, message):
    bad = tmp_path / "bad.xml"
    bad.write_text(content)
    out = fix("--xml", str(bad), "--host-root", str(HOST_ROOT))
    assert out.returncode == 2 and out.stdout == ""
    assert message in one_line(out.stderr)


@pytest.mark.parametrize("content, message", [
    ("<domain", "not well-formed XML"),
    ("<network><name>x</name></network>", "root element is <network>"),
])
def test_unparsable_domain_in_json_is_still_a_document(tmp_path, content, message):
    """--format json: the fix/1 document with the refusal in errors[] and no
    domain, the same line on stderr, exit 2 (it printed the line alone)."""
    bad = tmp_path / "bad.xml"
    bad.write_text(content)
    out = fix("--xml", str(bad), "--host-root", str(HOST_ROOT), "--format", "json")
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in one_line(out.stderr)
    doc = json.loads(out.stdout)
    assert doc["domains"] == [] and [e["source"] for e in doc["errors"]] == [str(bad)]
    assert message in doc["errors"][0]["message"]


def test_xml_format_needs_one_domain():
    out = fix("--xml", str(DATA / "q35-two-intx.xml"), "--xml", str(DATA / "q35-split-card.xml"),
              "--host-root", str(HOST_ROOT), "--format", "xml")
    assert out.returncode == 2 and "--format xml prints one domain" in one_line(out.stderr)


# --- --apply over libvirt's test driver --------------------------------------------------

@pytest.fixture
def node(tmp_path):
    two = (DATA / "q35-two-intx.xml").read_text().replace(
        "</domain>", f"<test:runstate xmlns:test='{NODE_NS}'>5</test:runstate></domain>")
    running = (DATA / "q35-split-irqchip.xml").read_text().replace(
        "<graphics", "<graphics").replace(
        "<memballoon model='none'/>",
        "<graphics type='vnc' port='-1' autoport='yes' passwd='s3cret'/>\n    <memballoon model='none'/>")
    path = tmp_path / "node.xml"
    path.write_text(f"<node xmlns:test='{NODE_NS}'>{two}{running}</node>")
    return f"test://{path}"


def args_for(uri, tmp_path, *extra):
    return build_parser().parse_args(
        ["fix", "--connect", uri, "--host-root", str(HOST_ROOT), "--state-dir", str(tmp_path / "state"),
         *extra])


def inactive(conn, name):
    import libvirt

    return conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)


def test_apply_defines_persistent_config_and_saves_the_old(node, tmp_path, capsys):
    import libvirt

    conn = libvirt.open(node)
    try:
        old_two, old_split = inactive(conn, "two-intx"), inactive(conn, "split-irqchip")
        live_split = conn.lookupByName("split-irqchip").XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
        rc = command.run(args_for(node, tmp_path, "--apply", "two-intx", "split-irqchip"), conn)
        assert rc == 0
        out = capsys.readouterr().out
        backups = sorted((tmp_path / "state/fix-backups").iterdir())
        assert [b.name.split("-2")[0] for b in backups] == ["split-irqchip", "two-intx"]
        assert all(oct(b.stat().st_mode & 0o777) == "0o600" for b in backups)
        assert backups[1].read_text() == old_two and backups[0].read_text() == old_split
        # The restore hint names the connection it was applied through, and
        # libvirt's test driver, which keeps definitions in memory only, is
        # not called a persistent config.
        assert f"restore with: virsh -c {node} define {backups[1]}" in out
        assert out.count("a driver that does not persist") == 2, out
        assert "applied to" not in out
        # persistent configs changed, verified by re-analysis from libvirt itself
        analyzer = Analyzer(str(HOST_ROOT))
        now_two = analyzer.analyse(inactive(conn, "two-intx"))
        assert not [f for f in now_two.findings if f.rule_id == "VA5001"]
        new_split = inactive(conn, "split-irqchip")
        assert "driver='kvm'" in new_split.replace('"', "'")
        assert "passwd='s3cret'" in new_split.replace('"', "'")  # SECURE XML replayed
        # never live: the running domain's live XML is what it was
        assert conn.lookupByName("split-irqchip").XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE) == live_split
    finally:
        conn.close()


def test_apply_refuses_a_domain_changed_since_the_analysis(node, tmp_path):
    import libvirt

    conn = libvirt.open(node)
    try:
        args = args_for(node, tmp_path, "--apply", "two-intx")
        sources = command.load_sources(args, str(HOST_ROOT), conn)
        plans = [(s, command.plan_domain(Analyzer(str(HOST_ROOT)), s.xml, None)) for s in sources]
        # another tool edits the domain meanwhile
        edited = inactive(conn, "two-intx").replace("<vcpu placement='static'>2</vcpu>",
                                                    "<vcpu placement='static'>4</vcpu>")
        conn.defineXML(edited)
        with pytest.raises(UsageError, match="changed since the analysis"):
            command.apply_plans(args, plans, conn)
        assert inactive(conn, "two-intx") == edited  # nothing changed
        assert not (tmp_path / "state/fix-backups").exists() or not any((tmp_path / "state/fix-backups").iterdir())
    finally:
        conn.close()


def test_apply_refuses_a_read_only_connection(node, tmp_path):
    import libvirt

    conn = libvirt.openReadOnly(node)
    try:
        before = conn.lookupByName("two-intx").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        with pytest.raises(UsageError) as exc:
            command.run(args_for(node, tmp_path, "--apply", "two-intx"), conn)
        assert "read-write connection" in str(exc.value) and "read-only" in str(exc.value)
        assert "\n" not in str(exc.value)
        assert conn.lookupByName("two-intx").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before
        assert not any((tmp_path / "state/fix-backups").glob("*"))
    finally:
        conn.close()


def test_apply_with_nothing_to_fix_touches_nothing(tmp_path):
    uri = f"test://{REPO}/examples/demo-host/node.xml"
    out = fix("--connect", uri, "--host-root", str(HOST_ROOT), "--state-dir", str(tmp_path / "s"),
              "--apply", "nvme-linux")
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "s").exists()


def test_rule_takes_slugs_and_commas():
    xml = (DATA / "q35-two-intx.xml").read_text().replace("<apic/>", "<apic/>\n    <ioapic driver='qemu'/>")
    out = fix("--xml", "/dev/stdin", "--host-root", str(HOST_ROOT), "--format", "json",
              "--rule", "split-irqchip-with-intx,va5001", stdin=xml)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["rules"] == ["VA4003", "VA5001"]
    assert [c["rule"] for c in doc["domains"][0]["changes"]] == ["VA5001", "VA4003"]
    only = json.loads(fix("--xml", "/dev/stdin", "--host-root", str(HOST_ROOT), "--format", "json",
                          "--rule", "VA4003", stdin=xml).stdout)
    assert [c["rule"] for c in only["domains"][0]["changes"]] == ["VA4003"]
    assert {f["rule"] for f in only["domains"][0]["findings_after"]} >= {"VA5001"}


def test_the_summary_says_which_checks_ran_and_why_one_did_not():
    """With --xml alone no libvirt is asked; with --connect to a libvirt that
    is not the qemu driver, the check names that driver. Either way the
    line says "not run" rather than "ok"."""
    alone = fix("--xml", str(DATA / "q35-two-intx.xml"), "--host-root", str(HOST_ROOT))
    (line,) = [l for l in alone.stdout.splitlines() if l.startswith("#     verified:")]
    assert line == ("#     verified: reanalysis ok; layout ok; schema ok; testdriver ok; qemudriver "
                    "not run (--xml without --connect URI: no libvirt to ask)")
    other = fix("--xml", str(DATA / "q35-two-intx.xml"), "--host-root", str(HOST_ROOT),
                "--connect", "test:///default")
    assert other.returncode == 0, other.stderr
    (line,) = [l for l in other.stdout.splitlines() if l.startswith("#     verified:")]
    assert line.endswith("qemudriver not run (test:///default is libvirt's TEST driver, not the "
                         "qemu driver)"), line
