"""The libvirt domain model: lxml in, frozen values out, for reading and editing.

Every XPath the tool uses, to read a domain (below) and to edit one
(vfio_advisor/fix/), is declared in `XPATH` below, named after libvirt's own
elements and attributes (https://libvirt.org/formatdomain.html), so this file
and `virsh dumpxml` grep together (virt-manager's virtinst does the same with
XMLProperty). Value conversion (hex/decimal, yes/no/on/off) lives in `_int`
and `_onoff` only, and a PCI <address> is read by `PciAddress.from_element`
only. `parse_tree` is the one XML parser: `fix` edits the very tree it read
(comments kept, every element's `sourceline` intact), and reads it back
with `domain_from_element` without serialising it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Iterable, NamedTuple

from vfio_advisor.errors import DomainXMLError
from vfio_advisor.facts.kernel import parse_cpulist

if TYPE_CHECKING:
    from lxml import etree

# Per-domain settings of vfio-advisor live in the domain's <metadata>:
#   <vfio-advisor:advisor xmlns:vfio-advisor="urn:x-vfio-advisor:domain:1">
#     <vfio-advisor:ignore rule="RULE-ID-OR-SLUG"/>
#   </vfio-advisor:advisor>
ADVISOR_NS = "urn:x-vfio-advisor:domain:1"
NS = {"libosinfo": "http://libosinfo.org/xmlns/libvirt/domain/1.0", "va": ADVISOR_NS}

# Every query runs with smart_strings=False: lxml's default "smart" string
# results (of string(), text() and attribute queries) are str subclasses
# (_ElementUnicodeResult) that keep a reference to their element, and with it
# the whole parsed document, alive in any Domain that holds one (virt_type,
# machine and arch did, lxml 5.x). They also pickle as an lxml class, which
# the daemon's gathering child must not send (vfio_advisor/daemon/gather_child.py).
XPATH = {
    "name": "string(name)",
    "uuid": "string(uuid)",
    "type": "string(@type)",
    "os_type_machine": "string(os/type/@machine)",
    "os_type_arch": "string(os/type/@arch)",
    "os_loader": "string(os/loader)",
    "libosinfo_os_id": "string(metadata/libosinfo:libosinfo/libosinfo:os/@id)",
    "features_hyperv": "features/hyperv",
    "clock_hypervclock": "clock/timer[@name='hypervclock']",
    "features_ioapic_driver": "string(features/ioapic/@driver)",
    "vcpu_count": "string(vcpu)",
    "vcpu_cpuset": "string(vcpu/@cpuset)",
    "cputune_vcpupin": "cputune/vcpupin",
    "cputune_emulatorpin_cpuset": "string(cputune/emulatorpin/@cpuset)",
    "pci_controllers": "devices/controller[@type='pci']",
    "hostdev_pci": "devices/hostdev[@mode='subsystem' and @type='pci']",
    "interface_hostdev": "devices/interface[@type='hostdev']",
    "pci_addressed_devices": "devices/*[address/@type='pci']",
    "iommu_model": "string(devices/iommu/@model)",
    # The QEMU guest agent's virtio-serial port (libvirt formatdomain.html#channel).
    "agent_channel": "devices/channel/target[@type='virtio' and @name='org.qemu.guest_agent.0']",
    "advisor_ignore_rule": "metadata/va:advisor/va:ignore/@rule",
    # Read and edited by fix (vfio_advisor/fix/planner.py, xmledit.py):
    "os_type": "os/type",
    "features": "features",
    "features_ioapic": "ioapic",  # below <features>
    "devices": "devices",
    "device_elements": "devices/*",
    "disks": "devices/disk",
    "disk_target_bus": "string(target/@bus)",  # below <disk>
    "disk_target_dev": "string(target/@dev)",  # below <disk>
    "pci_root_controllers": "devices/controller[@type='pci' and @model='pci-root']",
    "ide_controllers": "devices/controller[@type='ide']",
    "fdc_controllers": "devices/controller[@type='fdc']",
    "usb_controllers": "devices/controller[@type='usb']",
    "sata_controllers": "devices/controller[@type='sata']",
    "iommu_driver_intremap": "string(devices/iommu/driver/@intremap)",
    "address": "address",  # a device's guest address, below the device
    "source_address": "source/address",  # a hostdev's host address, below it
}

# Values of libvirt's <controller type='pci' model=...> that are PCI bridges.
PCI_CONTROLLER_MODELS = frozenset({
    "pci-root", "pcie-root", "pci-bridge", "dmi-to-pci-bridge", "pcie-to-pci-bridge",
    "pcie-root-port", "pcie-switch-upstream-port", "pcie-switch-downstream-port",
    "pci-expander-bus", "pcie-expander-bus",
})


_NUMBER = re.compile(r"^(?:0[xX](?P<hex>[0-9a-fA-F]+)|(?P<oct>0[0-7]*)|(?P<dec>-?[1-9][0-9]*))$")


def _int(text: str | None, what: str, maximum: int) -> int:
    """libvirt parses these with virStrToLong_uip(..., base 0), i.e. strtoul:
    0x-hex, 0-prefixed octal ("010" is 8), or decimal."""
    if text is None or text == "":
        raise DomainXMLError(f"{what} is missing")
    m = _NUMBER.match(text.strip())
    if not m or len(text) > 20:
        raise DomainXMLError(f"{what} {text[:20]!r} is not a number")
    if m.group("hex") is not None:
        value = int(m.group("hex"), 16)
    elif m.group("oct") is not None:
        value = int(m.group("oct"), 8)
    else:
        value = int(m.group("dec"))
    if not 0 <= value <= maximum:
        raise DomainXMLError(f"{what} {text} is out of range (0-{maximum:#x})")
    return value


def _onoff(text: str | None) -> bool | None:
    if text is None:
        return None
    return text.lower() in ("on", "yes")


class PciAddress(NamedTuple):
    domain: int
    bus: int
    slot: int
    function: int

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"

    @classmethod
    def from_element(cls, el: etree._Element, what: str) -> PciAddress:
        return cls(
            domain=_int(el.get("domain", "0"), f"{what} domain", 0xFFFF),
            bus=_int(el.get("bus", "0"), f"{what} bus", 0xFF),
            slot=_int(el.get("slot", "0"), f"{what} slot", 0x1F),
            function=_int(el.get("function", "0"), f"{what} function", 0x7),
        )


class GuestPciAddress(NamedTuple):
    address: PciAddress
    multifunction: bool | None  # the multifunction='on' attribute


def _guest_address(parent: etree._Element, what: str) -> GuestPciAddress | None:
    el = parent.find(XPATH["address"])
    if el is None or el.get("type") != "pci":
        return None
    return GuestPciAddress(PciAddress.from_element(el, what), _onoff(el.get("multifunction")))


def address_of(el: etree._Element) -> PciAddress | None:
    """A device's guest PCI address; None when it has none or it is not a
    valid one (the editor's view: libvirt refuses such a domain anyway)."""
    try:
        guest = _guest_address(el, f"<{el.tag}> address")
    except DomainXMLError:
        return None
    return guest.address if guest else None


def source_address_of(el: etree._Element) -> PciAddress | None:
    """A <hostdev>'s (or <interface type='hostdev'>'s) host PCI address, or None."""
    src = el.find(XPATH["source_address"])
    if src is None:
        return None
    try:
        return PciAddress.from_element(src, "source address")
    except DomainXMLError:
        return None


def pci_hostdev_elements(root: etree._Element) -> list[etree._Element]:
    """Every element that assigns a host PCI device, in document order per kind."""
    return (root.xpath(XPATH["hostdev_pci"], smart_strings=False)
            + root.xpath(XPATH["interface_hostdev"], smart_strings=False))


class PciController(NamedTuple):
    index: int
    model: str | None
    target_chassis: int | None
    target_port: int | None
    target_bus_nr: int | None  # pci-expander-bus / pcie-expander-bus <target busNr>
    address: GuestPciAddress | None


class Hostdev(NamedTuple):
    source: PciAddress  # the host device
    guest: GuestPciAddress | None  # None: libvirt assigns it at define time
    managed: bool | None
    rom_bar: bool | None
    rom_file: str | None
    driver: str | None  # <driver name='vfio'>
    alias: str | None
    element: str  # "hostdev" or "interface" (SR-IOV VF as <interface type='hostdev'>)


class EmulatedDevice(NamedTuple):
    element: str  # "interface", "video", "sound", "controller", "disk", ...
    model: str | None
    guest: GuestPciAddress
    alias: str | None


class VcpuPin(NamedTuple):
    vcpu: int
    cpus: frozenset[int]


class Domain(NamedTuple):
    name: str
    uuid: str | None
    virt_type: str
    machine: str | None
    chipset: str  # "i440fx" | "q35" | "other"
    arch: str | None
    guest_os: str  # "windows" | "linux" | "macos" | "other" | "unknown"
    guest_os_evidence: str
    ioapic_driver: str | None  # "kvm" | "qemu" (split irqchip) | None
    iommu_model: str | None
    vcpus: int | None
    vcpu_pins: tuple[VcpuPin, ...]
    vcpu_cpuset: frozenset[int]
    emulator_pin: frozenset[int]
    controllers: tuple[PciController, ...]
    hostdevs: tuple[Hostdev, ...]
    emulated: tuple[EmulatedDevice, ...]
    ignored_rules: frozenset[str] = frozenset()  # rule IDs or slugs, from <metadata>
    agent_channel: bool | None = None  # a guest agent channel in the XML; None: not read

    @property
    def pinned_cpus(self) -> frozenset[int]:
        cpus: set[int] = set()
        for pin in self.vcpu_pins:
            cpus |= pin.cpus
        return frozenset(cpus) or self.vcpu_cpuset


def chipset_of(machine: str | None) -> str:
    """QEMU machine type -> chipset family.

    "pc" and "pc-X.Y" / "pc-i440fx-*" are i440FX (QEMU hw/i386/pc_piix.c
    registers "pc" as the alias of the newest pc-i440fx); "q35" and
    "pc-q35-*" are ICH9 (hw/i386/pc_q35.c). "pc-1.0".."pc-1.3" and "pc-0.x"
    are old i440FX names. RHEL's "pc-i440fx-rhel7.6.0" follows the pattern.
    """
    if not machine:
        return "other"
    m = machine.lower()
    if m == "q35" or m.startswith("pc-q35"):
        return "q35"
    if m == "pc" or m.startswith("pc-i440fx") or (m.startswith("pc-") and m[3:4].isdigit()):
        return "i440fx"
    return "other"


def _guest_os(root: etree._Element) -> tuple[str, str]:
    os_id = root.xpath(XPATH["libosinfo_os_id"], smart_strings=False, namespaces=NS)
    if os_id:
        lowered = os_id.lower()
        if "microsoft.com/win" in lowered:
            return "windows", f"libosinfo os id {os_id}"
        if "apple.com" in lowered:
            return "macos", f"libosinfo os id {os_id}"
        if any(s in lowered for s in ("freebsd", "openbsd", "netbsd", "dragonfly", "solaris")):
            return "other", f"libosinfo os id {os_id}"
        if "/linux" in lowered or any(s in lowered for s in (
                "debian", "ubuntu", "fedora", "redhat", "rhel", "centos", "archlinux",
                "gentoo", "opensuse", "suse", "alpine", "android", "nixos", "rocky",
                "alma", "manjaro", "popos", "mint", "clearlinux", "void")):
            return "linux", f"libosinfo os id {os_id}"
        return "unknown", f"libosinfo os id {os_id} is not one we know"
    # Hyper-V enlightenments are only useful to Windows guests.
    if root.xpath(XPATH["features_hyperv"], smart_strings=False) or root.xpath(XPATH["clock_hypervclock"], smart_strings=False):
        return "windows", "Hyper-V enlightenments in <features>/<clock>"
    loader = root.xpath(XPATH["os_loader"], smart_strings=False).lower()
    if "opencore" in loader or "clover" in loader:
        return "macos", f"loader {loader}"
    return "unknown", "no libosinfo metadata and no Hyper-V features"


def _pin_list(elements: Iterable[etree._Element]) -> tuple[VcpuPin, ...]:
    pins = []
    for el in elements:
        try:
            vcpu = _int(el.get("vcpu"), "vcpupin vcpu", 0xFFFF)
        except DomainXMLError:
            continue
        pins.append(VcpuPin(vcpu, parse_cpulist(el.get("cpuset", ""))))
    return tuple(pins)


def parse_domain_xml(text: str | bytes) -> Domain:
    """Parse a domain XML. Raises DomainXMLError with a one-line reason."""
    return domain_from_element(parse_tree(text, keep_comments=False))


def parse_tree(text: str | bytes, keep_comments: bool = True) -> etree._Element:
    """The <domain> element of a domain XML. Raises DomainXMLError with a
    one-line reason. `keep_comments`: for editing, where the user's
    comments must survive; lxml keeps each element's `sourceline` either way."""
    if isinstance(text, str):
        try:
            text = text.encode("utf-8")
        except UnicodeEncodeError:
            raise DomainXMLError("input is not valid Unicode (lone surrogate)") from None
    if not text.strip():
        raise DomainXMLError("empty input, expected a libvirt <domain> XML")
    # No network, no external entities (resolve_entities=False): the hook
    # reads stdin that we do not control. Internal entities still reach values
    # (attribute normalisation, XPath string()), exactly as libvirt reads them
    # (src/util/virxml.c parses without XML_PARSE_NOENT, libvirt 9.0.0).
    # huge_tree=False keeps libxml2's depth and size limits.
    # lxml is imported here, not with the module: the daemon unpickles these
    # fact types from its gathering child (vfio_advisor/daemon/gather_child.py) and
    # never parses XML itself, and an imported C extension stays for the
    # process's life (lxml.etree and its libxml2/libxslt: ~4 MiB of RSS).
    from lxml import etree  # noqa: PLC0415

    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False,
                             remove_comments=not keep_comments)
    try:
        root = etree.fromstring(text, parser)
    except etree.XMLSyntaxError as exc:
        # libxml2 messages can carry newlines; the user gets one line.
        raise DomainXMLError("not well-formed XML: " + " ".join(str(exc.msg).split())) from None
    if not isinstance(root.tag, str) or root.tag != "domain":
        raise DomainXMLError(f"root element is <{root.tag}>, not <domain>")
    return root


