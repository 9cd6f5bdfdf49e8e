"""Remedies only where they can work, on the lab's real
pci=nomsi kernel (lab/captures/nomsi-2: MSI refused with EINVAL, the edu on
vfio-intx) and its nointxmask=1 kernel (nointxmask-before: the next moment's
EBUSY is in nointxmask-after/dmesg), through every path that gives advice:
advise's text and JSON, and the libvirt hook logging into a private journald.

No path may tell the guest to use MSI where the host forbids it: the
Windows MSISupported value, a Linux module option, "Enable MSI in the guest".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.journal import run_in_journal

REPO = Path(__file__).resolve().parents[2]
CAPTURES = REPO / "lab/captures"
LAB_DOMAINS = REPO / "tests/data/domains/lab"
HOOK_ENV = ["env", "-i", "LC_ALL=C", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME=/root"]
GUEST_MSI = ("MSISupported", "modinfo -p", "enable_msi", "Enable MSI in the guest")


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO))


def windows_edu(tmp_path: Path) -> Path:
    text = (LAB_DOMAINS / "edu.xml").read_text()
    assert "http://debian.org/debian/12" in text
    out = tmp_path / "edu-windows.xml"
    out.write_text(text.replace("http://debian.org/debian/12", "http://microsoft.com/win/11"))
    return out


def advise(capture: str, xml: Path, fmt: str) -> str:
    out = subprocess.run([sys.executable, "-m", "vfio_advisor", "advise", "--host-root",
                          str(CAPTURES / capture), "--xml", str(xml), "--format", fmt],
                         capture_output=True, text=True, timeout=60, env=_env(), cwd=REPO)
    assert out.returncode in (0, 1), out.stderr
    return out.stdout


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_nomsi_advise_gives_the_host_remedy_only(tmp_path, fmt):
    out = advise("nomsi-2", windows_edu(tmp_path), fmt)
    assert "VA3001" in out
    assert "Remove pci=nomsi" in out
    # the cause here is the command line, not a bridge: no msi_bus step
    assert "echo 1 >" not in out
    for words in GUEST_MSI:
        assert words not in out, words
    if fmt == "json":
        doc = json.loads(out)
        rules = [f["rule"] for d in doc["domains"] for dev in d["devices"] for f in dev["findings"]]
        assert "VA3001" in rules and "VA1001" not in rules


@pytest.fixture
def hook(tmp_path):
    """The hook installed under a private root, its host a lab capture."""
    root = tmp_path / "root"
    config = tmp_path / "hook-config.toml"
    out = subprocess.run([sys.executable, "-m", "vfio_advisor", "install", "--root", str(root),
                          "--config", str(config)], capture_output=True, text=True, env=_env(), cwd=REPO)
    assert out.returncode == 0, out.stderr
    hook = root / "etc/libvirt/hooks/qemu.d/vfio-advisor"

    def call(capture: str, xml: Path, name: str):
        config.write_text(f'[hook]\nhost_root = "{CAPTURES / capture}"\n')
        return run_in_journal(tmp_path / f"j-{capture}", [*HOOK_ENV, str(hook), name, "prepare", "begin", "-"],
                              stdin=xml.read_bytes(), catalog_db=root / "var/lib/systemd/catalog")
    return call


def test_nomsi_hook_gives_the_host_remedy_only(hook, tmp_path):
    run = hook("nomsi-2", windows_edu(tmp_path), "lab-edu")
    assert run.rc == 0
    (va3001,) = run.by_rule("VA3001")
    assert "pci=nomsi" in va3001["VFIO_ADVISOR_REMEDY"]
    assert not run.by_rule("VA1001")
    for entry in run.entries:
        for words in GUEST_MSI:
            assert words not in json.dumps(entry), (words, entry.get("VFIO_ADVISOR_RULE"))


def test_nointxmask_hook_predicts_the_busy_start(hook):
    """The hook sees only its own domain: the in-domain conflict (VA2004),
    logged as an error before QEMU tries (the EBUSY of nointxmask-after)."""
    run = hook("nointxmask-before", LAB_DOMAINS / "shared.xml", "lab-shared")
    assert run.rc == 0
    found = run.by_rule("VA2004")
    assert {e["VFIO_ADVISOR_HOST_BDF"] for e in found} == {"0000:00:03.0", "0000:00:07.0"}
    for e in found:
        assert e["PRIORITY"] == "3"
        assert "without nointxmask=1" in e["VFIO_ADVISOR_REMEDY"]
    assert not run.by_rule("VA2005")  # other domains are advise's, never the hook's
