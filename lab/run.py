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
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

LAB = Path(__file__).resolve().parent
REPO = LAB.parent
# Downloads and the built guest live outside the clone (the project's rule for caches).
CACHE = Path(os.environ.get("VFIO_ADVISOR_LAB_CACHE", "/var/cache/vfio-advisor-tests/lab"))
QEMU = "qemu-system-x86_64"

# Guest addresses on pcie.0; scenarios.sh uses the same.
SCENARIOS = {
    "modes": ["-device", "edu,addr=3", "-device", "edu,addr=4", "-device", "virtio-rng-pci,addr=5"],
    "shared": ["-device", "edu,addr=3", "-device", "edu,addr=7",
               "-device", "virtio-rng-pci,addr=0xb,vectors=0"],
    "switch": ["-device", "edu,addr=3", "-device", "virtio-rng-pci,addr=5"],
    "stays-intx": ["-device", "edu,addr=3"],
    "storm-shared": ["-device", "edu,addr=3", "-device", "edu,addr=7"],
    # Slots 3 and 7, pin A, both swizzle to PIRQH (GSI 23) on q35's root bus.
    "nointxmask": ["-device", "edu,addr=3", "-device", "edu,addr=7"],
    "nomsi": ["-device", "edu,addr=3"],
    "intremap-off": ["-device", "edu,addr=3", "-device", "edu,addr=4",
                     "-device", "virtio-rng-pci,addr=5"],
    "isolcpus": ["-device", "edu,addr=3"],
    # A conventional PCI-to-PCI bridge (QEMU pci-bridge: no PCIe capability,
    # so no ACS) on pcie.0 with two functions behind it: the kernel puts the
    # bridge and everything behind it in one IOMMU group (drivers/iommu/iommu.c
    # pci_device_group: the functions' DMA alias is the bridge's requester ID,
    # drivers/pci/search.c pci_for_each_dma_alias, Linux 6.1).
    # (The edu at 00:03.0, in a group of its own, is the device the lab's
    # domains assign, as in every capture.)
    "group-not-viable": ["-device", "edu,addr=3", "-device", "pci-bridge,id=br1,chassis_nr=1,addr=0x10",
                         "-device", "edu,bus=br1,addr=1", "-device", "virtio-rng-pci,bus=br1,addr=2"],
    # VT-d off in the firmware: no intel-iommu device, so no DMAR table,
    # although the command line asks for intel_iommu=on.
    "iommu-off": ["-device", "edu,addr=3", "-device", "virtio-rng-pci,addr=5"],
    # vfio-pci never loaded (guest-init.sh skips it for this scenario).
    "no-vfio-pci": ["-device", "edu,addr=3", "-device", "virtio-rng-pci,addr=5"],
}
# Scenarios whose machine has no emulated IOMMU (the firmware offers none).
WITHOUT_IOMMU = {"iommu-off"}

# The host kernel's state each scenario is about: its command line (module
# options too; guest-init.sh hands "module.option=" to insmod as modprobe
# would) and its CPU count.
KERNEL_ARGS = {
    "nointxmask": "vfio_pci.nointxmask=1",
    "nomsi": "pci=nomsi",
    "intremap-off": "intremap=off vfio_iommu_type1.allow_unsafe_interrupts=1",
    "isolcpus": "isolcpus=1 irqaffinity=0",
}
CPUS = {"isolcpus": 2}