def serialize(root: etree._Element) -> str:
    """A (possibly edited) tree as text, comments inside <domain> kept."""
    from lxml import etree  # noqa: PLC0415 - see parse_tree

    return etree.tostring(root, encoding="unicode") + "\n"


def domain_from_element(root: etree._Element) -> Domain:
    """The Domain a <domain> element describes. Comments in the tree are
    ignored (XPath's element steps and string() skip comment nodes)."""
    if not isinstance(root.tag, str) or root.tag != "domain":
        raise DomainXMLError(f"root element is <{root.tag}>, not <domain>")
    name = root.xpath(XPATH["name"], smart_strings=False).strip()
    if not name:
        raise DomainXMLError("<domain> has no <name>")
    virt_type = root.xpath(XPATH["type"], smart_strings=False)
    if not virt_type:
        raise DomainXMLError(f"domain {name!r}: <domain> has no type attribute")

    controllers = []
    seen_index: set[int] = set()
    unindexed = []
    for el in root.xpath(XPATH["pci_controllers"], smart_strings=False):
        if el.get("index") is None:
            unindexed.append(el)
            continue
        index = _int(el.get("index"), f"domain {name!r}: pci controller index", 0xFF)
        if index in seen_index:
            raise DomainXMLError(f"domain {name!r}: two pci controllers with index {index}")
        seen_index.add(index)
        controllers.append(_controller(el, index, name))
    for el in unindexed:
        # libvirt fills a missing index with the lowest free one
        # (domain_conf.c, virDomainControllerFindUnusedIndex).
        # Index 0 belongs to pci-root / pcie-root.
        first = 0 if el.get("model") in ("pci-root", "pcie-root") else 1
        index = next((i for i in range(first, 256) if i not in seen_index), None)
        if index is None:
            raise DomainXMLError(f"domain {name!r}: more than 256 pci controllers")
        seen_index.add(index)
        controllers.append(_controller(el, index, name))
    controllers.sort(key=lambda c: c.index)

    hostdevs = []
    for el in pci_hostdev_elements(root):
        src = el.find(XPATH["source_address"])
        if src is None:
            raise DomainXMLError(f"domain {name!r}: <{el.tag}> has no <source><address>")
        if el.tag == "interface" and src.get("type") not in (None, "pci"):
            continue  # a USB or other non-PCI source
        what = f"domain {name!r}: {el.tag} source address"
        rom = el.find("rom")
        driver = el.find("driver")
        alias = el.find("alias")
        hostdevs.append(Hostdev(
            source=PciAddress.from_element(src, what),
            guest=_guest_address(el, f"domain {name!r}: {el.tag} guest address"),
            managed=_onoff(el.get("managed")),
            rom_bar=_onoff(rom.get("bar")) if rom is not None else None,
            rom_file=rom.get("file") if rom is not None else None,
            driver=driver.get("name") if driver is not None else None,
            alias=alias.get("name") if alias is not None else None,
            element=el.tag,
        ))

    emulated = []
    for el in root.xpath(XPATH["pci_addressed_devices"], smart_strings=False):
        if el.tag == "hostdev" or (el.tag == "interface" and el.get("type") == "hostdev"):
            continue
        if el.tag == "controller" and el.get("type") == "pci":
            continue
        model_el = el.find("model")
        model = (el.get("model") or (model_el.get("type") if model_el is not None else None)
                 or el.get("type") or (el.find("target").get("bus") if el.find("target") is not None else None))
        if el.tag == "controller":
            model = f"{el.get('type')}:{el.get('model') or 'default'}"
        alias = el.find("alias")
        emulated.append(EmulatedDevice(
            element=el.tag, model=model,
            guest=_guest_address(el, f"domain {name!r}: <{el.tag}> address"),
            alias=alias.get("name") if alias is not None else None))

    guest_os, evidence = _guest_os(root)
    vcpus = int_or_none(root.xpath(XPATH["vcpu_count"], smart_strings=False).strip())
    machine = root.xpath(XPATH["os_type_machine"], smart_strings=False) or None
    return Domain(
        name=name,
        uuid=root.xpath(XPATH["uuid"], smart_strings=False).strip() or None,
        virt_type=virt_type,
        machine=machine,
        chipset=chipset_of(machine),
        arch=root.xpath(XPATH["os_type_arch"], smart_strings=False) or None,
        guest_os=guest_os,
        guest_os_evidence=evidence,
        ioapic_driver=root.xpath(XPATH["features_ioapic_driver"], smart_strings=False) or None,
        iommu_model=root.xpath(XPATH["iommu_model"], smart_strings=False) or None,
        vcpus=vcpus,
        vcpu_pins=_pin_list(root.xpath(XPATH["cputune_vcpupin"], smart_strings=False)),
        vcpu_cpuset=parse_cpulist(root.xpath(XPATH["vcpu_cpuset"], smart_strings=False)),
        emulator_pin=parse_cpulist(root.xpath(XPATH["cputune_emulatorpin_cpuset"], smart_strings=False)),
        controllers=tuple(controllers),
        hostdevs=tuple(hostdevs),
        emulated=tuple(emulated),
        ignored_rules=frozenset(str(r).strip() for r in
                                root.xpath(XPATH["advisor_ignore_rule"], smart_strings=False, namespaces=NS)),
        agent_channel=bool(root.xpath(XPATH["agent_channel"])),
    )


def _controller(el: etree._Element, index: int, name: str) -> PciController:
    target = el.find("target")
    chassis = port = bus_nr = None
    if target is not None:
        chassis = int_or_none(target.get("chassis"))
        port = int_or_none(target.get("port"))
        bus_nr = int_or_none(target.get("busNr"))
    return PciController(
        index=index, model=el.get("model"), target_chassis=chassis,
        target_port=port, target_bus_nr=bus_nr,
        address=_guest_address(el, f"domain {name!r}: pci controller {index} address"))


def int_or_none(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return _int(text, "value", 0xFFFFFFFF)
    except DomainXMLError:
        return None
