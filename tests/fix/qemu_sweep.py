"""The corpus sweep against libvirt's real qemu driver (run by
tests/fix/test_qemu_sweep.py inside a private libvirtd, as root).

    python -m tests.fix.qemu_sweep OUT.json [FILE...]

For every domain of the corpus (tests/data/corpus: libvirt's own test XMLs
and users' domains, hostdevs renumbered onto the demo host's devices, see
conftest.renumbered), adapted to this machine where the user's host had
something this one lacks (`adapt`), `fix` plans with the qemu driver check
on qemu:///system, and each changed domain is checked again here,
independently of the planner:

- defined in the qemu driver (virDomainDefineXML, what `--apply` does) and
  undefined again, and converted with virConnectDomainXMLToNative;
- the layout rules (every slot in use has function 0, ...: fix/layout.py)
  on the original and the fixed text;
- the claims: what a change says it resolves is gone from the final XML,
  and the final XML has no finding of warning or worse the original lacked;
- `patch` applies the printed diff to the user's own text, and the result
  is byte for byte the printed --format xml.

The counts go to OUT.json.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lxml import etree

from tests.fix.conftest import CORPUS, HOST_ROOT, renumbered_text
from vfio_advisor.errors import DomainXMLError
from vfio_advisor.facts.domain import parse_tree
from vfio_advisor.findings import Severity
from vfio_advisor.fix.layout import problems
from vfio_advisor.fix.planner import Analyzer, plan_domain
from vfio_advisor.fix.textedit import render
from vfio_advisor.fix.verify import QemuCheck, Verifier, has_hostdevs, host_has_vfio

REPO = Path(__file__).resolve().parents[2]
FILES = sorted(CORPUS.glob("libvirt-tests/*/*.xml")) + sorted(CORPUS.glob("user-domains/*.xml"))
# The named cases, written for the demo host's devices: not renumbered.
NAMED = sorted((REPO / "tests/data/fix").glob("*.xml")) + [REPO / "tests/data/domains/e2e-pxb-pcie.xml"]
EMULATOR = "/usr/bin/qemu-system-x86_64"

# What users' hosts have and this one does not; removed from both the
# original and (so) the fixed XML, which keeps the qemu driver's refusal
# about them from hiding its address and controller checks. None of these
# is a PCI device whose address a fix moves.
NOT_HERE = (
    "devices/graphics[@type='spice']", "devices/channel[@type='spicevmc']",
    "devices/redirdev[@type='spicevmc']", "devices/audio[@type='spice']",
    "devices/tpm", "devices/smartcard", "os/smbios", "devices/graphics[@type='egl-headless']",
    # newer than this libvirt 9.0: the ICH9 watchdog model (libvirt 9.1),
    # PipeWire audio (9.10); and placeholders users put in shared XML
    "devices/watchdog[@model='itco']", "devices/audio[@type='pipewire']",
    "devices/interface/mac[contains(@address, 'X')]", "sysinfo",
)
# QEMU 7.2 (Debian 12) has machine types up to 7.2.
NEWEST_MACHINE = (7, 2)


class _Adapt:
    """An edit (xmledit.Op's protocol) that makes a domain runnable here."""

    def apply(self, root) -> None:
        for path in NOT_HERE:
            for el in root.xpath(path):
                el.getparent().remove(el)
        os_type = root.find("os/type")
        machine = os_type.get("machine", "") if os_type is not None else ""
        for prefix, alias in (("pc-q35-", "q35"), ("pc-i440fx-", "pc")):
            version = machine[len(prefix):].split(".")
            if machine.startswith(prefix) and all(v.isdigit() for v in version[:2]) and \
                    tuple(int(v) for v in version[:2]) > NEWEST_MACHINE:
                os_type.set("machine", alias)
        # Firmware autoselection next to an explicit loader or NVRAM template:
        # libvirt 9.0 refuses what newer libvirt accepts; the loader stays.
        os_el = root.find("os")
        if os_el is not None and os_el.get("firmware") and (
                os_el.find("loader") is not None or os_el.find("nvram") is not None):
            del os_el.attrib["firmware"]
            for feature in os_el.findall("firmware"):
                os_el.remove(feature)
        emulator = root.find("devices/emulator")
        if emulator is not None:
            emulator.text = EMULATOR
        for gl in root.xpath("devices/graphics/gl | devices/video/model/acceleration[@rendernode]"):
            gl.getparent().remove(gl)


def adapt(xml: str) -> str:
    """The domain with this machine's emulator, without what NOT_HERE lists,
    as text edits of the user's own text (fix/textedit.py)."""
    out = render(xml, parse_tree(xml), [_Adapt()])
    if out is None:
        raise DomainXMLError("the sweep cannot map this text onto its tree")
    return out


def qemu_refusal(conn, xml: str, libvirt) -> tuple[str | None, str | None]:
    """(define's refusal, domxml-to-native's refusal); None each when accepted."""
    root = etree.fromstring(xml.encode())
    root.find("name").text = "vfio-advisor-sweep"
    uuid = root.find("uuid")
    if uuid is not None:
        root.remove(uuid)
    text = etree.tostring(root, encoding="unicode")
    out = []
    try:
        conn.defineXMLFlags(text, 0).undefine()
        out.append(None)
    except libvirt.libvirtError as exc:
        out.append(" ".join(str(exc.get_error_message()).split()))
    if has_hostdevs(text) and not host_has_vfio():
        # verify.Verifier skips it there too: without VFIO libvirtd 9.0
        # fails the command line and was seen to crash after a series.
        return out[0], None
    try:
        conn.domainXMLToNative("qemu-argv", text, 0)
        out.append(None)
    except libvirt.libvirtError as exc:
        out.append(" ".join(str(exc.get_error_message()).split()))
    return out[0], out[1]


def patch_applies(original: str, diff: str, expected: str) -> str | None:
    """None when `patch` turns `original` into `expected` with `diff`, else why not."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "domain.xml")
        path.write_text(original)
        run = subprocess.run(["patch", "--quiet", "--batch", "--no-backup-if-mismatch", str(path)],
                             input=diff, capture_output=True, text=True, timeout=30)
        if run.returncode != 0:
            return " ".join((run.stdout + run.stderr).split())[:300]
        if path.read_text() != expected:
            return "patched file differs from the printed XML"
    return None


def probe(conn) -> dict:
    """The product's own qemu driver check, on a change libvirt refuses
    (the primary SATA controller off 00:1f.2 on Q35) and through the CLI."""
    q35 = (REPO / "tests/data/domains/e2e-pxb-pcie.xml").read_text()
    sata = "<controller type='sata' index='0'><address type='pci' domain='0x0000' bus='0x00' " \
           "slot='0x{:02x}' function='0x{}'/></controller>\n    <controller type='usb'"
    good = q35.replace("<controller type='usb'", sata.format(0x1F, 2), 1)
    bad = q35.replace("<controller type='usb'", sata.format(0x03, 0), 1)
    check = Verifier(good, QemuCheck(conn, "qemu:///system")).qemudriver(bad)
    same = Verifier(good, QemuCheck(conn, "qemu:///system")).qemudriver(good)
    cli = subprocess.run([sys.executable, "-m", "vfio_advisor.fix", "--xml",
                          str(REPO / "tests/data/domains/e2e-pxb-pcie.xml"), "--connect",
                          "qemu:///system", "--host-root", str(HOST_ROOT)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    return {"refused change": check._asdict(), "accepted": same._asdict(),
            "cli": {"rc": cli.returncode, "out": cli.stdout, "err": cli.stderr}}


def sweep(files, out_path: str) -> dict:
    import libvirt  # noqa: PLC0415 - the sweep runs where libvirt-python is

    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.open("qemu:///system")
    analyzer = Analyzer(str(HOST_ROOT))
    fresh = Analyzer(str(HOST_ROOT))
    counts: collections.Counter = collections.Counter()
    kinds: collections.Counter = collections.Counter()
    problems_found: list[str] = []
    changed_domains: dict[str, list[str]] = {}
    native_refusals: collections.Counter = collections.Counter()
    rejections: list[str] = []
    start = time.monotonic()
    for path in files:
        path = Path(path)
        if path in NAMED:
            xml, name = path.read_text(), str(path.relative_to(REPO))
        else:
            xml, name = renumbered_text(path), str(path.relative_to(CORPUS))
        if xml is None:
            continue
        try:
            xml = adapt(xml)
            plan = plan_domain(analyzer, xml, qemu=QemuCheck(conn, "qemu:///system"))
        except DomainXMLError:
            counts["refused as input"] += 1
            continue
        counts["domains"] += 1
        counts["unfixed schema-only"] += sum(
            1 for u in plan.unfixed if u.kind == "unverifiable" and "libvirt schema" in u.reason
            and "test driver" not in u.reason)
        for c in plan.rejected:
            for check in c.checks:
                if not check.ok:
                    counts[f"rejected by {check.name}"] += 1
                    rejections.append(f"{name}: {c.rule}: {check.name}: {check.detail}")
        if not plan.changes:
            continue
        counts["changed"] += 1
        changed_domains[name] = [c.rule for c in plan.changes]
        kinds.update(c.rule for c in plan.changes)
        for ch in (ch for c in plan.changes for ch in c.checks if ch.name == "qemudriver"):
            counts["qemu driver check " + ("ran" if ch.ran else "not run")] += 1
        text = plan.fixed_text
        base_define, base_native = qemu_refusal(conn, xml, libvirt)
        define, native = qemu_refusal(conn, text, libvirt)
        if base_define is None and define is not None:
            counts["fixes refused by the qemu driver (define)"] += 1
            problems_found.append(f"{name}: define: {define}")
        if base_native is None and native is not None:
            counts["fixes refused by the qemu driver (domxml-to-native)"] += 1
            problems_found.append(f"{name}: domxml-to-native: {native}")
        if base_native is not None:
            counts["original refused by domxml-to-native here"] += 1
            native_refusals[base_native[:80]] += 1
        if base_define is not None:
            counts["original refused by the qemu driver here"] += 1
            problems_found.append(f"{name}: the adapted original is refused here: {base_define}")
        new_layout = problems(parse_tree(text)) - problems(parse_tree(xml))
        no_fn0 = [p for p in new_layout if "no function 0" in p]
        counts["slots without function 0"] += len(no_fn0)
        if new_layout:
            problems_found.append(f"{name}: layout: {sorted(new_layout)}")
        before = fresh.analyse(xml)
        after = fresh.analyse(text)
        after_keys = {f.key for f in after.findings}
        before_keys = {f.key for f in before.findings}
        contradicted = [f for c in plan.changes for f in c.resolves if f.key in after_keys]
        new = [f for f in after.findings if f.severity >= Severity.WARNING and f.key not in before_keys]
        counts["contradicted claims"] += len(contradicted) + len(new)
        if contradicted or new:
            problems_found.append(f"{name}: claims: still {[f.key for f in contradicted]}, "
                                  f"new {[f.key for f in new]}")
        if not plan.minimal:
            counts["not minimal (re-serialised)"] += 1
            problems_found.append(f"{name}: the offered text is the re-serialised XML")
        why = patch_applies(xml, plan.diff(), text)
        if why:
            counts["patch fails"] += 1
            problems_found.append(f"{name}: patch: {why}")
    probes = probe(conn)
    conn.close()
    result = {"probes": probes, "counts": dict(counts), "fix kinds": dict(kinds), "problems": problems_found,
              "changed": changed_domains, "rejected changes": rejections,
              "domxml-to-native refusals of originals": dict(native_refusals), "seconds": round(time.monotonic() - start, 1)}
    Path(out_path).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    os.environ.setdefault("LIBVIRT_DEFAULT_URI", "qemu:///system")
    sweep(sys.argv[2:] or FILES + NAMED, sys.argv[1])
