"""The libvirt qemu hook: advice at VM start, into the journal.

libvirt runs /etc/libvirt/hooks/qemu.d/* as `NAME OPERATION SUBOP EXTRA`
with the domain XML on stdin (https://libvirt.org/hooks.html). The shell
front (vfio_advisor/data/qemu-hook.sh, the one template that install and the
package render) exits at once for every operation but `prepare begin`, and
only then starts this module. At `prepare` the XML is the live definition,
with libvirt's PCI addresses assigned and hostdevs included.

Contract kept here:
- never import or call libvirt: libvirtd is waiting on us (deadlock);
- never fail the start: exit 0 whatever happens, unless the admin opted in
  to blocking on error-level findings ([hook] block_on_error = true);
- bounded run time (SIGALRM), bounded stdin, any stdin survives.
"""

from __future__ import annotations

import os
import signal
import sys

# 3, not 1: a Python that dies on its own exits 1, and that must not block a start.
EXIT_OK, EXIT_BLOCK = 0, 3
MAX_STDIN = 16 << 20  # 16 MiB: far above any real domain XML
ANALYSED = ("prepare", "begin")


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Timeout()


def load_config(path: str):
    """(config, problem line): a bad config is reported and the defaults
    used, because the hook must never fail a VM start over it. A rule name
    no rule answers to, or a key no setting reads (a misspelt
    block_on_error would otherwise leave blocking off without a word), is
    reported too, and the rest of the file holds."""
    from vfio_advisor.config import DEFAULTS, load_config_leniently  # noqa: PLC0415
    from vfio_advisor.errors import UsageError  # noqa: PLC0415

    try:
        # install names the file; until the admin writes it, the defaults hold.
        cfg, problems = load_config_leniently(path)
    except UsageError as exc:
        return DEFAULTS, f"config ignored: {exc}"
    return cfg, (f"config file {path}: " + "; ".join(problems)) if problems else None


def _read_stdin() -> bytes:
    try:
        data = sys.stdin.buffer.read(MAX_STDIN + 1)
    except (OSError, ValueError, AttributeError):
        return b""
    return data


def run(argv: list[str], config_path: str | None = None) -> int:
    from vfio_advisor.sinks.journal import JournalSink

    sink = JournalSink("hook")
    name = argv[0] if argv else None
    op = tuple(argv[1:3])
    if op != ANALYSED:
        return EXIT_OK
    from vfio_advisor.config import DEFAULT_CONFIG_PATH  # noqa: PLC0415
    from vfio_advisor.findings import RunCounts  # noqa: PLC0415
    from vfio_advisor.rules import INTERNAL_ERROR, internal_error, run_summary  # noqa: PLC0415
    from vfio_advisor.sinks.base import RunSummary  # noqa: PLC0415

    cfg, cfg_problem = load_config(config_path or DEFAULT_CONFIG_PATH)
    timeout = cfg.hook_timeout

    findings = []
    domain = facts = None
    devices = 0
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        # Armed inside the try, so the alarm cannot land outside the handler.
        signal.setitimer(signal.ITIMER_REAL, float(timeout))
        if cfg_problem:
            findings.append(internal_error(name, cfg_problem))
        data = _read_stdin()
        if len(data) > MAX_STDIN:
            raise ValueError(f"stdin holds more than {MAX_STDIN} bytes; not a domain XML")
        from vfio_advisor.engine import Engine  # noqa: PLC0415
        from vfio_advisor.errors import DomainXMLError  # noqa: PLC0415
        from vfio_advisor.facts.domain import parse_domain_xml  # noqa: PLC0415

        try:
            domain = parse_domain_xml(data)
        except DomainXMLError as exc:
            raise ValueError(f"stdin is not a usable domain XML: {exc}") from None
        devices = len(domain.hostdevs)
        findings.extend(internal_error(domain.name, line) for line in cfg.policy.unknown_in_metadata(domain))
        # Every domain: guest routing rules (VA5xxx) apply to emulated devices too.
        # The config's disabled_rules and [domains.NAME] ignore apply here as
        # in advise and the daemon (config.IgnorePolicy).
        facts, found = Engine(cfg.hook_host_root, cfg).analyse(domain)
        findings.extend(found)
    except _Timeout:
        findings.append(internal_error(name, f"hook stopped after {timeout} s; advice incomplete"))
    except Exception as exc:  # noqa: BLE001 - a hook must never fail the VM start
        message = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        findings.append(internal_error(name, message))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        if facts is not None:
            sink.begin(facts)
        for f in findings:
            sink.emit(f, domain)
        counts = RunCounts.of(findings)
        sink.close(RunSummary(run_summary(domain.name if domain else name, counts, devices), domain,
                              tuple(findings), counts, devices))
    except Exception:  # noqa: BLE001
        pass
    # The hook's own failure (internal error) never blocks a start.
    if cfg.hook_block_on_error and any(f.rule_id != INTERNAL_ERROR.id and str(f.severity) == "error"
                                       for f in findings):
        sys.stderr.write("vfio-advisor: blocking the start on error findings "
                         "([hook] block_on_error in the config):\n")
        for f in findings:
            if str(f.severity) == "error":
                sys.stderr.write(f"  {f.rule_id} {f.subject or ''} {f.message}\n")
        return EXIT_BLOCK
    return EXIT_OK


def main() -> int:
    args = sys.argv[1:]
    config = None
    if len(args) >= 2 and args[0] == "--config":
        config, args = args[1], args[2:]
    try:
        return run(args, config)
    except BaseException:  # noqa: BLE001 - last resort: never a non-zero exit
        return EXIT_OK


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
