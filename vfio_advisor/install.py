"""`vfio-advisor install` / `uninstall`: place the hook, the config and the
message catalog, and update the catalog database."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from vfio_advisor.catalog import render_catalog

HOOK_DIR = "etc/libvirt/hooks/qemu.d"
HOOK_NAME = "vfio-advisor"
CATALOG = "usr/lib/systemd/catalog/vfio-advisor.catalog"
CONFIG = "etc/vfio-advisor/config.toml"
UNIT = "etc/systemd/system/vfio-advisor.service"

DEFAULT_CONFIG_TEXT = """\
# vfio-advisor configuration (TOML). The daemon rereads it on SIGHUP
# (systemctl reload vfio-advisor); command-line flags win over it.

[daemon]
# Seconds between two reads of /proc/interrupts while a watched domain runs.
interval = 5
# Seconds after a domain starts before INTx counts as the guest's choice
# (vfio-pci starts every device on INTx; drivers switch to MSI as they load).
settle = 60
# INTx per second that count as a storm, and for how many samples in a row.
storm_rate = 20000
storm_samples = 3
# Rules (IDs or slugs) never to report.
disabled_rules = []
# metrics_file = "/var/lib/prometheus/node-exporter/vfio-advisor.prom"

# Per-domain ignores (also possible in the domain's own <metadata>):
# [domains.win11]
# ignore = ["VA6007"]

[hook]
# Stop analysing after this many seconds; the VM start goes on regardless.
timeout = 10
# true: refuse to start a domain with error-level findings (such as VA2002,
# a device that will fail with "Device or resource busy"). Off by default:
# the hook only advises.
block_on_error = false
"""


def render_hook(python: str, config: str) -> str:
    text = resources.files("vfio_advisor").joinpath("data/qemu-hook.sh").read_text()
    # Replacements as functions: re.sub would read backslashes in a path as escapes.
    text = re.sub(r"^VFIO_ADVISOR_PYTHON=.*$", lambda _: f"VFIO_ADVISOR_PYTHON={_sh(python)}",
                  text, count=1, flags=re.M)
    return re.sub(r"^VFIO_ADVISOR_CONFIG=.*$", lambda _: f"VFIO_ADVISOR_CONFIG={_sh(config)}",
                  text, count=1, flags=re.M)


def render_unit(python: str) -> str:
    """The daemon's unit, started with this interpreter (so a venv install works)."""
    text = resources.files("vfio_advisor").joinpath("data/vfio-advisor.service").read_text()
    # systemd.service(5) command lines: double-quote the path, escape \\ and ",
    # and double % (specifiers).
    quoted = '"' + python.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'
    return re.sub(r"^ExecStart=.*$", lambda _: f"ExecStart={quoted} -m vfio_advisor daemon", text,
                  count=1, flags=re.M)


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _update_catalog(root: Path) -> str:
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        return "journalctl not found: catalog placed but not indexed"
    cmd = [journalctl, "--update-catalog"]
    if root.resolve() != Path("/"):
        cmd.insert(1, f"--root={root}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"journalctl --update-catalog failed: {proc.stderr.strip()}"
    return "catalog database updated (journalctl -x will explain entries)"


def install(root: str = "/", python: str | None = None, config: str | None = None,
            classic: bool = False) -> list[str]:
    base = Path(root)
    python = python or sys.executable
    config_path = config or "/" + CONFIG
    notes = []
    hooks_dir = base / HOOK_DIR
    had_hooks = (base / "etc/libvirt/hooks").is_dir() and any((base / "etc/libvirt/hooks").iterdir())
    target = (base / "etc/libvirt/hooks/qemu") if classic else (hooks_dir / HOOK_NAME)
    if classic and target.exists() and "vfio_advisor.hook" not in target.read_text(errors="replace"):
        raise FileExistsError(f"{target} is someone else's hook; not replacing it. Install "
                              "without --classic (qemu.d/vfio-advisor runs next to it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_hook(python, config_path))
    target.chmod(0o755)
    notes.append(f"hook: {target}")
    cfg = base / config_path.lstrip("/")
    if not cfg.exists():
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(DEFAULT_CONFIG_TEXT)
        notes.append(f"config: {cfg}")
    cat = base / CATALOG
    cat.parent.mkdir(parents=True, exist_ok=True)
    cat.write_text(render_catalog())
    notes.append(f"catalog: {cat}; {_update_catalog(base)}")
    unit = base / UNIT
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(render_unit(python))
    notes.append(f"daemon unit: {unit} (start it with: systemctl daemon-reload && "
                 "systemctl enable --now vfio-advisor)")
    if not had_hooks:
        notes.append("libvirtd looks for hooks only when it starts: restart it once "
                     "(systemctl restart libvirtd) so the hook runs at the next VM start.")
    return notes


def uninstall(root: str = "/") -> list[str]:
    base = Path(root)
    notes = []
    for rel in (f"{HOOK_DIR}/{HOOK_NAME}", CATALOG, UNIT):
        path = base / rel
        if path.exists():
            path.unlink()
            notes.append(f"removed {path}")
    classic = base / "etc/libvirt/hooks/qemu"
    if classic.exists() and "vfio_advisor.hook" in classic.read_text(errors="replace"):
        classic.unlink()
        notes.append(f"removed {classic}")
    notes.append(_update_catalog(base))
    notes.append(f"kept {base / CONFIG} (remove it by hand if you want)")
    return notes
