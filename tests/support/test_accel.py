"""tests/support/accel.py, the KVM-or-TCG boot check, against real QEMU and
a real Debian kernel (the one the guestboot or lab tier cached). Under TCG the
kernel reaches its root-mount panic in about 5-8 s here, so TCG stands in for
an accelerator that works, and a too-short limit for one that crawls (as
kvm_pvm does: docs/kvm.md)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support import accel

KERNELS = [p for p in (Path("/var/cache/vfio-advisor-tests/guest/vmlinuz"),
                       Path("/var/cache/vfio-advisor-tests/lab/vmlinuz")) if p.is_file()]


def _kernel() -> Path:
    if shutil.which(accel.QEMU) is None:
        pytest.skip("qemu-system-x86 not installed (make test installs it)")
    if not KERNELS:
        pytest.skip("no cached Debian kernel yet (the guestboot or lab tier builds one)")
    return KERNELS[0]


def test_an_accelerator_whose_guest_boots_is_kept():
    chosen = accel.probe(_kernel(), seconds=120, accel="tcg")
    assert chosen.name == "tcg"
    assert chosen.reason.startswith("TCG boot check passed in "), chosen.reason


def test_an_accelerator_whose_guest_does_not_boot_in_time_is_refused():
    chosen = accel.probe(_kernel(), seconds=0.3, accel="tcg")
    assert "did not reach its root-mount panic in 0 s" in chosen.reason, chosen.reason
    assert "\n" not in chosen.reason


def test_a_kernel_that_does_not_exist_gives_one_line_and_tcg():
    chosen = accel.probe(Path("/nonexistent/vmlinuz"), seconds=30, accel="tcg")
    assert chosen.name == "tcg"
    assert "boot check failed" in chosen.reason and "\n" not in chosen.reason, chosen.reason


def test_the_verdict_is_cached_per_host_boot(tmp_path, monkeypatch):
    kernel = _kernel()
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no /dev/kvm: choose() answers TCG without a boot, nothing to cache")
    monkeypatch.delenv("VFIO_ADVISOR_ACCEL", raising=False)
    monkeypatch.setattr(accel, "CACHE", tmp_path)
    monkeypatch.setattr(accel, "PROBE_SECONDS", 2.0)  # a verdict either way, quickly
    first = accel.choose(kernel)
    assert len(list(tmp_path.glob("*.json"))) == 1
    second = accel.choose(kernel)
    assert second.name == first.name
    assert second.reason == first.reason + " (cached)"


def test_the_environment_forces_the_choice(monkeypatch):
    monkeypatch.setenv("VFIO_ADVISOR_ACCEL", "tcg")
    chosen = accel.choose(Path("/nonexistent/vmlinuz"))
    assert (chosen.name, chosen.domain_type, chosen.qemu_args) == ("tcg", "qemu", ["-accel", "tcg"])
