"""PCI configuration space: a pure parser over bytes.

The layout follows the PCI Local Bus 3.0 and PCI Express 4.0 base specs; the
field names follow Linux include/uapi/linux/pci_regs.h so they grep together.
"""

from __future__ import annotations

from typing import NamedTuple

import re


class _Unknown:
    """A fact that exists but could not be read (truncated config space).

    Distinct from None, which means "read, and absent".
    """

    _instance: _Unknown | None = None

    def __new__(cls) -> _Unknown:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __bool__(self) -> bool:
        return False


UNKNOWN = _Unknown()

# Offsets, from pci_regs.h.
PCI_COMMAND = 0x04
PCI_COMMAND_INTX_DISABLE = 0x400
PCI_STATUS = 0x06
PCI_STATUS_INTERRUPT = 0x08
PCI_STATUS_CAP_LIST = 0x10
PCI_CAPABILITY_LIST = 0x34
PCI_CB_CAPABILITY_LIST = 0x14
PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D

CAP_ID_PM = 0x01
CAP_ID_MSI = 0x05
CAP_ID_EXP = 0x10
CAP_ID_MSIX = 0x11

# Without CAP_SYS_ADMIN the kernel returns only the first 64 bytes
# (drivers/pci/pci-sysfs.c, pci_read_config: "Normal users can read only the
# standardized portion of the configuration space").
UNPRIVILEGED_CONFIG_BYTES = 64
STANDARD_CONFIG_BYTES = 256
EXTENDED_CONFIG_BYTES = 4096

PCIE_PORT_TYPES = {
    0x0: "endpoint",
    0x1: "legacy-endpoint",
    0x4: "root-port",
    0x5: "upstream-port",
    0x6: "downstream-port",
    0x7: "pcie-to-pci-bridge",
    0x8: "pci-to-pcie-bridge",
    0x9: "rc-integrated",
    0xA: "rc-event-collector",
}

CAP_NAMES = {
    0x01: "pm", 0x02: "agp", 0x03: "vpd", 0x04: "slot-id", 0x05: "msi",
    0x06: "chswp", 0x07: "pcix", 0x08: "ht", 0x09: "vendor", 0x0A: "debug",
    0x0B: "cpci", 0x0C: "hotplug", 0x0D: "ssvid", 0x0E: "agp3", 0x0F: "secure",
    0x10: "pcie", 0x11: "msix", 0x12: "sata", 0x13: "af", 0x14: "ea",
}

EXT_CAP_NAMES = {
    0x0001: "aer", 0x0002: "vc", 0x0003: "dsn", 0x0004: "power-budget",
    0x000B: "vendor", 0x000D: "acs", 0x000E: "ari", 0x0010: "sriov",
    0x0015: "rebar", 0x0018: "ltr", 0x001E: "l1ss", 0x001F: "ptm",
    0x0023: "dvsec", 0x0025: "dlf", 0x0026: "pl-16gt",
}

# A capability list has at most (256 - 64) / 4 = 48 entries; the extended list
# at most (4096 - 256) / 4 = 960. More steps than that means a loop.
_MAX_CAPS = 48
_MAX_EXT_CAPS = 960


class MsiCapability(NamedTuple):
    offset: int
    enabled: bool
    is_64bit: bool
    maskable: bool
    vectors: int  # Multiple Message Capable, as a count (1..32)
    vectors_enabled: int


class MsixCapability(NamedTuple):
    offset: int
    enabled: bool
    function_masked: bool
    table_size: int


class PcieCapability(NamedTuple):
    offset: int
    version: int
    port_type: str  # PCIE_PORT_TYPES value, or "type-N" for reserved values


class PmCapability(NamedTuple):
    offset: int
    # PMC bits 2:0. 1 = PCI PM 1.0, 2 = PM 1.1 (PCI 2.2 era), 3 = PM 1.2 (PCI 2.3 and later).
    version: int


class Capability(NamedTuple):
    id: int
    offset: int

    @property
    def name(self) -> str:
        return CAP_NAMES.get(self.id, f"cap-{self.id:#04x}")


class ExtCapability(NamedTuple):
    id: int
    offset: int
    version: int

    @property
    def name(self) -> str:
        return EXT_CAP_NAMES.get(self.id, f"ecap-{self.id:#06x}")


