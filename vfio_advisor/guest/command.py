"""`vfio-advisor guest DOMAIN` (read-only) and `vfio-advisor fix --guest DOMAIN`.

Exit status of `guest`: 0 nothing to do, 1 a device whose verdict needs
action, 2 any failure (one line on stderr), a device whose guest side could
not be read included. `fix --guest`: 0 the plan was shown (or applied and
read back), 2 any failure or such a device.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from typing import Callable

from vfio_advisor.config import DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR, load_config
from vfio_advisor.errors import ConnectionFailed, DomainXMLError, UsageError
# The exit table (exitstatus.py): 1 a device that needs action, 2 a failure.
from vfio_advisor.exitstatus import EXIT_FINDINGS as EXIT_ACTION, EXIT_OK, EXIT_USAGE as EXIT_FAILED
from vfio_advisor.guest import changes as change_store
from vfio_advisor.guest.agent import DEFAULT_TIMEOUT, GuestAgent, GuestAgentError, LibvirtAgent, SocketAgent
from vfio_advisor.guest.channel import CHANNEL_ELEMENT, channel_state, has_agent_channel
from vfio_advisor.guest.inspect import GuestReport, Target, inspect
from vfio_advisor.guest.verdict import UNREAD

DEFAULT_URI = "qemu:///system"
_IDS = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$")


def _common(p: argparse.ArgumentParser, *, with_connect: bool) -> None:
    if with_connect:
        p.add_argument("--connect", "-c", metavar="URI",
                       help=f"libvirt URI (default {DEFAULT_URI}; the agent needs a read-write connection)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"the most to wait for one agent command (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--ids", action="append", default=[], metavar="VVVV:DDDD",
                   help="also look for guest functions with these PCI IDs (a device not "
                        "assigned through <hostdev>); repeatable")
    p.add_argument("--agent-socket", metavar="PATH",
                   help="talk to a qemu-ga unix socket directly instead of through libvirt")


def add_guest_parser(sub, add_command) -> argparse.ArgumentParser:
    """`guest`'s parser, made by cli.add_command (its help carries the exit-status rows)."""
    g = add_command(sub, "guest", "read each assigned device's interrupt mode inside the guest "
                                  "through the QEMU guest agent (read-only)")
    g.add_argument("domain", metavar="DOMAIN", help="a running libvirt domain with a guest agent channel")
    _common(g, with_connect=True)
    g.add_argument("--host-root", default="/", metavar="DIR", help="host tree for the host-side view")
    g.add_argument("--xml", metavar="FILE",
                   help="with --agent-socket: DOMAIN's XML, which names its assigned devices "
                        "(else -c URI, or a --host-root snapshot's domains)")
    g.add_argument("--state-dir", metavar="DIR",
                   help="where fix --guest --apply recorded its changes (default: the config's "
                        f"[daemon] state_dir, {DEFAULT_STATE_DIR})")
    g.add_argument("--config", default=DEFAULT_CONFIG_PATH, metavar="FILE",
                   help=f"the config file whose [daemon] state_dir is read (default {DEFAULT_CONFIG_PATH})")
    g.add_argument("--format", choices=("text", "json"), default="text",
                   help="text for people, or json (one object per domain, its devices' verdicts)")
    return g


def add_fix_guest_arguments(f: argparse.ArgumentParser) -> None:
    """fix's own parser gains --guest and what goes with it."""
    f.add_argument("--guest", metavar="DOMAIN",
                   help="change the guest's own interrupt setting through its agent "
                        "(Windows MSISupported, Linux module option); shown only, unless --apply")
    f.add_argument("--reboot", action="store_true",
                   help="with --guest --apply: ask libvirt for an agent reboot afterwards")
    f.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"with --guest: the most to wait for one agent command (default {DEFAULT_TIMEOUT:g})")
    f.add_argument("--ids", action="append", default=[], metavar="VVVV:DDDD",
                   help="with --guest: also fix guest functions with these PCI IDs")
    f.add_argument("--agent-socket", metavar="PATH",
                   help="with --guest: a qemu-ga unix socket instead of libvirt (DOMAIN's devices "
                        "then come from -c URI, one --xml FILE or a --host-root snapshot)")


