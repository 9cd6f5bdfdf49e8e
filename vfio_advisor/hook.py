"""The libvirt qemu hook: advice at VM start, into the journal.

libvirt runs /etc/libvirt/hooks/qemu.d/* as `NAME OPERATION SUBOP EXTRA`
with the domain XML on stdin (https://libvirt.org/hooks.html). The shell
shim (hooks/qemu) exits at once for every operation but `prepare begin`, and
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
DEFAULT_CONFIG = "/etc/vfio-advisor/config.toml"
MAX_STDIN = 16 << 20  # 16 MiB: far above any real domain XML
ANALYSED = ("prepare", "begin")


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Timeout()


def load_config(path: str) -> tuple[dict, str | None]:
    """The [hook] table of the config file, and a problem line if it was bad."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        return {}, f"cannot read {path}: {exc.strerror}"
    import tomllib  # noqa: PLC0415 - only when a config exists

    try:
        doc = tomllib.loads(data.decode("utf-8", "replace"))
    except tomllib.TOMLDecodeError as exc:
        return {}, f"{path}: {exc}"
    hook = doc.get("hook", {})
    return (hook if isinstance(hook, dict) else {}), None


def _read_stdin() -> bytes:
    try:
        data = sys.stdin.buffer.read(MAX_STDIN + 1)
    except (OSError, ValueError, AttributeError):
        return b""
    return data


def run(argv: list[str], config_path: str = DEFAULT_CONFIG) -> int:
    from vfio_advisor.sinks.journal import JournalSink

    sink = JournalSink("hook")
    name = argv[0] if argv else None
    op = tuple(argv[1:3])
    if op != ANALYSED:
        return EXIT_OK
    cfg, cfg_problem = load_config(config_path)
    timeout = cfg.get("timeout", 10)
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        timeout = 10
    block = cfg.get("block_on_error") is True
    host_root = cfg.get("host_root", "/") if isinstance(cfg.get("host_root", "/"), str) else "/"

    from vfio_advisor.rules import internal_error  # noqa: PLC0415

    findings = []
    domain = None
    devices = 0
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        # Armed inside the try, so the alarm cannot land outside the handler.
        signal.setitimer(signal.ITIMER_REAL, float(timeout))
        if cfg_problem:
            findings.append(internal_error(name, f"config ignored: {cfg_problem}"))
        data = _read_stdin()
        if len(data) > MAX_STDIN:
            raise ValueError(f"stdin holds more than {MAX_STDIN} bytes; not a domain XML")
        from vfio_advisor.engine import DeviceCache, analyse_domain, gather_host  # noqa: PLC0415
        from vfio_advisor.errors import DomainXMLError  # noqa: PLC0415
        from vfio_advisor.facts.domain import parse_domain_xml  # noqa: PLC0415
        from vfio_advisor.facts.host import HostRoot  # noqa: PLC0415
        from vfio_advisor.facts.pciids import PciIds  # noqa: PLC0415

        try:
            domain = parse_domain_xml(data)
        except DomainXMLError as exc:
            raise ValueError(f"stdin is not a usable domain XML: {exc}") from None
        devices = len(domain.hostdevs)
        # Every domain: guest routing rules (VA5xxx) apply to emulated devices too.
        host = HostRoot(host_root)
        _, found = analyse_domain(domain, gather_host(host), DeviceCache(host, PciIds.load(host)))
        findings.extend(found)
    except _Timeout:
        findings.append(internal_error(name, f"hook stopped after {timeout} s; advice incomplete"))
    except Exception as exc:  # noqa: BLE001 - a hook must never fail the VM start
        message = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        findings.append(internal_error(name, message))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        for f in findings:
            sink.emit(f, domain)
        sink.summary(domain, domain.name if domain else name, findings, devices)
    except Exception:  # noqa: BLE001
        pass
    if block and any(f.rule_id != "VA9001" and str(f.severity) == "error" for f in findings):
        sys.stderr.write("vfio-advisor: blocking the start on error findings "
                         "([hook] block_on_error in the config):\n")
        for f in findings:
            if str(f.severity) == "error":
                sys.stderr.write(f"  {f.rule_id} {f.subject or ''} {f.message}\n")
        return EXIT_BLOCK
    return EXIT_OK


def main() -> int:
    args = sys.argv[1:]
    config = DEFAULT_CONFIG
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