class ConfigSpace(NamedTuple):
    """Decoded configuration space. `length` is how many bytes were readable."""

    length: int
    vendor_id: int
    device_id: int
    command: int
    status: int
    revision: int
    class_code: int
    header_type: int
    subsystem_vendor_id: int | None
    subsystem_device_id: int | None
    interrupt_line: int
    interrupt_pin: int  # 0 = none, 1..4 = INTA..INTD
    # UNKNOWN when the list lies beyond the readable bytes.
    capabilities: tuple[Capability, ...] | _Unknown
    msi: MsiCapability | None | _Unknown
    msix: MsixCapability | None | _Unknown
    pcie: PcieCapability | None | _Unknown
    pm: PmCapability | None | _Unknown
    # UNKNOWN when fewer than 4096 bytes were readable.
    extended: tuple[ExtCapability, ...] | _Unknown
    # Bad input found on the way (loops, pointers out of range), one line each.
    problems: tuple[str, ...]
    # Why `capabilities` (and so msi/msix/pcie/pm) is UNKNOWN, in one phrase:
    # "only the first 64 bytes ...", "config space truncated at 106 bytes",
    # "capability list loops at 0x40". None when the list was read to its end.
    capabilities_problem: str | None = None
    # The same for `extended`, when its list is damaged or cut short.
    extended_problem: str | None = None

    @property
    def truncated(self) -> bool:
        return self.length < STANDARD_CONFIG_BYTES

    @property
    def unprivileged_read(self) -> bool:
        """Exactly what the kernel gives a reader without CAP_SYS_ADMIN."""
        return self.length == unprivileged_config_bytes(self.header_type)

    @property
    def damaged(self) -> bool:
        """Bytes the kernel never produces: a file cut at a size no sysfs
        read returns, or a capability list that loops or points into the
        header. Not the unprivileged 64-byte read, which is the kernel's rule."""
        if self.length not in (STANDARD_CONFIG_BYTES, EXTENDED_CONFIG_BYTES) and not self.unprivileged_read:
            return True
        return bool(self.problems)

    @property
    def intx_disable(self) -> bool:
        return bool(self.command & PCI_COMMAND_INTX_DISABLE)

    @property
    def interrupt_status(self) -> bool:
        return bool(self.status & PCI_STATUS_INTERRUPT)

    @property
    def has_capability_list(self) -> bool:
        return bool(self.status & PCI_STATUS_CAP_LIST)

    @property
    def intx_pin_letter(self) -> str | None:
        return "ABCD"[self.interrupt_pin - 1] if 1 <= self.interrupt_pin <= 4 else None

    @property
    def supports_msi(self) -> bool | _Unknown:
        """True if MSI or MSI-X is present; UNKNOWN if that could not be read."""
        if self.msi or self.msix:
            return True
        if self.msi is UNKNOWN or self.msix is UNKNOWN:
            return UNKNOWN
        return False


class ConfigSpaceError(ValueError):
    """Too little data to be a config space header at all."""


def unprivileged_config_bytes(header_type: int) -> int:
    """How many bytes sysfs `config` gives a reader without CAP_SYS_ADMIN:
    128 for a CardBus bridge, 64 otherwise (drivers/pci/pci-sysfs.c
    pci_read_config, Linux 6.1)."""
    return 128 if header_type & 0x7F == 2 else UNPRIVILEGED_CONFIG_BYTES


def short_read_reason(length: int, header_type: int | None) -> str:
    """Why a read of `length` bytes holds less than the capability list needs."""
    if header_type is not None and length == unprivileged_config_bytes(header_type):
        return (f"only the first {length} bytes are readable without CAP_SYS_ADMIN "
                "(drivers/pci/pci-sysfs.c pci_read_config)")
    return f"config space truncated at {length} bytes"


def _u8(data: bytes, off: int) -> int:
    return data[off]


def _u16(data: bytes, off: int) -> int:
    return int.from_bytes(data[off:off + 2], "little")


def _u32(data: bytes, off: int) -> int:
    return int.from_bytes(data[off:off + 4], "little")