# --- the domain and what to look for ---------------------------------------------------

def _libvirt():
    try:
        import libvirt  # noqa: PLC0415 - lazy, as everywhere in the CLI
    except ImportError:
        raise ConnectionFailed("libvirt-python is not installed") from None
    libvirt.registerErrorHandler(lambda *_: None, None)
    return libvirt


def _ids_targets(values: list[str]) -> list[Target]:
    out = []
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            m = _IDS.match(item)
            if not m:
                raise UsageError(f"--ids takes VVVV:DDDD (hex vendor:device), not {item!r}")
            v, d = int(m.group(1), 16), int(m.group(2), 16)
            out.append(Target(key=f"ids:{v:04x}:{d:04x}", host_bdf=None, vendor=v, device=d))
    return out


def _hostdev_targets(xml: str, host_root: str) -> list[Target]:
    from vfio_advisor.engine import Engine  # noqa: PLC0415
    from vfio_advisor.facts.domain import parse_domain_xml  # noqa: PLC0415
    from vfio_advisor.sources import open_host_root  # noqa: PLC0415

    domain = parse_domain_xml(xml)
    if not domain.hostdevs:
        return []
    root, tmp = open_host_root(host_root)
    try:
        engine = Engine(root)
        out = []
        for hostdev in domain.hostdevs:
            bdf = str(hostdev.source)
            device, problem, irqs = engine.device(bdf)
            if device is None or device.vendor_id is None or device.device_id is None:
                # Without its IDs it cannot be looked for in the guest, and
                # leaving it out would read as "nothing needs action".
                why = (f"{bdf} is not a PCI device of the host tree {host_root} (its IDs are "
                       "unknown; --host-root names another tree)" if device is None else
                       f"the vendor and device IDs of {bdf} could not be read"
                       f"{f' ({problem})' if problem else ''}"
                       f"{' (' + '; '.join(device.unreadable) + ')' if device.unreadable else ''}")
                out.append(Target(key=bdf, host_bdf=bdf, vendor=0, device=0, unread=why))
                continue
            capable = device.config.supports_msi if device.config is not None else None
            hint = (hostdev.guest.address.slot, hostdev.guest.address.function) if hostdev.guest else None
            out.append(Target(key=bdf, host_bdf=bdf, vendor=device.vendor_id, device=device.device_id,
                              subsystem_vendor=device.subsystem_vendor_id,
                              subsystem_device=device.subsystem_device_id, guest_hint=hint,
                              host_mode=irqs.mode, msi_capable=capable if isinstance(capable, bool) else None,
                              # An SR-IOV VF is a card of its own, whatever slot it
                              # shares (drivers/pci/iov.c gives each VF its own devfn).
                              card=bdf if device.sriov_vf else bdf.rsplit(".", 1)[0]))
        return out
    finally:
        if tmp is not None:
            tmp.cleanup()


