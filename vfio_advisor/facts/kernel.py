"""Kernel facts: command line, vfio module parameters, IOMMU groups.

Whether interrupt remapping is on is not decided here: facts.platform.iommu_state
reads the kernel's own state (IR- chips) first and applies the command line
with the kernel's semantics (intel_iommu=off leaves Intel IR on, Linux 6.1)."""

from __future__ import annotations

import re
from typing import Callable, NamedTuple


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


def parse_bool_param(text: str | None) -> bool | None:
    """A bool module parameter's value as the kernel parses it: "" (the
    parameter alone, "vfio_pci.nointxmask") is set (kernel/params.c
    param_set_bool takes a missing value as "1"); else kstrtobool's y/Y/1,
    n/N/0, on/off (lib/kstrtox.c, 6.1). None for text it refuses (the
    module then fails to load: load_module's parse_args) or no text."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return True
    if text[0] in "yY1":
        return True
    if text[0] in "nN0":
        return False
    if text[:2].lower() == "on":
        return True
    if text[:2].lower() == "of":
        return False
    return None


# The vfio module parameters the rules read: (module, parameter, the
# module's default). Both are bool module_params defaulting to false
# (drivers/vfio/vfio_iommu_type1.c allow_unsafe_interrupts,
# drivers/vfio/pci/vfio_pci.c nointxmask, 6.1).
UNSAFE_INTERRUPTS = ("vfio_iommu_type1", "allow_unsafe_interrupts", "N")
NOINTXMASK = ("vfio_pci", "nointxmask", "N")

# Where modprobe reads its options, highest priority first: a file of one
# name in an earlier directory hides the same name in a later one, and the
# files are read in the order of their names (kmod 30, Debian 12:
# libkmod.c default_config_paths, libkmod-config.c conf_files_list).
# /lib/modprobe.d is /usr/lib/modprobe.d on a merged /usr.
MODPROBE_DIRS = ("etc/modprobe.d", "run/modprobe.d", "usr/local/lib/modprobe.d", "lib/modprobe.d")


class ModuleParam(NamedTuple):
    """A module parameter's value, as text, and where it comes from: the
    loaded module ("loaded"), or what modprobe will pass when it loads it:
    the last "options" of the modprobe.d files ("/etc/modprobe.d/vfio.conf"),
    overridden by the kernel command line's module.param= ("kernel command
    line": kmod parses /proc/cmdline after the files and appends its options,
    libkmod-config.c kmod_config_new, and the kernel keeps the last), or
    nothing at all ("default": no file sets it, and at least one modprobe.d
    directory was read). value None: not known (no modprobe.d directory in
    this tree, as in a recorded one, or one that could not be read)."""

    value: str | None
    source: str | None


def read_modprobe_options(host: HostRoot) -> tuple[dict[str, list[tuple[str, str, str]]] | None, list[str]]:
    """module (dashes as underscores) -> [(param, value, file)] in the
    order modprobe reads them ("" for a parameter without "="), and what
    could not be read. None when no modprobe.d directory exists here."""
    files: dict[str, str] = {}
    unreadable: list[str] = []
    listed = False
    for directory in MODPROBE_DIRS:
        try:
            names = host.list_dir(directory)
        except FactUnavailable as exc:
            if exc.reason != "missing":
                unreadable.append(f"{exc.path}: {exc.reason}")
            continue
        listed = True
        for name in names:
            if name.endswith(".conf"):
                files.setdefault(name, f"{directory}/{name}")
    if not listed:
        return None, unreadable
    options: dict[str, list[tuple[str, str, str]]] = {}
    for name in sorted(files):
        rel = files[name]
        try:
            text = host.read_text(rel)
        except FactUnavailable as exc:
            unreadable.append(f"{exc.path}: {exc.reason}")
            continue
        # modprobe.d(5): "#" starts a comment line, a trailing backslash
        # continues a line; "options MODULE OPTION..." (- and _ alike).
        for line in text.replace("\\\n", " ").splitlines():
            words = line.split()
            if len(words) < 3 or words[0] != "options":
                continue
            module = words[1].replace("-", "_")
            for token in _split_cmdline(" ".join(words[2:])):
                param, sep, value = token.partition("=")
                options.setdefault(module, []).append((param.replace("-", "_"), value if sep else "", "/" + rel))
    return options, unreadable


def module_param(host: HostRoot, cmdline: KernelCmdline | None, module: str, param: str,
                 default: str, modprobe: Callable[[], dict | None]) -> ModuleParam:
    """`module`'s `param` (ModuleParam), `default` when nothing sets it;
    `modprobe()`: read_modprobe_options' options (None: no modprobe.d here),
    called only for a module not loaded whose parameter the command line
    does not set: on a host running VMs both vfio modules are loaded, and
    the hook reads no modprobe.d file. FactUnavailable when the loaded
    module's value cannot be read."""
    loaded = f"sys/module/{module}/parameters/{param}"
    if host.exists(loaded):
        return ModuleParam(host.read_value(loaded), "loaded")
    if cmdline is not None and cmdline.get(f"{module}.{param}") is not None:
        return ModuleParam(cmdline.get(f"{module}.{param}"), "kernel command line")
    options = modprobe()
    if options is None:
        return ModuleParam(None, None)
    given = [(value, where) for name, value, where in options.get(module, ()) if name == param]
    if given:
        return ModuleParam(*given[-1])
    return ModuleParam(default, "default")


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
    # The two vfio parameters the rules read, with where each comes from
    # (module_param: loaded, command line, modprobe.d, default); None where
    # the facts were built without them.
    allow_unsafe_param: "ModuleParam | None" = None
    nointxmask_param: "ModuleParam | None" = None

    @property
    def nointxmask(self) -> bool:
        if self.nointxmask_param is not None:
            return bool(parse_bool_param(self.nointxmask_param.value))
        value = (self.vfio_pci_params or {}).get("nointxmask")
        if value is None and self.cmdline is not None:
            value = self.cmdline.get("vfio_pci.nointxmask")
        return bool(parse_bool_param(value))



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

    read: list = []  # read_modprobe_options' options, once, if a parameter needs them

    def modprobe() -> dict | None:
        if not read:
            options, not_read = read_modprobe_options(host)
            unreadable.extend(not_read)
            read.append(options)
        return read[0]

    try:
        unsafe_param = module_param(host, cmdline, *UNSAFE_INTERRUPTS, modprobe)
    except FactUnavailable as exc:
        unreadable.append(f"{exc.path}: {exc.reason}")
        unsafe_param = ModuleParam(None, None)
    unsafe = parse_bool_param(unsafe_param.value)
    # vfio_pci's parameters were read above when it is loaded.
    nointxmask_param = (ModuleParam(params.get(NOINTXMASK[1]), "loaded") if params is not None
                        else module_param(host, cmdline, *NOINTXMASK, modprobe))

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
                       unreadable=tuple(unreadable), release=read_kernel_release(host),
                       allow_unsafe_param=unsafe_param, nointxmask_param=nointxmask_param)
