"""Platform facts: is interrupt remapping on, is the IOMMU on, are MSIs posted?

Pure functions over a HostRoot. Each answer carries the evidence it was
drawn from, and the kernel's own state (sysfs, /proc/interrupts, module
parameters as loaded) wins over the command line, which only says what was
asked for. The rules and their kernel sources are written down in
docs/platform-rules.md; the line numbers there are Debian 12's 6.1.176.

Posted interrupts (Intel VT-d PI, AMD AVIC with the IOMMU's guest vAPIC mode):
KVM's irq bypass rewrites the IOMMU's IRTE so an assigned device's MSI goes
straight to the vCPU; the host's vfio-msi/vfio-msix handler never runs and
its /proc/interrupts counters stay flat while the device works.
"""

from __future__ import annotations

from typing import NamedTuple

from vfio_advisor.errors import FactUnavailable
from vfio_advisor.facts.host import INTERRUPTS_LIMIT, HostRoot
from vfio_advisor.facts.interrupts import Interrupts, parse_interrupts
from vfio_advisor.facts.kernel import (
    UNSAFE_INTERRUPTS, KernelCmdline, ModuleParam, module_param, parse_bool_param, parse_cmdline,
    read_kernel_release, read_modprobe_options,
)

# drivers/iommu/intel/iommu.h (6.1): cap_pi_support(c) = ((c) >> 59) & 1.
DMAR_CAP_PI_BIT = 59
# drivers/iommu/amd/amd_iommu_types.h (6.1): FEATURE_GA (1<<7), FEATURE_GAM_VAPIC (1<<21).
AMD_FEATURE_GA = 1 << 7
AMD_FEATURE_GAM_VAPIC = 1 << 21
# EFR2 bits 7:5, FEATURE_SNPAVICSUP_MASK; the IOMMU supports guest vAPIC
# with SNP only when the field is 1 (FEATURE_SNPAVICSUP_GAM, same header).
AMD_EFR2_SNPAVICSUP_SHIFT = 5

# The order of the two registers in ivhd*/amd-iommu/features
# (drivers/iommu/amd/init.c, amd_iommu_show_features):
# - before 6.0: "%llx" of the unit's EFR alone;
# - 6.0 to 6.6: "%llx:%llx" of the unit's features2, features: EFR2 then EFR
#   (added with EFR2 support in the 6.0 SNP series; so Debian 12's 6.1);
# - since 6.7: "%llx:%llx" of the global amd_iommu_efr, amd_iommu_efr2:
#   EFR then EFR2 (commit 7b7563a93437, "iommu/amd: Consolidate feature
#   detection and reporting logic"; so Debian's 6.12). The values are the
#   ones every unit shares (get_global_efr ANDs them), printed in each unit.
AMD_FEATURES_EFR_FIRST_SINCE = (6, 7)

POSTED = "posted"
MAY_BE_POSTED = "may be posted"
NOT_POSTED = "not posted"
UNKNOWN = "unknown"

IOMMU_CLASS = "sys/class/iommu"
KVM_INTEL_APICV = "sys/module/kvm_intel/parameters/enable_apicv"
KVM_AMD_AVIC = "sys/module/kvm_amd/parameters/avic"
# Y only when the host has SEV-SNP on: kvm_amd clears it unless
# CC_ATTR_HOST_SEV_SNP (arch/x86/kvm/svm/sev.c sev_hardware_setup, 6.11+),
# and that attribute is cleared when the IOMMU could not enable SNP
# (drivers/iommu/amd/init.c iommu_snp_enable), so Y implies amd_iommu_snp_en.
KVM_AMD_SEV_SNP = "sys/module/kvm_amd/parameters/sev_snp"


def parse_hex_register(text: str) -> int:
    """A register as sysfs prints it with "%llx" (no 0x prefix). ValueError otherwise."""
    t = text.strip().lower()
    if t.startswith("0x"):
        t = t[2:]
    if not t or len(t) > 16 or any(c not in "0123456789abcdef" for c in t):
        raise ValueError(f"not a 64-bit hex register: {text.strip()[:40]!r}")
    return int(t, 16)


class FeaturesOrderUnknown(ValueError):
    """Two registers in `features`, and no kernel release to order them."""


