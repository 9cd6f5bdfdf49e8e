"""The advisor daemon: follow running domains over a read-only libvirt
connection (libvirtaio on asyncio), sample /proc/interrupts while they run,
and log runtime advice through the runtime Watcher.

systemd: Type=notify (READY, STATUS, WATCHDOG), SIGTERM stops, SIGHUP
reloads the config file. libvirt: lifecycle and device events; a lost
connection is reopened with backoff, then the domain list is resynced.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import time
from typing import Callable, NamedTuple

from vfio_advisor.errors import UsageError
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.runtime import RuntimeConfig, StateStore, Watcher
from vfio_advisor.sinks.journal import IDENTIFIER, JournalSink

DEFAULT_CONFIG = "/etc/vfio-advisor/config.toml"
DEFAULT_STATE_DIR = "/var/lib/vfio-advisor"


class DaemonConfig(NamedTuple):
    connect: str = "qemu:///system"
    host_root: str = "/"
    interval: float = 5.0
    settle: float = 60.0
    storm_rate: float = 20000.0
    storm_samples: int = 3
    disabled: frozenset[str] = frozenset()
    ignores: dict = {}
    state_dir: str | None = DEFAULT_STATE_DIR
    metrics_file: str | None = None

    @property
    def runtime(self) -> RuntimeConfig:
        return RuntimeConfig(interval=self.interval, settle=self.settle, storm_rate=self.storm_rate,
                             storm_samples=self.storm_samples, disabled=self.disabled,
                             ignores=self.ignores)


def load_config(path: str | None, overrides: dict) -> DaemonConfig:
    """The [daemon] and [domains.NAME] tables of the TOML file, then the
    command-line flags on top. Raises UsageError with one line."""
    doc: dict = {}
    if path:
        import tomllib

        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            if path != DEFAULT_CONFIG:
                raise UsageError(f"config file {path} not found") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"config file {path}: {exc}") from None
    section = doc.get("daemon", {})
    if not isinstance(section, dict):
        raise UsageError(f"config file {path}: [daemon] must be a table")
    values = dict(DaemonConfig()._asdict())
    types = {"interval": float, "settle": float, "storm_rate": float, "storm_samples": int,
             "connect": str, "host_root": str, "state_dir": str, "metrics_file": str}
    for key, kind in types.items():
        if key in section:
            try:
                values[key] = kind(section[key])
            except (TypeError, ValueError):
                raise UsageError(f"config file {path}: [daemon] {key} must be a {kind.__name__}") from None
    if "disabled_rules" in section:
        rules = section["disabled_rules"]
        if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
            raise UsageError(f"config file {path}: [daemon] disabled_rules must be a list of rule IDs")
        values["disabled"] = frozenset(rules)
    domains = doc.get("domains", {})
    if not isinstance(domains, dict):
        raise UsageError(f"config file {path}: [domains] must be a table of [domains.NAME] tables")
    ignores = {}
    for name, table in domains.items():
        ignore = table.get("ignore", []) if isinstance(table, dict) else None
        if not isinstance(ignore, list) or not all(isinstance(r, str) for r in ignore):
            raise UsageError(f"config file {path}: [domains.{name}] ignore must be a list of rule IDs")
        ignores[name] = frozenset(ignore)
    values["ignores"] = ignores
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = DaemonConfig(**values)
    numbers = (cfg.interval, cfg.settle, cfg.storm_rate)
    if (not all(math.isfinite(x) for x in numbers) or not 0 < cfg.interval <= 3600
            or cfg.settle < 0 or cfg.storm_rate <= 0 or cfg.storm_samples < 1):
        raise UsageError("interval must be in (0, 3600] s, settle >= 0, storm_rate > 0, "
                         "storm_samples >= 1")
    return cfg


def _notify_sender() -> Callable[[str], None]:
    try:
        from systemd import daemon as sd_daemon
    except ImportError:
        return lambda _msg: None
    return lambda msg: sd_daemon.notify(msg)


class Service:
    def __init__(self, cfg: DaemonConfig, config_path: str | None = None,
                 overrides: dict | None = None,
                 open_connection: Callable[[str], object] | None = None,
                 sink: JournalSink | None = None, notify: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.config_path = config_path
        self.overrides = overrides or {}
        self.sink = sink or JournalSink("daemon")
        self.notify = notify or _notify_sender()
        self.open_connection = open_connection or self._open_readonly
        self.clock = clock
        self.conn = None
        self.callbacks: list[int] = []
        self.stopping = asyncio.Event()
        self.reconnect_needed = asyncio.Event()
        self.watcher = self._new_watcher()
        self.connects = 0

    def _new_watcher(self) -> Watcher:
        store = StateStore(self.cfg.state_dir)
        return Watcher(HostRoot(self.cfg.host_root), self.cfg.runtime, self.sink.emit, store,
                       clock=self.clock)

    # --- logging of the daemon's own events ------------------------------

    def log(self, message: str, event: str, priority: int = 6) -> None:
        fields = [f"MESSAGE={message}", f"PRIORITY={priority}", f"SYSLOG_IDENTIFIER={IDENTIFIER}",
                  "VFIO_ADVISOR_SOURCE=daemon", f"VFIO_ADVISOR_EVENT={event}"]
        try:
            self.sink.sender(fields)
        except OSError:
            sys.stderr.write(f"vfio-advisor: {message}\n")

    def status(self) -> None:
        vms = len(self.watcher.domains)
        self.notify(f"STATUS=watching {vms} VM{'s' if vms != 1 else ''}, "
                    f"{self.watcher.device_count} device{'s' if self.watcher.device_count != 1 else ''}")

    # --- libvirt ------------------------------------------------------------

    @staticmethod
    def _open_readonly(uri: str):
        import libvirt

        return libvirt.openReadOnly(uri)

    def connect(self) -> None:
        import libvirt

        libvirt.registerErrorHandler(lambda *_: None, None)
        conn = self.open_connection(self.cfg.connect)
        self.conn = conn
        self.connects += 1
        try:
            conn.registerCloseCallback(self._on_close, None)
        except (libvirt.libvirtError, AttributeError):
            pass  # the test driver has no close callback
        self.callbacks = [
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None),
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, self._on_device, None),
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, self._on_device, None),
        ]
        self.resync()

    def disconnect(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        for cb in self.callbacks:
            try:
                conn.domainEventDeregisterAny(cb)
            except Exception:  # noqa: BLE001 - the connection may be dead already
                pass
        self.callbacks = []
        try:
            conn.unregisterCloseCallback()
        except Exception:  # noqa: BLE001
            pass
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass

    def _on_close(self, conn, reason, opaque) -> None:
        self.log(f"libvirt connection to {self.cfg.connect} closed (reason {reason}); reconnecting",
                 "disconnected", 4)
        self.reconnect_needed.set()

    def resync(self) -> None:
        """Follow exactly the domains that run now."""
        import libvirt

        running = {}
        for dom in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            try:
                running[dom.name()] = (dom.XMLDesc(0), dom.ID())
            except libvirt.libvirtError:
                continue  # gone between list and read
        for name in list(self.watcher.domains):
            if name not in running:
                self.watcher.remove_domain(name)
        for name, (xml, run_id) in running.items():
            # Same ID: the run we followed before the reconnect; else a new run.
            self.learn(name, xml, run_id, same_run=True)
        self.status()

    def learn(self, name: str, xml: str, run_id: object = None, same_run: bool = False) -> None:
        try:
            domain = parse_domain_xml(xml)
        except Exception as exc:  # noqa: BLE001 - one odd domain must not stop the daemon
            self.log(f"{name}: domain XML not usable: {exc}", "domain-skipped", 4)
            return
        try:
            self.watcher.add_domain(domain, run_id=run_id, same_run=same_run)
        except Exception as exc:  # noqa: BLE001
            self.log(f"{name}: cannot follow: {type(exc).__name__}: {exc}", "domain-skipped", 4)

    def _on_lifecycle(self, conn, dom, event, detail, opaque) -> None:
        import libvirt

        try:
            name = dom.name()
            if event in (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_RESUMED):
                if event == libvirt.VIR_DOMAIN_EVENT_RESUMED and name in self.watcher.domains:
                    return
                self.learn(name, dom.XMLDesc(0), dom.ID())
            elif event in (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_SHUTDOWN,
                           libvirt.VIR_DOMAIN_EVENT_CRASHED):
                if event != libvirt.VIR_DOMAIN_EVENT_SHUTDOWN or not dom.isActive():
                    self.watcher.remove_domain(name)
        except libvirt.libvirtError:
            pass  # the domain vanished while we looked at it: the next resync settles it
        self.status()

    def _on_device(self, conn, dom, dev_alias, opaque) -> None:
        import libvirt

        try:
            name = dom.name()
            self.learn(name, dom.XMLDesc(0), dom.ID(), same_run=True)
            state = self.watcher.domains.get(name)
            self.log(f"{name}: device {dev_alias} added or removed; following "
                     f"{len(state.devices) if state else 0} assigned PCI devices", "devices-changed")
        except libvirt.libvirtError:
            pass
        self.status()

    async def _keep_connected(self) -> None:
        delay = 1.0
        while not self.stopping.is_set():
            if self.conn is None or self.reconnect_needed.is_set():
                self.reconnect_needed.clear()
                self.disconnect()
                try:
                    self.connect()
                    if self.connects > 1:
                        self.log(f"reconnected to {self.cfg.connect}; watching "
                                 f"{len(self.watcher.domains)} domains", "reconnected")
                    delay = 1.0
                except Exception as exc:  # noqa: BLE001 - libvirtd may be down for a while
                    self.conn = None
                    self.log(f"cannot connect to {self.cfg.connect}: {exc}; retrying in "
                             f"{delay:g} s", "connect-failed", 4)
                    await self._sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
            await self._wait_any(self.reconnect_needed, 1.0)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _wait_any(self, event: asyncio.Event, timeout: float) -> None:
        stop = asyncio.ensure_future(self.stopping.wait())
        other = asyncio.ensure_future(event.wait())
        done, pending = await asyncio.wait({stop, other}, timeout=timeout,
                                           return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()

    async def _sample_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.watcher.sample()
                if self.cfg.metrics_file:
                    self.watcher.write_metrics(self.cfg.metrics_file)
            except Exception as exc:  # noqa: BLE001 - keep the daemon alive
                self.log(f"sample failed: {type(exc).__name__}: {exc}", "sample-failed", 3)
            await self._sleep(self.cfg.interval)

    async def _watchdog(self) -> None:
        """WATCHDOG=1 at half the period systemd asked for (sd_watchdog_enabled),
        independent of the sampling interval, which may be longer."""
        try:
            usec = int(os.environ.get("WATCHDOG_USEC", "0"))
        except ValueError:
            usec = 0
        if usec <= 0 or os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
            return
        while not self.stopping.is_set():
            self.notify("WATCHDOG=1")
            await self._sleep(usec / 2e6)

    def reload(self) -> None:
        try:
            cfg = load_config(self.config_path, {})
        except Exception as exc:  # noqa: BLE001 - a signal handler must not raise
            self.log(f"reload failed, keeping the old config: {exc}", "reload-failed", 4)
            return
        self.notify("RELOADING=1")
        # Keep what the command line set explicitly.
        self.cfg = cfg._replace(**{k: v for k, v in self.overrides.items() if v is not None})
        self.watcher.config = self.cfg.runtime
        self.log(f"configuration reloaded: interval {self.cfg.interval:g} s, settle "
                 f"{self.cfg.settle:g} s", "reloaded")
        self.notify("READY=1")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig, handler in ((signal.SIGTERM, self.stopping.set), (signal.SIGINT, self.stopping.set),
                             (signal.SIGHUP, self.reload)):
            try:
                loop.add_signal_handler(sig, handler)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (tests): signals are the caller's business
        keeper = asyncio.ensure_future(self._keep_connected())
        while self.conn is None and not self.stopping.is_set():
            await asyncio.sleep(0.05)
        self.notify("READY=1")
        self.log(f"started: watching {len(self.watcher.domains)} running domains on "
                 f"{self.cfg.connect}", "started")
        sampler = asyncio.ensure_future(self._sample_loop())
        watchdog = asyncio.ensure_future(self._watchdog())
        await self.stopping.wait()
        self.notify("STOPPING=1")
        for task in (keeper, sampler, watchdog):
            task.cancel()
        await asyncio.gather(keeper, sampler, watchdog, return_exceptions=True)
        self.disconnect()
        self.log("stopped", "stopped")


def main(args) -> int:
    overrides = {"connect": args.connect, "host_root": args.host_root, "interval": args.interval,
                 "settle": args.settle, "state_dir": args.state_dir, "metrics_file": args.metrics_file}
    cfg = load_config(args.config, overrides)
    import libvirt
    import libvirtaio

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # Must precede libvirt.open; an event implementation is registered once per process.
    libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
    libvirt.registerErrorHandler(lambda *_: None, None)
    service = Service(cfg, config_path=args.config, overrides=overrides)
    try:
        loop.run_until_complete(service.run())
    finally:
        loop.close()
    return 0
