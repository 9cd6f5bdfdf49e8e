"""The advisor daemon: follow running domains over a read-only libvirt
connection (libvirtaio on asyncio), sample /proc/interrupts while they run,
and log runtime advice through the runtime Watcher.

systemd: Type=notify (READY, STATUS, WATCHDOG), SIGTERM stops, SIGHUP
reloads the config file. libvirt: lifecycle and device events; a lost
connection is reopened with backoff, then the domain list is resynced.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Callable

from vfio_advisor import libc
from vfio_advisor.config import Config, load_config
from vfio_advisor.errors import FactUnavailable, UsageError, quiet_stderr
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.daemon.gather_child import (
    GATHER_TIMEOUT, KILL_WAIT, GatherFailure, gather_in_child, package_fingerprint,
)
from vfio_advisor.daemon.state import StateStore
from vfio_advisor.daemon.watch import Watcher
from vfio_advisor.sinks.base import ServiceEvent, Sink
from vfio_advisor.sinks.journal import JournalSink
from vfio_advisor.sinks.status import StatusFileSink

# One config type and loader for every command (vfio_advisor/config.py).
DaemonConfig = Config

# Reconnect backoff: libvirtd restarts take seconds; doubling from 1 s up to
# 30 s reconnects fast after a restart and costs nothing while it is down.
RECONNECT_FIRST_DELAY = 1.0
RECONNECT_MAX_DELAY = 30.0
# REBOOT events of one domain closer together than this are one guest
# restart (see _on_reboot).
REBOOT_EVENTS_COALESCED = 5.0


def _notify_sender() -> Callable[[str], None]:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, an
    AF_UNIX path, or an abstract name when it starts with "@" (systemd 252,
    src/libsystemd/sd-daemon/sd-daemon.c, sd_pid_notify_with_fds). Read at
    each call, as libsystemd does. python3-systemd's notify() does the same
    through libsystemd.so, whose mapping is ~1 MiB of the daemon's RSS
    (bench/daemon_bench.py)."""
    import socket  # noqa: PLC0415 - asyncio has imported it already

    def send(message: str) -> None:
        path = os.environ.get("NOTIFY_SOCKET")
        if not path or path[0] not in "/@":
            return  # not started by systemd (or a vsock: address, systemd >= 254 only)
        if path[0] == "@":
            path = "\0" + path[1:]
        try:
            # Non-blocking: a datagram to a receiver whose queue is full
            # waits for room (net/unix/af_unix.c, unix_wait_for_peer), and
            # this runs on the event loop: a notify socket nobody reads
            # (PID 1 busy) stopped the daemon's sampling and reconnects
            # (tests/faults/test_libvirtd_kill.py). Dropped instead.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
                sock.sendto(message.encode(), path)
        except OSError:
            pass  # systemd gone or the socket full: notifications are best effort, as in libsystemd

    return send