def parse_amd_features(text: str, release: tuple[int, int] | None = None
                       ) -> tuple[int, int | None]:
    """/sys/class/iommu/ivhdN/amd-iommu/features -> (EFR, EFR2 or None).

    "%llx" of the EFR alone before Linux 6.0; "%llx:%llx", EFR2 then EFR,
    in 6.0-6.6; EFR then EFR2 since 6.7 (AMD_FEATURES_EFR_FIRST_SINCE).
    `release`: (major, minor) of the kernel that printed it; without it two
    values raise FeaturesOrderUnknown. ValueError on anything else.
    """
    parts = text.strip().split(":")
    if len(parts) == 1:
        return parse_hex_register(parts[0]), None
    if len(parts) == 2:
        first, second = parse_hex_register(parts[0]), parse_hex_register(parts[1])
        if release is None:
            raise FeaturesOrderUnknown(
                f"two registers ({text.strip()[:40]}) whose order depends on the kernel "
                "(EFR2:EFR in Linux 6.0-6.6, EFR:EFR2 since 6.7), and the tree has no "
                "readable proc/sys/kernel/osrelease")
        if release >= AMD_FEATURES_EFR_FIRST_SINCE:
            return first, second
        return second, first
    raise ValueError(f"not an AMD IOMMU features value: {text.strip()[:40]!r}")


def _amd_missing(efr: int | None) -> str:
    names = [n for n, bit in (("GA", AMD_FEATURE_GA), ("GAM_VAPIC", AMD_FEATURE_GAM_VAPIC))
             if efr is not None and not efr & bit]
    return " and ".join(names)


class IommuUnit(NamedTuple):
    name: str  # "dmar0", "ivhd0"
    vendor: str  # "intel" | "amd"
    register: int | None  # DMAR capability register, or AMD EFR; None if unreadable
    problem: str | None  # why register is None
    efr2: int | None = None  # AMD EFR2, where the kernel prints it (6.0+)

    @property
    def can_post(self) -> bool | None:
        if self.register is None:
            return None
        if self.vendor == "intel":
            return bool(self.register >> DMAR_CAP_PI_BIT & 1)
        need = AMD_FEATURE_GA | AMD_FEATURE_GAM_VAPIC
        return self.register & need == need


def read_iommu_units(host: HostRoot) -> tuple[tuple[IommuUnit, ...], str | None]:
    """The IOMMUs the kernel registered in /sys/class/iommu, with their
    capability registers. Returns (units, why the class could not be listed)."""
    try:
        names = host.list_dir(IOMMU_CLASS)
    except FactUnavailable as exc:
        return (), f"{exc.path}: {exc.reason}"
    units = []
    release: tuple[int, int] | None = None
    if any(n.startswith("ivhd") for n in names):
        release = read_kernel_release(host)
    for name in names:
        if name.startswith("dmar"):
            vendor, rel = "intel", f"{IOMMU_CLASS}/{name}/intel-iommu/cap"

            def parse(text: str) -> tuple[int, int | None]:
                return parse_hex_register(text), None
        elif name.startswith("ivhd"):
            vendor, rel = "amd", f"{IOMMU_CLASS}/{name}/amd-iommu/features"

            def parse(text: str) -> tuple[int, int | None]:
                return parse_amd_features(text, release)
        else:
            continue  # virtio-iommu, arm-smmu ...: no posting on these
        try:
            register, efr2 = parse(host.read_value(rel))
            units.append(IommuUnit(name, vendor, register, None, efr2))
        except FactUnavailable as exc:
            units.append(IommuUnit(name, vendor, None, f"{exc.path}: {exc.reason}"))
        except ValueError as exc:
            units.append(IommuUnit(name, vendor, None, f"{rel}: {exc}"))
    return tuple(units), None


def _read_cmdline(host: HostRoot) -> KernelCmdline | None:
    try:
        return parse_cmdline(host.read_text("proc/cmdline"))
    except FactUnavailable:
        return None


def _read_interrupts(host: HostRoot) -> Interrupts | None:
    try:
        return parse_interrupts(host.read_text("proc/interrupts", INTERRUPTS_LIMIT))
    except FactUnavailable:
        return None