class _Session:
    """The domain (through libvirt) or a bare agent socket."""

    def __init__(self, args, name: str):
        self.name = name
        self.xml: str | None = None
        self.conn = None
        self.run_id: int | None = None  # libvirt's domain ID: a new one at each start
        if args.agent_socket:
            self.agent = GuestAgent(SocketAgent(args.agent_socket), timeout=args.timeout)
            return
        libvirt = _libvirt()
        uri = args.connect or DEFAULT_URI
        try:
            self.conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            text = exc.get_error_message() or str(exc)
            raise ConnectionFailed(f"cannot open a read-write connection to {uri} (the guest agent "
                                   f"needs one): {text.splitlines()[0] if text else exc}") from None
        try:
            dom = self.conn.lookupByName(name)
        except libvirt.libvirtError:
            raise UsageError(f"{name}: no such domain on {uri}") from None
        if not dom.isActive():
            raise GuestAgentError("not-running", f"{name}: the domain is not running")
        try:
            self.xml = dom.XMLDesc(0)
            self.run_id = dom.ID()
        except libvirt.libvirtError as exc:
            raise ConnectionFailed(f"{name}: cannot read its XML: {exc.get_error_message()}") from None
        self.agent = GuestAgent(LibvirtAgent(dom, name), timeout=args.timeout)

    def check_channel(self) -> None:
        if self.xml is None:
            return
        from lxml import etree  # noqa: PLC0415

        root = etree.fromstring(self.xml.encode())
        if not has_agent_channel(root):
            raise GuestAgentError("no-channel", f"{self.name}: the domain has no guest agent channel "
                                  "(org.qemu.guest_agent.0); `vfio-advisor fix --guest "
                                  f"{self.name}` shows the change that adds it")
        if channel_state(root) == "disconnected":
            raise GuestAgentError("not-connected", f"{self.name}: the guest agent is not connected "
                                  "(libvirt reports its channel disconnected: qemu-ga is not running "
                                  "in the guest, or the guest is still booting)")

    def close(self) -> None:
        close = getattr(self.agent.transport, "close", None)
        if close:
            close()
        if self.conn is not None:
            self.conn.close()


def state_dir_of(args) -> str:
    """Where guest changes are recorded: --state-dir, else the config's
    [daemon] state_dir, the directory the daemon reads them from (its unit's
    StateDirectory=). fix's --state-dir defaults to DEFAULT_STATE_DIR rather
    than None, so that value counts as not given."""
    given = getattr(args, "state_dir", None)
    if given is not None and given != DEFAULT_STATE_DIR:
        return given
    configured = load_config(getattr(args, "config", DEFAULT_CONFIG_PATH), {}).state_dir
    return configured or DEFAULT_STATE_DIR


def _xml_files(args) -> list[str]:
    xml = getattr(args, "xml", None)  # guest's is one FILE, fix's a list
    return [xml] if isinstance(xml, str) else list(xml or [])


def _socket_domain_xml(args, name: str, host_root: str) -> str | None:
    """DOMAIN's XML when its agent is on a socket: the agent is not reached
    through libvirt then, but the devices to look for are still the domain's.
    From --xml FILE, -c URI (read-only is enough), or the domains a
    --host-root snapshot holds; None when none of them was given (qemu:///
    system is not assumed: a socket is for an agent without libvirt)."""
    from vfio_advisor.sources import load_domains, open_host_root, snapshot_domains  # noqa: PLC0415

    files = _xml_files(args)
    if len(files) > 1:
        raise UsageError("--agent-socket reaches one guest: give one --xml FILE")
    tree, tmp = None, None
    try:
        if not files and not args.connect:
            if host_root == "/":
                return None
            tree, tmp = open_host_root(host_root)
            if not snapshot_domains(tree):
                return None
        found, errors = load_domains(files, [name], args.connect, tree)
    finally:
        if tmp is not None:
            tmp.cleanup()
    if errors:
        source, why = errors[0]
        raise UsageError(f"{source}: {why}")
    return found[0].xml


