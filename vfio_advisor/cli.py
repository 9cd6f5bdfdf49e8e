"""The `vfio-advisor` command: a thin shell around the engine.

Exit status: 0 no finding of warning or worse, 1 at least one, 2 usage error,
XML that cannot be a domain, or a failed connection.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Sequence

from vfio_advisor import __version__
from vfio_advisor.config import DEFAULT_CONFIG_PATH
from vfio_advisor.errors import AdvisorError, ConnectionFailed, DomainXMLError, UsageError
from vfio_advisor.facts.domain import Domain
from vfio_advisor.findings import Severity

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like the rest
        self.exit(EXIT_USAGE, f"vfio-advisor: {message}\n")


def build_parser(with_fix: bool = True) -> argparse.ArgumentParser:
    p = _Parser(prog="vfio-advisor", description="Interrupt advice for VFIO PCI passthrough.")
    p.add_argument("--version", action="version", version=f"vfio-advisor {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    a = sub.add_parser("advise", help="analyse domains with assigned PCI devices")
    a.add_argument("domains", nargs="*", metavar="DOMAIN", help="domain names (default: all with PCI hostdevs)")
    a.add_argument("--connect", "-c", metavar="URI", help="libvirt URI (default qemu:///system, read-only)")
    a.add_argument("--xml", action="append", default=[], metavar="FILE", help="a domain XML file (repeatable)")
    a.add_argument("--host-root", default="/", metavar="DIR", help="host tree or snapshot .tar.gz to read instead of /")
    a.add_argument("--format", choices=("text", "json"), default="text")
    a.add_argument("--sample", type=float, metavar="SECONDS",
                   help="read /proc/interrupts twice, SECONDS apart, for rising counters")
    a.add_argument("--config", default=DEFAULT_CONFIG_PATH, metavar="FILE",
                   help=f"disabled_rules and [domains.NAME] ignore from here (default {DEFAULT_CONFIG_PATH})")

    d = sub.add_parser("device", help="show host PCI devices as vfio-advisor sees them")
    d.add_argument("bdfs", nargs="+", metavar="BDF")
    d.add_argument("--host-root", default="/", metavar="DIR")
    d.add_argument("--format", choices=("text", "json"), default="text")

    g = sub.add_parser("guest-irqs", help="predict each guest PCI function's INTx line")
    g.add_argument("domain", nargs="?", metavar="DOMAIN")
    g.add_argument("--xml", metavar="FILE", help="a domain XML file instead of a libvirt domain")
    g.add_argument("--connect", "-c", metavar="URI")
    g.add_argument("--host-root", default="/", metavar="DIR",
                   help="where to read assigned devices' INTx pins (default /)")
    g.add_argument("--format", choices=("text", "json"), default="text")

    e = sub.add_parser("explain", help="explain a rule")
    e.add_argument("rule", metavar="VAxxxx|SLUG")

    r = sub.add_parser("rules", help="list all rules")
    r.add_argument("--format", choices=("text", "json"), default="text")

    s = sub.add_parser("snapshot", help="archive the host files and domain XMLs the tool reads")
    s.add_argument("-o", "--output", required=True, metavar="FILE.tar.gz")
    s.add_argument("domains", nargs="*", metavar="DOMAIN")
    s.add_argument("--connect", "-c", metavar="URI")
    s.add_argument("--xml", action="append", default=[], metavar="FILE")
    s.add_argument("--host-root", default="/", metavar="DIR")
    dm = sub.add_parser("daemon", help="watch running domains' interrupts and log runtime advice")
    dm.add_argument("--connect", "-c", metavar="URI", help="libvirt URI (default qemu:///system, read-only)")
    dm.add_argument("--host-root", metavar="DIR", help="host tree to sample instead of /")
    dm.add_argument("--config", default=DEFAULT_CONFIG_PATH, metavar="FILE",
                    help=f"config file; flags win over it (default {DEFAULT_CONFIG_PATH})")
    dm.add_argument("--interval", type=float, metavar="SECONDS", help="sampling interval (default 5)")
    dm.add_argument("--settle", type=float, metavar="SECONDS",
                    help="time after a domain starts before INTx is advice-worthy (default 60)")
    dm.add_argument("--state-dir", metavar="DIR", help="state across runs (default /var/lib/vfio-advisor)")
    dm.add_argument("--metrics-file", metavar="FILE", help="write Prometheus textfile metrics here")

    c = sub.add_parser("catalog", help="print the journald message catalog generated from the rules")
    c.add_argument("-o", "--output", metavar="FILE")

    i = sub.add_parser("install", help="install the libvirt hook, config and journald catalog")
    i.add_argument("--root", default="/", metavar="DIR", help="install under DIR (default /)")
    i.add_argument("--python", metavar="PATH",
                   help="interpreter for the hook and the daemon (default: this one for the hook; "
                   "the daemon runs this venv's base interpreter on the copy in "
                   "/usr/local/lib/vfio-advisor)")
    i.add_argument("--config", metavar="PATH", help="config file the hook reads "
                   f"(default {DEFAULT_CONFIG_PATH})")
    i.add_argument("--classic", action="store_true",
                   help="install as /etc/libvirt/hooks/qemu instead of qemu.d/vfio-advisor")

    u = sub.add_parser("uninstall", help="remove what install placed (keeps the config)")
    u.add_argument("--root", default="/", metavar="DIR")

    if with_fix:
        from vfio_advisor.fix import command as fix_command  # noqa: PLC0415 - its parser lives with it
        fix_command.add_parser(sub)
        # `guest`: the guest agent side (vfio_advisor/guest); its parser and code live there.
        from vfio_advisor.guest.command import add_guest_parser, run_guest  # noqa: PLC0415
        add_guest_parser(sub).set_defaults(run=run_guest)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # The daemon never needs the fix command's parser, whose import (the
    # planner, the XML editor, the verifier) is 5 MB of its steady-state RSS
    # (issue 12, bench/daemon_soak.py): `vfio-advisor daemon ...` parses without it.
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
        return COMMANDS[args.command](args) if args.command in COMMANDS else args.run(args)
    except (UsageError, ConnectionFailed) as exc:
        print(f"vfio-advisor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AdvisorError as exc:
        print(f"vfio-advisor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


def _load_domains(args, root: str) -> tuple[list[tuple[Domain, str]], list[tuple[str, str]]]:
    from vfio_advisor.sources import DEFAULT_URI, domains_from_libvirt, read_domain_file, snapshot_domains

    files = list(args.xml)
    if not files and not args.connect and args.host_root != "/":
        files = snapshot_domains(root)  # a snapshot replays its own domains
    if files and args.connect:
        raise UsageError("use either --xml or --connect, not both")
    if files:
        loaded, errors = [], []
        for path in files:
            try:
                loaded.append(read_domain_file(path))
            except DomainXMLError as exc:
                errors.append((path, str(exc)))
        if args.domains:
            wanted = set(args.domains)
            loaded = [d for d in loaded if d[0].name in wanted]
        return loaded, errors
    return domains_from_libvirt(args.connect or DEFAULT_URI, list(args.domains))


def cmd_advise(args) -> int:
    from vfio_advisor.config import load_config
    from vfio_advisor.engine import Engine
    from vfio_advisor.sources import open_host_root

    if args.sample is not None and not 0 < args.sample <= 3600:
        raise UsageError("--sample takes a number of seconds between 0 and 3600")
    config = load_config(args.config)
    root, tmp = open_host_root(args.host_root)
    try:
        domains, errors = _load_domains(args, root)
        if not domains and errors and (args.xml or args.host_root != "/"):
            # Every XML file given (or stored in the snapshot) was refused:
            # that is a usage error, not advice.
            for src, msg in errors:
                print(f"vfio-advisor: {src}: {msg}", file=sys.stderr)
            return EXIT_USAGE
        engine = Engine(root, config)
        # VA2005 compares every defined domain, not only the ones named.
        every = domains
        if args.domains:
            named, args.domains = args.domains, []
            try:
                every, _ = _load_domains(args, root)
            finally:
                args.domains = named
        engine.set_defined_domains(d for d, _ in every)
        progress = _progress_bar if (args.sample and sys.stderr.isatty()) else None
        sink = _report_sink(args.format, args.host_root, engine.host(args.sample, progress), errors)
        fixes = None
        for domain, xml in domains:
            facts, findings = engine.analyse(domain)
            planned = {}
            if any(f.rule_id in _FIXABLE_RULES for f in findings):
                if fixes is None:  # lazy: lxml, difflib and libvirt only when a plan is due
                    from vfio_advisor.fix.advice import AdviseFixes, fix_command
                    from vfio_advisor.sources import snapshot_domains
                    # As _load_domains: files given, or a snapshot's own domains.
                    from_files = bool(args.xml) or (not args.connect and args.host_root != "/"
                                                    and bool(snapshot_domains(root)))
                    fixes = AdviseFixes(engine, lambda name: fix_command(
                        name, from_files, args.host_root))
                findings, planned = fixes.annotate(domain.name, xml, findings)
            sink.analysed(facts)
            for f in findings:
                sink.emit(f, domain)
            sink.report.attach_fixes(planned)
        sink.close()
    finally:
        if tmp is not None:
            tmp.cleanup()
    worst = sink.report.worst
    return EXIT_FINDINGS if worst is not None and worst >= Severity.WARNING else EXIT_OK


# The rules with a domain XML fix (vfio_advisor/fix/planner.py FIXABLE_RULES),
# named here so advise imports the planner only for domains that have one.
_FIXABLE_RULES = frozenset({"VA4001", "VA4002", "VA4003", "VA5001", "VA5003"})


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
    from vfio_advisor.sources import domains_from_libvirt, open_host_root, read_domain_file, DEFAULT_URI

    if bool(args.domain) == bool(args.xml):
        raise UsageError("give a DOMAIN name or --xml FILE")
    if args.xml:
        domain, _ = read_domain_file(args.xml)
    else:
        found, errors = domains_from_libvirt(args.connect or DEFAULT_URI, [args.domain])
        if not found:
            raise UsageError(f"{args.domain}: {errors[0][1] if errors else 'not found'}")
        domain = found[0][0]
    root, tmp = open_host_root(args.host_root)
    try:
        facts, findings = Engine(root).analyse(domain)
    finally:
        if tmp is not None:
            tmp.cleanup()
    doc = guest_irqs_json(facts, findings, frozenset(r.id for r in RULES if r.routing))
    if args.format == "json":
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        from vfio_advisor.sinks.text import write_guest_irqs
        write_guest_irqs(doc, sys.stdout)
    return EXIT_OK


def cmd_explain(args) -> int:
    from vfio_advisor.rules import RETIRED, lookup

    rule = lookup(args.rule)
    if rule is None:
        if args.rule.upper() in RETIRED:
            print(f"{args.rule.upper()} is retired: {RETIRED[args.rule.upper()]}")
            return EXIT_OK
        raise UsageError(f"no rule {args.rule!r}; 'vfio-advisor rules' lists them")
    wrap = lambda t: textwrap.fill(t, 78)  # noqa: E731
    print(f"{rule.id} {rule.slug} ({rule.severity})\n{rule.title}\n")
    print(wrap(rule.explanation) + "\n")
    print("What to do:\n" + wrap(rule.remedy))
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
        domains, errors = _load_domains(args, root)
        for src, msg in errors:
            print(f"vfio-advisor: skipped {src}: {msg}", file=sys.stderr)
        engine = Engine(root, record=True)
        for domain, _ in domains:
            engine.gather(domain)  # reading records what the archive must hold
        try:
            count = write_snapshot(args.output, engine.root, [(d.name, xml) for d, xml in domains])
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(f"wrote {args.output}: {count} entries, {len(domains)} domain(s)")
    return EXIT_OK


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


COMMANDS = {"advise": cmd_advise, "guest-irqs": cmd_guest_irqs, "device": cmd_device, "explain": cmd_explain,
            "rules": cmd_rules, "snapshot": cmd_snapshot, "catalog": cmd_catalog, "daemon": cmd_daemon,
            "install": cmd_install, "uninstall": cmd_uninstall, "fix": _cmd_fix}