class IrChips(NamedTuple):
    """What the interrupt chips of /proc/interrupts say about remapping.

    Remapping irq domains prefix their chips with "IR-" (IR-PCI-MSI,
    IR-PCI-MSIX-<bdf>, IR-IO-APIC: arch/x86/kernel/apic/msi.c,
    drivers/iommu/intel/irq_remapping.c, drivers/iommu/amd/iommu.c, 6.1).
    `remapped`: True if an MSI or IO-APIC chip has the prefix, False if x86's
    own chips without it exist (PCI-MSI, PCI-MSIX-<bdf>, IO-APIC) and none
    has it, None if there is none of them (or no table). Only x86 chips
    count: an arm64 GICv3 ITS ("ITS-MSI", "ITS-PCI-MSIX-<bdf>") isolates MSIs
    without any "IR-" prefix (its irq domain is IRQ_DOMAIN_FLAG_ISOLATED_MSI,
    drivers/irqchip/irq-gic-v3-its.c), and vfio attaches its groups.
    posting() and iommu_state() both need it; gather_host scans the table
    once (about 0.9 ms at 20,000 rows) and passes it to both."""

    remapped: bool | None


# x86's interrupt chips outside any remapping domain (arch/x86/kernel/apic/
# io_apic.c "IO-APIC", msi.c "PCI-MSI", and per device "PCI-MSIX-<bdf>" from
# Linux 6.2).
_X86_CHIPS = ("IO-APIC", "PCI-MSI")


def ir_chips(interrupts: Interrupts | None) -> IrChips:
    """Scan the chips of a parsed /proc/interrupts once (see IrChips)."""
    if interrupts is None:
        return IrChips(None)
    seen = False
    for ln in interrupts.lines:
        chip = ln.chip
        if chip and ("MSI" in chip or "APIC" in chip):
            if chip.startswith("IR-"):
                return IrChips(True)  # one remapped chip decides: stop here
            seen = seen or chip.startswith(_X86_CHIPS)
    return IrChips(False if seen else None)


def intremap_settings(cmdline: KernelCmdline) -> tuple[bool, bool]:
    """(remapping disabled, posting disabled) as the command line leaves them.

    drivers/iommu/irq_remapping.c (6.1), setup_irqremap and setup_nointremap:
    early params are applied in command-line order; within intremap= the
    comma list is applied left to right; "on" clears both flags, "off" sets
    both, "nopost" sets only the posting flag, "nointremap" only remapping.
    """
    remap_off = post_off = False
    for key, value in cmdline.params:
        if key == "nointremap":
            remap_off = True
        elif key == "intremap" and value:
            for item in value.split(","):
                if item.startswith("on"):
                    remap_off = post_off = False
                elif item.startswith("off"):
                    remap_off = post_off = True
                elif item.startswith("nopost"):
                    post_off = True
    return remap_off, post_off


def _amd_intr_mode(cmdline: KernelCmdline) -> str | None:
    """amd_iommu_intr=: drivers/iommu/amd/init.c (6.1) parse_amd_iommu_intr
    scans the string for the first "legacy" or "vapic"; a later parameter
    overrides an earlier one."""
    mode = None
    for k, v in cmdline.params:
        if k == "amd_iommu_intr" and v:
            for i in range(len(v)):
                if v.startswith("legacy", i):
                    mode = "legacy"
                    break
                if v.startswith("vapic", i):
                    mode = "vapic"
                    break
    return mode


# ---------------------------------------------------------------------------
# Effective IOMMU and interrupt remapping: what the kernel shows it enabled
# (IR- irqchips in /proc/interrupts, /sys/class/iommu), not what the command
# line asked for (drivers/iommu/intel/irq_remapping.c and amd/init.c may
# refuse or fall back).


class IommuState(NamedTuple):
    vendor: str | None  # "intel" | "amd" | None (from /sys/class/iommu)
    units: tuple[str, ...]  # /sys/class/iommu entries
    dma_remapping: bool | None  # the IOMMU translates DMA (vfio can use it)
    dma_evidence: tuple[str, ...]
    interrupt_remapping: bool | None
    ir_evidence: tuple[str, ...]
    # vfio_iommu_type1's, as loaded, else as it will load (facts.kernel.module_param;
    # where from: KernelFacts.allow_unsafe_param)
    allow_unsafe_interrupts: bool | None

    @property
    def unsafe_interrupts(self) -> bool:
        """Assignment without remapping, allowed by vfio_iommu_type1: the
        state that exposes the host to MSI injection from a guest."""
        return self.interrupt_remapping is False and self.allow_unsafe_interrupts is True


