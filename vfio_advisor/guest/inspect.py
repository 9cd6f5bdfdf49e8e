"""Read a guest through its agent and match the assigned functions.

Matching is by PCI IDs: the guest firmware numbers buses its own way (SeaBIOS
and OVMF enumerate bridges in their own order), so the guest address from the
domain XML is only a hint that picks between several candidates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vfio_advisor.guest import linux, windows
from vfio_advisor.guest.agent import GuestAgent, GuestAgentError, LibvirtAgent
from vfio_advisor.guest.changes import last_change
from vfio_advisor.guest.options import KNOWN_OPTIONS, setting_state
from vfio_advisor.guest.verdict import UNREAD, Verdict, decide

SCHEMA = "vfio-advisor/guest/1"
TAINT_NOTE = ("libvirt marks the domain tainted (custom-ga-command) when its agent is driven "
              "this way; the mark stays until the domain stops")
# The RPCs each guest kind needs; any of them disabled in the guest is reported.
NEEDED = {"linux": ("guest-info", "guest-get-osinfo", "guest-exec", "guest-exec-status"),
          "windows": ("guest-info", "guest-get-osinfo", "guest-exec", "guest-exec-status",
                      "guest-get-devices")}


@dataclass(frozen=True)
class Target:
    """One function to look for in the guest."""
    key: str  # the host BDF, or "ids:vvvv:dddd" for a function named by --ids
    host_bdf: str | None
    vendor: int
    device: int
    subsystem_vendor: int | None = None
    subsystem_device: int | None = None
    guest_hint: tuple[int, int] | None = None  # (slot, function) from the domain XML
    host_mode: str | None = None  # from the host's vfio vectors, when assigned
    msi_capable: bool | None = None  # from the host's config space
    card: str | None = None  # host domain:bus:slot: functions of one card
    unread: str | None = None  # why the host could not say its IDs: not looked for

    @property
    def ids(self) -> str:
        return "????:????" if self.unread else f"{self.vendor:04x}:{self.device:04x}"


@dataclass
class DeviceReport:
    target: Target
    guest_function: str | None = None  # Linux BDF, or Windows hardware ID
    candidates: list[str] = field(default_factory=list)
    guest_driver: str | None = None
    guest_driver_version: str | None = None
    guest_mode: str = "unknown"
    guest_setting: str | None = None
    setting: str = "unknown"  # on | off | default | unknown
    rows: list[str] = field(default_factory=list)  # the guest's /proc/interrupts rows
    instances: list[windows.WindowsInstance] = field(default_factory=list)
    module: str | None = None
    verdict: Verdict = Verdict("unknown", "not read")

    def to_json(self) -> dict:
        return {"host_bdf": self.target.host_bdf, "ids": self.target.ids,
                "guest_function": self.guest_function, "candidates": self.candidates,
                "guest_driver": self.guest_driver, "guest_driver_version": self.guest_driver_version,
                "guest_mode": self.guest_mode, "guest_setting": self.guest_setting,
                "host_mode": self.target.host_mode, "verdict": self.verdict.name,
                "detail": self.verdict.detail, "interrupts": self.rows}


@dataclass
class GuestReport:
    domain: str
    available: bool = False
    agent_version: str | None = None
    os: str = "unknown"  # linux | windows | unknown
    os_name: str | None = None
    blocked: list[str] = field(default_factory=list)
    devices: list[DeviceReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    linux: linux.LinuxInventory | None = None
    agent_devices: list[dict] = field(default_factory=list)  # guest-get-devices (Windows)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "domain": self.domain,
                "agent": {"available": self.available, "version": self.agent_version,
                          "os": self.os, "os_name": self.os_name, "blocked": self.blocked},
                "devices": [d.to_json() for d in self.devices], "notes": self.notes}


def os_kind(osinfo: dict) -> str:
    # qemu-ga on Windows reports id "mswindows" (qga/commands-win32.c
    # qmp_guest_get_osinfo); the posix agent reads /etc/os-release and uname.
    if osinfo.get("id") == "mswindows" or "windows" in str(osinfo.get("name", "")).lower():
        return "windows"
    return "linux" if osinfo else "unknown"


def read_commands(kind: str) -> list[tuple[str, ...]]:
    """What `guest` runs in a guest of this kind (for a user to run by hand)."""
    if kind == "windows":
        return [windows.list_hardware_ids_argv(),
                (windows.REG, "query", windows.ENUM_PCI + r"\VEN_xxxx&DEV_xxxx&SUBSYS_xxxxxxxx&REV_xx", "/s")]
    return [linux.INVENTORY_ARGV]


def inspect(agent: GuestAgent, domain: str, targets: list[Target], changes: list[dict],
            now: float | None = None) -> GuestReport:
    started = time.monotonic()
    report = GuestReport(domain)
    report.agent_version, enabled, disabled = agent.info()
    report.available = True
    osinfo = {} if "guest-get-osinfo" in disabled else agent.osinfo()
    report.os = os_kind(osinfo)
    report.os_name = osinfo.get("pretty-name") or osinfo.get("name") or (
        f"{osinfo.get('kernel-release')}" if osinfo.get("kernel-release") else None)
    kind = report.os if report.os != "unknown" else "linux"
    report.blocked = sorted(c for c in NEEDED[kind] if c in disabled)
    # Only libvirt's virDomainQemuAgentCommand taints; an agent reached on its
    # own socket (--agent-socket) goes past libvirt.
    if isinstance(agent.transport, LibvirtAgent):
        report.notes.append(TAINT_NOTE)
    if "guest-exec" in disabled or "guest-exec-status" in disabled:
        raise GuestAgentError("blocked", f"{agent.label}: guest-exec is disabled in the guest's "
                              "qemu-ga allow-list; run the commands below in the guest by hand",
                              commands=read_commands(kind))
    now = time.time() if now is None else now
    for target in targets:
        if target.unread:
            report.devices.append(DeviceReport(target, verdict=Verdict(UNREAD, target.unread)))
    targets = [t for t in targets if not t.unread]
    if kind == "windows":
        _read_windows(agent, report, targets, changes, "guest-get-devices" not in disabled)
    else:
        _read_linux(agent, report, targets, changes, now)
    report.seconds = time.monotonic() - started
    return report


def _read_linux(agent: GuestAgent, report: GuestReport, targets: list[Target], changes: list[dict],
                now: float) -> None:
    inv = linux.parse_inventory(agent.run(linux.INVENTORY_ARGV).decode("utf-8", "replace"))
    report.linux = inv
    report.notes.extend(inv.odd)
    if not inv.complete:
        _unread(report, targets, "the inventory came back without its /proc/interrupts section (cut short)")
        return
    booted_at = now - inv.uptime if inv.uptime is not None else None
    for target in targets:
        dev = DeviceReport(target)
        found = [f for f in inv.functions if (f.vendor, f.device) == (target.vendor, target.device)]
        if target.subsystem_vendor and len(found) > 1:
            narrowed = [f for f in found if (f.subsystem_vendor, f.subsystem_device)
                        == (target.subsystem_vendor, target.subsystem_device)]
            found = narrowed or found
        dev.candidates = [f.bdf for f in found]
        if not found:
            dev.verdict = Verdict("not-found", f"no guest function has IDs {target.ids}")
            report.devices.append(dev)
            continue
        fn = _by_hint(found, target.guest_hint)
        dev.guest_function = fn.bdf
        dev.guest_driver = fn.driver
        dev.module = fn.module or (fn.driver.replace("-", "_") if fn.driver else None)
        # A built-in driver has no module version: the kernel's release is its
        # version. No driver bound: no version at all.
        dev.guest_driver_version = (inv.module_versions.get(dev.module or "") or inv.release) if fn.driver else None
        dev.guest_mode = inv.mode(fn)
        dev.rows = [f"{r.irq}: {r.chip or '?'} {r.hwirq or ''} {' '.join(r.handlers)} "
                    f"({r.total} interrupts)" for r in inv.rows_of(fn)]
        option = KNOWN_OPTIONS.get(dev.module or "")
        if option is not None:
            value = inv.parameters.get(option.module, {}).get(option.parameter)
            configured = inv.configured(option.module, option.parameter)
            # The running value is what the module was loaded with; the last
            # configured one is what the next load gets. A change made since
            # the module loaded shows only in the latter.
            dev.setting = setting_state(option, configured[-1][1] if configured else value)
            dev.guest_setting = f"{option.module}.{option.parameter}={value if value is not None else '?'}"
            if configured:
                dev.guest_setting += (f"; next load: {configured[-1][1]} ("
                                      + ", ".join(f"{path}: {v}" for path, v in configured) + ")")
        change = last_change(changes, target.key)
        restarted = (booted_at > change.get("epoch", 0)) if (change and booted_at is not None) else None
        capable = target.msi_capable
        dev.verdict = decide(mode=dev.guest_mode, setting=dev.setting, msi_capable=capable,
                             change=change, driver_version=dev.guest_driver_version,
                             restarted_since_change=restarted)
        if len(found) > 1:
            dev.verdict = dev.verdict._replace(detail=dev.verdict.detail + f"; {len(found)} guest "
                                               f"functions match {target.ids} ({', '.join(dev.candidates)}), "
                                               f"{fn.bdf} chosen" + (" by its guest address" if
                                                                     target.guest_hint else ""))
        report.devices.append(dev)


def _unread(report: GuestReport, targets: list[Target], why: str) -> None:
    report.devices.extend(DeviceReport(t, verdict=Verdict(UNREAD, why)) for t in targets)


def _by_hint(found: list, hint: tuple[int, int] | None):
    if hint is not None:
        for fn in found:
            slot, function = int(fn.bdf[8:10], 16), int(fn.bdf[11], 16)
            if (slot, function) == hint:
                return fn
    return found[0]


def _read_windows(agent: GuestAgent, report: GuestReport, targets: list[Target], changes: list[dict],
                  devices_enabled: bool) -> None:
    if devices_enabled:
        try:
            # Only virtio and QEMU devices (VEN_1AF4, VEN_1B36) are listed: QEMU's
            # qga/commands-win32.c DEVICE_PCI_RE (7.2, lines 2449-2516). An assigned
            # GPU is never among them; its driver is read from the registry.
            report.agent_devices = agent.devices()
        except GuestAgentError as exc:
            report.notes.append(f"guest-get-devices: {exc}")
    listing = agent.run(windows.list_hardware_ids_argv()).decode("utf-8", "replace")
    names = windows.subkeys(listing, windows.ENUM_PCI)
    if not names:
        # Every Windows has PCI functions under Enum\PCI (the host bridge at
        # least): an empty listing is reg.exe's output lost, not a guest
        # without the device.
        _unread(report, targets, f"reg.exe listed nothing under {windows.ENUM_PCI}"
                + (" (empty output)" if not listing.strip() else ""))
        return
    keys = [k for k in (windows.parse_hardware_id(n) for n in names) if k]
    versions: dict[str, str | None] = {}
    for target in targets:
        dev = DeviceReport(target)
        found = [k for k in keys if (k.vendor, k.device) == (target.vendor, target.device)]
        if target.subsystem_vendor and len(found) > 1:
            found = [k for k in found if (k.subsystem_vendor, k.subsystem_device)
                     == (target.subsystem_vendor, target.subsystem_device)] or found
        lost = []
        for key in found:
            argv = windows.hardware_id_argv(key.hardware_id)
            text = agent.run(argv).decode("utf-8", "replace")
            base = f"{windows.ENUM_PCI}\\{key.hardware_id}".lower()
            # Listed a moment ago, yet neither it nor a key under it in the
            # output: the query's output was lost (an instance is a subkey).
            if not any(k.lower() == base or k.lower().startswith(base + "\\") for k in windows.parse_query(text)):
                lost.append(" ".join(argv[1:]))
            key.instances = windows.parse_instances(key.hardware_id, text)
            dev.instances.extend(key.instances)
        dev.candidates = [f"{i.hardware_id}\\{i.instance}" for i in dev.instances]
        if lost:
            dev.verdict = Verdict(UNREAD, f"reg.exe {lost[0]} came back without that key")
            report.devices.append(dev)
            continue
        if not dev.instances:
            dev.verdict = Verdict("not-found", f"no Enum\\PCI instance has IDs {target.ids}")
            report.devices.append(dev)
            continue
        dev.guest_function = dev.instances[0].hardware_id
        for inst in dev.instances:
            if inst.driver_key and inst.driver_key not in versions:
                try:
                    versions[inst.driver_key] = windows.parse_driver_version(agent.run(
                        windows.driver_version_argv(inst.driver_key)).decode("utf-8", "replace"))
                except GuestAgentError as exc:
                    if exc.kind != "exit-status":
                        raise
                    versions[inst.driver_key] = None
            inst.driver_version = versions.get(inst.driver_key or "")
        live = next((i for i in dev.instances if i.driver_version), dev.instances[0])
        dev.guest_driver, dev.guest_driver_version = live.service, live.driver_version
        listed = windows.agent_device_driver(report.agent_devices, target.vendor, target.device)
        if listed is not None and not dev.guest_driver_version:
            dev.guest_driver, dev.guest_driver_version = listed[0], listed[1]
        values = [i.msi_supported for i in dev.instances]
        dev.setting = ("on" if all(v == 1 for v in values) else
                       "off" if any(v == 0 for v in values) or any(v == 1 for v in values) else "default")
        dev.guest_setting = "; ".join(
            f"{i.instance}: MSISupported={'absent' if i.msi_supported is None else i.msi_supported}"
            + (f", MessageNumberLimit={i.message_limit}" if i.message_limit is not None else "")
            for i in dev.instances)
        # Windows does not say which interrupt a device got; the host's vfio
        # vectors do (vfio-intx vs vfio-msi/msix in the host's /proc/interrupts).
        dev.guest_mode = "unknown"
        mode = target.host_mode if target.host_mode in ("intx", "msi", "msix", "none") else "unknown"
        dev.verdict = decide(mode=mode, setting=dev.setting, msi_capable=target.msi_capable,
                             change=last_change(changes, target.key),
                             driver_version=dev.guest_driver_version, restarted_since_change=None)
        if len(dev.instances) > 1:
            dev.verdict = dev.verdict._replace(detail=dev.verdict.detail + f"; {len(dev.instances)} "
                                               "instances (old ones stay when the guest address "
                                               "changes): each is read and changed")
        report.devices.append(dev)
