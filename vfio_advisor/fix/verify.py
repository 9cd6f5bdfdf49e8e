"""The checks every proposed domain XML must pass before it is offered.

1. Re-analysis with the same host facts: the findings the change targets are
   gone, and no finding of warning or worse appears that the original domain
   did not have (compared by rule and subject), except one that a later
   change of the same plan resolves (the planner judges that on the final
   XML, fix/planner.py).
2. The guest-visible layout (fix/layout.py): no slot without function 0, no
   unreachable device, no address used twice, no controller left empty, the
   chipset's own functions where libvirt's qemu driver wants them.
3. libvirt's schema: `virt-xml-validate FILE domain` (Debian package
   libvirt-clients; it runs xmllint from libxml2-utils against
   /usr/share/libvirt/schemas/domain.rng): no error the original does not
   have.
4. libvirt's test driver: virDomainDefineXMLFlags (without the schema flag)
   on a fresh `test:///default` connection, undefined again at once. This
   runs libvirt's parser, post-parse and the generic validation
   (src/conf/domain_validate.c, e.g. virDomainDefIOMMUValidate refuses
   intremap without a split irqchip). The test driver assigns no default PCI
   addresses and does not run the qemu driver's address checks (libvirt 9.0).

5. libvirt's qemu driver, where a read-write connection to it exists:
   virConnectDomainXMLToNative, which runs define's parse, address
   assignment and validation without defining anything (`qemu_native`).
   Without such a connection it is reported as not run, and the layout
   check stands for its address rules.

A check of 1-4 that cannot run (tool missing) counts as failed: nothing
unverified is ever offered.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from typing import Callable, Iterable, NamedTuple

from lxml import etree

from vfio_advisor.findings import Finding, Severity

SCHEMA_TOOL = "virt-xml-validate"
TESTDRIVER_URI = "test:///default"


class Check(NamedTuple):
    name: str  # "reanalysis" | "layout" | "schema" | "testdriver" | "qemudriver"
    ok: bool
    detail: str
    ran: bool = True  # False: the check could not run here; `detail` says why

    def to_json(self) -> dict:
        return {"ok": self.ok, "ran": self.ran, "detail": self.detail}

    def summary(self) -> str:
        """How the output names it: "schema ok", "qemudriver not run (why)"."""
        return f"{self.name} ok" if self.ran else f"{self.name} not run ({self.detail})"


def describe_finding(f: Finding) -> str:
    where = f.subject or (f"guest {f.guest_address}" if f.guest_address else None)
    return f"{f.rule_id}" + (f" {where}" if where else "")


def new_findings(before, after, pending: Iterable[Finding] = ()) -> list[Finding]:
    """Findings of warning or worse in `after` that neither `before` (the
    original) nor `pending` has (compared by Finding.key)."""
    old = {f.key for f in before.findings} | {f.key for f in pending}
    return [f for f in after.findings if f.severity >= Severity.WARNING and f.key not in old]


# later(finding) -> (left to a later change?, a note for the detail) | None
Later = Callable[[Finding], "tuple[bool, str | None] | None"]


def reanalysis(before, after, targeted: Iterable[Finding], pending: Iterable[Finding] = (),
               later: Later | None = None) -> Check:
    """The targeted findings are gone and nothing of warning or worse is new.
    `pending`: findings an earlier change introduced and left to a later
    one, not new here. `later(f)`, for a new finding: (True, note) when a
    later change of the plan is to resolve it (the check does not fail for
    it, and says so), (False, note) when not; the note is said either way."""
    after_keys = {f.key for f in after.findings}
    left = [f for f in targeted if f.key in after_keys]
    new, deferred = [], []
    for f in new_findings(before, after, pending):
        verdict = later(f) if later is not None else None
        (deferred if verdict and verdict[0] else new).append((f, verdict[1] if verdict else None))
    problems = []
    if left:
        problems.append("still reported: " + ", ".join(describe_finding(f) for f in left))
    if new:
        problems.append("new: " + "; ".join(f"{describe_finding(f)} ({f.severity}): {f.message}"
                                            + (f" ({note})" if note else "") for f, note in new))
    if problems:
        return Check("reanalysis", False, "; ".join(problems))
    gone = sorted({describe_finding(f) for f in targeted})
    if not deferred:
        return Check("reanalysis", True, "gone: " + ", ".join(gone) + "; no new warning or error")
    return Check("reanalysis", True, "gone: " + ", ".join(gone) + "; new: " + "; ".join(
        f"{describe_finding(f)} ({f.severity}), {note}" for f, note in deferred)
        + "; no other new warning or error")


def schema_errors(xml: str) -> tuple[bool, list[str]]:
    """(ran, libvirt Relax-NG errors of `xml`, without file names and line
    numbers so two versions of one domain compare); ran=False: the second
    item says why the tool did not run."""
    tool = shutil.which(SCHEMA_TOOL)
    if tool is None:
        return False, [f"{SCHEMA_TOOL} not installed (Debian package libvirt-clients)"]
    if shutil.which("xmllint") is None:  # virt-xml-validate is a shell script around it
        return False, ["xmllint not installed (Debian package libxml2-utils)"]
    with tempfile.NamedTemporaryFile("w", suffix=".xml", prefix="vfio-advisor-fix-") as f:
        f.write(xml)
        f.flush()
        try:
            out = subprocess.run([tool, f.name, "domain"], capture_output=True, text=True,
                                 timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, [f"{SCHEMA_TOOL} did not run: {exc}"]
    if out.returncode == 0:
        return True, []
    errors = []
    for line in (out.stderr or out.stdout).splitlines():
        line = line.replace(f.name, "<domain>")
        if not line.strip() or line.endswith("fails to validate"):
            continue
        # "<domain>:15: element devices: Relax-NG validity error : ..."
        errors.append(" ".join(re.sub(r"^<domain>:\d+: ", "", line).split()))
    return True, errors or [f"{SCHEMA_TOOL} exit {out.returncode}"]


def schema(xml: str, base_errors: list[str] | None = None) -> Check:
    """libvirt's schema. `base_errors`: the original's errors; then only
    errors the original does not have fail (libvirt defines domains that
    this host's domain.rng refuses, e.g. an element order newer schemas
    allow: libvirt parses by XPath, not by the schema, unless asked to
    validate). xmllint reports the first error of an element group only,
    so errors of the original hide later ones in the same group: the
    layout check and libvirt's drivers still judge the change there."""
    ran, errors = schema_errors(xml)
    if not ran:
        return Check("schema", False, errors[0])
    if not errors:
        return Check("schema", True, "valid against libvirt's domain.rng")
    if base_errors is None:
        return Check("schema", False, "; ".join(errors)[:500])
    new = [e for e in errors if e not in set(base_errors)]
    if new:
        return Check("schema", False, "new errors: " + "; ".join(new)[:500])
    return Check("schema", True, f"no new errors against libvirt's domain.rng (the original has "
                                 f"{len(set(base_errors))} of its own)")


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
        # No VIR_DOMAIN_DEFINE_VALIDATE: that flag adds the Relax-NG schema
        # (src/conf/domain_conf.c virDomainDefParse with
        # VIR_DOMAIN_DEF_PARSE_VALIDATE_SCHEMA), which the schema check
        # already compares with the original's own errors; a plain define,
        # like virsh define, parses, post-parses and validates.
        dom = conn.defineXMLFlags(xml, 0)
        try:
            dom.undefine()
        except libvirt.libvirtError:
            pass
    except libvirt.libvirtError as exc:
        return Check("testdriver", False, " ".join(str(exc.get_error_message()).split())[:500])
    finally:
        if conn is not None:
            conn.close()
    return Check("testdriver", True, "defined on test:///default")


