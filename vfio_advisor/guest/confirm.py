"""Confirming a guest change from the host, read-only: a pure function the
daemon can call on each sample of an assigned device.

After `fix --guest --apply` recorded a change (changes.py), the guest must
restart. Once it has, the host's own view settles the question: vfio-pci
enables MSI/MSI-X on the host only when the guest driver does (the
vfio-msi/vfio-msix handlers appear in the host's /proc/interrupts;
drivers/vfio/pci/vfio_pci_intrs.c), while INTx stays vfio-intx.
With posted interrupts the vfio-msi counters do not move, but the handlers are
still registered, so the mode is still seen.
"""

from __future__ import annotations

from typing import NamedTuple

from vfio_advisor.guest.changes import last_change


class Confirmation(NamedTuple):
    severity: str  # "info" (resolved) | "warning" (still on INTx)
    host_bdf: str
    message: str


LIKELY_CAUSES = {
    "windows": "MSISupported was reset (a driver update), the change went to another instance of "
               "the device, or the driver does not use MSI",
    "linux": "a later modprobe.d file or the kernel command line overrides the option, the module "
             "loads from an initramfs built before the change, or the driver does not use MSI",
}


def confirm_from_host(change: dict | None, host_bdf: str, host_mode: str,
                      guest_restarted_at: float | None) -> Confirmation | None:
    """change: the last recorded change for host_bdf (changes.last_change);
    host_mode: the device's mode sampled now (intx | msi | msix | none | unknown);
    guest_restarted_at: host time of the guest's last start or reboot (libvirt's
    lifecycle STARTED or REBOOT event), None if not seen.

    None while there is nothing to say: no change, the guest not restarted
    since, or the device not yet enabled by the guest driver."""
    if change is None or guest_restarted_at is None:
        return None
    if guest_restarted_at <= float(change.get("epoch", 0)):
        return None  # the change waits for the guest's restart
    what = f"the guest change of {change.get('at', '?')} ({change.get('target', 'setting')})"
    if host_mode in ("msi", "msix"):
        return Confirmation("info", host_bdf, f"{host_bdf} now uses {host_mode.upper()} on the host "
                            f"after {what}: resolved")
    if host_mode == "intx":
        causes = LIKELY_CAUSES.get(str(change.get("os")), LIKELY_CAUSES["linux"])
        return Confirmation("warning", host_bdf, f"{host_bdf} is still on INTx after {what} and a guest "
                            f"restart: {causes}; `vfio-advisor guest DOMAIN` reads the guest's side")
    return None


def confirm_device(changes: list[dict], host_bdf: str, host_mode: str,
                   guest_restarted_at: float | None) -> Confirmation | None:
    """confirm_from_host for the last change recorded for host_bdf."""
    return confirm_from_host(last_change(changes, host_bdf), host_bdf, host_mode, guest_restarted_at)