def kernel_config_option(host: HostRoot, option: str) -> str | None:
    """CONFIG_<option> of the running kernel from /boot/config-<release>, as
    Debian installs it: "y", "m", "n" (for "is not set"), or None if unreadable."""
    try:
        release = host.read_value("proc/sys/kernel/osrelease")
        text = host.read_text(f"boot/config-{release}", 1 << 22)
    except FactUnavailable:
        return None
    name = f"CONFIG_{option}"
    for line in text.splitlines():
        if line.startswith(name + "="):
            return line.split("=", 1)[1].strip()
        if line == f"# {name} is not set":
            return "n"
    return None


def iommu_state(host: HostRoot, *, interrupts: Interrupts | None = None,
                cmdline: KernelCmdline | None = None, build_default: bool = True,
                chips: IrChips | None = None,
                units: tuple[tuple[IommuUnit, ...], str | None] | None = None,
                unsafe: ModuleParam | None = None) -> IommuState:
    """Whether DMA remapping and interrupt remapping are in effect, with evidence.

    Preference: the kernel's own state (/sys/class/iommu, IOMMU groups,
    IR- chips in /proc/interrupts), then the command line with the kernel's
    defaults. `build_default=False` leaves out the Intel build default
    (/boot/config-<release>): it only adds a line to dma_evidence and never
    changes a verdict. `chips`: ir_chips() of the interrupts, when the
    caller scanned them already (then `interrupts` is not read); `units`:
    read_iommu_units(host), when the caller read them already.
    """
    if cmdline is None:
        cmdline = _read_cmdline(host)
    if chips is None:
        chips = ir_chips(interrupts if interrupts is not None else _read_interrupts(host))
    units, class_problem = units if units is not None else read_iommu_units(host)
    vendors = {u.vendor for u in units}
    vendor = vendors.pop() if len(vendors) == 1 else None
    names = tuple(u.name for u in units)

    # --- DMA remapping
    dma: bool | None = None
    dma_ev: list[str] = []
    try:
        groups = len(host.list_dir("sys/kernel/iommu_groups"))
    except FactUnavailable as exc:
        groups = 0 if exc.reason == "missing" else None
    if units:
        # Intel registers sysfs units only after DMA remapping was set up
        # (drivers/iommu/intel/iommu.c intel_iommu_init, 6.1: iommu_device_sysfs_add
        # comes after the "no_iommu || dmar_disabled" exit); AMD in iommu_init_pci.
        dma = True
        dma_ev.append(f"{IOMMU_CLASS}: {', '.join(names)}")
    if groups:
        dma = True
        dma_ev.append(f"sys/kernel/iommu_groups: {groups} groups")
    if dma is None and cmdline is not None:
        if cmdline.get("intel_iommu") is not None and "off" in cmdline.values("intel_iommu"):
            dma = False
            dma_ev.append("intel_iommu=off on the command line (drivers/iommu/intel/iommu.c intel_iommu_setup)")
        elif "off" in cmdline.values("amd_iommu"):
            dma = False
            dma_ev.append("amd_iommu=off on the command line (drivers/iommu/amd/init.c parse_amd_iommu_options)")
        elif cmdline.get("iommu") == "off":
            dma = False
            dma_ev.append("iommu=off on the command line (no_iommu: neither driver sets up DMA remapping)")
    if dma is None and groups == 0 and class_problem and class_problem.endswith("missing"):
        # Both places the kernel would show a working IOMMU are empty.
        dma = False
        dma_ev.append("no sys/class/iommu and no IOMMU groups: no IOMMU driver is active")
    if cmdline is not None:
        if "on" in cmdline.values("amd_iommu"):
            dma_ev.append("amd_iommu=on is not an option the kernel knows: it logs \"AMD-Vi: Unknown "
                          "option - 'on'\" and ignores it (drivers/iommu/amd/init.c "
                          "parse_amd_iommu_options); AMD-Vi is on by default")
        if cmdline.get("iommu") == "pt" or "pt" in cmdline.values("iommu"):
            dma_ev.append("iommu=pt: host devices use identity domains; vfio still gets translated domains")
    if build_default and cmdline is not None and cmdline.get("intel_iommu") is None and vendor != "amd":
        # The build default says what a missing intel_iommu= means; with no
        # IOMMU visible despite a default of on, VT-d is off in the firmware.
        cfg = kernel_config_option(host, "INTEL_IOMMU_DEFAULT_ON")
        alt = kernel_config_option(host, "INTEL_IOMMU_DEFAULT_ON_INTGPU_OFF")
        if cfg == "y" or alt == "y":
            dma_ev.append("kernel built with Intel IOMMU on by default (CONFIG_INTEL_IOMMU_DEFAULT_ON"
                          + ("_INTGPU_OFF, Debian 12" if alt == "y" else "") + ")")
        elif cfg == "n" and alt in (None, "n"):
            dma_ev.append("kernel built with Intel IOMMU off by default: needs intel_iommu=on")

    # --- Interrupt remapping
    ir: bool | None = None
    ir_ev: list[str] = []
    if chips.remapped is not None:
        ir = chips.remapped
        ir_ev.append("/proc/interrupts: " + ("IR- chips (IR-PCI-MSI/IR-IO-APIC)" if chips.remapped
                                             else "MSI/IO-APIC chips without the IR- prefix"))
    if cmdline is not None:
        remap_off, _post_off = intremap_settings(cmdline)
        if remap_off:
            ir_ev.append("intremap=off or nointremap on the command line")
            if ir is None:
                ir = False
        if "off" in cmdline.values("amd_iommu"):
            # amd_iommu=off stops the AMD driver before IR is prepared
            # (iommu_go_to_state: IOMMU_CMDLINE_DISABLED, init.c 6.1).
            # With it, no ivhd unit is registered, so sysfs cannot name the
            # vendor; the chips in /proc/interrupts (above) then decide.
            ir_ev.append("amd_iommu=off also turns AMD interrupt remapping off")
        if "off" in cmdline.values("intel_iommu"):
            # Intel IR is prepared from the DMAR table in intel_prepare_irq_remapping
            # without looking at dmar_disabled (irq_remapping.c 6.1): still on.
            ir_ev.append("intel_iommu=off leaves Intel interrupt remapping on (only intremap=off turns it off)")
    if ir is None and units:
        ir_ev.append("no MSI/IO-APIC chip seen; cannot tell from the kernel's state")

    # --- vfio_iommu_type1 (`unsafe`: the kernel facts' reading, when the caller has them)
    if unsafe is None:
        try:
            unsafe = module_param(host, cmdline, *UNSAFE_INTERRUPTS, lambda: read_modprobe_options(host)[0])
        except FactUnavailable:
            unsafe = ModuleParam(None, None)
    return IommuState(vendor=vendor, units=names, dma_remapping=dma, dma_evidence=tuple(dma_ev),
                      interrupt_remapping=ir, ir_evidence=tuple(ir_ev),
                      allow_unsafe_interrupts=parse_bool_param(unsafe.value))


