"""The three checks every proposed domain XML must pass before it is offered.

1. Re-analysis with the same host facts: the findings the change targets are
   gone, and no finding of warning or worse appears that the original domain
   did not have (compared by rule and subject).
2. libvirt's schema: `virt-xml-validate FILE domain` (Debian package
   libvirt-clients; it runs xmllint from libxml2-utils against
   /usr/share/libvirt/schemas/domain.rng).
3. libvirt's test driver: virDomainDefineXMLFlags(VIR_DOMAIN_DEFINE_VALIDATE)
   on a fresh `test:///default` connection, undefined again at once. This
   runs libvirt's parser, post-parse and the generic validation
   (src/conf/domain_validate.c, e.g. virDomainDefIOMMUValidate refuses
   intremap without a split irqchip). The test driver assigns no default PCI
   addresses and does not run the qemu driver's address checks (libvirt 9.0).

A check that cannot run (tool missing) counts as failed: nothing unverified
is ever offered.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Iterable, NamedTuple

from lxml import etree

from vfio_advisor.findings import Finding, Severity

SCHEMA_TOOL = "virt-xml-validate"
TESTDRIVER_URI = "test:///default"


class Check(NamedTuple):
    name: str  # "reanalysis" | "schema" | "testdriver"
    ok: bool
    detail: str

    def to_json(self) -> dict:
        return {"ok": self.ok, "detail": self.detail}


def describe_finding(f: Finding) -> str:
    where = f.subject or (f"guest {f.guest_address}" if f.guest_address else None)
    return f"{f.rule_id}" + (f" {where}" if where else "")


def reanalysis(before, after, targeted: Iterable[Finding]) -> Check:
    after_keys = {f.key for f in after.findings}
    left = [f for f in targeted if f.key in after_keys]
    before_keys = {f.key for f in before.findings}
    new = [f for f in after.findings
           if f.severity >= Severity.WARNING and f.key not in before_keys]
    problems = []
    if left:
        problems.append("still reported: " + ", ".join(describe_finding(f) for f in left))
    if new:
        problems.append("new: " + "; ".join(f"{describe_finding(f)} ({f.severity}): {f.message}"
                                            for f in new))
    if problems:
        return Check("reanalysis", False, "; ".join(problems))
    gone = sorted({describe_finding(f) for f in targeted})
    return Check("reanalysis", True, "gone: " + ", ".join(gone) + "; no new warning or error")


def schema(xml: str) -> Check:
    tool = shutil.which(SCHEMA_TOOL)
    if tool is None:
        return Check("schema", False, f"{SCHEMA_TOOL} not installed (Debian package libvirt-clients)")
    if shutil.which("xmllint") is None:  # virt-xml-validate is a shell script around it
        return Check("schema", False, "xmllint not installed (Debian package libxml2-utils)")
    with tempfile.NamedTemporaryFile("w", suffix=".xml", prefix="vfio-advisor-fix-") as f:
        f.write(xml)
        f.flush()
        try:
            out = subprocess.run([tool, f.name, "domain"], capture_output=True, text=True,
                                 timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Check("schema", False, f"{SCHEMA_TOOL} did not run: {exc}")
    if out.returncode == 0:
        return Check("schema", True, "valid against libvirt's domain.rng")
    text = " ".join((out.stderr or out.stdout).replace(f.name, "<domain>").split())
    return Check("schema", False, text[:500] or f"{SCHEMA_TOOL} exit {out.returncode}")


def testdriver(xml: str) -> Check:
    try:
        import libvirt  # noqa: PLC0415 - lazy: the hook must never load it
    except ImportError:
        return Check("testdriver", False, "libvirt-python is not installed")
    libvirt.registerErrorHandler(lambda *_: None, None)
    # test:///default is shared by every connection of this process and holds
    # a domain named "test": rename ours if it would collide with it.
    root = etree.fromstring(xml.encode())
    conn = None
    try:
        conn = libvirt.open(TESTDRIVER_URI)
        name = root.findtext("name") or ""
        taken = {d.name() for d in conn.listAllDomains()} | set()
        uuids = {d.UUIDString() for d in conn.listAllDomains()}
        if name in taken or (root.findtext("uuid") or "").strip() in uuids:
            root.find("name").text = f"{name}-vfio-advisor-verify-{os.getpid()}"
            uuid = root.find("uuid")
            if uuid is not None:
                root.remove(uuid)
            xml = etree.tostring(root, encoding="unicode")
        dom = conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
        try:
            dom.undefine()
        except libvirt.libvirtError:
            pass
    except libvirt.libvirtError as exc:
        return Check("testdriver", False, " ".join(str(exc.get_error_message()).split())[:500])
    finally:
        if conn is not None:
            conn.close()
    return Check("testdriver", True, "defined with VIR_DOMAIN_DEFINE_VALIDATE on test:///default")


def verify(before, after, xml: str, targeted: list[Finding]) -> list[Check]:
    """All three checks (each runs even when an earlier one failed, so the
    output says everything that is wrong)."""
    return [reanalysis(before, after, targeted), schema(xml), testdriver(xml)]
