"""`vfio-advisor fix`: argparse wiring, output and --apply.

    fix DOMAIN... | --xml FILE... [--connect URI] [--host-root DIR] [--rule ID...]
        [--format diff|xml|json] [--apply] [--state-dir DIR]

Domains come from sources.load_domains, as for every command; the exit
status is vfio_advisor/exitstatus.py's (0 every fixable finding got a
verified fix, 1 one of warning or worse has none, 2 bad input or a refused
--apply).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

from vfio_advisor.config import DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR, load_config
from vfio_advisor.errors import ConnectionFailed, UsageError
from vfio_advisor.exitstatus import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE
from vfio_advisor.facts.domain import parse_tree, serialize
from vfio_advisor.fix.planner import FIX_RULES, FIXABLE_RULES, RULE_ORDER, Analyzer, DomainPlan, plan_domain
from vfio_advisor.fix.verify import QemuCheck, describe_finding
from vfio_advisor.fix.xmledit import apply_ops
from vfio_advisor.rules import rules_named
from vfio_advisor.sinks.report import errors_json
from vfio_advisor.sources import (
    DEFAULT_URI, DomainSource, libvirt_module, load_domains, open_host_root,
)

SCHEMA = "vfio-advisor/fix/1"
# The test driver keeps its domains in the memory of the connection's
# process: a define there lasts until the process ends (libvirt
# src/test/test_driver.c, testConnectOpen builds a fresh private driver for
# test:///FILE and one process-wide for test:///default; nothing is written).
NON_PERSISTENT_DRIVERS = ("test",)


def add_parser(subparsers, add_command):
    """`fix`'s parser, made by cli.add_command (its help carries the exit-status rows)."""
    f = add_command(
        subparsers, "fix", "exact domain XML changes for findings that have one, each verified",
        description="Compute one change to the domain XML per finding that has an XML fix "
                    f"({', '.join(RULE_ORDER)}), verify it (re-analysis with the same host "
                    "facts, the guest-visible layout, libvirt's schema and test driver, and "
                    "libvirt's qemu driver where a read-write connection allows) and print it "
                    "as edits of the domain's own XML text.")
    f.add_argument("domains", nargs="*", metavar="DOMAIN",
                   help="domain names (default: every domain with PCI hostdevs)")
    f.add_argument("--xml", action="append", default=[], metavar="FILE",
                   help="a domain XML file instead of libvirt (repeatable)")
    f.add_argument("--connect", "-c", metavar="URI",
                   help="libvirt URI (default qemu:///system). Domains are read over a read-only "
                        "connection; the qemu driver check (virConnectDomainXMLToNative, which "
                        "defines nothing) and --apply use a read-write one. With --xml: the "
                        "libvirt whose qemu driver checks the changes")
    f.add_argument("--host-root", default="/", metavar="DIR",
                   help="host tree or snapshot .tar.gz to read instead of /")
    f.add_argument("--config", default=DEFAULT_CONFIG_PATH, metavar="FILE",
                   help="disabled_rules and per-domain ignores, as for advise")
    f.add_argument("--rule", action="append", default=[], metavar="ID",
                   help="fix only these rules (IDs or slugs; repeatable or comma-separated); "
                        "with --guest only the rules whose fix is inside the guest")
    f.add_argument("--format", choices=("diff", "xml", "json"), default="diff",
                   help="diff (default): unified diff of the domain XML with a '#' summary "
                        "(`patch FILE` applies it); xml: the domain's own text with only the "
                        "changed elements rewritten; json: schema vfio-advisor/fix/1")
    f.add_argument("--apply", action="store_true",
                   help="define the fixed XML as the persistent config (shut-off domains, or "
                        "the next boot of running ones; never live)")
    f.add_argument("--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR",
                   help="where --apply saves the previous XML (DIR/fix-backups/)")
    # --guest: the guest's own setting through its agent (vfio_advisor/guest).
    from vfio_advisor.guest.command import add_fix_guest_arguments  # noqa: PLC0415
    add_fix_guest_arguments(f)
    # None, not the agent's default, so that run() can tell a --timeout
    # given without --guest from none; run_fix_guest gets the default back.
    f.set_defaults(func=run, timeout=None)
    return f


