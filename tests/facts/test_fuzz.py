"""Property tests: the three parsers never fail with anything but their own error.

Bounded (200 examples each, derandomized) so the module takes a few seconds and
CI runs the same examples every time. Inputs are arbitrary data and mutations
of the real corpus files.
"""

from __future__ import annotations

import html
import re
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfio_advisor.testing.hosttree import load_dump
from vfio_advisor.errors import DomainXMLError
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.interrupts import parse_interrupt_row, parse_interrupts
from vfio_advisor.facts.pci_config import (
    UNKNOWN,
    ConfigSpaceError,
    parse_config_space,
)

CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus"

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Non-ASCII digits ('\u00b2', str.isdigit() but not int()-able) are left out of
# the text strategies: they crash parse_interrupts, a known bug pinned by the
# xfail tests in test_interrupts.py. max_size stays below Python's 4300-digit
# int() limit for the same reason.
TEXT_CHAR = st.characters(codec="utf-8").filter(lambda c: not (c.isdigit() and not c.isascii()))
TEXT = st.text(TEXT_CHAR, max_size=2000)


@lru_cache(maxsize=None)
def captures() -> tuple[str, ...]:
    return tuple(p.read_text() for p in sorted((CORPUS / "proc-interrupts").glob("*.txt")))


@lru_cache(maxsize=None)
def configs() -> tuple[bytes, ...]:
    out = []
    for path in sorted((CORPUS / "pci-config").glob("*/*.txt")):
        out.extend(load_dump(path).values())
    return tuple(out)


@lru_cache(maxsize=None)
def domain_xmls() -> tuple[bytes, ...]:
    paths = sorted((CORPUS / "user-domains").glob("*.xml"))
    paths += sorted((CORPUS / "libvirt-tests" / "qemuxml2argv-v4.0.0").glob("*hostdev*.xml"))
    paths += sorted((CORPUS / "libvirt-tests" / "qemuxml2argv-v4.0.0").glob("q35*.xml"))
    return tuple(p.read_bytes() for p in paths)


def test_corpus_is_loaded():
    assert len(captures()) == 14 and len(configs()) == 530 and len(domain_xmls()) > 60


# --- config space ----------------------------------------------------------------

def check_config(data: bytes) -> None:
    cfg = parse_config_space(data)
    assert cfg.length == len(data)
    assert cfg.truncated is (len(data) < 256)
    if cfg.capabilities is not UNKNOWN:
        assert len(cfg.capabilities) <= 48
        assert all(0x40 <= c.offset <= 0xFC and c.offset % 4 == 0 for c in cfg.capabilities)
    else:
        assert cfg.msi is UNKNOWN and cfg.msix is UNKNOWN and cfg.pcie is UNKNOWN
    if cfg.extended is not UNKNOWN:
        assert len(cfg.extended) <= 960
        assert all(0x100 <= e.offset <= len(data) - 4 for e in cfg.extended)
        assert len({e.offset for e in cfg.extended}) == len(cfg.extended)
    if cfg.msi not in (None, UNKNOWN):
        assert cfg.msi.vectors in (1, 2, 4, 8, 16, 32)
    if cfg.msix not in (None, UNKNOWN):
        assert 1 <= cfg.msix.table_size <= 2048
    assert all(isinstance(p, str) and "\n" not in p for p in cfg.problems)
    assert cfg.supports_msi in (True, False, UNKNOWN)
    check_capability_list_complete_or_unreadable(data, cfg)


def complete_walk(data: bytes) -> list[tuple[int, int]] | None:
    """An independent oracle: the (id, offset) list when the standard
    capability list can be walked to its end inside the standard 256 bytes
    (or the unprivileged 64, CardBus 128, which sysfs returns too), else None. PCI 3.0 6.7:
    pointers are dword aligned, at 0x40 or above."""
    cardbus = data[0x0E] & 0x7F == 2
    # 256 bytes or more hold the whole standard space (a cut beyond it
    # leaves only the extended list unknown).
    if len(data) < 256 and len(data) != (128 if cardbus else 64):
        return None
    pointer = data[0x14 if cardbus else 0x34] & 0xFC
    seen: list[tuple[int, int]] = []
    while pointer:
        if pointer < 0x40 or pointer + 4 > len(data) or pointer in {o for _, o in seen}:
            return None
        seen.append((data[pointer], pointer))
        pointer = data[pointer + 1] & 0xFC
    return seen


