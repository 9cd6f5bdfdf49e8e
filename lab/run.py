#!/usr/bin/env python3
"""The VFIO lab: boot scenarios in QEMU (TCG, q35, intel-iommu with
interrupt remapping), where the guest binds emulated devices to vfio-pci and
a small VFIO user enables INTx, MSI or MSI-X exactly as QEMU does, then
capture each moment as a host tree in `vfio-advisor snapshot`'s layout.

    lab/run.py [--scenario NAME ...] [--out DIR]      (make lab: all, into lab/captures)

Each capture is a real guest kernel's /proc and /sys, trimmed to what
vfio-advisor reads; lab/captures/ORIGIN.md records how they were made.
"""

from __future__ import annotations

import argparse
import base64
import io
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

LAB = Path(__file__).resolve().parent
REPO = LAB.parent
CACHE = REPO / ".cache/lab"
QEMU = "qemu-system-x86_64"

# Guest addresses on pcie.0; scenarios.sh uses the same.
SCENARIOS = {
    "modes": ["-device", "edu,addr=3", "-device", "edu,addr=4", "-device", "virtio-rng-pci,addr=5"],
    "shared": ["-device", "edu,addr=3", "-device", "edu,addr=7",
               "-device", "virtio-rng-pci,addr=0xb,vectors=0"],
    "switch": ["-device", "edu,addr=3", "-device", "virtio-rng-pci,addr=5"],
    "stays-intx": ["-device", "edu,addr=3"],
    "storm-shared": ["-device", "edu,addr=3", "-device", "edu,addr=7"],
}


def qemu_command(scenario: str) -> list[str]:
    return [QEMU, "-machine", "q35,kernel-irqchip=split", "-accel", "tcg", "-m", "512",
            "-nographic", "-vga", "none", "-no-reboot", "-net", "none",
            "-kernel", str(CACHE / "vmlinuz"), "-initrd", str(CACHE / "lab-initrd.img"),
            "-append", f"console=ttyS0 quiet intel_iommu=on lab.scenario={scenario} panic=-1",
            # Interrupt remapping, as on a real VFIO host (vfio refuses MSI without it
            # unless allow_unsafe_interrupts is set).
            "-device", "intel-iommu,intremap=on", *SCENARIOS[scenario]]


def boot(scenario: str, timeout: float = 240) -> str:
    out = subprocess.run(qemu_command(scenario), capture_output=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    return out.stdout.decode("utf-8", "replace").replace("\r", "")


def captures(console: str) -> dict[str, bytes]:
    found = {}
    for m in re.finditer(r"LAB-CAPTURE-BEGIN (\S+)\n(.*?)LAB-CAPTURE-END \1", console, re.S):
        found[m.group(1)] = base64.b64decode("".join(m.group(2).split()))
    return found


def extract(blob: bytes, out: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        for member in tar.getmembers():
            if member.issym():
                continue  # links are made below, after their directories exist
            if hasattr(tarfile, "data_filter"):
                tar.extract(member, out, filter="data")
            else:
                tar.extract(member, out)
        for member in tar.getmembers():
            if member.issym():
                path = out / member.name
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.is_symlink() or path.exists():
                    path.unlink()
                path.symlink_to(member.linkname)


def run(names: list[str], out: Path) -> int:
    subprocess.run([str(LAB / "build.sh"), str(CACHE)], check=True)
    out.mkdir(parents=True, exist_ok=True)
    qemu_version = subprocess.run([QEMU, "--version"], capture_output=True,
                                  text=True).stdout.splitlines()[0]
    kernel = (CACHE / "kernel.version").read_text().strip()
    made = []
    failed = 0
    for name in names:
        t0 = time.monotonic()
        console = boot(name)
        got = captures(console)
        errors = [line for line in console.splitlines() if line.startswith("LAB-ERROR")]
        users = [line[9:] for line in console.splitlines() if line.startswith("LAB-USER ")]
        if errors or not got or f"LAB-DONE {name}" not in console:
            failed += 1
            print(f"{name}: FAILED ({'; '.join(errors) or 'no capture'})", file=sys.stderr)
            (out / f"{name}.console.txt").write_text(console)
            continue
        for moment, blob in got.items():
            target = out / moment
            if target.exists():
                shutil.rmtree(target)
            extract(blob, out)
            made.append((name, moment))
        print(f"{name}: {len(got)} capture(s) in {time.monotonic() - t0:.1f} s; "
              + "; ".join(users))
    origin = out / "ORIGIN.md"
    lines = [
        "# Lab captures",
        "",
        "Real guest-kernel states, not hand-written fixtures. Made by `make lab` (lab/run.py):",
        f"QEMU ({qemu_version}) under TCG boots a q35 machine with `intel-iommu,intremap=on`",
        f"and Debian's {kernel} with `intel_iommu=on`; the guest binds QEMU `edu` and",
        "`virtio-rng-pci` devices to vfio-pci, and lab/vfio-user.c enables their interrupts",
        "with VFIO_DEVICE_SET_IRQS as QEMU does (and makes the edu devices raise them).",
        "Each directory is one moment, captured by lab/guest-init.sh as the guest saw it:",
        "proc/interrupts, proc/cmdline, proc/uptime (the moment's clock), proc/irq/*/",
        "smp_affinity_list, and for every PCI device the sysfs files and links",
        "vfio-advisor reads. Nothing was edited.",
        "",
        "| scenario | moment | devices (qemu -device) |",
        "|---|---|---|",
    ]
    for name, moment in sorted(made):
        devices = " ".join(a for a in SCENARIOS[name] if a != "-device")
        lines.append(f"| {name} | {moment} | `{devices}` |")
    if made:
        previous = origin.read_text().splitlines() if origin.exists() else []
        kept = [line for line in previous if line.startswith("| ") and not line.startswith("| scenario")
                and not line.startswith("|---") and line.split(" | ")[0][2:] not in names]
        origin.write_text("\n".join(lines[:15] + sorted(set(kept + lines[15:]))) + "\n")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--out", type=Path, default=LAB / "captures")
    args = parser.parse_args()
    if shutil.which(QEMU) is None:
        print("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)", file=sys.stderr)
        return 2
    return run(args.scenario or sorted(SCENARIOS), args.out)


if __name__ == "__main__":
    sys.exit(main())