# --- input ------------------------------------------------------------------------

def rules_from(values: list[str]) -> set[str] | None:
    if not values:
        return None
    out = set()
    for rule in rules_named(values):
        if rule.id not in FIXABLE_RULES:
            raise UsageError(f"{rule.id} has no domain XML fix; fix handles " + ", ".join(RULE_ORDER))
        out.add(rule.id)
    return out


class RefusedInputs(UsageError):
    """Inputs that are not domains fix can read (not a domain XML, a domain
    libvirt or the snapshot lacks): every (source, message), the first as
    the one-line message."""

    def __init__(self, errors: list[tuple[str, str]]):
        super().__init__(f"{errors[0][0]}: {errors[0][1]}")
        self.errors = errors


def load_sources(args, root: str, conn=None) -> list[DomainSource]:
    """Every domain to fix, as its persistent config; raises UsageError (one
    line) before anything is analysed, so bad input changes nothing."""
    if args.xml and args.domains:
        raise UsageError("use either --xml FILE or DOMAIN names (with --connect), not both")
    # With --xml, --connect names only the libvirt whose qemu driver checks the changes.
    found, errors = load_domains(list(args.xml), list(args.domains),
                                 None if args.xml else args.connect,
                                 root if args.host_root != "/" else None,
                                 inactive=True, conn=None if args.xml else conn)
    if errors:
        raise RefusedInputs(errors)
    return found


# --- run ----------------------------------------------------------------------------

