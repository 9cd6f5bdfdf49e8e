"""Linux drivers whose MSI use a module option turns on or off, with where
each option is defined. Only these are ever written by `fix --guest`."""

from __future__ import annotations

from typing import NamedTuple


class MsiOption(NamedTuple):
    module: str
    parameter: str
    on: str  # the value that asks for MSI
    off: frozenset[str]  # values that keep the driver on INTx
    default: str  # what an unset option means
    source: str


KNOWN_OPTIONS: dict[str, MsiOption] = {o.module: o for o in (
    MsiOption("snd_hda_intel", "enable_msi", "1", frozenset({"0"}),
              "-1: MSI unless the controller is on the driver's deny list",
              "Linux sound/pci/hda/hda_intel.c: module_param(enable_msi, bint, 0444), "
              "check_msi() (6.1)"),
    MsiOption("amdgpu", "msi", "1", frozenset({"0"}), "-1: auto (MSI)",
              "Linux drivers/gpu/drm/amd/amdgpu/amdgpu_drv.c: MODULE_PARM_DESC(msi, "
              "\"MSI support (1 = enable, 0 = disable, -1 = auto)\")"),
    MsiOption("radeon", "msi", "1", frozenset({"0"}), "-1: auto (MSI on most chips)",
              "Linux drivers/gpu/drm/radeon/radeon_drv.c: MODULE_PARM_DESC(radeon_msi, "
              "\"MSI support (1 = enable, 0 = disable, -1 = auto)\")"),
    MsiOption("nvidia", "NVreg_EnableMSI", "1", frozenset({"0"}), "1 since driver 340 (MSI)",
              "NVIDIA Linux driver README, \"Common Problems\": NVreg_EnableMSI"),
    MsiOption("e1000e", "IntMode", "2", frozenset({"0"}), "2: MSI-X",
              "Linux drivers/net/ethernet/intel/e1000e/param.c: IntMode "
              "(0 legacy, 1 MSI, 2 MSI-X)"),
)}


def setting_state(option: MsiOption, value: str | None) -> str:
    """on | off | default | unknown for the value the running module shows."""
    if value is None:
        return "unknown"
    value = value.strip()
    if value == option.on or (option.parameter == "enable_msi" and value in ("1", "Y")):
        return "on"
    if value in option.off or (option.parameter == "enable_msi" and value == "N"):
        return "off"
    return "default"
