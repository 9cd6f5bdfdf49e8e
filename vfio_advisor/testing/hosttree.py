"""Write a host tree (proc/ and sys/ under a root directory) from a Python spec.

The tree has the shape the tool reads through HostRoot, and the kernel's:

    proc/interrupts, proc/cmdline
    proc/stat                  write_proc_stat: derived from sys/kernel/irq/*/per_cpu_count
    sys/kernel/irq/<n>/        write_irq_descriptor: per_cpu_count actions chip_name hwirq type
    sys/devices/pci0000:00/<bridge>/.../<bdf>/       one directory per device
        config                 binary config space (from a real dump, see load_config)
        vendor device subsystem_vendor subsystem_device revision class   ("0x10de\\n")
        irq msi_bus            ("16\\n", "1\\n")
        msi_irqs/<n>           optional, one file per vector ("msi\\n" or "msix\\n")
        driver -> ../../../../bus/pci/drivers/vfio-pci          relative symlink
        iommu_group -> ../../../../kernel/iommu_groups/<n>      relative symlink
        physfn -> ../<pf bdf>  (an SR-IOV VF)   virtfn<n> -> ../<vf bdf>  (its PF)
    sys/bus/pci/devices/<bdf> -> ../../../devices/pci0000:00/.../<bdf>
    sys/bus/pci/drivers/<driver>/<bdf> -> back to the device
    sys/kernel/iommu_groups/<n>/devices/<bdf> -> the device
    sys/module/vfio_pci/parameters/*
    sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts

This is the one tree builder of the project (tests, examples/demo-host,
bench/). Config bytes come only from real dumps in tests/data/hosts/configs/
(see the PROVENANCE.md there); `load_config` is the one way in, over
`load_dump`, the one lspci-dump loader. The only derivations
are the ones PROVENANCE.md names: a device's bus address (the spec's `bdf` may
differ from the dump's), and `first_bytes` (what an unprivileged read returns).

/proc/interrupts text is derived from a real capture with `edit_interrupts`,
which replaces, removes or inserts whole rows and leaves every other row as it
was; `irq_row` formats a row the way kernel/irq/proc.c does.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from vfio_advisor.facts.pci import normalize_bdf
from vfio_advisor.facts.pci_config import parse_config_space, parse_lspci_dump
from vfio_advisor.testing.procstat import proc_stat_text

# The recorded inputs live in the source tree's tests/data (with their
# provenance), not in the installed package: VFIO_ADVISOR_FIXTURE_DATA
# points elsewhere.
DATA = Path(os.environ.get("VFIO_ADVISOR_FIXTURE_DATA")
            or Path(__file__).resolve().parents[2] / "tests" / "data")
CONFIGS = DATA / "hosts" / "configs"
CORPUS = DATA / "corpus"
INTERRUPT_CAPTURES = CORPUS / "proc-interrupts"

# What an unprivileged read of sysfs `config` returns (drivers/pci/pci-sysfs.c).
UNPRIVILEGED_CONFIG_BYTES = 64

# vfio_pci module parameters as a Debian 12 kernel (6.1) shows them in sysfs;
# `ids` is not readable there (permission 0).
DEFAULT_VFIO_PCI_PARAMS = {
    "disable_denylist": "N",
    "disable_idle_d3": "N",
    "disable_vga": "N",
    "enable_sriov": "N",
    "nointxmask": "N",
}


# --- config space -----------------------------------------------------------

def load_dump(path: Path | str) -> dict[str, bytes]:
    """An `lspci -xxx`/`-xxxx` dump file: {full BDF: config bytes}."""
    return parse_lspci_dump(Path(path).read_text(encoding="utf-8", errors="replace"))


@functools.lru_cache(maxsize=None)
def _dump(name: str) -> dict[str, bytes]:
    return load_dump(CONFIGS / name)


def load_config(name: str, bdf: str) -> bytes:
    """The config bytes of `bdf` in dump file `name` (tests/data/hosts/configs/).

    `bdf` is the address the dump gives (without domain it is 0000).
    """
    dump = _dump(name)
    key = normalize_bdf(bdf)
    if key not in dump:
        raise KeyError(f"{name} has no device {key}; it has {', '.join(sorted(dump))}")
    return dump[key]


def sriov_vf_bdf(pf_bdf: str, pf_config: bytes, vf_index: int) -> str:
    """Where the kernel puts VF `vf_index` of the PF at `pf_bdf`: routing ID
    PF + First VF Offset + index * VF Stride, both read from the PF's real
    SR-IOV capability (drivers/pci/iov.c pci_iov_virtfn_bus/_devfn; PCIe
    base spec 9.3.3.10-11). A carry past function 7 lands in the next slot,
    which is why VFs of one PF fill whole slots of their own."""
    pf = normalize_bdf(pf_bdf)
    domain, bus, slot_fn = pf.split(":")
    slot, fn = slot_fn.split(".")
    offset = 0x100  # extended capabilities start here (PCIe base spec 7.6)
    while offset and offset + 0x18 <= len(pf_config):
        header = int.from_bytes(pf_config[offset:offset + 4], "little")
        if header & 0xFFFF == 0x0010:  # SR-IOV extended capability ID
            first = int.from_bytes(pf_config[offset + 0x14:offset + 0x16], "little")
            stride = int.from_bytes(pf_config[offset + 0x16:offset + 0x18], "little")
            rid = (int(bus, 16) << 8) + (int(slot, 16) << 3) + int(fn, 16) + first + vf_index * stride
            return f"{domain}:{rid >> 8 & 0xFF:02x}:{rid >> 3 & 0x1F:02x}.{rid & 7:x}"
        offset = header >> 20
    raise ValueError(f"{pf}: the config space has no SR-IOV capability")


def first_bytes(config: bytes, n: int = UNPRIVILEGED_CONFIG_BYTES) -> bytes:
    """The first `n` bytes of a real config space: what a reader without
    CAP_SYS_ADMIN gets from sysfs (64 bytes)."""
    return config[:n]


# --- the spec ---------------------------------------------------------------

@dataclass
class Device:
    """One PCI function in sys/devices.

    `parent` is the BDF of the bridge above it (itself a Device of the same
    Host); None puts it on the root bus pci<domain>:<bus>.
    The id attribute files (vendor, device, subsystem_*, revision, class) are
    written from the config header unless `ids` is False; `attrs` adds or
    overrides attribute files by name (a value of None leaves the file out).
    """

    bdf: str
    config: bytes | None
    parent: str | None = None
    driver: str | None = "vfio-pci"
    iommu_group: int | None = None
    irq: int | None = 0
    msi_bus: str | None = "1"
    msi_irqs: Sequence[int] = ()
    msi_irq_mode: str = "msi"  # what each msi_irqs/<n> file says: "msi" or "msix"
    ids: bool = True
    attrs: Mapping[str, str | None] = field(default_factory=dict)
    # The BDF of the SR-IOV physical function this device is a VF of (itself
    # a Device of the same Host): the tree gets the kernel's `physfn` link on
    # the VF and `virtfn<n>` on the PF (drivers/pci/iov.c pci_iov_sysfs_link).
    physfn: str | None = None

    def __post_init__(self) -> None:
        self.bdf = normalize_bdf(self.bdf)
        if self.parent is not None:
            self.parent = normalize_bdf(self.parent)
        if self.physfn is not None:
            self.physfn = normalize_bdf(self.physfn)


@dataclass
class Host:
    devices: Sequence[Device] = ()
    interrupts: str | None = None  # None: no proc/interrupts (unreadable)
    cmdline: str | None = "BOOT_IMAGE=/boot/vmlinuz root=/dev/mapper/host-root ro quiet intel_iommu=on iommu=pt"
    # None: vfio_pci not loaded (no sys/module/vfio_pci).
    vfio_pci_params: Mapping[str, str] | None = field(default_factory=lambda: dict(DEFAULT_VFIO_PCI_PARAMS))
    # None: vfio_iommu_type1 not loaded.
    allow_unsafe_interrupts: str | None = "N"
    # Extra IOMMU groups with no device in the tree (the count is a fact).
    empty_iommu_groups: Iterable[int] = ()


def _id_attrs(config: bytes) -> dict[str, str]:
    cs = parse_config_space(config)
    out = {
        "vendor": f"0x{cs.vendor_id:04x}",
        "device": f"0x{cs.device_id:04x}",
        "revision": f"0x{cs.revision:02x}",
        "class": f"0x{cs.class_code:06x}",
    }
    sub_vendor, sub_device = cs.subsystem_vendor_id, cs.subsystem_device_id
    if sub_vendor is None and isinstance(cs.capabilities, tuple):
        # A bridge (type 1 header) has its subsystem IDs in the SSVID
        # capability, if anywhere (drivers/pci/probe.c, pci_setup_device).
        ssvid = next((c for c in cs.capabilities if c.id == 0x0D), None)
        if ssvid is not None and ssvid.offset + 8 <= len(config):
            sub_vendor = int.from_bytes(config[ssvid.offset + 4:ssvid.offset + 6], "little")
            sub_device = int.from_bytes(config[ssvid.offset + 6:ssvid.offset + 8], "little")
    out["subsystem_vendor"] = f"0x{sub_vendor or 0:04x}"
    out["subsystem_device"] = f"0x{sub_device or 0:04x}"
    return out


def _rel_symlink(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target, link.parent), link)


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")


def build(root: Path | str, host: Host) -> Path:
    """Write `host` under `root` (created if needed; must not hold a tree yet)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sys_ = root / "sys"
    by_bdf = {d.bdf: d for d in host.devices}
    if len(by_bdf) != len(host.devices):
        raise ValueError("two devices with one BDF")

    def device_dir(dev: Device, seen: tuple[str, ...] = ()) -> Path:
        if dev.bdf in seen:
            raise ValueError(f"bridge loop at {dev.bdf}")
        if dev.parent is None:
            domain, bus = dev.bdf.split(":")[:2]
            return sys_ / "devices" / f"pci{domain}:{bus}" / dev.bdf
        if dev.parent not in by_bdf:
            raise ValueError(f"{dev.bdf}: parent bridge {dev.parent} is not in the spec")
        return device_dir(by_bdf[dev.parent], seen + (dev.bdf,)) / dev.bdf

    groups: dict[int, list[Device]] = {g: [] for g in host.empty_iommu_groups}
    for dev in host.devices:
        d = device_dir(dev)
        d.mkdir(parents=True, exist_ok=True)
        attrs: dict[str, str | None] = {}
        if dev.config is not None:
            _write(d / "config", dev.config)
            if dev.ids:
                attrs.update(_id_attrs(dev.config))
        if dev.irq is not None:
            attrs["irq"] = str(dev.irq)
        if dev.msi_bus is not None:
            attrs["msi_bus"] = dev.msi_bus
        attrs.update(dev.attrs)
        for name, value in attrs.items():
            if value is not None:
                _write(d / name, value + "\n")
        if dev.msi_irqs:
            for n in dev.msi_irqs:
                _write(d / "msi_irqs" / str(n), dev.msi_irq_mode + "\n")
        if dev.driver is not None:
            drv = sys_ / "bus" / "pci" / "drivers" / dev.driver
            drv.mkdir(parents=True, exist_ok=True)
            _rel_symlink(d / "driver", drv)
            _rel_symlink(drv / dev.bdf, d)
        if dev.iommu_group is not None:
            groups.setdefault(dev.iommu_group, []).append(dev)
            _rel_symlink(d / "iommu_group", sys_ / "kernel" / "iommu_groups" / str(dev.iommu_group))
        _rel_symlink(sys_ / "bus" / "pci" / "devices" / dev.bdf, d)

    virtfns: dict[str, list[Device]] = {}
    for dev in host.devices:
        if dev.physfn is None:
            continue
        if dev.physfn not in by_bdf:
            raise ValueError(f"{dev.bdf}: physical function {dev.physfn} is not in the spec")
        virtfns.setdefault(dev.physfn, []).append(dev)
        _rel_symlink(device_dir(dev) / "physfn", device_dir(by_bdf[dev.physfn]))
    for pf, vfs in virtfns.items():
        # virtfn<n> numbers VFs by index, and a VF's routing ID grows with
        # its index (positive VF Stride), so BDF order is index order.
        for n, vf in enumerate(sorted(vfs, key=lambda v: v.bdf)):
            _rel_symlink(device_dir(by_bdf[pf]) / f"virtfn{n}", device_dir(vf))

    for group, members in groups.items():
        gdir = sys_ / "kernel" / "iommu_groups" / str(group) / "devices"
        gdir.mkdir(parents=True, exist_ok=True)
        for dev in members:
            _rel_symlink(gdir / dev.bdf, device_dir(dev))

    if host.interrupts is not None:
        _write(root / "proc" / "interrupts", host.interrupts)
    if host.cmdline is not None:
        _write(root / "proc" / "cmdline", host.cmdline + "\n")
    if host.vfio_pci_params is not None:
        params = sys_ / "module" / "vfio_pci" / "parameters"
        params.mkdir(parents=True, exist_ok=True)
        for name, value in host.vfio_pci_params.items():
            _write(params / name, value + "\n")
    if host.allow_unsafe_interrupts is not None:
        _write(sys_ / "module" / "vfio_iommu_type1" / "parameters" / "allow_unsafe_interrupts",
               host.allow_unsafe_interrupts + "\n")
    return root