def run(args, conn=None) -> int:
    """`conn`: an open libvirt connection to use instead of --connect (tests)."""
    if getattr(args, "guest", None):  # fix --guest: vfio_advisor/guest/command.py
        from vfio_advisor.guest.agent import DEFAULT_TIMEOUT  # noqa: PLC0415
        from vfio_advisor.guest.command import run_fix_guest  # noqa: PLC0415
        if args.timeout is None:
            args.timeout = DEFAULT_TIMEOUT
        return run_fix_guest(args, channel_fix=agent_channel_fix)
    # Taken by the parser for --guest; without it they would change nothing
    # and a script would believe it rebooted or waited.
    given = [flag for flag, value in (("--reboot", getattr(args, "reboot", False)),
                                      ("--timeout", getattr(args, "timeout", None) is not None),
                                      ("--ids", getattr(args, "ids", None)),
                                      ("--agent-socket", getattr(args, "agent_socket", None)))
             if value]
    if given:
        raise UsageError(f"{', '.join(given)} {'goes' if len(given) == 1 else 'go'} with "
                         "--guest DOMAIN (the guest's own setting); without it nothing uses "
                         f"{'it' if len(given) == 1 else 'them'}")
    rules = rules_from(args.rule)
    if args.apply and args.xml:
        raise UsageError("--apply defines domains through libvirt: give DOMAIN names, not --xml")
    try:
        plans = plan_sources(args, rules, conn)
    except RefusedInputs as exc:
        if args.format != "json":
            raise
        # As advise: a line on stderr for each, and the document all the
        # same, with no domain planned (one refused input refuses the run,
        # so that --apply changes nothing) and the refusals in errors[].
        for src, msg in exc.errors:
            print(f"vfio-advisor: {src}: {msg}", file=sys.stderr)
        json.dump(to_json(args, [], {}, exc.errors), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_USAGE
    applied: dict[str, dict] = {}
    if args.apply:
        applied = apply_plans(args, [(s, p) for s, p in plans if p.changed], conn)
    emit(args, plans, applied)
    complete = all(p.complete for _, p in plans)
    if any(p.before.facts.interrupts_unread() for _, p in plans):
        # As advise: a damaged /proc/interrupts hid what the rules would have
        # found on a device, so "every finding got a change" claims nothing.
        return EXIT_USAGE
    return EXIT_OK if complete else EXIT_FINDINGS


def plan_sources(args, rules: set[str] | None, conn=None) -> list[tuple[DomainSource, DomainPlan]]:
    """Each selected domain with its verified plan for `rules` (None: every
    fixable rule). UsageError (one line) before anything is analysed."""
    config = load_config(args.config)
    root, tmp = open_host_root(args.host_root)
    try:
        sources = load_sources(args, root, conn)
        if args.apply and any(src.from_file for src in sources):
            # A snapshot's own domains are files too.
            raise UsageError("--apply defines domains through libvirt: give DOMAIN names "
                             "(with --connect URI), not XML files or a snapshot's domains")
        if args.format == "xml" and len(sources) != 1:
            raise UsageError(f"--format xml prints one domain's XML; {len(sources)} domains selected")
        analyzer = Analyzer(root, config)
        qemu = qemu_check(args, sources, conn)
        try:
            return [(src, plan_domain(analyzer, src.xml, rules, qemu=qemu)) for src in sources]
        finally:
            if qemu.conn is not None and qemu.conn is not conn:
                qemu.conn.close()
    finally:
        if tmp is not None:
            tmp.cleanup()


def qemu_check(args, sources: list[DomainSource], conn=None) -> QemuCheck:
    """Where libvirt's qemu driver checks each change (verify.qemu_native):
    the libvirt the domains come from, or --connect URI with --xml. It
    needs a read-write connection (virConnectDomainXMLToNative is refused on
    a read-only one); without one the check is reported as not run."""
    if args.xml and not args.connect:
        return QemuCheck.none("--xml without --connect URI: no libvirt to ask")
    if sources and all(src.from_file for src in sources) and not args.connect:
        return QemuCheck.none("the domains come from files: no libvirt to ask")
    uri = args.connect or DEFAULT_URI
    try:
        libvirt = libvirt_module()
    except ConnectionFailed as exc:
        return QemuCheck.none(str(exc))
    own = conn is None
    if own:
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            return QemuCheck.none(f"no read-write connection to {uri} ("
                                  + " ".join(str(exc.get_error_message()).split())[:200] + ")")
    try:
        driver = conn.getType()
    except libvirt.libvirtError as exc:
        driver = f"unknown ({' '.join(str(exc.get_error_message()).split())})"
    if driver.upper() != "QEMU":
        if own:
            conn.close()
        return QemuCheck.none(f"{uri} is libvirt's {driver} driver, not the qemu driver")
    return QemuCheck(conn, uri)


# --- apply ----------------------------------------------------------------------------

def _normal(xml: str) -> str:
    return serialize(parse_tree(xml))


def apply_plans(args, plans: list[tuple[DomainSource, DomainPlan]], conn=None) -> dict[str, dict]:
    """Define each fixed config. Every check runs for every domain before the
    first define, so a refusal changes nothing."""
    if not plans:
        return {}
    libvirt = libvirt_module()
    uri = args.connect or DEFAULT_URI
    own = conn is None
    if own:
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise UsageError(f"--apply needs a read-write connection to {uri}, and it was refused: "
                             f"{' '.join(exc.get_error_message().split())}") from None
    try:
        ready = []
        for src, plan in plans:
            try:
                dom = conn.lookupByName(src.domain.name)
            except libvirt.libvirtError as exc:
                raise UsageError(f"{src.domain.name}: {exc.get_error_message()}") from None
            if not dom.isPersistent():
                raise UsageError(f"{src.domain.name} is transient: it has no persistent config to fix")
            now = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            if _normal(now) != _normal(src.xml):
                raise UsageError(f"{src.domain.name} changed since the analysis (its XML differs); "
                                 "nothing was applied, run fix again")
            # SECURE keeps what a plain XMLDesc hides (graphics passwords): the
            # define must not drop them. Only a read-write connection may ask.
            try:
                secure = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
            except libvirt.libvirtError as exc:
                raise UsageError(_refusal(libvirt, exc, uri)) from None
            if serialize(apply_ops(parse_tree(now), plan.ops)) != plan.fixed_xml:
                raise UsageError(f"{src.domain.name}: the verified change does not replay on its "
                                 "current XML; nothing was applied")
            new_xml = serialize(apply_ops(parse_tree(secure), plan.ops))
            state = dom.state()[0]
            ready.append((src, plan, dom, secure, new_xml, state))
        backups = os.path.join(args.state_dir, "fix-backups")
        try:
            os.makedirs(backups, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create {backups}: {exc.strerror or exc}; nothing was applied") from None
        real_uri = conn.getURI() or uri
        # The test driver accepts a define and forgets it when the
        # connection's process ends; say so rather than "applied".
        persists = conn.getType().lower() not in NON_PERSISTENT_DRIVERS
        out: dict[str, dict] = {}
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for src, plan, dom, secure, new_xml, state in ready:
            path = os.path.join(backups, f"{_safe(src.domain.name)}-{stamp}.xml")
            try:
                # 0600: the SECURE XML may hold passwords.
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(secure)
            except OSError as exc:
                raise UsageError(f"cannot save the old XML of {src.domain.name} to {path}: "
                                 f"{exc.strerror or exc}; nothing was applied to it") from None
            try:
                # defineXML replaces the persistent config only; a running
                # domain keeps its live config until it is shut down
                # (virDomainDefineXMLFlags, libvirt src/libvirt-domain.c).
                conn.defineXMLFlags(new_xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
            except libvirt.libvirtError as exc:
                os.unlink(path)
                raise UsageError(_refusal(libvirt, exc, uri)) from None
            running = state not in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_NOSTATE)
            out[src.domain.name] = {
                "backup": path,
                "restore": f"virsh -c {shlex.quote(real_uri)} define {shlex.quote(path)}",
                "takes_effect": "at the next boot (the running domain is unchanged)" if running
                                else "at the next start",
                "persists": persists,
            }
        return out
    finally:
        if own:
            conn.close()


def _refusal(libvirt, exc, uri: str) -> str:
    msg = " ".join(exc.get_error_message().split())
    if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_DENIED or "read only" in msg:
        return f"--apply needs a read-write connection; {uri} is read-only ({msg}); nothing was applied"
    return f"libvirt refused the fixed XML: {msg}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100] or "domain"


# --- output -----------------------------------------------------------------------------

def emit(args, plans: list[tuple[DomainSource, DomainPlan]], applied: dict[str, dict]) -> None:
    out = sys.stdout
    if args.format == "xml":
        (_, plan), = plans
        out.write(plan.fixed_text)
        for name, info in applied.items():
            _print_applied(name, info, sys.stderr)
        return
    if args.format == "json":
        json.dump(to_json(args, plans, applied), out, indent=2)
        out.write("\n")
        return
    for src, plan in plans:
        write_summary(src, plan, out)
        out.write(plan.diff())
        if src.domain.name in applied:
            _print_applied(src.domain.name, applied[src.domain.name], out)


def _print_applied(name: str, info: dict, out) -> None:
    if not info["persists"]:
        out.write(f"# defined {name} in a driver that does not persist (libvirt's test driver "
                  "keeps definitions in memory only): the change is gone when this command "
                  "exits; nothing was stored.\n")
    else:
        out.write(f"# applied to {name}'s persistent config, effective {info['takes_effect']}.\n")
    out.write(f"# previous XML saved as {info['backup']}; restore with: {info['restore']}\n")


def write_summary(src: DomainSource, plan: DomainPlan, out) -> None:
    w = out.write
    n = len(plan.changes)
    w(f"# {plan.name} ({src.label if src.from_file else src.state}): "
      f"{n} verified change{'s' if n != 1 else ''}\n")
    for i, c in enumerate(plan.changes, 1):
        w(f"#  {i}. {c.rule}: {c.summary}\n")
        for d in c.details:
            w(f"#     {d}\n")
        w("#     resolves " + ", ".join(describe_finding(f) for f in c.resolves) + "\n")
        for x in c.introduces:
            # On its own this change would add the finding; the plan is only
            # offered whole, and the change that removes it comes later in it.
            n = next(j for j, later in enumerate(plan.changes, 1) if later.rule == x.resolved_by)
            w(f"#     introduces {describe_finding(x.finding)} ({x.finding.severity}), which "
              f"change {n} ({x.resolved_by}) resolves\n")
        w("#     verified: " + "; ".join(k.summary() for k in c.checks) + "\n")
    for u in plan.unfixed:
        w(f"#  no verified fix for {describe_finding(u.finding)} ({u.finding.severity}): {u.reason}\n")
    if plan.other:
        w("#  not a domain XML matter (see `vfio-advisor advise`): "
          + ", ".join(describe_finding(f) for f in plan.other) + "\n")


def _finding_json(f) -> dict:
    return {"rule": f.rule_id, "subject": f.subject, "severity": str(f.severity),
            "guest_address": f.guest_address}


def to_json(args, plans: list[tuple[DomainSource, DomainPlan]], applied: dict[str, dict],
            errors: list[tuple[str, str]] = ()) -> dict:
    domains = []
    for src, plan in plans:
        domains.append({
            "name": plan.name,
            "uuid": plan.before.domain.uuid,
            "source": src.label if src.from_file else f"libvirt:{args.connect or DEFAULT_URI}",
            "state": src.state,
            "changed": plan.changed,
            "complete": plan.complete,
            "changes": [c.to_json() for c in plan.changes],
            "rejected": [c.to_json() for c in plan.rejected],
            "unfixed": [u.to_json() for u in plan.unfixed],
            "not_fixable": [_finding_json(f) for f in plan.other],
            "findings_before": [_finding_json(f) for f in plan.before.findings],
            "findings_after": [_finding_json(f) for f in plan.after.findings],
            "diff": plan.diff(),
            "fixed_xml": plan.fixed_text if plan.changed else None,
            "applied": applied.get(src.domain.name),
        })
    return {"schema": SCHEMA, "host_root": args.host_root,
            "rules": sorted(rules_from(args.rule) or FIXABLE_RULES), "domains": domains,
            "errors": errors_json(errors)}


# --- fix --guest on a domain without an agent channel ----------------------------------

def agent_channel_fix(args, name: str) -> str:
    """The agent channel `fix --guest` needs, as the rule "no guest agent
    channel" fixes it: its own planner with every check of this command,
    printed as `fix NAME --rule ID` prints it. Returns the line that says
    what to do next."""
    from vfio_advisor.guest.channel import CHANNEL_ELEMENT  # noqa: PLC0415

    by_hand = f"add {CHANNEL_ELEMENT} to its <devices>, restart it, and run qemu-ga in the guest"
    [rule] = [r.id for r in FIX_RULES if r.fix.planner.endswith(":plan_agent_channel")]
    fix_args = argparse.Namespace(**{**vars(args), "domains": [name], "xml": [], "rule": [rule],
                                     "apply": False, "format": "diff"})
    try:
        plans = plan_sources(fix_args, {rule})
    except (UsageError, ConnectionFailed) as exc:
        return f"{by_hand} (no verified change: {exc})"
    offered = [(src, plan) for src, plan in plans if plan.changed]
    if not offered:
        # The rule fires only where the guest is seen keeping an assigned
        # device on INTx: a guest on MSI, or one whose INTx line has not
        # counted, has no finding for it to fix.
        return (f"{by_hand} ({rule} offers it as a verified change only while the guest keeps an "
                "assigned device on INTx)")
    if args.format == "json":
        # `fix --guest --format json` answers in fix-guest/1 or not at all (a
        # failure, as this is, prints no document): a fix/1 document here
        # would be read as the guest's plan. The line names the command
        # whose own document holds the change.
        return (f"`vfio-advisor fix {name} --rule {rule}` shows the verified change that adds it "
                "and `--apply` defines it; restart the domain")
    emit(fix_args, offered, {})
    # The line goes to stderr: printed after the change on a terminal.
    sys.stdout.flush()
    return (f"`vfio-advisor fix {name} --rule {rule} --apply` defines the change printed on "
            "standard output; restart the domain")
