"""SR-IOV VFs share host slots but are devices of their own: the tree builder
gives them the kernel's physfn/virtfn links, and nothing that groups "the
functions of one card" (VA4002, its fix, the MSI remedy, VA5001's moves, the
daemon's sibling check, all through DomainFacts.siblings) takes two VFs of one
PF for one card."""

from __future__ import annotations

import os
import re

from tests.rules.examples import EXAMPLES, NVME_DUMP, NVME_PF, _two_vfs_host
from vfio_advisor.engine import run_rules
from vfio_advisor.testing.hosttree import CONFIGS, build, load_config, sriov_vf_bdf


def test_vf_addresses_follow_the_pf_capability_as_lspci_decodes_it():
    """The BDFs come from the capability's bytes; lspci's own decoding of the
    same dump ("VF offset: 32, stride: 1") is the independent check."""
    text = (CONFIGS / NVME_DUMP).read_text(encoding="utf-8")
    offset, stride = map(int, re.search(r"VF offset: (\d+), stride: (\d+)", text).groups())
    pf_config = load_config(NVME_DUMP, "2e:00.0")
    pf_devfn = 0x2E << 8  # 2e:00.0
    for index in (0, 1, 7, 8):
        rid = pf_devfn + offset + index * stride
        assert sriov_vf_bdf(NVME_PF, pf_config, index) == \
            f"0000:{rid >> 8:02x}:{rid >> 3 & 0x1F:02x}.{rid & 7:x}"
    # Only a PF has the capability.
    gpu_config = load_config("huananzhi-x99-qd4_navi23_lspci-nnvvvxxxx.txt", "05:00.0")
    try:
        sriov_vf_bdf("0000:05:00.0", gpu_config, 0)
    except ValueError as exc:
        assert "no SR-IOV capability" in str(exc)
    else:
        raise AssertionError("a config space without SR-IOV gave a VF address")


def test_tree_has_relative_physfn_and_virtfn_links(tmp_path):
    host, vfs = _two_vfs_host()
    build(tmp_path, host)
    devices = tmp_path / "sys" / "bus" / "pci" / "devices"
    pf_dir = (devices / NVME_PF).resolve()
    for n, vf in enumerate(vfs):
        link = devices / vf / "physfn"
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        assert link.resolve() == pf_dir
        virtfn = devices / NVME_PF / f"virtfn{n}"
        assert virtfn.is_symlink() and not os.path.isabs(os.readlink(virtfn))
        assert virtfn.resolve() == (devices / vf).resolve()
    assert not (devices / NVME_PF / "physfn").exists()


def test_vfs_in_one_host_slot_are_not_siblings(tmp_path):
    facts = EXAMPLES["sriov-vfs-own-guest-slots"](tmp_path)
    vfs = list(facts.devices)
    assert len(vfs) == 2 and vfs[0].address.rsplit(".", 1)[0] == vfs[1].address.rsplit(".", 1)[0]
    assert all(d.device is not None and d.device.sriov_vf for d in vfs)
    assert [facts.siblings(d) for d in vfs] == [(), ()]
    assert "VA4002" not in {f.rule_id for f in run_rules(facts)}


def test_a_card_of_plain_functions_still_is_one(tmp_path):
    """gpu-audio-split: the same grouping still joins a GPU and its audio."""
    facts = EXAMPLES["gpu-audio-split"](tmp_path)
    assert all(d.device is not None and not d.device.sriov_vf for d in facts.devices)
    assert [len(facts.siblings(d)) for d in facts.devices] == [1, 1]