def layout(base_xml: str, xml: str) -> Check:
    """The guest-visible layout (fix/layout.py): no problem the original did not have."""
    from vfio_advisor.facts.domain import parse_tree  # noqa: PLC0415
    from vfio_advisor.fix.layout import new_problems  # noqa: PLC0415

    found = new_problems(parse_tree(base_xml), parse_tree(xml))
    if found:
        return Check("layout", False, "; ".join(found)[:800])
    return Check("layout", True, "every slot has function 0, every device is reachable, no "
                                 "address is used twice, no controller left empty, the chipset's "
                                 "own functions keep their places")


def qemu_native(conn, xml: str) -> str | None:
    """None when libvirt's qemu driver turns `xml` into a QEMU command line,
    else its one-line refusal. virConnectDomainXMLToNative defines nothing:
    libvirt 9.0 src/qemu/qemu_driver.c qemuConnectDomainXMLToNative parses
    the XML with virDomainDefParseString(VIR_DOMAIN_DEF_PARSE_INACTIVE),
    i.e. the post-parse (qemuDomainDefPostParse), the address assignment
    that refuses "Primary SATA controller must have PCI address 0:0:1f.2"
    and "Attempted double use of PCI Address" (qemuDomainAssignAddresses,
    src/qemu/qemu_domain_address.c) and the validation (qemuValidateDomainDef)
    that define runs, then prepares the domain as a start would
    (qemuProcessCreatePretendCmdPrepare -> qemuProcessPrepareDomain) and
    builds the command line. It needs a read-write connection (libvirt
    src/libvirt-domain.c refuses it on a read-only one)."""
    import libvirt  # noqa: PLC0415 - lazy: the hook must never load it

    try:
        conn.domainXMLToNative("qemu-argv", xml, 0)
    except libvirt.libvirtError as exc:
        return " ".join(str(exc.get_error_message()).split())[:500]
    return None


def has_hostdevs(xml: str) -> bool:
    """Does the domain assign a host device (<hostdev>, <interface type='hostdev'>)?"""
    from vfio_advisor.facts.domain import XPATH, parse_tree  # noqa: PLC0415

    root = parse_tree(xml)
    return bool(root.xpath("devices/hostdev") or root.xpath(XPATH["interface_hostdev"]))


