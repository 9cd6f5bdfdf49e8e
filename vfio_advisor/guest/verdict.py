"""The verdict for one function: a pure function of what was read."""

from __future__ import annotations

from typing import NamedTuple

# verdict -> (one-line meaning, needs action)
VERDICTS = {
    "consistent": ("the device signals with MSI/MSI-X", False),
    "msi-possible-but-off": ("MSI is possible but off: the guest keeps the device on INTx", True),
    "changed-waiting-for-restart": ("changed, waiting for a guest restart", False),
    "reset-since-change": ("reset since the recorded change", True),
    "on-but-still-intx": ("MSI is switched on, yet the device stays on INTx", True),
    "intx-only": ("the device has no MSI capability: INTx is the only choice", False),
    "no-driver": ("no guest driver is bound: the device raises no interrupts", False),
    "not-found": ("no guest function matches the device's IDs", True),
    "unknown": ("the guest's interrupt mode could not be read", False),
    # Not a judgement of the device: the guest's answer was missing or cut
    # short, so not even "not found" can be said. The run fails (exit 2).
    "could-not-read": ("the guest's side could not be read", False),
}
UNREAD = "could-not-read"


class Verdict(NamedTuple):
    name: str
    detail: str

    @property
    def needs_action(self) -> bool:
        return VERDICTS[self.name][1]


def decide(*, mode: str, setting: str, msi_capable: bool | None, change: dict | None,
           driver_version: str | None, restarted_since_change: bool | None) -> Verdict:
    """mode: the effective mode (the guest's, else the host's vfio vectors);
    setting: on | off | default | unknown; change: the last recorded change
    for this function, if any."""
    if mode in ("msi", "msix"):
        done = f", since the change of {change['at']}" if change else ""
        return Verdict("consistent", f"the device signals with {mode.upper().replace('X', '-X')}{done}")
    if mode == "none":
        return Verdict("no-driver", VERDICTS["no-driver"][0])
    if msi_capable is False:
        return Verdict("intx-only", VERDICTS["intx-only"][0])
    if change is not None:
        recorded = change.get("driver_version")
        if setting in ("off", "default"):
            if driver_version and recorded and driver_version != recorded:
                return Verdict("reset-since-change",
                               f"the driver is newer than the recorded change ({recorded} on "
                               f"{change['at']}, now {driver_version}): its installer reset the setting")
            return Verdict("reset-since-change",
                           f"the setting written on {change['at']} is gone (same driver "
                           f"{recorded or 'version unknown'}): reset by hand or by a tool")
        if setting == "on":
            if restarted_since_change:
                return Verdict("on-but-still-intx",
                               "the guest restarted after the change and still uses INTx: the driver "
                               "has no MSI support, or the change went to another instance")
            if mode == "unknown" and restarted_since_change is None:
                return Verdict("changed-waiting-for-restart",
                               f"changed on {change['at']}; the guest must restart")
            return Verdict("changed-waiting-for-restart", f"changed on {change['at']}; "
                           "the setting takes effect when the guest restarts")
    if mode == "unknown":
        if setting == "off":  # switched off explicitly: no need to see the mode
            return Verdict("msi-possible-but-off", "MSI is switched off in the guest")
        return Verdict("unknown", VERDICTS["unknown"][0])
    if setting == "on":
        return Verdict("on-but-still-intx", "MSI is switched on, yet the device uses INTx: the "
                       "guest has not restarted since, or the driver has no MSI support")
    if setting in ("off", "default"):
        return Verdict("msi-possible-but-off", VERDICTS["msi-possible-but-off"][0])
    return Verdict("unknown", "INTx, and no known setting of this driver switches MSI")