# ---------------------------------------------------------------------------
# Posted interrupts: VT-d posted interrupts with APICv, or AMD AVIC with the
# IOMMU's guest vAPIC mode, deliver a device's MSIs to the vCPU without the
# host's vfio handler (KVM irq bypass, virt/lib/irqbypass.c).


class Posting(NamedTuple):
    verdict: str  # POSTED | MAY_BE_POSTED | NOT_POSTED | UNKNOWN
    vendor: str | None  # "intel" | "amd" | None
    evidence: tuple[str, ...]  # each "why", naming the file or parameter

    @property
    def host_cannot_count_msi(self) -> bool:
        """True where a vfio-msi/-msix counter may stay flat while the device
        works: rules must not infer "no interrupts", storms, rates or
        affinity from those counters. INTx is never posted."""
        return self.verdict in (POSTED, MAY_BE_POSTED)


def _snp_vapic(host: HostRoot, units: list[IommuUnit], no: list[str], unknown: list[str]) -> None:
    """With SEV-SNP on, guest vAPIC mode needs EFR2 SNPAVICSUP = 1 on every
    IOMMU; otherwise enable_iommus_vapic forces AMD_IOMMU_GUEST_IR_LEGACY_GA
    and logs "Force to disable Virtual APIC due to SNP" (drivers/iommu/amd/
    init.c, since the 6.0 SNP series; the check reads the global EFR2, the
    AND of all units, get_global_efr). sev_snp absent (before 6.11) or N:
    nothing to add, the host's SNP being off as far as KVM is concerned."""
    try:
        snp = parse_bool_param(host.read_value(KVM_AMD_SEV_SNP))
    except FactUnavailable as exc:
        if exc.reason != "missing":
            unknown.append(f"{exc.path}: {exc.reason}")
        return
    if snp is not True:
        return
    if any(u.efr2 is None for u in units):
        unknown.append("kvm_amd sev_snp=Y, but the IOMMU's EFR2 (its SNPAVICSUP field decides "
                       "whether SNP leaves guest vAPIC mode on) was not read")
        return
    efr2 = -1
    for u in units:
        efr2 &= u.efr2
    field = efr2 >> AMD_EFR2_SNPAVICSUP_SHIFT & 0x7
    if field != 1:
        no.append(f"kvm_amd sev_snp=Y and EFR2 SNPAVICSUP (bits 7:5) is {field}, not 1, "
                  f"(EFR2 {efr2:x}): with SEV-SNP on, the AMD IOMMU forces legacy GA mode "
                  "(\"Force to disable Virtual APIC due to SNP\", drivers/iommu/amd/init.c "
                  "enable_iommus_vapic), so nothing is posted")