# --- /sys/kernel/irq and /proc/stat ----------------------------------------

def write_irq_descriptor(root: Path | str, irq: int, per_cpu_count: str, actions: str, chip: str,
                         hwirq: int | None = None, kind: str | None = None) -> Path:
    """sys/kernel/irq/<irq>/ as kernel/irq/irqdesc.c shows it (CONFIG_SPARSE_IRQ):
    per_cpu_count ("%u" per possible CPU, joined by ","), actions (the
    handlers' names joined by ","), chip_name, and hwirq and type where given."""
    d = Path(root) / f"sys/kernel/irq/{irq}"
    d.mkdir(parents=True, exist_ok=True)
    files = {"per_cpu_count": per_cpu_count, "actions": actions, "chip_name": chip,
             "hwirq": None if hwirq is None else str(hwirq), "type": kind}
    for name, text in files.items():
        if text is not None:
            (d / name).write_text(text.rstrip("\n") + "\n")
    return d


def write_proc_stat(root: Path | str, nr_irqs: int | None = None) -> Path:
    """proc/stat of a tree from its sys/kernel/irq/<N>/per_cpu_count files:
    each IRQ's total is the sum of its per-CPU counts, as the kernel keeps
    both (kernel/irq/internals.h kstat_incr_irqs_this_cpu). Written in
    place, as the kernel's file changes under a kept descriptor; called
    again after the counts are rewritten."""
    root = Path(root)
    totals, cpus = {}, 1
    for d in (root / "sys/kernel/irq").iterdir():
        if d.name.isdigit() and (d / "per_cpu_count").is_file():
            counts = (d / "per_cpu_count").read_text().strip().split(",")
            cpus = max(cpus, len(counts))
            totals[int(d.name)] = sum(int(c) for c in counts)
    path = root / "proc/stat"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(proc_stat_text(totals, cpus, nr_irqs))  # O_TRUNC: the same inode
    return path


