"""Remedies: the machine-made fixes rules name (`Fix`), and the
guest-OS-specific remedies for "the guest driver keeps the device on INTx".

Everything that comes from outside (device names, IDs) is escaped for the
language it lands in: PowerShell single-quoted strings double their quotes;
shell words are quoted with shlex.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from vfio_advisor.facts.model import AssignedDevice, DomainFacts
from vfio_advisor.facts.pci import PciDevice

class Fix(NamedTuple):
    """What computes an exact fix of a rule's findings: `Rule(..., fix=Fix(...))`.

    The planner is named, not imported: rules load in the hook, which must
    stay fast and never load libvirt or lxml, while a planner verifies its
    change with libvirt (vfio_advisor/fix/planner.py). The fixer of `kind`
    resolves `planner` in its own module; the fixable rules of a kind are
    the rules that name it, in `stage` order (each change alters what the
    next stage sees)."""

    kind: str  # DOMAIN_XML: `vfio-advisor fix`; GUEST: `vfio-advisor fix --guest`
    planner: str  # the planner function's name in the kind's module
    stage: int  # planning order within the kind
    command: str  # the closing sentence of the remedy; {name}: the domain as a shell word

    def pointer(self, domain_name: str | None) -> str:
        """The pointer the sinks add to the remedy (with its leading space),
        naming the domain as one shell word (libvirt allows spaces and quotes
        in domain names)."""
        import shlex  # noqa: PLC0415 - only when such a finding is made

        return " " + self.command.format(name=shlex.quote(domain_name or "DOMAIN"))


DOMAIN_XML = "domain-xml"


def domain_xml_fix(planner: str, stage: int) -> Fix:
    """A change of the domain XML, planned and verified by `vfio-advisor fix`.
    The hook cannot plan one: planning verifies each change with libvirt's
    test driver, and the hook must never load libvirt (it runs inside
    libvirtd's start sequence, https://libvirt.org/hooks.html). So the
    remedy points at the command that computes and verifies the change."""
    return Fix(DOMAIN_XML, planner, stage,
               "Exact verified change: `vfio-advisor fix {name}` (add --apply to define it).")


GUEST = "guest"


def guest_fix(planner: str) -> Fix:
    """A change inside the running guest, through the QEMU guest agent:
    planned by `vfio-advisor fix --guest` (vfio_advisor/guest/plan.py names
    `planner`), shown before it runs, run only with --apply, read back and
    recorded for the daemon's confirmation after the guest's restart. The
    hook never plans one: it must not call libvirt, and the agent is reached
    only through it (virDomainQemuAgentCommand)."""
    return Fix(GUEST, planner, 0,
               "Exact guest commands: `vfio-advisor fix --guest {name}` (through the QEMU guest "
               "agent; add --apply to run them, then restart the guest).")


MSI_REGISTRY_PATH = (r"HKLM\SYSTEM\CurrentControlSet\Enum\<Device Instance Path>"
                     r"\Device Parameters\Interrupt Management\MessageSignaledInterruptProperties")


def ps_quote(text: str) -> str:
    """A PowerShell single-quoted string literal (about_Quoting_Rules)."""
    # PowerShell also treats the typographic quotes U+2018/U+2019/U+201A/U+201B
    # as single quotes; double them too.
    out = []
    for ch in text:
        out.append(ch * 2 if ch in "'\u2018\u2019\u201a\u201b" else ch)
    return "'" + "".join(out) + "'"


def windows_msi_remedy(devices: list[PciDevice]) -> str:
    ids = [d.hardware_id for d in devices if d.hardware_id]
    names = ", ".join(f"{d.address} {d.name} ({d.hardware_id or 'ID unknown'})" for d in devices)
    lines = [
        f"In the Windows guest set the DWORD MSISupported=1 under {MSI_REGISTRY_PATH} "
        f"for every function of this device: {names}. "
        "Device Manager > device > Details > Device instance path gives the path. "
        "A driver update resets the value, so check again after one. Reboot the guest afterwards.",
    ]
    if ids:
        id_list = ", ".join(ps_quote(i) for i in ids)
        lines.append(
            "PowerShell (as Administrator in the guest):\n"
            f"  $ids = @({id_list})\n"
            "  Get-PnpDevice -PresentOnly | Where-Object { $i = $_.InstanceId; "
            "$ids | Where-Object { $i.StartsWith($_ + '\\') } } | ForEach-Object {\n"
            "    $key = 'HKLM:\\SYSTEM\\CurrentControlSet\\Enum\\' + $_.InstanceId + "
            "'\\Device Parameters\\Interrupt Management\\MessageSignaledInterruptProperties'\n"
            "    if (-not (Test-Path -LiteralPath $key)) { New-Item -Path $key -Force | Out-Null }\n"
            "    New-ItemProperty -LiteralPath $key -Name 'MSISupported' -PropertyType DWord "
            "-Value 1 -Force | Out-Null\n"
            "    'MSISupported=1: ' + $_.FriendlyName }")
    return "\n".join(lines)


def linux_module_option(device: PciDevice) -> tuple[str, str] | None:
    """(module, option) that turns MSI on for this kind of device in a Linux guest."""
    if device.is_hda_audio:
        # sound/pci/hda/hda_intel.c: enable_msi (-1 = driver default, which is
        # off for some AMD/NVIDIA HDMI controllers on older kernels).
        return "snd_hda_intel", "enable_msi=1"
    if device.is_display and device.vendor_id == 0x10DE:
        # The proprietary driver's NVreg_EnableMSI (default 1 since ~R375, 0 before).
        return "nvidia", "NVreg_EnableMSI=1"
    if device.is_display and device.vendor_id == 0x1002:
        # drivers/gpu/drm/amd/amdgpu/amdgpu_drv.c: amdgpu.msi (-1 auto, 1 on).
        return "amdgpu", "msi=1"
    return None


def linux_msi_remedy(devices: list[PciDevice]) -> str:
    parts = []
    for device in devices:
        option = linux_module_option(device)
        if option:
            module, opt = option
            import shlex  # noqa: PLC0415 - only when this remedy is written

            conf = f"options {module} {opt}"
            parts.append(
                f"{device.address} {device.name}: in the guest, add "
                f"{shlex.quote(conf)} to /etc/modprobe.d/vfio-advisor-msi.conf "
                f"(or {module}.{opt} on the guest kernel command line), then rebuild the "
                "initramfs if the module loads from it, and reboot. "
                "Check with: grep -i msi /proc/interrupts in the guest.")
        else:
            parts.append(
                f"{device.address} {device.name}: find the guest driver with "
                "'lspci -k' in the guest, then look for an MSI option with "
                "'modinfo -p <module> | grep -i msi'. If there is none, the driver "
                "chose INTx on purpose (some hardware has broken MSI).")
    return "\n".join(parts)


def guest_msi_remedy(facts: DomainFacts, dev: AssignedDevice,
                     on_intx: Callable[[AssignedDevice], bool] | None = None) -> str:
    """The one remedy for "the guest keeps this device on INTx" (VA1001,
    VA6001, VA6003): every function of the card that the domain assigns is
    named for Windows. `on_intx` says whether a sibling is on INTx now (the
    daemon knows that from its samples; advise from the facts)."""
    on_intx = on_intx or (lambda d: d.interrupts.on_intx)
    siblings = [(s.device, on_intx(s)) for s in facts.siblings(dev) if s.device is not None]
    return msi_remedy_for(facts.domain.guest_os, dev.device, siblings)


def host_msi_remedy(reasons: list[str]) -> str:
    """The remedy when the host, not the guest, keeps a device off MSI."""
    why = "; ".join(reasons) if reasons else "the host does not allow MSI for this device"
    return ("The guest cannot switch this device to MSI: the host forbids it (" + why + "). "
            "Remove pci=nomsi from the host kernel command line, or re-enable msi_bus where "
            "it is safe (see VA3001); no guest setting helps until then.")


def msi_remedy_for(guest_os: str, device: PciDevice,
                   siblings: list[tuple[PciDevice, bool]]) -> str:
    """The remedy for `device` on INTx. `siblings`: the other functions of the
    same card assigned to the domain, with whether each is on INTx too.
    Windows keeps MSISupported per function, so all are named (GPU and HDMI
    audio); a Linux module option matters only for those on INTx."""
    named = [d for d, on_intx in siblings if guest_os == "windows" or on_intx]
    return msi_remedy(guest_os, [device] + named)


def msi_remedy(guest_os: str, devices: list[PciDevice]) -> str:
    if guest_os == "windows":
        return windows_msi_remedy(devices)
    if guest_os == "linux":
        return linux_msi_remedy(devices)
    return ("Guest OS unknown (add libosinfo metadata to the domain to get exact steps). "
            "Windows: " + windows_msi_remedy(devices) + "\nLinux: " + linux_msi_remedy(devices))
