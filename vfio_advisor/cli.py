"""The `vfio-advisor` command: a thin shell around the engine.

Exit status: vfio_advisor/exitstatus.py, the one table that --help, the man
page and docs/exit-codes.md print.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from typing import Callable, Sequence

from vfio_advisor import __version__
from vfio_advisor.config import DEFAULT_CONFIG_PATH
from vfio_advisor.errors import AdvisorError, ConnectionFailed, UsageError
from vfio_advisor.findings import Severity

from vfio_advisor.exitstatus import (
    EXIT_BROKEN_PIPE, EXIT_FINDINGS, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, exit_status_help,
)


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's own wrapping, except for the exit-status table, whose
    lines are laid out already."""

    def _fill_text(self, text, width, indent):
        if text.startswith("exit status:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like the rest
        self.exit(EXIT_USAGE, f"vfio-advisor: {message}\n")


def add_command(sub, name: str, help_text: str, **kw) -> argparse.ArgumentParser:
    """A subcommand, with its rows of the exit-status table in its --help."""
    return sub.add_parser(name, help=help_text, epilog=exit_status_help(name),
                          formatter_class=_HelpFormatter, **kw)


def build_parser(with_fix: bool = True) -> argparse.ArgumentParser:
    p = _Parser(prog="vfio-advisor", description="Interrupt advice for VFIO PCI passthrough.",
                epilog=exit_status_help(), formatter_class=_HelpFormatter)
    p.add_argument("--version", action="version", version=f"vfio-advisor {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    a = add_command(sub, "advise", "analyse domains with assigned PCI devices")
    a.add_argument("domains", nargs="*", metavar="DOMAIN", help="domain names (default: all with PCI hostdevs)")
    a.add_argument("--connect", "-c", metavar="URI", help="libvirt URI (default qemu:///system, read-only)")
    a.add_argument("--xml", action="append", default=[], metavar="FILE", help="a domain XML file (repeatable)")
    a.add_argument("--host-root", default="/", metavar="DIR", help="host tree or snapshot .tar.gz to read instead of /")
    a.add_argument("--format", choices=("text", "json"), default="text",
                   help="text for people, or json (schema vfio-advisor/advice/1)")
    a.add_argument("--sample", type=float, metavar="SECONDS",
                   help="read /proc/interrupts twice, SECONDS apart, for rising counters "
                        "(a live host, not a snapshot)")
    a.add_argument("--config", default=DEFAULT_CONFIG_PATH, metavar="FILE",
                   help=f"disabled_rules and [domains.NAME] ignore from here (default {DEFAULT_CONFIG_PATH})")

    d = add_command(sub, "device", "show host PCI devices as vfio-advisor sees them")
    d.add_argument("bdfs", nargs="+", metavar="BDF",
                   help="PCI addresses (0000:01:00.0, or 01:00.0 in PCI domain 0)")
    d.add_argument("--host-root", default="/", metavar="DIR",
                   help="host tree or snapshot .tar.gz to read instead of /")
    d.add_argument("--format", choices=("text", "json"), default="text",
                   help="text for people, or json (schema vfio-advisor/device/1)")

    g = add_command(sub, "guest-irqs", "predict each guest PCI function's INTx line")
    g.add_argument("domain", nargs="?", metavar="DOMAIN",
                   help="a libvirt domain, or one the --host-root snapshot holds")
    g.add_argument("--xml", metavar="FILE", help="a domain XML file instead of a libvirt domain")
    g.add_argument("--connect", "-c", metavar="URI", help="libvirt URI (default qemu:///system, read-only)")
    g.add_argument("--host-root", default="/", metavar="DIR",
                   help="host tree or snapshot .tar.gz where to read assigned devices' INTx pins (default /)")
    g.add_argument("--format", choices=("text", "json"), default="text",
                   help="text for people, or json (schema vfio-advisor/guest-irqs/1)")

    e = add_command(sub, "explain", "explain a rule")
    e.add_argument("rule", metavar="VAxxxx|SLUG", help="a rule's ID or slug")

    r = add_command(sub, "rules", "list all rules")
    r.add_argument("--format", choices=("text", "json"), default="text",
                   help="one line per rule, or json with every text of each rule")

    s = add_command(sub, "snapshot", "archive the host files and domain XMLs the tool reads")
    s.add_argument("-o", "--output", required=True, metavar="FILE.tar.gz",
                   help="the archive to write; replay it with --host-root FILE.tar.gz")
    s.add_argument("domains", nargs="*", metavar="DOMAIN",
                   help="domain names (default: all with PCI hostdevs)")
    s.add_argument("--connect", "-c", metavar="URI", help="libvirt URI (default qemu:///system, read-only)")
    s.add_argument("--xml", action="append", default=[], metavar="FILE",
                   help="a domain XML file instead of libvirt (repeatable)")
    s.add_argument("--host-root", default="/", metavar="DIR",
                   help="host tree or snapshot .tar.gz to read instead of /")
    dm = add_command(sub, "daemon", "watch running domains' interrupts and log runtime advice")
    dm.add_argument("--connect", "-c", metavar="URI", help="libvirt URI (default qemu:///system, read-only)")
    dm.add_argument("--host-root", metavar="DIR", help="host tree to sample instead of /")
    dm.add_argument("--config", default=DEFAULT_CONFIG_PATH, metavar="FILE",
                    help=f"config file; flags win over it (default {DEFAULT_CONFIG_PATH})")
    dm.add_argument("--interval", type=float, metavar="SECONDS", help="sampling interval (default 5)")
    dm.add_argument("--settle", type=float, metavar="SECONDS",
                    help="time after a domain starts before INTx is advice-worthy (default 60)")
    dm.add_argument("--state-dir", metavar="DIR", help="state across runs (default /var/lib/vfio-advisor)")
    dm.add_argument("--metrics-file", metavar="FILE", help="write Prometheus textfile metrics here")

    c = add_command(sub, "catalog", "print the journald message catalog generated from the rules")
    c.add_argument("-o", "--output", metavar="FILE", help="write it here instead of standard output")

    i = add_command(sub, "install", "install the libvirt hook, config, journald catalog, man page, "
                    "daemon unit and Cockpit page")
    i.add_argument("--root", default="/", metavar="DIR", help="install under DIR (default /)")
    i.add_argument("--python", metavar="PATH",
                   help="interpreter for the hook and the daemon (default: this one for the hook; "
                   "the daemon runs this venv's base interpreter on the copy in "
                   "/usr/local/lib/vfio-advisor)")
    i.add_argument("--config", metavar="PATH", help="config file the hook reads "
                   f"(default {DEFAULT_CONFIG_PATH})")
    i.add_argument("--classic", action="store_true",
                   help="install as /etc/libvirt/hooks/qemu instead of qemu.d/vfio-advisor")

    u = add_command(sub, "uninstall", "remove what install placed (keeps the config)")
    u.add_argument("--root", default="/", metavar="DIR", help="remove from under DIR (default /)")

    if with_fix:
        from vfio_advisor.fix import command as fix_command  # noqa: PLC0415 - its parser lives with it
        fix_command.add_parser(sub, add_command)
        # `guest`: the guest agent side (vfio_advisor/guest); its parser and code live there.
        from vfio_advisor.guest.command import add_guest_parser, run_guest  # noqa: PLC0415
        add_guest_parser(sub, add_command).set_defaults(run=run_guest)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # The daemon never needs the fix command's parser, whose import (the
    # planner, the XML editor, the verifier) is 5 MB of its steady-state RSS
    # (measured by bench/daemon_soak.py): `vfio-advisor daemon ...` parses without it.
    words = list(sys.argv[1:] if argv is None else argv)
    if argv is None and words[:1] == ["daemon"] and "asyncio" not in sys.modules:
        # The program itself (console script, python -m), never a test's
        # in-process main([...]): the daemon talks to libvirtd only over its
        # unix socket (libvirtaio, libvirt's own TLS is C), so asyncio's
        # optional `import ssl` (asyncio/sslproto.py, 3.11) is blocked: ~1.5 MB of RSS.
        sys.modules.setdefault("ssl", None)
        # argparse's HelpFormatter imports shutil (terminal width) at every
        # add_argument, and shutil imports bz2 and lzma for its archive
        # formats, which the daemon never makes: shutil treats them as absent.
        sys.modules.setdefault("bz2", None)
        sys.modules.setdefault("lzma", None)
    args = build_parser(with_fix=words[:1] != ["daemon"]).parse_args(words)
    try:
        status = COMMANDS[args.command](args) if args.command in COMMANDS else args.run(args)
        # Here, not at exit: a reader gone before the last buffer is written
        # must reach the handler below, not "Exception ignored" and 120.
        sys.stdout.flush()
        return status
    except AdvisorError as exc:  # UsageError, DomainXMLError, ConnectionFailed, ...
        print(f"vfio-advisor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of the output left (`| head`, `| true`). What was cut
        # off may be the findings, so 0 ("no findings", "every fix
        # verified") would be false; 141 is what the shell reports for a
        # program SIGPIPE killed. The rest of the buffer goes to /dev/null,
        # so the flush at exit does not raise again (Python's signal docs,
        # "Note on SIGPIPE").
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE


def _stdout_to_devnull() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # a stdout without a descriptor (in-process tests)
        pass


def load_domains(args, root: str, *, inactive: bool = False, conn=None):
    """sources.load_domains for a command's --xml, --connect, DOMAIN names
    and --host-root (whose snapshot replays its own domains)."""
    from vfio_advisor.sources import load_domains as load  # noqa: PLC0415

    files = [args.xml] if isinstance(args.xml, str) else list(args.xml or [])
    names = list(getattr(args, "domains", None) or
                 ([args.domain] if getattr(args, "domain", None) else []))
    return load(files, names, args.connect, root if args.host_root != "/" else None,
                inactive=inactive, conn=conn)


def worst_status(findings, errors, unread: bool = False) -> int:
    """EXIT_STATUS for a run that reported `findings` and could not analyse
    `errors`; `unread`: a damaged /proc/interrupts cost a device its interrupt
    checks (DomainFacts.interrupts_unread), so no finding is no all-clear."""
    if errors or unread:
        return EXIT_USAGE
    worst = max((f.severity for f in findings), default=None)
    return EXIT_FINDINGS if worst is not None and worst >= Severity.WARNING else EXIT_OK


def cmd_advise(args) -> int:
    from vfio_advisor.config import load_config
    from vfio_advisor.engine import Engine
    from vfio_advisor.sinks.base import FixesPlanned
    from vfio_advisor.sources import is_snapshot_tree, open_host_root

    if args.sample is not None and not 0 < args.sample <= 3600:
        raise UsageError("--sample takes a number of seconds between 0 and 3600")
    config = load_config(args.config)
    root, tmp = open_host_root(args.host_root)
    try:
        if args.sample and is_snapshot_tree(root):
            # A snapshot holds one reading of /proc/interrupts: a second read
            # finds the same counts, which would be called "inconclusive,
            # sample while the device is in use" although no device ran.
            raise UsageError(f"--sample needs a live host: the snapshot {args.host_root} holds "
                             "one reading of /proc/interrupts, which never changes")
        domains, errors = load_domains(args, root)
        # An input that could not be analysed is an error line, whatever the
        # format and wherever the domains come from; the JSON document
        # carries them in errors[] as well, and is printed all the same: its
        # reader gets one shape whatever was refused.
        for src, msg in errors:
            print(f"vfio-advisor: {src}: {msg}", file=sys.stderr)
        if not domains and errors and args.format == "text":
            # Nothing left to analyse: "0 domains: 0 error, ..." would read as advice.
            return EXIT_USAGE
        engine = Engine(root, config)
        # The rule comparing domains (assigned twice) compares every defined
        # domain, not only the ones named.
        every = domains
        if args.domains:
            named, args.domains = args.domains, []
            try:
                every, _ = load_domains(args, root)
            finally:
                args.domains = named
        engine.set_defined_domains(d.domain for d in every)
        progress = _progress_bar if (args.sample and sys.stderr.isatty()) else None
        sink = _report_sink(args.format, args.host_root, engine.host(args.sample, progress), errors)
        fixes = None
        reported = []
        unread = False
        for source in domains:
            domain = source.domain
            facts, findings = engine.analyse(domain)
            unread = unread or bool(facts.interrupts_unread())
            for line in config.policy.unknown_in_metadata(domain):
                print(f"vfio-advisor: warning: {line}", file=sys.stderr)
            planned = {}
            if any(_has_domain_xml_fix(f) for f in findings):
                if fixes is None:  # lazy: lxml, difflib and libvirt only when a plan is due
                    from vfio_advisor.fix.advice import AdviseFixes, fix_command
                    from_files = source.from_file
                    fixes = AdviseFixes(engine, lambda name: fix_command(
                        name, from_files, args.host_root))
                findings, planned = fixes.annotate(domain.name, source.xml, findings)
            sink.begin(facts)
            for f in findings:
                sink.emit(f, domain)
            reported += findings
            sink.event(FixesPlanned(planned))
        sink.close()
    finally:
        if tmp is not None:
            tmp.cleanup()
    return worst_status(reported, errors, unread)


def _has_domain_xml_fix(finding) -> bool:
    """Does the finding's rule name a domain XML planner (Rule.fix)? Asked
    here so that advise imports the planner only for domains that need it."""
    from vfio_advisor.rules import lookup  # noqa: PLC0415
    from vfio_advisor.rules.remedies import DOMAIN_XML  # noqa: PLC0415

    rule = lookup(finding.rule_id)
    return rule is not None and rule.fix is not None and rule.fix.kind == DOMAIN_XML


def _report_sink(fmt: str, host_root: str, host, errors):
    if fmt == "json":
        from vfio_advisor.sinks.jsonout import JsonSink
        return JsonSink(sys.stdout, host_root, host, errors)
    from vfio_advisor.sinks.text import TextSink
    return TextSink(sys.stdout, host_root, host, errors)


def _progress_bar(fraction: float) -> None:
    width = 30
    done = int(fraction * width)
    sys.stderr.write(f"\rsampling /proc/interrupts [{'#' * done}{'.' * (width - done)}] {fraction:4.0%}")
    if fraction >= 1.0:
        sys.stderr.write("\r" + " " * (width + 40) + "\r")
    sys.stderr.flush()


def cmd_device(args) -> int:
    from vfio_advisor.engine import Engine
    from vfio_advisor.facts.pci import normalize_bdf
    from vfio_advisor.sinks.report import DEVICE_SCHEMA, host_device_json
    from vfio_advisor.sources import open_host_root

    try:
        bdfs = [normalize_bdf(b) for b in args.bdfs]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    root, tmp = open_host_root(args.host_root)
    try:
        engine = Engine(root)
        nointxmask = engine.host().kernel.nointxmask
        out = [host_device_json(bdf, *engine.device(bdf), nointxmask) for bdf in bdfs]
    finally:
        if tmp is not None:
            tmp.cleanup()
    if args.format == "json":
        json.dump({"schema": DEVICE_SCHEMA, "devices": out}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        from vfio_advisor.sinks.text import write_device
        for entry in out:
            write_device(entry, sys.stdout)
    return EXIT_USAGE if any("error" in e for e in out) else EXIT_OK


def cmd_guest_irqs(args) -> int:
    from vfio_advisor.engine import Engine
    from vfio_advisor.rules import RULES
    from vfio_advisor.sinks.report import guest_irqs_json
    from vfio_advisor.sources import open_host_root

    if bool(args.domain) == bool(args.xml):
        raise UsageError("give a DOMAIN name or --xml FILE")
    root, tmp = open_host_root(args.host_root)
    try:
        found, errors = load_domains(args, root)
        if not found:
            src, msg = errors[0] if errors else (args.domain or args.xml, "not found")
            if args.format != "json":
                raise UsageError(f"{src}: {msg}")
            # As advise: the line on stderr, and the document all the same,
            # its members empty and the refusal in errors[], so that a
            # reader of --format json gets one shape whatever was refused.
            print(f"vfio-advisor: {src}: {msg}", file=sys.stderr)
            json.dump(guest_irqs_json(None, [], frozenset(), [(src, msg)], args.domain), sys.stdout, indent=2)
            sys.stdout.write("\n")
            return EXIT_USAGE
        facts, findings = Engine(root).analyse(found[0].domain)
    finally:
        if tmp is not None:
            tmp.cleanup()
    routing = frozenset(r.id for r in RULES if r.routing)
    # errors[]: advise's member, empty here; a refused input fills it (above).
    doc = guest_irqs_json(facts, findings, routing)
    if args.format == "json":
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        from vfio_advisor.sinks.text import write_guest_irqs
        write_guest_irqs(doc, sys.stdout)
    return worst_status([f for f in findings if f.rule_id in routing], [])


def cmd_explain(args) -> int:
    from vfio_advisor.catalog import for_reader
    from vfio_advisor.rules import RETIRED, lookup

    rule = lookup(args.rule)
    if rule is None:
        if args.rule.upper() in RETIRED:
            print(f"{args.rule.upper()} is retired: {RETIRED[args.rule.upper()]}")
            return EXIT_OK
        raise UsageError(f"no rule {args.rule!r}; 'vfio-advisor rules' lists them")
    wrap = lambda t: textwrap.fill(t, 78)  # noqa: E731
    print(f"{rule.id} {rule.slug} ({rule.severity})\n{rule.title}\n")
    print(wrap(for_reader(rule.explanation)) + "\n")
    print("What to do:\n" + wrap(for_reader(rule.remedy)))
    print(f"\nFamily: {rule.family}. MESSAGE_ID={rule.message_id}")
    for doc in rule.documentation:
        print(f"See: {doc}")
    return EXIT_OK


def cmd_rules(args) -> int:
    from vfio_advisor.rules import RULES

    if args.format == "json":
        json.dump([{"id": r.id, "slug": r.slug, "severity": str(r.severity), "title": r.title,
                    "explanation": r.explanation, "remedy": r.remedy,
                    "message_id": r.message_id} for r in RULES], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for r in RULES:
            print(f"{r.id}  {str(r.severity):7}  {r.slug:38}  {r.title}")
    return EXIT_OK


def cmd_snapshot(args) -> int:
    from vfio_advisor.engine import Engine
    from vfio_advisor.snapshot import write_snapshot
    from vfio_advisor.sources import open_host_root

    root, tmp = open_host_root(args.host_root)
    try:
        domains, errors = load_domains(args, root)
        for src, msg in errors:
            print(f"vfio-advisor: skipped {src}: {msg}", file=sys.stderr)
        archived: list[tuple[str, str]] = []
        engine = Engine(root, record=True)
        for source in domains:
            if (source.domain.name, source.xml) in archived:
                # Archived once: the replay would report it twice and count
                # its findings twice.
                print(f"vfio-advisor: {source.label.removeprefix('file:')}: domain "
                      f"{source.domain.name!r} given again with the same XML; archived once",
                      file=sys.stderr)
                continue
            archived.append((source.domain.name, source.xml))
            engine.gather(source.domain)  # reading records what the archive must hold
        try:
            count, unreadable = write_snapshot(args.output, engine.root, archived)
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            tmp.cleanup()
    for rel, why in unreadable:
        print(f"vfio-advisor: not archived {rel}: {why}", file=sys.stderr)
    print(f"wrote {args.output}: {count} entries, {len(archived)} domain(s)")
    # A file the tool read but the archive lacks is an input that could not
    # be read: the replay would take it for absent on the host.
    return EXIT_USAGE if errors or unreadable else EXIT_OK


def cmd_daemon(args) -> int:
    from vfio_advisor.daemon import main as daemon_main

    return daemon_main(args)


def cmd_catalog(args) -> int:
    from vfio_advisor.catalog import render_catalog

    text = render_catalog()
    if args.output:
        try:
            with open(args.output, "w") as f:
                f.write(text)
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_install(args) -> int:
    from vfio_advisor.install import install

    try:
        notes = install(args.root, args.python, args.config, args.classic)
    except OSError as exc:
        raise UsageError(f"install failed: {exc.strerror or exc} ({getattr(exc, 'filename', '')})") from None
    print("\n".join(notes))
    return EXIT_OK


def cmd_uninstall(args) -> int:
    from vfio_advisor.install import uninstall

    try:
        notes = uninstall(args.root)
    except OSError as exc:
        raise UsageError(f"uninstall failed: {exc.strerror or exc}") from None
    print("\n".join(notes))
    return EXIT_OK


def _cmd_fix(args: argparse.Namespace) -> int:
    from vfio_advisor.fix import command as fix_command  # noqa: PLC0415

    return fix_command.run(args)


# Subcommand -> its function; a new subcommand adds its parser in
# build_parser (add_command) and one entry here.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "advise": cmd_advise, "guest-irqs": cmd_guest_irqs, "device": cmd_device,
    "explain": cmd_explain, "rules": cmd_rules, "snapshot": cmd_snapshot, "catalog": cmd_catalog,
    "daemon": cmd_daemon, "install": cmd_install, "uninstall": cmd_uninstall, "fix": _cmd_fix,
}