def host_has_vfio(host_root: str = "/") -> bool:
    """Can libvirt on this machine assign PCI devices with VFIO? Its test is
    that the kernel has IOMMU groups (libvirt 9.0 src/util/virhostdev.c
    virHostdevHostSupportsPassthroughVFIO). Only meaningful for a local
    libvirt, which is the one `fix` asks."""
    from vfio_advisor.errors import FactUnavailable  # noqa: PLC0415
    from vfio_advisor.facts.host import HostRoot  # noqa: PLC0415

    try:
        return bool(HostRoot(host_root).list_dir("sys/kernel/iommu_groups"))
    except FactUnavailable:
        return False


class QemuCheck(NamedTuple):
    """Where the qemu driver check runs: an open read-write connection to
    libvirt's qemu driver, or why there is none."""
    conn: object | None
    uri: str
    missing: str | None = None

    @classmethod
    def none(cls, why: str) -> "QemuCheck":
        return cls(None, "", why)


class Verifier:
    """Every check of one domain's candidate XMLs, against its original:
    reanalysis, layout, schema (no new errors), the test driver, and the
    qemu driver where a connection allows it."""

    def __init__(self, base_xml: str, qemu: QemuCheck | None = None):
        self.base_xml = base_xml
        ran, errors = schema_errors(base_xml)
        self.base_schema = errors if ran else None
        self.qemu = qemu or QemuCheck.none(
            "not asked: `vfio-advisor fix` checks with libvirt's qemu driver over a read-write "
            "connection (DOMAIN names as root, or --connect URI)")
        self.base_testdriver: Check | None = None
        self.base_refusal = None
        self.hostdev_unsafe = None
        if self.qemu.conn is not None and has_hostdevs(base_xml) and not host_has_vfio():
            # Without VFIO libvirt picks no PCI passthrough backend, and
            # building the command line fails ("invalid PCI passthrough type
            # 'default'", libvirt 9.0 src/qemu/qemu_command.c
            # qemuBuildPCIHostdevDevProps); libvirtd 9.0 was seen to crash
            # (segfault in rpc-libvirtd) after a series of such refusals.
            self.hostdev_unsafe = ("this host has no IOMMU groups, so libvirt cannot build the "
                                   "command line of a domain with PCI hostdevs")
        if self.qemu.conn is not None and self.hostdev_unsafe is None:
            self.base_refusal = qemu_native(self.qemu.conn, base_xml)

    def qemudriver(self, xml: str) -> Check:
        if self.qemu.conn is None:
            return Check("qemudriver", True, self.qemu.missing or "no connection", ran=False)
        if self.hostdev_unsafe:
            return Check("qemudriver", True, self.hostdev_unsafe, ran=False)
        refusal = qemu_native(self.qemu.conn, xml)
        if refusal is not None and refusal != self.base_refusal:
            return Check("qemudriver", False, refusal + (
                f" (the original is refused differently: {self.base_refusal})"
                if self.base_refusal else ""))
        if refusal is not None:
            # libvirt stops at its first error: what it checks after that
            # one (for a host without VFIO, the hostdev preparation comes
            # after parsing and address assignment) did not run.
            return Check("qemudriver", True, f"{self.qemu.uri} refuses the original XML the same "
                         f"way ({refusal}), so its later checks did not run", ran=False)
        return Check("qemudriver", True, f"{self.qemu.uri} builds its QEMU command line "
                     "(virConnectDomainXMLToNative; nothing defined)")

    def base_checks(self, before) -> list[Check]:
        """The original XML's own checks (reanalysis and layout compare it with itself)."""
        if self.base_testdriver is None:
            self.base_testdriver = testdriver(self.base_xml)
        return [schema(self.base_xml), self.base_testdriver]

    def testdriver(self, xml: str) -> Check:
        """The test driver, judged against the original: a refusal the
        original gets too is not the change's (libvirt 9.0's test driver
        refuses some XML the qemu driver defines, e.g. watchdog models it
        does not know), but it hides what libvirt checks after it."""
        if self.base_testdriver is None:
            self.base_testdriver = testdriver(self.base_xml)
        check = testdriver(xml)
        base = self.base_testdriver
        if not check.ok and not base.ok and check.detail == base.detail:
            return Check("testdriver", True, f"test:///default refuses the original XML the same "
                         f"way ({base.detail}), so its later checks did not run", ran=False)
        if not check.ok and not base.ok:
            return check._replace(detail=f"{check.detail} (the original is refused differently: "
                                         f"{base.detail})")
        return check

    def __call__(self, before, after, xml: str, targeted: list[Finding],
                 pending: Iterable[Finding] = (), later: Later | None = None) -> list[Check]:
        """All checks (each runs even when an earlier one failed, so the
        output says everything that is wrong); `pending`, `later`: as for
        reanalysis."""
        return [reanalysis(before, after, targeted, pending, later), layout(self.base_xml, xml),
                schema(xml, self.base_schema), self.testdriver(xml), self.qemudriver(xml)]


def verify(before, after, xml: str, targeted: list[Finding], pending: Iterable[Finding] = (),
           later: Later | None = None) -> list[Check]:
    """The checks that need nothing but the XML (no original to compare the
    schema with, no qemu driver)."""
    return [reanalysis(before, after, targeted, pending, later), schema(xml), testdriver(xml)]