def check_capability_list_complete_or_unreadable(data: bytes, cfg) -> None:
    """Any list that is not complete is reported as unreadable, with a reason;
    a list reported as read is the whole list."""
    if not cfg.has_capability_list:
        assert cfg.capabilities == () and cfg.capabilities_problem is None
        return
    walk = complete_walk(data)
    if walk is None:
        assert cfg.capabilities is UNKNOWN, [(c.id, hex(c.offset)) for c in cfg.capabilities]
        assert cfg.msi is UNKNOWN and cfg.msix is UNKNOWN and cfg.supports_msi is UNKNOWN
        assert isinstance(cfg.capabilities_problem, str) and cfg.capabilities_problem
        assert "\n" not in cfg.capabilities_problem
    else:
        assert cfg.capabilities_problem is None
        assert [(c.id, c.offset) for c in cfg.capabilities] == walk


@FUZZ
@given(st.binary(min_size=64, max_size=4096))
def test_config_space_arbitrary_bytes(data):
    check_config(data)


@FUZZ
@given(st.binary(max_size=63))
def test_config_space_too_short_raises(data):
    with pytest.raises(ConfigSpaceError):
        parse_config_space(data)


@FUZZ
@given(st.data())
def test_config_space_mutated_real(data):
    base = bytearray(data.draw(st.sampled_from(configs())))
    # Mutate header and capability bytes most, anything sometimes.
    for _ in range(data.draw(st.integers(1, 12))):
        limit = data.draw(st.sampled_from([0x40, 0x100, len(base)]))
        base[data.draw(st.integers(0, min(limit, len(base)) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.sampled_from([len(base), 64, 256, data.draw(st.integers(64, len(base)))]))
    check_config(bytes(base[:cut]))


@FUZZ
@given(st.data())
def test_config_space_damaged_lists(data):
    """Truncations, loops and bad pointers in real capability lists: no
    exception, and a list that is not whole is never offered as the list."""
    base = bytearray(data.draw(st.sampled_from(configs())))
    if len(base) < 256 or not base[0x06] & 0x10:
        base = bytearray(data.draw(st.sampled_from(
            [c for c in configs() if len(c) >= 256 and c[0x06] & 0x10])))
    offsets, pointer = [], base[0x34] & 0xFC
    while 0x40 <= pointer and pointer not in offsets and len(offsets) < 48:
        offsets.append(pointer)
        pointer = base[pointer + 1] & 0xFC
    for _ in range(data.draw(st.integers(0, 3))):
        kind = data.draw(st.sampled_from(["loop", "into-header", "wild", "first"]))
        at = data.draw(st.sampled_from(offsets)) if offsets else 0x34
        target = {"loop": lambda: data.draw(st.sampled_from(offsets or [0x40])),
                  "into-header": lambda: data.draw(st.integers(1, 0x3F)),
                  "wild": lambda: data.draw(st.integers(0, 255)),
                  "first": lambda: data.draw(st.integers(0, 255))}[kind]()
        base[0x34 if kind == "first" else at + 1] = target
    cut = data.draw(st.sampled_from([len(base), 256, 255, 64, 128,
                                     data.draw(st.integers(64, len(base)))]))
    check_config(bytes(base[:cut]))


# --- /proc/interrupts ----------------------------------------------------------------

def check_interrupts(text: str) -> None:
    result = parse_interrupts(text)
    nonblank = sum(1 for line in text.splitlines() if line.strip())
    # A cut row is both kept (in lines) and counted (in skipped).
    assert len(result.lines) + sum(1 for s in result.skipped if not s.cut) <= nonblank
    for line in result.lines:
        assert line.irq and " " not in line.irq
        assert all(isinstance(c, int) and c >= 0 for c in line.counts)
        if result.cpus is not None:
            assert len(line.counts) <= result.cpus
        assert isinstance(line.truncated, bool)
        assert line.total == sum(line.counts)
        for handler in line.vfio:
            assert handler.mode in ("intx", "msi", "msix")
        assert line.remapped in (True, False)
    result.by_irq()


@FUZZ
@given(TEXT)
def test_interrupts_arbitrary_text(text):
    check_interrupts(text)


@FUZZ
@given(st.lists(st.sampled_from(["CPU0", "CPU1", " ", "  ", "\n", ":", "0", "17", "4294967295",
                                 "NMI", "ERR", "IR-PCI-MSI", "IR-IO-APIC-edge", "-edge", "-fasteoi",
                                 "1572865", "vfio-msix[0](0000:03:00.0)", "vfio-intx(", ", ",
                                 "0000:03:00.0", "\t", "-e"]), max_size=80).map("".join))
def test_interrupts_token_soup(text):
    check_interrupts(text)


@FUZZ
@given(st.data())
def test_interrupts_mutated_captures(data):
    text = data.draw(st.sampled_from(captures()))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 300)))
        text = text[:i] + data.draw(st.text(TEXT_CHAR, max_size=40)) + text[j:]
    check_interrupts(text)


