"""Shared helpers of the fix tests: the demo host as the host facts, and
corpus domains renumbered onto its devices."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from vfio_advisor.facts.domain import pci_hostdev_elements
from vfio_advisor.fix.planner import Analyzer

REPO = Path(__file__).resolve().parents[2]
HOST_ROOT = REPO / "examples/demo-host/root"
DATA = REPO / "tests/data/fix"
CORPUS = REPO / "tests/data/corpus"

# Demo host devices, INTx ones first, so that renumbered corpus domains carry
# the problems fix is about.
DEMO_BDFS = ("0000:08:00.0", "0000:08:01.0", "0000:05:00.1", "0000:05:00.0",
             "0000:06:00.0", "0000:08:01.1", "0000:08:01.2")


@pytest.fixture(scope="session")
def analyzer() -> Analyzer:
    return Analyzer(str(HOST_ROOT))


def renumbered(path: Path, bdfs=DEMO_BDFS) -> str | None:
    """The domain XML at `path` with its PCI hostdev sources replaced, in
    order, by demo host devices; None if it is not a domain or has more
    hostdevs than the demo host has devices (a device can be assigned once)."""
    try:
        root = etree.parse(str(path), etree.XMLParser(resolve_entities=False, no_network=True)).getroot()
    except etree.XMLSyntaxError:
        return None
    if root.tag != "domain":
        return None
    hostdevs = [h for h in pci_hostdev_elements(root) if h.find("source/address") is not None]
    if len(hostdevs) > len(bdfs):
        return None
    for hd, bdf in zip(hostdevs, bdfs):
        dom, bus, rest = bdf.split(":")
        slot, fn = rest.split(".")
        hd.find("source/address").attrib.update(
            {"domain": f"0x{dom}", "bus": f"0x{bus}", "slot": f"0x{slot}", "function": f"0x{fn}"})
    return etree.tostring(root, encoding="unicode")


def demo_domain(name: str) -> str:
    """One domain of the demo node, without the test driver's <test:runstate>."""
    node = etree.parse(str(REPO / "examples/demo-host/node.xml")).getroot()
    for dom in node.iter("domain"):
        if dom.findtext("name") == name:
            for el in dom.xpath("*[namespace-uri()='http://libvirt.org/schemas/domain/test/1.0']"):
                dom.remove(el)
            return etree.tostring(dom, encoding="unicode")
    raise KeyError(name)
