"""VA6002 (the switch from INTx to MSI after VA6001) across a guest reboot.

A reboot resets the device: QEMU frees every vfio handler for the reset and
requests vfio-intx again after it (hw/vfio/pci.c vfio_pci_pre_reset,
vfio_pci_post_reset), so a sample can find the device on no vector at all.
The switch that follows is still INTx -> MSI. The nested guest loop saw
VA6009 but no VA6002 after an agent reboot (QEMU reset L2 three times)."""

from __future__ import annotations

import pytest

from tests.daemon.scenarios import Scenario, intx_rows, msi_rows

NO_VECTOR = {28: None}  # the audio's INTx row gone: the reset, between handlers


@pytest.mark.parametrize("boot", [
    [intx_rows(48000)],                        # the reset fell between two samples
    [NO_VECTOR],                               # a sample inside the reset, then MSI at once
    [NO_VECTOR, intx_rows(48000)],             # inside the reset, then the firmware on INTx
    [intx_rows(48000), NO_VECTOR, NO_VECTOR],  # QEMU resets more than once per reboot
], ids=["reset-unseen", "reset-then-msi", "reset-then-intx", "two-resets"])
def test_the_switch_after_a_reboot_is_said_once(tmp_path, boot):
    s = Scenario(tmp_path)
    count = 0
    for t in range(0, 80, 5):  # settled at 60 s, counting on INTx: VA6001
        count += 3000
        s.at(t, intx_rows(count))
    assert [e["rule"] for e in s.emitted] == ["VA6001"]
    s.clock.now = 1000.0 + 80
    s.watcher.rebooted("win11")
    t = 80
    for rows in boot:
        t += 5
        s.at(t, rows)
    assert [e["rule"] for e in s.emitted] == ["VA6001"]
    s.at(t + 5, msi_rows(100))
    s.at(t + 10, msi_rows(900))
    assert [e["rule"] for e in s.emitted] == ["VA6001", "VA6002"]


def test_a_device_never_flagged_says_no_switch_across_a_reset(tmp_path):
    """Idle on INTx (held back, not flagged), a reset, then MSI: nothing had
    been said about INTx, so there is no switch to report."""
    s = Scenario(tmp_path)
    for t in range(0, 80, 5):
        s.at(t, intx_rows(5000))
    s.watcher.rebooted("win11")
    s.at(85, NO_VECTOR)
    s.at(90, msi_rows(100))
    assert [e["rule"] for e in s.emitted] == []
