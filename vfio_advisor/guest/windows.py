"""A Windows guest's MSI setting, read and written with reg.exe.

Windows keeps one key per PCI hardware ID under Enum\\PCI, and under it one
key per device instance (a new instance appears when the guest address
changes: the old one stays, as a phantom). The switch lives in each
instance's "Device Parameters\\Interrupt Management\\
MessageSignaledInterruptProperties" (MSISupported, MessageNumberLimit;
Microsoft, "Enabling MSI/MSI-X in the registry", INF AddReg). The driver's
version sits in its class key, named by the instance's Driver value.

Every path that goes into an argv is built from parts checked against the
patterns below; reg.exe's output is parsed, never run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

REG = r"C:\Windows\System32\reg.exe"
ENUM_PCI = r"HKLM\SYSTEM\CurrentControlSet\Enum\PCI"
CLASS_ROOT = r"HKLM\SYSTEM\CurrentControlSet\Control\Class"
MSI_SUBKEY = r"Device Parameters\Interrupt Management\MessageSignaledInterruptProperties"

# Enum\PCI key names: VEN_vvvv&DEV_dddd&SUBSYS_ssssvvvv&REV_rr (Microsoft,
# "Identifiers for PCI Devices"; SUBSYS is the subsystem device ID, then the
# subsystem vendor ID).
HARDWARE_ID = re.compile(r"^VEN_([0-9A-F]{4})&DEV_([0-9A-F]{4})&SUBSYS_([0-9A-F]{4})([0-9A-F]{4})&REV_([0-9A-F]{2})$")
# Instance keys: the PnP manager's "3&11583659&0&08" (parent's unique ID and
# the device/function) or a device serial number: hex digits and '&' only.
INSTANCE = re.compile(r"^[0-9A-Fa-f]{1,16}(&[0-9A-Fa-f]{1,16}){0,3}$")
# An instance's Driver value: {class GUID}\NNNN.
DRIVER_KEY = re.compile(r"^\{[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\}\\[0-9]{4}$")
_VALUE = re.compile(r"^ {4}(.*?) {4}(REG_[A-Z_]+)(?: {4}(.*))?$")
_ROOT_NAMES = ("HKEY_LOCAL_MACHINE\\", "HKLM\\")


def list_hardware_ids_argv() -> tuple[str, ...]:
    return (REG, "query", ENUM_PCI)


def hardware_id_argv(hardware_id: str) -> tuple[str, ...]:
    _check(HARDWARE_ID, hardware_id, "hardware ID")
    return (REG, "query", f"{ENUM_PCI}\\{hardware_id}", "/s")


def msi_key(hardware_id: str, instance: str) -> str:
    _check(HARDWARE_ID, hardware_id, "hardware ID")
    _check(INSTANCE, instance, "instance")
    return f"{ENUM_PCI}\\{hardware_id}\\{instance}\\{MSI_SUBKEY}"


def driver_version_argv(driver_key: str) -> tuple[str, ...]:
    _check(DRIVER_KEY, driver_key, "driver key")
    return (REG, "query", f"{CLASS_ROOT}\\{driver_key}", "/v", "DriverVersion")


def set_msi_argv(hardware_id: str, instance: str) -> tuple[str, ...]:
    # reg add creates every missing key on the way (MSI_SUBKEY often does not
    # exist until a driver INF or a user adds it).
    return (REG, "add", msi_key(hardware_id, instance), "/v", "MSISupported", "/t", "REG_DWORD",
            "/d", "1", "/f")


def read_msi_argv(hardware_id: str, instance: str) -> tuple[str, ...]:
    return (REG, "query", msi_key(hardware_id, instance), "/v", "MSISupported")


def _check(pattern: re.Pattern, text: str, what: str) -> None:
    if not isinstance(text, str) or not pattern.match(text):
        raise ValueError(f"refusing {what} {text!r}: it does not match {pattern.pattern}")


def parse_query(text: str) -> dict[str, dict[str, tuple[str, str]]]:
    """reg.exe query output -> {key path (HKLM\\...): {value name: (type, data)}}."""
    keys: dict[str, dict[str, tuple[str, str]]] = {}
    current: str | None = None
    for raw in text.replace("\r\n", "\n").split("\n"):
        if raw.startswith(_ROOT_NAMES):
            current = "HKLM\\" + raw.split("\\", 1)[1].rstrip()
            keys.setdefault(current, {})
            continue
        match = _VALUE.match(raw.rstrip("\r"))
        if match and current is not None:
            name, kind, data = match.group(1), match.group(2), (match.group(3) or "").rstrip()
            keys[current]["" if name == "(Default)" else name] = (kind, data)
    return keys


def subkeys(text: str, parent: str) -> list[str]:
    """Names of the keys directly under `parent` in a reg.exe query listing."""
    prefix = parent.rstrip("\\").lower() + "\\"
    out = []
    for key in parse_query(text):
        if key.lower().startswith(prefix):
            rest = key[len(prefix):]
            if rest and "\\" not in rest:
                out.append(rest)
    return out


def dword(value: tuple[str, str] | None) -> int | None:
    if value is None or value[0] != "REG_DWORD":
        return None
    try:
        return int(value[1], 16) if value[1].lower().startswith("0x") else int(value[1])
    except ValueError:
        return None


@dataclass
class WindowsInstance:
    hardware_id: str
    instance: str
    msi_supported: int | None  # None: the value (or its key) is absent
    message_limit: int | None
    service: str | None  # the driver service, e.g. nvlddmkm, HDAudBus
    driver_key: str | None
    description: str | None
    driver_version: str | None = None


@dataclass
class HardwareIdKey:
    hardware_id: str
    vendor: int
    device: int
    subsystem_vendor: int
    subsystem_device: int
    revision: int
    instances: list[WindowsInstance] = field(default_factory=list)


def parse_hardware_id(hardware_id: str) -> HardwareIdKey | None:
    m = HARDWARE_ID.match(hardware_id)
    if not m:
        return None
    return HardwareIdKey(hardware_id, int(m.group(1), 16), int(m.group(2), 16),
                         subsystem_vendor=int(m.group(4), 16), subsystem_device=int(m.group(3), 16),
                         revision=int(m.group(5), 16))


def parse_instances(hardware_id: str, text: str) -> list[WindowsInstance]:
    """The instances in `reg query ENUM_PCI\\<hw id> /s` output."""
    base = f"{ENUM_PCI}\\{hardware_id}"
    keys = {k.lower(): v for k, v in parse_query(text).items()}
    out = []
    for name in subkeys(text, base):
        if not INSTANCE.match(name):
            continue  # never used in a path; named in the report by count only
        values = keys.get(f"{base}\\{name}".lower(), {})
        msi = keys.get(f"{base}\\{name}\\{MSI_SUBKEY}".lower(), {})
        driver = values.get("Driver", ("", ""))[1] or None
        service = values.get("Service", ("", ""))[1] or None
        out.append(WindowsInstance(
            hardware_id, name, dword(msi.get("MSISupported")), dword(msi.get("MessageNumberLimit")),
            service if service and re.match(r"^[A-Za-z0-9_.-]{1,64}$", service) else None,
            driver if driver and DRIVER_KEY.match(driver) else None,
            (values.get("DeviceDesc", ("", ""))[1] or None)))
    return out


def parse_driver_version(text: str) -> str | None:
    for values in parse_query(text).values():
        kind, data = values.get("DriverVersion", ("", ""))
        if kind == "REG_SZ" and re.match(r"^[0-9]{1,5}(\.[0-9]{1,5}){1,3}$", data):
            return data
    return None


def agent_device_driver(devices: list[dict], vendor: int, device: int) -> tuple[str, str | None, str | None] | None:
    """(driver name, version, date YYYY-MM-DD) from a guest-get-devices reply,
    for the function with these IDs. QEMU's win32 agent lists only virtio and
    QEMU devices (qga/commands-win32.c DEVICE_PCI_RE, VEN_1AF4|1B36), so an
    assigned GPU is never found here; driver-date is nanoseconds since 1970
    (filetime_to_ns)."""
    import time  # noqa: PLC0415

    for entry in devices:
        ident = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(ident, dict) or ident.get("type") != "pci":
            continue
        if (ident.get("vendor-id"), ident.get("device-id")) != (vendor, device):
            continue
        name = entry.get("driver-name")
        if not isinstance(name, str):
            return None
        version = entry.get("driver-version") if isinstance(entry.get("driver-version"), str) else None
        date = entry.get("driver-date")
        day = time.strftime("%Y-%m-%d", time.gmtime(date / 1e9)) if isinstance(date, int) and date > 0 else None
        return name, version, day
    return None