def guest_accel():
    """KVM where a Debian kernel really boots under this host's /dev/kvm,
    else TCG (tests/support/accel.py, once per host boot; docs/kvm.md). The
    captures do not depend on it: vfio, the IOMMU and the edu devices are
    QEMU's emulation either way."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.support import accel  # the lab is a test tool; the probe lives with the tests
    return accel.choose(CACHE / "vmlinuz")


def qemu_command(scenario: str) -> list[str]:
    return [QEMU, "-machine", "q35,kernel-irqchip=split", *guest_accel().qemu_args, "-m", "512",
            "-nographic", "-vga", "none", "-no-reboot", "-net", "none",
            "-kernel", str(CACHE / "vmlinuz"), "-initrd", str(CACHE / "lab-initrd.img"),
            "-smp", str(CPUS.get(scenario, 1)),
            "-append", f"console=ttyS0 quiet intel_iommu=on {KERNEL_ARGS.get(scenario, '')} "
                       f"lab.scenario={scenario} panic=-1".replace("  ", " "),
            # Interrupt remapping, as on a real VFIO host (vfio refuses MSI without it
            # unless allow_unsafe_interrupts is set).
            *([] if scenario in WITHOUT_IOMMU else ["-device", "intel-iommu,intremap=on"]),
            *SCENARIOS[scenario]]


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


# Kernel log lines and VFIO user output that prove a scenario's state (and,
# second, log lines whose absence does); ORIGIN.md quotes them.
EVIDENCE = {
    "nointxmask": (r"genirq: Flags mismatch.*|vfio-user: .*errno.*", None),
    "nomsi": (r"FALLBACK .*", None),
    # drivers/iommu/intel/irq_remapping.c (Linux 6.1) logs this when it turns remapping on.
    "intremap-off": (r"DMAR: IOMMU enabled", r"DMAR-IR: Enabled IRQ remapping"),
    "isolcpus": (r"Kernel command line: .*", None),
    "group-not-viable": (r"vfio-user: .*|PHASE 1 READY .*|pci 0000:01:0[12]\.0: Adding to iommu group \d+",
                         None),
    # "DMAR: IOMMU enabled" is only intel_iommu_setup reading the command
    # line; with no DMAR table (ACPI) nothing else follows.
    "iommu-off": (r"vfio-pci: probe of .*|Kernel command line: .*|DMAR: IOMMU enabled", r"ACPI: DMAR"),
    "no-vfio-pci": (None, None),
}


def evidence(moment: Path, scenario: str) -> str:
    present, absent = EVIDENCE.get(scenario, (None, None))
    found = []
    for name in ["dmesg", *sorted(p.name for p in moment.glob("vfio-user.*"))]:
        path = moment / name
        if present and path.is_file():
            for m in re.finditer(present, path.read_text(errors="replace")):
                text = re.sub(r"^\[[ 0-9.]+\] ", "", m.group(0).strip())
                found.append(f"{name}: `{text}`")
    dmesg = moment / "dmesg"
    if absent and dmesg.is_file() and not re.search(absent, dmesg.read_text(errors="replace")):
        found.append(f"dmesg has no `{absent}`")
    if CPUS.get(scenario, 1) > 1:
        isolated = moment / "sys/devices/system/cpu/isolated"
        if isolated.is_file():
            found.append(f"sys/devices/system/cpu/isolated: `{isolated.read_text().strip()}`")
        for irq in sorted((moment / "sys/kernel/irq").glob("*/actions"), key=lambda p: int(p.parent.name)):
            if "vfio" in irq.read_text():
                n = irq.parent.name
                aff = moment / f"proc/irq/{n}/smp_affinity_list"
                found.append(f"IRQ {n} `{irq.read_text().strip()}` per_cpu_count "
                             f"`{(irq.parent / 'per_cpu_count').read_text().strip()}` smp_affinity_list "
                             f"`{aff.read_text().strip() if aff.is_file() else '?'}`")
    return "; ".join(dict.fromkeys(found))


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
        if not got or f"LAB-DONE {name}" not in console:
            # Seen once under heavy load (2 cores shared by several TCG
            # guests): QEMU exited with no capture. One retry, said on
            # stderr with the first console's tail, so a real defect (which
            # fails twice) still fails.
            tail = " | ".join(console.strip().splitlines()[-5:])
            print(f"{name}: no capture on the first boot, retrying once (console tail: {tail})",
                  file=sys.stderr)
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
    header = [
        "# Lab captures",
        "",
        "Real guest-kernel states, not hand-written fixtures. Made by `make lab` (lab/run.py):",
        f"QEMU ({qemu_version}) under {guest_accel().name.upper()} boots a q35 machine with `intel-iommu,intremap=on`",
        f"and Debian's {kernel} with `intel_iommu=on` (plus the scenario's own",
        "kernel arguments below); the guest binds QEMU `edu` and `virtio-rng-pci` devices to",
        "vfio-pci, and lab/vfio-user.c enables their interrupts with VFIO_DEVICE_SET_IRQS as",
        "QEMU does (and makes the edu devices raise them). Module options on the command line",
        "(`vfio_pci.nointxmask=1`) are given to insmod as modprobe would. The iommu-off",
        "machine has no intel-iommu device (VT-d off in the firmware: no DMAR table), and",
        "no-vfio-pci's guest never loads vfio-pci.",
        "Each directory is one moment, captured by lab/guest-init.sh as the guest saw it:",
        "proc/interrupts, proc/cmdline, proc/uptime (the moment's clock), proc/irq/*/",
        "smp_affinity_list and effective_affinity_list, sys/kernel/irq/*/ (per_cpu_count,",
        "actions, chip_name, hwirq, type, name), sys/class/iommu (links and each unit's",
        "intel-iommu/cap, ecap...), sys/devices/system/cpu/{online,possible,present,isolated,",
        "nohz_full}, the vfio_pci and vfio_iommu_type1 module parameters, and for every PCI",
        "device the sysfs files and links vfio-advisor reads (config, irq, msi_irqs/, driver,",
        "iommu_group...). Next to proc/ and sys/, and not part of a host tree, each moment",
        "keeps the evidence: `dmesg` (the guest kernel's log at that moment) and",
        "`vfio-user.N` (what each VFIO user printed, errno included). Nothing was edited.",
        "",
        "| scenario | moment | kernel arguments | CPUs | devices (qemu -device) | evidence kept |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    for name, moment in sorted(made):
        devices = " ".join(a for a in SCENARIOS[name] if a != "-device")
        args = f"`{KERNEL_ARGS[name]}`" if name in KERNEL_ARGS else ""
        rows.append(f"| {name} | {moment} | {args} | {CPUS.get(name, 1)} | `{devices}` | "
                    f"{evidence(out / moment, name)} |")
    if made:
        previous = origin.read_text().splitlines() if origin.exists() else []
        # The table rows of other scenarios, wherever the header (which
        # grows with the text above it) ends.
        kept = [line for line in previous if line.startswith("| ") and line != header[-2]
                and line.split(" | ")[0][2:] not in names]
        origin.write_text("\n".join(header + sorted(set(kept + rows))) + "\n")
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
