"""Verification against real QEMU: boot guests with given layouts (through a
real libvirtd, so libvirt turns the XML into QEMU devices), let a busybox
initramfs enable every PCI function and print the IRQ the guest kernel got
(and, with dyndbg, the ACPI link it used), then compare each function with
guest-irqs' prediction from the live XML.

Needs root, libvirt-daemon-system, qemu-system-x86, and Debian's archive for
`apt-get download` of linux-image-cloud-amd64 and busybox-static (cached
outside the clone, in /var/cache/vfio-advisor-tests/guest, so that a fresh
clone reuses it; VFIO_ADVISOR_GUEST_CACHE overrides). About 20 s for the three layouts under TCG.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.support import accel
from tests.support.journal import missing_tools, run_in_journal
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.guest_intx import PIRQS, build_guest_intx_map

REPO = Path(__file__).resolve().parents[2]
LAYOUTS = sorted((REPO / "tests/data/domains/routing").glob("*.xml"))
GUEST_CACHE = Path(os.environ.get("VFIO_ADVISOR_GUEST_CACHE", "/var/cache/vfio-advisor-tests/guest"))
BUILD = Path(__file__).with_name("build-guest.sh")
BOOT = Path(__file__).with_name("boot-layouts.sh")
WITH_LIBVIRTD = REPO / "tests/support/with-libvirtd.sh"

FN_LINE = re.compile(r"VFIOADV-FN /sys/devices/pci0000:00/(\S+) pin=(\d+) irq=(\d+)")
LOG_LINE = re.compile(r"VFIOADV-LOG .*? (\w{4}:\w\w:\w\w\.\d): PCI INT ([A-D]) -> Link\[(\w+)\] -> GSI (\d+)")


def _missing() -> str | None:
    return missing_tools("libvirtd", "virsh", "qemu-system-x86_64", "apt-get", "dpkg")


@pytest.fixture(scope="module")
def booted(tmp_path_factory):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    import subprocess

    build = subprocess.run([str(BUILD), str(GUEST_CACHE)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    work = tmp_path_factory.mktemp("guestboot")
    (work / "hooks").mkdir()
    # The layouts say <domain type='qemu'> (TCG); boot-layouts.sh makes it
    # 'kvm' where a Debian kernel really boots under this host's /dev/kvm
    # (docs/kvm.md). The routing the guest sees is QEMU's q35/i440FX either way.
    domain_type = accel.choose(GUEST_CACHE / "vmlinuz").domain_type
    run = run_in_journal(work / "journal",
                         [str(WITH_LIBVIRTD), str(work), str(work / "hooks"), "--",
                          str(BOOT), str(GUEST_CACHE), str(work), *map(str, LAYOUTS)],
                         env={**os.environ, "GUEST_DOMAIN_TYPE": domain_type}, timeout=600)
    assert run.rc == 0, [p.read_text() for p in work.glob("*.create")]
    return work


def guest_functions(console: str) -> tuple[dict, dict]:
    """{slot-path: (pin, irq)} and {slot-path: ACPI link} from the guest's output."""
    fns, bdf_to_path = {}, {}
    for m in FN_LINE.finditer(console):
        parts = m.group(1).split("/")
        path = tuple((int(p[8:10], 16), int(p[11])) for p in parts)
        fns[path] = (int(m.group(2)), int(m.group(3)))
        bdf_to_path[parts[-1]] = path
    links = {bdf_to_path[m.group(1)]: m.group(3) for m in LOG_LINE.finditer(console)
             if m.group(1) in bdf_to_path}
    return fns, links


def slot_path(domain, address) -> tuple:
    """The chain of (slot, function) from the root bus, as the guest's sysfs
    path shows it; libvirt's bus numbers are controller indexes."""
    controllers = {c.index: c for c in domain.controllers}
    chain = [(address.slot, address.function)]
    bus = address.bus
    while bus != 0:
        parent = controllers[bus].address.address
        chain.insert(0, (parent.slot, parent.function))
        bus = parent.bus
    return tuple(chain)


@pytest.mark.parametrize("layout", [p.stem for p in LAYOUTS])
def test_prediction_matches_guest(booted, layout):
    console = (booted / f"{layout}.console").read_text(errors="replace")
    assert "VFIOADV-END" in console, console[-2000:]
    domain = parse_domain_xml((booted / f"{layout}.live.xml").read_bytes())
    gmap = build_guest_intx_map(domain, {})
    seen, links = guest_functions(console)
    checked, problems = 0, []
    for fn in gmap.functions:
        path = slot_path(domain, fn.guest_address)
        if path not in seen:
            problems.append(f"{fn.guest_address} {fn.model}: not seen in the guest")
            continue
        pin, irq = seen[path]
        if fn.pin is not None and fn.pin != pin:
            problems.append(f"{fn.guest_address} {fn.model}: pin {fn.pin} predicted, guest has {pin}")
        if not pin or not fn.routed:
            continue
        checked += 1
        if domain.chipset == "q35":
            if irq != fn.irq:
                problems.append(f"{fn.guest_address} {fn.model}: GSI {fn.irq} predicted, guest {irq}")
        elif fn.pirq is None:  # i440FX 00:01.3 INTA: the SCI, IRQ 9
            if irq != 9:
                problems.append(f"{fn.guest_address}: IRQ 9 predicted, guest {irq}")
        else:
            # The link is exact; the IRQ is the firmware default the guest may rebalance.
            if links.get(path) != f"LNK{PIRQS[fn.pirq]}":
                problems.append(f"{fn.guest_address} {fn.model}: LNK{PIRQS[fn.pirq]} predicted, "
                                f"guest used {links.get(path)}")
            if irq not in (10, 11):
                problems.append(f"{fn.guest_address}: IRQ {irq} is not 10 or 11")
    assert not problems, "\n".join(problems)
    assert checked >= 5, f"only {checked} INTx functions compared"
