"""Kernel facts: command line, vfio module parameters, IOMMU groups.

Whether interrupt remapping is on is not decided here: facts.platform.iommu_state
reads the kernel's own state (IR- chips) first and applies the command line
with the kernel's semantics (intel_iommu=off leaves Intel IR on, Linux 6.1)."""

from __future__ import annotations

import re
from typing import NamedTuple


from vfio_advisor.errors import FactUnavailable
from vfio_advisor.facts.host import HostRoot


def parse_cpulist(text: str) -> frozenset[int]:
    """'0-3,8,10-11' -> {0,1,2,3,8,10,11}. Flags such as 'domain,managed_irq,'
    in isolcpus= are skipped. Bad ranges are ignored, not fatal."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part or not part[0].isdigit():
            continue
        rng, _, _stride = part.partition(":")  # "0-15:2/4" group syntax: keep the range
        lo, _, hi = rng.partition("-")
        try:
            first, last = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            continue
        if 0 <= first <= last < 8192:
            cpus.update(range(first, last + 1))
    return frozenset(cpus)


class KernelCmdline(NamedTuple):
    raw: str
    params: tuple[tuple[str, str | None], ...]  # in order; "quiet" -> ("quiet", None)

    def get(self, key: str) -> str | None:
        """The last value given for `key` (the kernel takes the last one)."""
        value = None
        for k, v in self.params:
            if k.replace("-", "_") == key.replace("-", "_"):
                value = v if v is not None else ""
        return value

    def values(self, key: str) -> list[str]:
        """All comma-separated values of every `key=` ("pci=nomsi,noaer" -> [nomsi, noaer])."""
        out: list[str] = []
        for k, v in self.params:
            if k == key and v:
                out.extend(x.strip() for x in v.split(",") if x.strip())
        return out

    @property
    def pci_nomsi(self) -> bool:
        return "nomsi" in self.values("pci")

    @property
    def isolcpus(self) -> frozenset[int]:
        return parse_cpulist(self.get("isolcpus") or "")

    @property
    def nohz_full(self) -> frozenset[int]:
        return parse_cpulist(self.get("nohz_full") or "")

    @property
    def irqaffinity(self) -> frozenset[int]:
        return parse_cpulist(self.get("irqaffinity") or "")



def _split_cmdline(text: str) -> list[str]:
    """Split as the kernel does (lib/cmdline.c, next_arg): spaces separate
    parameters except inside double quotes, which are dropped; an unbalanced
    quote runs to the end."""
    tokens, current, quoted, started = [], [], False, False
    for ch in text:
        if ch == '"':
            quoted, started = not quoted, True
        elif ch.isspace() and not quoted:
            if started:
                tokens.append("".join(current))
            current, started = [], False
        else:
            current.append(ch)
            started = True
    if started:
        tokens.append("".join(current))
    return tokens


def parse_cmdline(text: str) -> KernelCmdline:
    tokens = _split_cmdline(text)
    params = []
    for tok in tokens:
        key, sep, value = tok.partition("=")
        params.append((key, value if sep else None))
    return KernelCmdline(raw=text.strip(), params=tuple(params))


def _flag(text: str | None) -> bool | None:
    if text is None:
        return None
    return text.strip() in ("Y", "y", "1")


OSRELEASE = "proc/sys/kernel/osrelease"


def parse_kernel_release(text: str) -> tuple[int, int] | None:
    """'6.1.0-37-amd64', '6.12.12+bpo-amd64', '6.14.0-rc4-1.2-mainline' ->
    (major, minor); None if the text does not start with two numbers.
    Distribution suffixes say nothing about the interfaces compared here,
    which changed in mainline releases."""
    m = re.match(r"\s*(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def read_kernel_release(host: HostRoot) -> tuple[int, int] | None:
    """The tree's own kernel (proc/sys/kernel/osrelease, the `uname -r` of
    the host the tree was read from), never the running one's."""
    try:
        return parse_kernel_release(host.read_value(OSRELEASE))
    except FactUnavailable:
        return None


class KernelFacts(NamedTuple):
    cmdline: KernelCmdline | None
    # /sys/module/vfio_pci/parameters/*, e.g. {"nointxmask": "N"}; None if not loaded.
    vfio_pci_params: dict[str, str] | None
    allow_unsafe_interrupts: bool | None
    iommu_groups: int | None  # count of sys/kernel/iommu_groups/*; None if unreadable
    unreadable: tuple[str, ...]
    release: tuple[int, int] | None = None  # (major, minor) of proc/sys/kernel/osrelease

    @property
    def nointxmask(self) -> bool:
        value = (self.vfio_pci_params or {}).get("nointxmask")
        if value is None and self.cmdline is not None:
            value = self.cmdline.get("vfio_pci.nointxmask")
        return bool(_flag(value))



def read_kernel_facts(host: HostRoot) -> KernelFacts:
    unreadable: list[str] = []
    cmdline = None
    try:
        cmdline = parse_cmdline(host.read_text("proc/cmdline"))
    except FactUnavailable as exc:
        unreadable.append(f"{exc.path}: {exc.reason}")

    params: dict[str, str] | None = None
    base = "sys/module/vfio_pci/parameters"
    if host.exists(base):
        params = {}
        try:
            for name in host.list_dir(base):
                try:
                    params[name] = host.read_value(f"{base}/{name}")
                except FactUnavailable as exc:
                    unreadable.append(f"{exc.path}: {exc.reason}")
        except FactUnavailable as exc:
            unreadable.append(f"{exc.path}: {exc.reason}")

    unsafe = None
    rel = "sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"
    if host.exists(rel):
        try:
            unsafe = _flag(host.read_value(rel))
        except FactUnavailable as exc:
            unreadable.append(f"{exc.path}: {exc.reason}")
    elif cmdline is not None and cmdline.get("vfio_iommu_type1.allow_unsafe_interrupts") is not None:
        unsafe = _flag(cmdline.get("vfio_iommu_type1.allow_unsafe_interrupts"))

    groups = None
    try:
        groups = len(host.list_dir("sys/kernel/iommu_groups"))
    except FactUnavailable as exc:
        if exc.reason == "missing":
            groups = 0  # no IOMMU driver registered groups
        else:
            unreadable.append(f"{exc.path}: {exc.reason}")

    return KernelFacts(cmdline=cmdline, vfio_pci_params=params,
                       allow_unsafe_interrupts=unsafe, iommu_groups=groups,
                       unreadable=tuple(unreadable), release=read_kernel_release(host))