def _read(args, name: str, state_dir: str, host_root: str) -> tuple[_Session, GuestReport]:
    if not 0 < args.timeout <= 600:
        raise UsageError("--timeout takes a number of seconds between 0 and 600")
    targets = _ids_targets(args.ids)
    notes = []
    socket_xml = None
    if args.agent_socket:
        # Before the agent is asked anything: a run that cannot know what
        # to look for must not report that nothing needs action.
        socket_xml = _socket_domain_xml(args, name, host_root)
        if socket_xml is None and not targets:
            raise UsageError(f"{name}: --agent-socket reaches the agent only; name the domain's "
                             "assigned devices with -c URI, --xml FILE or a --host-root snapshot, "
                             "or give --ids VVVV:DDDD")
        if socket_xml is None:
            notes.append(f"{name}'s XML was not read (no -c, --xml or snapshot): only --ids are "
                         "looked for")
    elif _xml_files(args):
        raise UsageError("--xml goes with --agent-socket; through libvirt the domain's live XML is read")
    session = _Session(args, name)
    session.check_channel()
    xml = session.xml if session.xml is not None else socket_xml
    if xml is not None:
        try:
            targets = _hostdev_targets(xml, host_root) + targets
        except DomainXMLError as exc:
            raise UsageError(f"{name}: {exc}") from None
    report = inspect(session.agent, name, targets, change_store.load(state_dir, name))
    report.notes.extend(notes)
    return session, report


def _fail(exc: GuestAgentError, fmt: str = "text") -> int:
    print(f"vfio-advisor: {exc}", file=sys.stderr)
    if exc.commands:
        print("run in the guest by hand (as root / Administrator):", file=sys.stderr)
        for argv in exc.commands:
            print("  " + " ".join(shlex.quote(a) for a in argv), file=sys.stderr)
    return EXIT_FAILED


# --- guest -------------------------------------------------------------------------------

def run_guest(args) -> int:
    try:
        session, report = _read(args, args.domain, state_dir_of(args), args.host_root)
    except GuestAgentError as exc:
        return _fail(exc)
    session.close()
    if args.format == "json":
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        write_text(report, sys.stdout)
    if _said_unread(report):
        return EXIT_FAILED
    return EXIT_ACTION if any(d.verdict.needs_action for d in report.devices) else EXIT_OK


def _said_unread(report: GuestReport) -> bool:
    """One line on stderr for the devices whose guest side could not be
    read: the exit table's 2, which no verdict needing action outranks, as
    "nothing needs action" cannot be said of a device not seen."""
    unread = [d.target.host_bdf or d.target.ids for d in report.devices if d.verdict.name == UNREAD]
    if unread:
        print(f"vfio-advisor: {report.domain}: could not read {', '.join(unread)} in the guest "
              "(see their verdicts)", file=sys.stderr)
    return bool(unread)


def write_text(report: GuestReport, out) -> None:
    blocked = ", ".join(report.blocked) or "none"
    out.write(f"{report.domain}: qemu-ga {report.agent_version}, {report.os}"
              f"{f' ({report.os_name})' if report.os_name else ''}; disabled RPCs we use: {blocked}\n")
    if not report.devices:
        out.write("  no assigned PCI function to look for (name one with --ids VVVV:DDDD)\n")
    for dev in report.devices:
        t = dev.target
        where = t.host_bdf or "not assigned"
        out.write(f"  {t.ids} (host {where}) -> guest {dev.guest_function or '-'}"
                  f" driver {dev.guest_driver or '-'} {dev.guest_driver_version or ''}\n".replace(" \n", "\n"))
        out.write(f"    guest mode: {dev.guest_mode}; host mode: {t.host_mode or 'n/a'}\n")
        for row in dev.rows:
            out.write(f"    interrupts: {row}\n")
        if dev.guest_setting:
            out.write(f"    setting: {dev.guest_setting}\n")
        out.write(f"    verdict: {dev.verdict.name}: {dev.verdict.detail}\n")
    for note in report.notes:
        out.write(f"note: {note}\n")


# --- fix --guest -------------------------------------------------------------------------