class Service:
    def __init__(self, cfg: DaemonConfig, config_path: str | None = None,
                 overrides: dict | None = None,
                 open_connection: Callable[[str], object] | None = None,
                 sink: Sink | None = None, notify: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 gather: Callable[[str, list[str]], list] = gather_in_child):
        self.cfg = cfg
        self.config_path = config_path
        self.overrides = overrides or {}
        self.sink = sink or JournalSink("daemon")
        self.notify = notify or _notify_sender()
        self.open_connection = open_connection or self._open_readonly
        self.clock = clock
        # (host root, domain XMLs) -> DomainFacts or GatherFailure each: in a
        # child process (daemon/gather_child.py), so that this long-lived process
        # never imports lxml and the engine's readers: CPython never unloads a
        # C extension, and lxml.etree with libxml2 is ~4 MiB of RSS.
        self.gather = gather
        # Gathering runs in one worker thread (the child is waited for there),
        # so the event loop, the sampling and the watchdog go on meanwhile.
        # Each domain event stamps the domain with a new generation; a
        # gathering whose domain saw a later event (a stop, a newer start)
        # is dropped when it completes.
        self._gatherer = None
        self.generations: dict[str, int] = {}
        self._generation = 0
        self.pending: set[asyncio.Future] = set()
        self.conn = None
        self.callbacks: list[int] = []
        self.stopping = asyncio.Event()
        self.reconnect_needed = asyncio.Event()
        self.status_sink = StatusFileSink.for_config(cfg)  # STATE_DIR/status.json, for the Cockpit page
        self.watcher = self._new_watcher()
        self.connects = 0
        self._reboot_events: dict[str, float] = {}  # domain -> clock() at its last REBOOT event

    def _sinks(self) -> list:
        """The journal (or the sink given), and the metrics file when the
        config names one: read again at each reload."""
        # One status file sink for the daemon's life: a reload keeps its
        # rolling windows (sinks/status.py, read by the Cockpit page).
        sinks = [self.sink, self.status_sink]
        if self.cfg.metrics_file:
            from vfio_advisor.sinks.metrics import MetricsFileSink  # noqa: PLC0415

            sinks.append(MetricsFileSink(self.cfg.metrics_file))
        return sinks

    def _new_watcher(self, store: StateStore | None = None) -> Watcher:
        """A Watcher on the config's host root; `store`: the state store to keep (a new one if None)."""
        if store is None:
            store = StateStore(self.cfg.state_dir, note=lambda msg: self.log(msg, "state-file", 4),
                               deferred=True)
        return Watcher(HostRoot(self.cfg.host_root), self.cfg, self._sinks(), store,
                       clock=self.clock, note=lambda msg: self.log(msg, "sampling", 4))

    # --- logging of the daemon's own events ------------------------------

    def log(self, message: str, event: str, priority: int = 6) -> None:
        entry = ServiceEvent(event, message, priority)
        for sink in self.watcher.sinks if hasattr(self, "watcher") else (self.sink,):
            try:
                sink.event(entry)
            except OSError:
                # journald gone (JournalSink.event raises): say it where
                # systemd still collects the unit's output.
                sys.stderr.write(f"vfio-advisor: {message}\n")

    def status(self) -> None:
        vms = len(self.watcher.domains)
        self.notify(f"STATUS=watching {vms} VM{'s' if vms != 1 else ''}, "
                    f"{self.watcher.device_count} device{'s' if self.watcher.device_count != 1 else ''}")

    # --- libvirt ------------------------------------------------------------

    @staticmethod
    def _open_readonly(uri: str):
        import libvirt

        # libxml2's copy of a parse error (libvirt's test driver on a missing
        # node file) goes to fd 2 beside the libvirtError that we log: drop it.
        with quiet_stderr():
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
            # A guest reboot keeps the QEMU process and the domain ID, and is
            # no lifecycle event: libvirt's qemu driver sends REBOOT when QEMU
            # reports the machine's RESET (src/qemu/qemu_process.c,
            # qemuProcessHandleReset). libvirt's test driver sends none.
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, self._on_reboot, None),
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
        self.status_disconnected()
        self.reconnect_needed.set()

    def status_disconnected(self) -> None:
        """STATUS while libvirt is away: the domains followed are those of
        the last resync, and no event reaches us until the next one (a
        libvirtd restart leaves QEMU running: qemuProcessReconnect)."""
        vms = len(self.watcher.domains)
        self.notify(f"STATUS=libvirt connection lost, reconnecting; following {vms} "
                    f"VM{'s' if vms != 1 else ''} as last seen")

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
                self.forget(name)
        # Same ID: the run we followed before the reconnect; else a new run.
        # One gathering child for all of them (the host facts are read once).
        self.learn([(name, xml, run_id, True) for name, (xml, run_id) in running.items()])
        self.status()

    def learn(self, domains: list[tuple[str, str, object, bool]], changed_device: str | None = None) -> None:
        """Follow these running domains: (name, XML, libvirt's run ID, same
        run as the one followed before?) each, once their facts are gathered
        (in the background; see __init__). `changed_device`: the alias of a
        device event, said once the domain's devices are known again."""
        if not domains:
            return
        stamped = [(name, xml, run_id, same_run, self._next_generation(name))
                   for name, xml, run_id, same_run in domains]
        future = asyncio.ensure_future(self._gather_and_follow(stamped, self.watcher.host.root, changed_device))
        self.pending.add(future)
        future.add_done_callback(self.pending.discard)

    def forget(self, name: str) -> None:
        """Stop following a domain, and void any gathering of it under way."""
        # Dropped, not bumped: a gathering under way finds no generation and
        # is voided all the same, and a host that starts transient domains
        # under new names (CI, a VM per job) keeps no entry per name ever seen.
        self.generations.pop(name, None)
        self.watcher.remove_domain(name)

    def _next_generation(self, name: str) -> int:
        # One counter for all names, so that a name forgotten and started
        # again never gets back a number a stale gathering still holds.
        self._generation += 1
        self.generations[name] = self._generation
        return self._generation

    def _gather_current(self, stamped: list, host_root: str) -> list:
        """In the gathering thread: gather only the domains no later event
        made stale while this waited its turn (a domain started and stopped
        within a boot storm's queue costs no child); None for the others."""
        current = [k for k, (name, _xml, _run, _same, generation) in enumerate(stamped)
                   if self.generations.get(name) == generation]
        results: list = [None] * len(stamped)
        if current:
            for k, result in zip(current, self.gather(host_root, [stamped[k][1] for k in current])):
                results[k] = result
        return results

    def _executor(self):
        if self._gatherer is None:
            from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415 - at the first domain event

            self._gatherer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vfio-advisor-gather")
        return self._gatherer

    async def _gather_and_follow(self, stamped: list, host_root: str, changed_device: str | None) -> None:
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self._executor(), self._gather_current, stamped, host_root)
        for (name, _xml, run_id, same_run, generation), result in zip(stamped, results):
            if self.generations.get(name) != generation or result is None:
                continue  # a later event of this domain decides (it stopped, or started again)
            if isinstance(result, GatherFailure):
                if result.kind == "stopped":
                    continue  # SIGTERM reached the child with us: the stop follows
                what = "domain XML not usable" if result.kind == "xml" else "cannot follow"
                self.log(f"{name}: {what}: {result.reason}", "domain-skipped", 4)
                continue
            try:
                state = self.watcher.follow(result, run_id=run_id, same_run=same_run)
            except Exception as exc:  # noqa: BLE001 - one odd domain must not stop the daemon
                self.log(f"{name}: cannot follow: {type(exc).__name__}: {exc}", "domain-skipped", 4)
                continue
            self._say_incomplete(name, state)
            for line in self.cfg.policy.unknown_in_metadata(state.facts.domain):
                self.log(line, "unknown-rule", 4)
            if changed_device is not None:
                self.log(f"{name}: device {changed_device} added or removed; following "
                         f"{len(state.devices)} assigned PCI devices", "devices-changed")
        self.status()

    async def settled(self, timeout: float) -> None:
        """Until every gathering under way has been applied (at most `timeout`)."""
        end = asyncio.get_running_loop().time() + timeout
        while self.pending and asyncio.get_running_loop().time() < end:
            await asyncio.wait(set(self.pending), timeout=max(end - asyncio.get_running_loop().time(), 0))

    def _say_incomplete(self, name: str, state) -> None:
        """What the gathering child could not read of a followed device, once
        per domain event. Without CAP_SYS_ADMIN (a unit without
        AmbientCapabilities=, or run by hand as a user) sysfs gives 64 bytes
        of config space (drivers/pci/pci-sysfs.c, pci_read_config): no
        capability list, so MSI support is unknown and the rules that need it stay
        silent for the device; the log says so instead of nothing."""
        for dev in state.facts.devices:
            problems = dev.device.unreadable if dev.device is not None else (dev.problem or "not on this host",)
            for problem in problems:
                self.log(f"{name}: {dev.address}: {problem}; runtime advice that needs it is off for "
                         "this device", "device-facts-incomplete", 4)

    def _on_lifecycle(self, conn, dom, event, detail, opaque) -> None:
        import libvirt

        try:
            name = dom.name()
            if event in (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_RESUMED):
                if event == libvirt.VIR_DOMAIN_EVENT_RESUMED and name in self.watcher.domains:
                    return
                self.learn([(name, dom.XMLDesc(0), dom.ID(), False)])
            elif event in (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_SHUTDOWN,
                           libvirt.VIR_DOMAIN_EVENT_CRASHED):
                if event != libvirt.VIR_DOMAIN_EVENT_SHUTDOWN or not dom.isActive():
                    self.forget(name)
        except libvirt.libvirtError:
            pass  # the domain vanished while we looked at it: the next resync settles it
        self.status()

    def _on_reboot(self, conn, dom, opaque) -> None:
        import libvirt

        try:
            name = dom.name()
        except libvirt.libvirtError:
            return  # the domain vanished while we looked at it: the next resync settles it
        self.watcher.rebooted(name)
        followed = self.watcher.domains.get(name)
        if followed is None:
            return
        # One line per reboot: nothing else in the journal shows that the
        # settle time started over, or which recorded guest change the
        # daemon now waits to confirm. One agent reboot of a q35 guest
        # (libvirt 9.0, QEMU 7.2, SeaBIOS) gave three REBOOT events within
        # 0.7 s (tests/system/test_guest_loop_nested.py); events that close
        # together are one restart and get one line.
        now, before = self.clock(), self._reboot_events.get(name)
        self._reboot_events[name] = now
        if before is not None and now - before < REBOOT_EVENTS_COALESCED:
            return
        waiting = len(followed.guest_changes)
        self.log(f"{name}: the guest rebooted; settle time starts over"
                 + (f", {waiting} recorded guest change{'s' if waiting != 1 else ''} to confirm" if waiting else ""),
                 "guest-rebooted")

    def _on_device(self, conn, dom, dev_alias, opaque) -> None:
        import libvirt

        try:
            name = dom.name()
            self.learn([(name, dom.XMLDesc(0), dom.ID(), True)], changed_device=dev_alias)
        except libvirt.libvirtError:
            pass
        self.status()

    async def _keep_connected(self) -> None:
        delay = RECONNECT_FIRST_DELAY
        while not self.stopping.is_set():
            if self.conn is None or self.reconnect_needed.is_set():
                self.reconnect_needed.clear()
                self.disconnect()
                try:
                    self.connect()
                    if self.connects > 1:
                        self.log(f"reconnected to {self.cfg.connect}; watching "
                                 f"{len(self.watcher.domains)} domains", "reconnected")
                    delay = RECONNECT_FIRST_DELAY
                except Exception as exc:  # noqa: BLE001 - libvirtd may be down for a while
                    self.conn = None
                    self.status_disconnected()
                    self.log(f"cannot connect to {self.cfg.connect}: {exc}; retrying in "
                             f"{delay:g} s", "connect-failed", 4)
                    await self._sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX_DELAY)
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
        try:
            await asyncio.wait({stop, other}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when the keeper itself is cancelled at stop: else both waits
            # outlive it ("Task was destroyed but it is pending!" at loop.close(),
            # seen against a real libvirtd). Cancelling a finished task is a no-op.
            stop.cancel()
            other.cancel()

    async def _sample_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                rediscoveries = self.watcher.sampler.rediscoveries
                # Ends with a SampleEvent: the metrics file sink writes then.
                self.watcher.sample()
                if self.watcher.sampler.rediscoveries != rediscoveries:
                    # After a domain event's gathering and the whole
                    # /proc/interrupts it had read again (megabytes at
                    # hundreds of CPUs): see release_free_heap.
                    release_free_heap()
                # What the sample changed of the state file, in one write.
                self.watcher.store.flush()
            except Exception as exc:  # noqa: BLE001 - keep the daemon alive
                self.log(f"sample failed: {type(exc).__name__}: {exc}", "sample-failed", 3)
            # A plain sleep: run() cancels this task at stop. _sleep's
            # wait_for(stopping.wait()) built a task, a timeout handle and a
            # CancelledError/TimeoutError pair at every sample (asyncio 3.11):
            # 46 us of the daemon's CPU per sample, as much as the sample
            # itself (bench/daemon_soak.py's process, 256 CPUs).
            await asyncio.sleep(self.cfg.interval)

    @staticmethod
    def _watchdog_usec() -> int:
        """systemd's watchdog period for this process, 0 if none (sd_watchdog_enabled)."""
        try:
            usec = int(os.environ.get("WATCHDOG_USEC", "0"))
        except ValueError:
            return 0
        if usec <= 0 or os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
            return 0
        return usec

    async def _watchdog(self) -> None:
        """WATCHDOG=1 at half the period systemd asked for, independent of
        the sampling interval, which may be longer."""
        usec = self._watchdog_usec()
        if not usec:
            return
        while not self.stopping.is_set():
            self.notify("WATCHDOG=1")
            await self._sleep(usec / 2e6)

    def reload(self) -> None:
        try:
            cfg = load_config(self.config_path, {})
            # Keep what the command line set explicitly.
            cfg = cfg._replace(**{k: v for k, v in self.overrides.items() if v is not None})
            moved = cfg.host_root != self.watcher.host.root
            if moved:
                # Refused as at start (main): a tree that is no directory, or
                # a snapshot, would leave the daemon sampling nothing.
                check_host_root(cfg.host_root, f"[daemon] host_root in {self.config_path}")
        except Exception as exc:  # noqa: BLE001 - a signal handler must not raise
            self.log(f"reload failed, keeping the old config: {exc}", "reload-failed", 4)
            return
        self.notify("RELOADING=1")
        old_root = self.watcher.host.root
        self.cfg = cfg
        if moved:
            self._move_host_root()
        else:
            self.watcher.config = self.cfg
            self.watcher.sinks = self._sinks()
        self.log(f"configuration reloaded: interval {self.cfg.interval:g} s, settle "
                 f"{self.cfg.settle:g} s"
                 + (f"; host root {self.cfg.host_root} (was {old_root}): every running domain is "
                    "gathered and followed afresh from it" if moved else ""), "reloaded")
        self.notify("READY=1")

    def _move_host_root(self) -> None:
        """Follow the running domains from the config's new host root, as a
        restart on it would: what was gathered and sampled from the old tree
        (each device's PCI facts, vector counts and modes, settle times, the
        host-wide rules' windows) says nothing of the new one, and a count
        read there against one read here would make a bogus rate. A new
        Watcher, with the state store kept (its state carries across
        restarts too); a gathering still under way read the old tree and is
        voided (its generation dropped)."""
        old = self.watcher
        old.store.flush()
        old.sampler.close()  # its kept descriptors are on the old tree
        self.generations.clear()
        self.watcher = self._new_watcher(old.store)
        if self.conn is None:
            return  # the reconnect resyncs, onto the new tree
        try:
            self.resync()
        except Exception as exc:  # noqa: BLE001 - a dead connection: the keeper reconnects and resyncs
            self.log(f"cannot list the running domains on {self.cfg.connect} after the host root "
                     f"changed: {exc}; reconnecting", "disconnected", 4)
            self.reconnect_needed.set()

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
        # Ready once the domains running at start are followed (their
        # gathering is bounded by the child's timeout and its kill wait).
        await self.settled(GATHER_TIMEOUT + KILL_WAIT + 1)
        self.notify("READY=1")
        self.log(f"started: watching {len(self.watcher.domains)} running domains on "
                 f"{self.cfg.connect}", "started")
        sampler = asyncio.ensure_future(self._sample_loop())
        watchdog = asyncio.ensure_future(self._watchdog())
        await self.stopping.wait()
        self.notify("STOPPING=1")
        for task in (keeper, sampler, watchdog, *self.pending):
            task.cancel()
        await asyncio.gather(keeper, sampler, watchdog, *self.pending, return_exceptions=True)
        if self._gatherer is not None:
            # A child still running finishes in its thread (under systemd it
            # got the stop's SIGTERM too); nothing waits for it here.
            self._gatherer.shutdown(wait=False, cancel_futures=True)
        self.disconnect()
        self.watcher.store.flush()
        self.log("stopped", "stopped")
        for sink in self.watcher.sinks:
            sink.close(None)


def release_free_heap() -> None:
    """Give the free pages of the C heap back to the kernel: glibc's
    malloc_trim(3), which since glibc 2.8 releases every whole free page of
    every arena, not only the heap's top. A burst of short-lived buffers (a
    gathering's answer, a rediscovery's 5 MB /proc/interrupts at 256 CPUs)
    leaves pages free between blocks still in use, which free() never
    returns: at 128 domains they were 5.7 MiB of the daemon's RSS for its
    life (bench/scale_bench.py). Not glibc (musl has no malloc_trim):
    nothing to do."""
    malloc_trim = libc.function("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)


def _raise_nofile_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard one: the sampler keeps two
    descriptors per followed vector (facts/sampler.kept_fds_cap), and
    systemd (>= 240) starts services with a soft limit of 1024 under a hard
    one of 524288, expecting programs that need more and never use
    select(2) to raise it themselves (systemd.exec(5), LimitNOFILE=).
    asyncio's selector is epoll and libvirt's client uses poll(2)."""
    import resource  # noqa: PLC0415

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        pass  # a container that forbids it: the sampler reopens files past its cap


def check_host_root(path: str, where: str) -> None:
    """Refuse a host root the daemon cannot sample, in one line, before it
    starts: it would otherwise run blind, each read failing as if the host
    had no vfio device. Not open_host_root (sources.py), which unpacks a
    snapshot too: a snapshot holds one reading of /proc/interrupts, and the
    daemon follows counts as they change. Opened through HostRoot, as every
    host file is (tests/test_architecture.py), which names ENOENT and
    ENOTDIR alike "missing"."""
    try:
        os.close(HostRoot(path).open_kept("", directory=True))
    except FactUnavailable as exc:
        if exc.reason == "missing":
            raise UsageError(f"host root {path} ({where}) does not exist or is not a directory: the "
                             "daemon samples a live tree's /proc/interrupts, which a file or a "
                             "snapshot (one reading) cannot give") from None
        raise UsageError(f"host root {path} ({where}): {exc.reason}") from None


def main(args) -> int:
    overrides = {"connect": args.connect, "host_root": args.host_root, "interval": args.interval,
                 "settle": args.settle, "state_dir": args.state_dir, "metrics_file": args.metrics_file}
    cfg = load_config(args.config, overrides)
    check_host_root(cfg.host_root, "--host-root" if args.host_root is not None
                    else f"[daemon] host_root in {args.config}")
    # Taken now, with the code this process has loaded: a later reinstall
    # then shows as a mismatch in its gathering children (daemon/gather_child.py).
    package_fingerprint()
    _raise_nofile_limit()
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