def posting(host: HostRoot, *, interrupts: Interrupts | None = None,
            cmdline: KernelCmdline | None = None, chips: IrChips | None = None,
            units: tuple[tuple[IommuUnit, ...], str | None] | None = None) -> Posting:
    """Are assigned devices' MSI/MSI-X posted to vCPUs on this host?

    "posted": every host condition holds; KVM then posts each MSI that the
    guest aims at one vCPU with fixed or lowest-priority delivery while that
    vCPU's APIC virtualization is active (kvm_intr_is_single_vcpu and
    kvm_irq_is_postable in vmx_pi_update_irte / avic_pi_update_irte, 6.1).
    "may be posted": nothing rules it out but a condition could not be read.
    "not posted": a condition is false; the counters are the truth.
    "unknown": the host shows nothing either way (not x86, unreadable).
    `chips`: ir_chips() of the interrupts, when the caller scanned them
    already (then `interrupts` is not read).
    """
    if cmdline is None:
        cmdline = _read_cmdline(host)
    if chips is None:
        chips = ir_chips(interrupts if interrupts is not None else _read_interrupts(host))
    no: list[str] = []
    yes: list[str] = []
    unknown: list[str] = []

    # KVM side. The sysfs value is the one in force: kvm_intel clears
    # enable_apicv when the CPU lacks APICv (vmx.c hardware_setup), kvm_amd
    # sets avic = avic && avic_hardware_setup() (svm.c svm_hardware_setup, 6.1).
    intel_loaded = host.exists("sys/module/kvm_intel")
    amd_loaded = host.exists("sys/module/kvm_amd")
    kvm_vendor = "intel" if intel_loaded else "amd" if amd_loaded else None
    if kvm_vendor is None:
        no.append("KVM (kvm_intel/kvm_amd) is not loaded: nothing is posted")
    else:
        rel = KVM_INTEL_APICV if kvm_vendor == "intel" else KVM_AMD_AVIC
        name = "enable_apicv" if kvm_vendor == "intel" else "avic"
        try:
            value = parse_bool_param(host.read_value(rel))
        except FactUnavailable as exc:
            value = None
            unknown.append(f"{exc.path}: {exc.reason}")
        if value is True:
            yes.append(f"kvm_{kvm_vendor} {name}=Y")
        elif value is False:
            why = ("vmx_can_use_vtd_pi needs enable_apicv (arch/x86/kvm/vmx/posted_intr.c)"
                   if kvm_vendor == "intel" else
                   "avic is off by default before Linux 6.18 (arch/x86/kvm/svm/svm.c)")
            no.append(f"kvm_{kvm_vendor} {name}=N: KVM never posts; {why}")

    # Command line: posting needs IR, and the IR layer's posting capability.
    if cmdline is not None:
        remap_off, post_off = intremap_settings(cmdline)
        if remap_off:
            no.append("interrupt remapping off on the command line (intremap=off/nointremap): "
                      "posting needs it (irq_remapping_cap, drivers/iommu/irq_remapping.c)")
        elif post_off:
            no.append("intremap=nopost on the command line (disable_irq_post, drivers/iommu/irq_remapping.c)")
        if kvm_vendor != "intel":
            if _amd_intr_mode(cmdline) == "legacy":
                no.append("amd_iommu_intr=legacy: the AMD IOMMU keeps guest vAPIC mode off "
                          "(drivers/iommu/amd/init.c parse_amd_iommu_intr)")
            if "off" in cmdline.values("amd_iommu"):
                no.append("amd_iommu=off: no AMD interrupt remapping, so no posting")

    if chips.remapped is False:
        no.append("/proc/interrupts: MSI/IO-APIC chips lack the IR- prefix: interrupt remapping is off")
    elif chips.remapped is True:
        yes.append("/proc/interrupts: IR- chips, interrupt remapping is on")
    else:
        unknown.append("interrupt remapping not visible in /proc/interrupts")

    # IOMMU hardware: every unit must be able to post.
    units, class_problem = units if units is not None else read_iommu_units(host)
    iommu_units = [u for u in units if kvm_vendor is None or u.vendor == kvm_vendor]
    vendor = kvm_vendor or (iommu_units[0].vendor if iommu_units else None)
    if iommu_units:
        lacking = [u for u in iommu_units if u.can_post is False]
        unread = [u for u in iommu_units if u.can_post is None]
        if lacking:
            if vendor == "intel":
                no.append("DMAR capability bit 59 (PI) clear on " + ", ".join(
                    f"{u.name} (cap {u.register:x})" for u in lacking)
                    + ": posting needs it on every unit (set_irq_posting_cap, "
                      "drivers/iommu/intel/irq_remapping.c)")
            else:
                no.append("AMD IOMMU EFR lacks " + ", ".join(
                    f"{_amd_missing(u.register)} on {u.name} (EFR {u.register:x})" for u in lacking)
                    + ": guest vAPIC mode needs GA (bit 7) and GAM_VAPIC (bit 21) on every "
                      "IOMMU (drivers/iommu/amd/init.c)")
        elif unread:
            unknown.extend(u.problem or u.name for u in unread)
        else:
            what = "DMAR cap bit 59 (PI)" if vendor == "intel" else "EFR GA and GAM_VAPIC"
            yes.append(f"{what} set on every unit: " + ", ".join(
                f"{u.name} {u.register:x}" for u in iommu_units))
        if vendor == "amd" and kvm_vendor == "amd" and not lacking:
            _snp_vapic(host, iommu_units, no, unknown)
    else:
        # Intel registers sysfs units only with DMA remapping on; with
        # intel_iommu=off, IR and PI can still be active (irq_remapping.c 6.1).
        unknown.append(f"no IOMMU capability registers to read ({class_problem or 'no dmar/ivhd units'})")

    if no:
        verdict = NOT_POSTED
        evidence = no
    elif yes and not unknown:
        verdict = POSTED
        evidence = yes
    elif yes:
        verdict = MAY_BE_POSTED
        evidence = yes + [f"unread: {u}" for u in unknown]
    else:
        verdict = UNKNOWN
        evidence = unknown
    if verdict in (POSTED, MAY_BE_POSTED) and vendor == "amd":
        # AVIC is inhibited per VM for some configurations (APICV_INHIBIT_REASON_*,
        # arch/x86/include/asm/kvm_host.h); posting then falls back to remapped mode.
        evidence.append("AVIC can be inhibited per VM (e.g. nested, some Hyper-V "
                        "enlightenments); the vector then reaches the host again")
    return Posting(verdict, vendor, tuple(evidence))