def _check_guest_rules(values: list[str], name: str) -> None:
    """fix's --rule, given with --guest: before the guest is asked anything.
    The guest plan is the one guest planner's (guest_planner), which fixes
    the findings of the rules whose fix is a guest change and no other; so
    --rule naming those plans exactly what it would without, and a rule
    whose fix is not inside the guest is refused in one line (else its
    findings would seem handled by a plan that never looks at them)."""
    from vfio_advisor.rules import RULES, rules_named  # noqa: PLC0415
    from vfio_advisor.rules.remedies import DOMAIN_XML, GUEST  # noqa: PLC0415

    guest_rules = [r.id for r in RULES if r.fix is not None and r.fix.kind == GUEST]
    for rule in rules_named(values):
        if rule.id in guest_rules:
            continue
        if rule.fix is not None and rule.fix.kind == DOMAIN_XML:
            raise UsageError(f"{rule.id}'s fix is a domain XML change, not one inside the guest: "
                             f"`vfio-advisor fix {shlex.quote(name)} --rule {rule.id}` (without "
                             f"--guest); fix --guest handles {', '.join(guest_rules)}")
        raise UsageError(f"{rule.id} has no fix inside the guest; fix --guest handles "
                         + ", ".join(guest_rules))


def run_fix_guest(args, channel_fix: Callable[[argparse.Namespace, str], str] | None = None) -> int:
    """`channel_fix(args, name)`: for a domain without an agent channel, prints
    the domain XML change that adds it and returns the line that says what to
    do next (fix.command passes its own; the guest package does not plan
    domain XML)."""
    from vfio_advisor.guest.plan import apply, guest_planner  # noqa: PLC0415

    name = args.guest
    if args.reboot and not args.apply:
        raise UsageError("--reboot restarts the guest after --apply; give both")
    if args.domains or (args.xml and not args.agent_socket):
        raise UsageError("--guest takes one DOMAIN; do not name others")
    _check_guest_rules(getattr(args, "rule", None) or [], name)
    try:
        state_dir = state_dir_of(args)
        session, report = _read(args, name, state_dir, args.host_root)
    except GuestAgentError as exc:
        if exc.kind == "no-channel":
            then = (channel_fix(args, name) if channel_fix is not None and not args.agent_socket
                    else f"add {CHANNEL_ELEMENT} to its <devices>")
            exc = GuestAgentError(exc.kind, f"{name}: the domain has no guest agent channel "
                                  f"(org.qemu.guest_agent.0); {then}")
        return _fail(exc)
    plan = guest_planner()(report)
    as_json = args.format == "json"
    say = (lambda line: print(line, file=sys.stderr)) if as_json else print
    if not as_json:
        print(f"# {name} ({report.os}): {len(plan.steps)} change(s) in the guest")
        for dev in report.devices:
            print(f"# {' '.join(filter(None, (dev.target.ids, dev.target.host_bdf)))}: {dev.verdict.name}")
        for step in plan.steps:
            print(f"# {step.purpose}\n{step.shown()}")
        for line in plan.unfixable:
            print(f"# cannot fix: {line}")
        for note in plan.notes:
            print(f"# note: {note}")
        for note in report.notes:
            print(f"# note: {note}")
    applied: list[dict] = []
    try:
        if args.apply:
            applied = apply(session.agent, plan, report, say)
            if applied:
                path = change_store.record(state_dir, name, applied, run_id=session.run_id)
                say(f"recorded {len(applied)} change(s) in {path}")
            say("restart the guest for the change to take effect" if plan.steps else "nothing to change")
            if args.reboot:
                session.agent.reboot_through_libvirt()
                say(f"asked libvirt for an agent reboot of {name}")
    except GuestAgentError as exc:
        return _fail(exc)
    except OSError as exc:
        print(f"vfio-advisor: cannot record the change in {state_dir}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_FAILED
    finally:
        session.close()
    if as_json:
        doc = {"schema": "vfio-advisor/fix-guest/1", "plan": plan.to_json(), "applied": applied,
               "report": report.to_json()}
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not args.apply and plan.steps:
        print("# nothing was changed: add --apply to run these in the guest")
    return EXIT_FAILED if _said_unread(report) else EXIT_OK