def parse_config_space(data: bytes) -> ConfigSpace:
    """Decode `data`, the bytes of a sysfs `config` file (any length >= 64).

    Never raises on a malformed capability list: loops and wild pointers are
    reported in `problems`, and the list is then UNKNOWN (with the reason in
    `capabilities_problem`), never the part before the fault: a list cut
    there may lack the MSI capability that follows, and rules must not guess
    from it. A file cut short where the kernel never cuts one (anything below
    256 bytes but the unprivileged 64) makes the list UNKNOWN as well.
    """
    if len(data) < UNPRIVILEGED_CONFIG_BYTES:
        raise ConfigSpaceError(
            f"config space truncated at {len(data)} bytes; at least "
            f"{UNPRIVILEGED_CONFIG_BYTES} are needed for the header")
    length = len(data)
    if _u16(data, 0x00) == 0xFFFF:
        # Config reads of a function that is powered off (D3cold) or gone
        # return all ones; nothing in them is the device's.
        raise ConfigSpaceError("config space reads as all ones (vendor 0xffff): "
                               "the function is powered off or absent")
    header_type = _u8(data, 0x0E)
    layout = header_type & 0x7F
    status = _u16(data, PCI_STATUS)
    problems: list[str] = []

    subsys_vendor = subsys_device = None
    if layout == 0:
        subsys_vendor, subsys_device = _u16(data, 0x2C), _u16(data, 0x2E)
    elif layout == 2 and length >= 0x44:  # CardBus keeps them after the header
        subsys_vendor, subsys_device = _u16(data, 0x40), _u16(data, 0x42)

    caps: tuple[Capability, ...] | _Unknown
    caps_problem: str | None = None
    if not status & PCI_STATUS_CAP_LIST:
        caps = ()
    else:
        pointer_at = PCI_CB_CAPABILITY_LIST if layout == 2 else PCI_CAPABILITY_LIST
        caps, caps_problem = _walk_capabilities(data, _u8(data, pointer_at), header_type, problems)
        if caps_problem is None and length < STANDARD_CONFIG_BYTES and length != \
                unprivileged_config_bytes(header_type):
            # The walk ended inside the bytes we have, but the file was cut
            # where no sysfs read stops: its bytes are not the device's whole
            # answer, so the list is not trusted to be complete.
            caps, caps_problem = UNKNOWN, short_read_reason(length, header_type)

    msi = msix = pcie = pm = None
    if caps is UNKNOWN:
        msi = msix = pcie = pm = UNKNOWN
    else:
        for cap in caps:
            if cap.id == CAP_ID_MSI and msi is None:
                msi = _msi(data, cap.offset, problems)
            elif cap.id == CAP_ID_MSIX and msix is None:
                msix = _msix(data, cap.offset, problems)
            elif cap.id == CAP_ID_EXP and pcie is None:
                pcie = _pcie(data, cap.offset, problems)
            elif cap.id == CAP_ID_PM and pm is None:
                pm = _pm(data, cap.offset, problems)

    extended: tuple[ExtCapability, ...] | _Unknown
    ext_problem: str | None = None
    if length > STANDARD_CONFIG_BYTES:
        extended, ext_problem = _walk_extended(data, problems)
    elif pcie is None:
        extended = ()  # conventional PCI has no extended space
    else:
        extended = UNKNOWN  # PCIe, but only 256 bytes (or fewer) were readable
        if pcie is UNKNOWN:
            ext_problem = caps_problem
        elif length != STANDARD_CONFIG_BYTES:
            ext_problem = short_read_reason(length, header_type)

    return ConfigSpace(
        length=length,
        vendor_id=_u16(data, 0x00),
        device_id=_u16(data, 0x02),
        command=_u16(data, PCI_COMMAND),
        status=status,
        revision=_u8(data, 0x08),
        class_code=int.from_bytes(data[0x09:0x0C], "little"),
        header_type=header_type,
        subsystem_vendor_id=subsys_vendor,
        subsystem_device_id=subsys_device,
        interrupt_line=_u8(data, PCI_INTERRUPT_LINE),
        interrupt_pin=_u8(data, PCI_INTERRUPT_PIN),
        capabilities=caps,
        msi=msi,
        msix=msix,
        pcie=pcie,
        pm=pm,
        extended=extended,
        problems=tuple(problems),
        capabilities_problem=caps_problem,
        extended_problem=ext_problem,
    )


def _walk_capabilities(data: bytes, pointer: int, header_type: int, problems: list[str]
                       ) -> tuple[tuple[Capability, ...] | _Unknown, str | None]:
    """(the list, None) or (UNKNOWN, why). A list with a fault in it is
    UNKNOWN as a whole: the kernel's own walk (drivers/pci/pci.c
    __pci_find_next_cap_ttl, Linux 6.1) gives up at the same faults, so
    pci_find_capability returns 0 and the kernel, too, would not find an
    MSI capability that sits after one."""
    found: list[Capability] = []
    seen: set[int] = set()
    pointer &= 0xFC  # the bottom two bits are reserved (PCI 3.0, 6.7)
    while pointer:
        if pointer < 0x40:
            # Registers below 0x40 are the header's; a capability cannot live there.
            problem = f"capability pointer {pointer:#04x} points into the header (below 0x40)"
            problems.append(problem)
            return UNKNOWN, problem
        if pointer + 4 > len(data):
            # Our read stopped short of this capability (its ID, next pointer
            # and the 16-bit control word every decoded capability has).
            return UNKNOWN, short_read_reason(len(data), header_type)
        if pointer in seen or len(found) >= _MAX_CAPS:
            problem = f"capability list loops at {pointer:#04x}"
            problems.append(problem)
            return UNKNOWN, problem
        seen.add(pointer)
        found.append(Capability(data[pointer], pointer))
        pointer = data[pointer + 1] & 0xFC
    return tuple(found), None