# --- /proc/interrupts -------------------------------------------------------

def load_capture(name: str) -> str:
    """A real /proc/interrupts capture from tests/data/corpus/proc-interrupts/."""
    return (INTERRUPT_CAPTURES / name).read_text(encoding="utf-8")


def irq_row(irq: int, counts: Sequence[int], chip: str, flow: str,
            handlers: Sequence[str] = (), hwirq: int | None = None, prec: int = 3) -> str:
    """One row as kernel/irq/proc.c show_interrupts prints it:
    "%*d: ", "%10u " per CPU, " %8s" chip, [" %*d" hwirq], "-%-8s" flow,
    "  %s" first action, ", %s" each further one."""
    row = f"{irq:>{prec}}: " + "".join(f"{c:10d} " for c in counts) + f" {chip:>8}"
    if hwirq is not None:
        row += f" {hwirq:>{prec}}"
    row += f"-{flow:<8}"
    if handlers:
        row += "  " + ", ".join(handlers)
    return row


def _label(row: str) -> str | None:
    head, sep, _ = row.partition(":")
    head = head.strip()
    return head if sep and head and " " not in head else None


def edit_interrupts(text: str, rows: Mapping[str | int, str | None]) -> str:
    """`text` with rows replaced by IRQ label (a value of None removes the row).

    A label that `text` lacks is inserted among the numbered rows in numeric
    order. Every other line is kept byte for byte.
    """
    wanted = {str(k): v for k, v in rows.items()}
    lines = text.splitlines(keepends=True)
    newline = "\n"
    out: list[str] = []
    for line in lines:
        label = _label(line)
        if label in wanted:
            new = wanted.pop(label)
            if new is not None:
                out.append(new + newline)
            continue
        out.append(line)
    for label, new in sorted(wanted.items(), key=lambda kv: int(kv[0])):
        if new is None:
            continue
        if not label.isdigit():
            raise ValueError(f"cannot insert non-numeric row {label!r}")
        at = len(out)
        for i, line in enumerate(out):
            lab = _label(line)
            if lab is not None and (not lab.isdigit() or int(lab) > int(label)):
                at = i
                break
        out.insert(at, new + newline)
    return "".join(out)


def rename_handler(text: str, old: str, new: str) -> str:
    """Rename one action (e.g. a vfio handler's BDF) in a capture; the row's
    counts and columns stay as captured."""
    if text.count(old) != 1:
        raise ValueError(f"{old!r} occurs {text.count(old)} times, expected once")
    return text.replace(old, new)


def capture_under_platform(root: Path | str, capture: Path | str, platform: Path | str) -> Path:
    """A copy of a lab capture at `root` whose IOMMU and KVM files are a
    published platform's (tests/data/hosts/posted-*: DMAR cap / AMD EFR,
    enable_apicv / avic, cmdline): the lab's real devices and interrupts on
    a host the lab cannot make (QEMU's intel-iommu has no posted interrupts)."""
    import shutil  # noqa: PLC0415 - only the fixtures that copy trees need it

    root, platform = Path(root), Path(platform)
    shutil.copytree(capture, root, symlinks=True)
    shutil.rmtree(root / "sys/class/iommu")
    for path in platform.rglob("*"):
        if path.is_file() and path.name != "PROVENANCE.md":
            dest = root / path.relative_to(platform)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
    return root