@FUZZ
@given(st.data())
def test_interrupts_shuffled_and_cut_lines(data):
    lines = data.draw(st.sampled_from(captures())).splitlines()
    lines = data.draw(st.permutations(lines)) if data.draw(st.booleans()) else lines
    text = "\n".join(lines)
    check_interrupts(text[: data.draw(st.integers(0, len(text)))])


@FUZZ
@given(st.text(TEXT_CHAR, max_size=300), st.one_of(st.none(), st.integers(0, 256)))
def test_interrupt_row_arbitrary(row, cpus):
    line = parse_interrupt_row(row, cpus)
    if line is not None:
        assert cpus is None or len(line.counts) <= cpus


# --- domain XML ------------------------------------------------------------------------

def parse_or_refuse(data) -> None:
    try:
        domain = parse_domain_xml(data)
    except DomainXMLError as exc:
        message = str(exc)
        assert message and "\n" not in message
        return
    assert domain.name and domain.virt_type
    for hostdev in domain.hostdevs:
        assert 0 <= hostdev.source.bus <= 0xFF and 0 <= hostdev.source.function <= 7
    assert len({c.index for c in domain.controllers}) == len(domain.controllers)


@FUZZ
@given(st.binary(max_size=4096))
def test_domain_arbitrary_bytes(data):
    parse_or_refuse(data)


@FUZZ
@given(st.text(TEXT_CHAR, max_size=500).map(lambda s: "<domain type='kvm'><name>" + s))
def test_domain_arbitrary_text_after_a_valid_start(text):
    parse_or_refuse(text)


@FUZZ
@given(st.data())
def test_domain_mutated_corpus_bytes(data):
    xml = data.draw(st.sampled_from(domain_xmls()))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(xml)))
        j = data.draw(st.integers(i, min(len(xml), i + 80)))
        xml = xml[:i] + data.draw(st.binary(max_size=24)) + xml[j:]
    parse_or_refuse(xml)


ATTRIBUTE = re.compile(rb"""=(['"])([^'"<>&]*)\1""")
ODD_VALUES = ["", "-1", "0x", "0x100", "0x10000", "256", "99999999999999999999999", "1" * 5000,
              "on", "off", "yes", "no", "zz", "010", "1_0", " 5", "0x1f ", "\u0663", "pci", "usb",
              "subsystem", "hostdev", "pcie-root", "q35", "pc-i440fx-9.9", "0-3,^2", "1-", "8192"]


@FUZZ
@given(st.data())
def test_domain_attribute_values_mutated(data):
    xml = data.draw(st.sampled_from(domain_xmls()))
    for _ in range(data.draw(st.integers(1, 6))):
        spans = list(ATTRIBUTE.finditer(xml))
        m = spans[data.draw(st.integers(0, len(spans) - 1))]
        value = data.draw(st.one_of(st.sampled_from(ODD_VALUES), st.text(TEXT_CHAR, max_size=12)))
        xml = xml[:m.start()] + b"='" + html.escape(value, quote=True).encode() + b"'" + xml[m.end():]
    parse_or_refuse(xml)