def _msi(data: bytes, off: int, problems: list[str]) -> MsiCapability | None | _Unknown:
    if off + 4 > len(data):
        return UNKNOWN
    control = _u16(data, off + 2)
    return MsiCapability(
        offset=off,
        enabled=bool(control & 0x1),
        is_64bit=bool(control & 0x80),
        maskable=bool(control & 0x100),
        vectors=1 << min((control >> 1) & 0x7, 5),
        vectors_enabled=1 << min((control >> 4) & 0x7, 5),
    )


def _msix(data: bytes, off: int, problems: list[str]) -> MsixCapability | None | _Unknown:
    if off + 4 > len(data):
        return UNKNOWN
    control = _u16(data, off + 2)
    return MsixCapability(
        offset=off,
        enabled=bool(control & 0x8000),
        function_masked=bool(control & 0x4000),
        table_size=(control & 0x7FF) + 1,
    )


def _pcie(data: bytes, off: int, problems: list[str]) -> PcieCapability | None | _Unknown:
    if off + 4 > len(data):
        return UNKNOWN
    flags = _u16(data, off + 2)
    kind = (flags >> 4) & 0xF
    return PcieCapability(offset=off, version=flags & 0xF,
                          port_type=PCIE_PORT_TYPES.get(kind, f"type-{kind}"))


def _pm(data: bytes, off: int, problems: list[str]) -> PmCapability | None | _Unknown:
    if off + 4 > len(data):
        return UNKNOWN
    return PmCapability(offset=off, version=_u16(data, off + 2) & 0x7)


def _walk_extended(data: bytes, problems: list[str]
                   ) -> tuple[tuple[ExtCapability, ...] | _Unknown, str | None]:
    """(the list, None) or (UNKNOWN, why), as _walk_capabilities."""
    found: list[ExtCapability] = []
    seen: set[int] = set()
    pointer = STANDARD_CONFIG_BYTES
    while True:
        if pointer + 4 > len(data):
            if len(data) < EXTENDED_CONFIG_BYTES:
                # Our read stopped short, not the device's list.
                return UNKNOWN, f"config space truncated at {len(data)} bytes"
            problem = f"extended capability pointer {pointer:#05x} is past the end"
            problems.append(problem)
            return UNKNOWN, problem
        header = _u32(data, pointer)
        # An all-zero or all-ones header at 0x100 means "no extended capabilities"
        # (PCIe base spec 7.6.3; config reads of absent space return ~0).
        if header in (0, 0xFFFFFFFF):
            break
        if pointer in seen or len(found) >= _MAX_EXT_CAPS:
            problem = f"extended capability list loops at {pointer:#05x}"
            problems.append(problem)
            return UNKNOWN, problem
        seen.add(pointer)
        found.append(ExtCapability(id=header & 0xFFFF, offset=pointer, version=(header >> 16) & 0xF))
        nxt = (header >> 20) & 0xFFC
        if nxt == 0:
            break
        if nxt < STANDARD_CONFIG_BYTES:
            problem = f"extended capability pointer {nxt:#05x} points below 0x100"
            problems.append(problem)
            return UNKNOWN, problem
        pointer = nxt
    if len(data) < EXTENDED_CONFIG_BYTES:
        # Ended inside a file cut where no sysfs read stops (see parse_config_space).
        return UNKNOWN, f"config space truncated at {len(data)} bytes"
    return tuple(found), None


_DUMP_HEADER = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])\s")
_DUMP_ROW = re.compile(r"^([0-9a-fA-F]{2,3}):((?:\s[0-9a-fA-F]{2}){1,16})\s*$")


def parse_lspci_dump(text: str) -> dict[str, bytes]:
    """Config spaces from `lspci -x/-xxx/-xxxx` text, keyed by full BDF.

    The format `lspci -F` reads: a device header line, then `OO: xx xx ...`
    rows. Decoded `-vvv` lines between them are ignored. Rows must be
    contiguous from offset 0; a device's bytes end at the first gap.
    """
    out: dict[str, bytes] = {}
    current: str | None = None
    buf = bytearray()

    def flush() -> None:
        if current is not None and buf:
            out[current] = bytes(buf)

    for line in text.splitlines():
        header = _DUMP_HEADER.match(line)
        if header:
            flush()
            domain, bus, dev, fn = header.groups()
            current = f"{(domain or '0000').lower()}:{bus.lower()}:{dev.lower()}.{fn}"
            buf = bytearray()
            continue
        row = _DUMP_ROW.match(line.rstrip())
        if row and current is not None:
            offset = int(row.group(1), 16)
            values = bytes(int(v, 16) for v in row.group(2).split())
            if offset == len(buf):
                buf.extend(values)
    flush()
    return out
