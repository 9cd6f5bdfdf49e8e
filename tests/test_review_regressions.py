"""Regressions from a code review: each test reproduces one defect found."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from vfio_advisor.errors import UsageError
from vfio_advisor.sources import open_host_root

REPO = Path(__file__).resolve().parents[1]


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, NO_COLOR="1"), **kw)


def _tar(path: Path, members: list[tuple[str, str | None, bytes]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, link, data in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_snapshot_link_chains_cannot_write_or_point_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = tmp_path / "evil.tar.gz"
    rel = os.path.relpath(outside, "/")  # deep enough to climb out of any temp dir
    _tar(evil, [
        ("d1/d2/q", "../x", b""),
        ("p", "d1/d2/q/../../../" + "../" * 12 + rel, b""),
        ("p/owned.txt", None, b"written outside"),
        ("a", ".", b""),
        ("a/x", "../" + "../" * 12 + rel, b""),
    ])
    try:
        root, tmp = open_host_root(str(evil))
    except UsageError:
        root, tmp = None, None  # refusing the archive is fine too
    try:
        assert list(outside.iterdir()) == []
        if root:
            for dirpath, dirs, files in os.walk(root):
                for name in dirs + files:
                    real = os.path.realpath(os.path.join(dirpath, name))
                    assert real.startswith(os.path.realpath(root)), (name, real)
    finally:
        if tmp:
            tmp.cleanup()


def test_snapshot_refuses_dotdot_and_absolute_names(tmp_path):
    for name in ("../escape", "/etc/escape", "a/../../escape"):
        bad = tmp_path / "bad.tar.gz"
        _tar(bad, [(name, None, b"x")])
        with pytest.raises(UsageError):
            open_host_root(str(bad))


def test_snapshot_of_the_live_host_keeps_device_files(tmp_path):
    devices = sorted(os.listdir("/sys/bus/pci/devices")) if os.path.isdir("/sys/bus/pci/devices") else []
    if not devices:
        pytest.skip("no PCI devices on this machine")
    bdf = devices[-1]
    d, b, sf = bdf.split(":")
    s, f = sf.split(".")
    xml = tmp_path / "d.xml"
    xml.write_text(f"<domain type='kvm'><name>d</name><os><type machine='q35'>hvm</type></os><devices>"
                   f"<hostdev mode='subsystem' type='pci'><source><address domain='0x{d}' bus='0x{b}' "
                   f"slot='0x{s}' function='0x{f}'/></source></hostdev></devices></domain>")
    snap = tmp_path / "live.tar.gz"
    out = cli("snapshot", "-o", str(snap), "--xml", str(xml))
    assert out.returncode == 0, out.stderr
    with tarfile.open(snap) as tar:
        names = tar.getnames()
    assert any(n.endswith(f"/{bdf}/config") for n in names), names[:20]
    assert any(n.endswith(f"/{bdf}/vendor") for n in names)


def test_classic_install_never_replaces_someone_elses_hook(tmp_path):
    hook = tmp_path / "etc/libvirt/hooks/qemu"
    hook.parent.mkdir(parents=True)
    hook.write_text("#!/bin/sh\n# my GPU passthrough hook\n")
    out = cli("install", "--root", str(tmp_path), "--classic")
    assert out.returncode == 2 and "not replacing" in out.stderr
    assert "my GPU passthrough hook" in hook.read_text()


def test_install_paths_with_backslash_space_and_percent(tmp_path):
    from vfio_advisor.install import render_hook, render_unit

    python = r"/opt/my venv %i/b\in/python"
    unit = render_unit(python)
    assert 'ExecStart="/opt/my venv %%i/b\\\\in/python" -m vfio_advisor daemon' in unit
    hook = render_hook(python, "/etc/x y/config.toml")
    assert "VFIO_ADVISOR_PYTHON='/opt/my venv %i/b\\in/python'" in hook
    assert "VFIO_ADVISOR_CONFIG='/etc/x y/config.toml'" in hook


def test_damaged_state_file_does_not_stop_sampling(tmp_path):
    from vfio_advisor.runtime import StateStore

    (tmp_path / "state.json").write_text(json.dumps({"domains": {"dom": [], "other": "x"}}))
    store = StateStore(str(tmp_path))
    assert store.previous("dom", "0000:05:00.1") == {}
    store.record("dom", "0000:05:00.1", "msi", False)
    assert StateStore(str(tmp_path)).previous("dom", "0000:05:00.1")["mode"] == "msi"


def test_a_new_run_starts_over(tmp_path):
    from tests.daemon.scenarios import Scenario, intx_rows

    s = Scenario(tmp_path)
    count = 0
    for t in range(0, 80, 5):
        count += 3000
        s.at(t, intx_rows(count))
    assert [e["rule"] for e in s.emitted] == ["VA6001"]
    # The VM restarts (new libvirt ID): settle time and flags start over.
    s.watcher.add_domain(s.domain, run_id=2)
    for t in range(80, 100, 5):
        count += 3000
        s.at(t, intx_rows(count))
    assert [e["rule"] for e in s.emitted] == ["VA6001"]  # still settling
    for t in range(100, 160, 5):
        count += 3000
        s.at(t, intx_rows(count))
    assert [e["rule"] for e in s.emitted] == ["VA6001", "VA6001"]


def test_interrupt_pin_out_of_range_is_unknown_not_a_crash(tmp_path):
    from tests.hosttree import Host, build
    from tests.rules.examples import AUDIO, _gpu_audio, _ir_interrupts, domain_xml, gpu_audio_hostdevs

    devices = _gpu_audio(gpu_irq=45, audio_irq=28, gpu_msi=(45,))
    audio = next(d for d in devices if d.bdf == AUDIO)
    cfg = bytearray(audio.config)
    cfg[0x3D] = 5
    audio.config = bytes(cfg)
    build(tmp_path / "h", Host(devices=devices, interrupts=_ir_interrupts({})))
    xml = tmp_path / "d.xml"
    xml.write_text(domain_xml("win11", gpu_audio_hostdevs()))
    out = cli("guest-irqs", "--xml", str(xml), "--host-root", str(tmp_path / "h"), "--format", "json")
    assert out.returncode == 0, out.stderr
    fn = next(f for f in json.loads(out.stdout)["functions"] if f["host_address"] == AUDIO)
    assert fn["pin"] is None and any("unknown" in n for n in fn["notes"])


def test_pxb_slot_1_pin_a_is_not_lnks():
    from vfio_advisor.facts.domain import parse_domain_xml
    from vfio_advisor.facts.guest_intx import PIRQS, build_guest_intx_map

    d = parse_domain_xml("""<domain type='kvm'><name>t</name><os><type machine='pc'>hvm</type></os>
      <devices><controller type='pci' index='0' model='pci-root'/>
      <controller type='pci' index='1' model='pci-expander-bus'><target busNr='16'/>
      <address type='pci' domain='0' bus='0' slot='7' function='0'/></controller>
      <interface type='user'><model type='virtio'/><address type='pci' domain='0' bus='1' slot='1'
      function='0'/></interface></devices></domain>""")
    fn = next(f for f in build_guest_intx_map(d, {}).functions if f.guest_address.bus == 1)
    assert (PIRQS[fn.pirq], fn.irq) == ("A", 10)


def test_non_ascii_digits_in_sysfs_do_not_crash(tmp_path):
    from vfio_advisor.facts.host import HostRoot
    from vfio_advisor.facts.pci import read_pci_device

    dev = tmp_path / "sys/bus/pci/devices/0000:01:00.0"
    (dev / "msi_irqs").mkdir(parents=True)
    (dev / "msi_irqs" / "\u00b2").write_text("msi\n")
    (dev / "irq").write_text("\u00b2\n")
    pci = read_pci_device(HostRoot(tmp_path), "0000:01:00.0")
    assert pci.irq is None and pci.msi_irqs == ()


@pytest.mark.parametrize("toml, words", [
    ("[daemon]\ndisabled_rules = 5\n", "disabled_rules must be a list"),
    ('[daemon]\ndisabled_rules = "VA6001"\n', "disabled_rules must be a list"),
    ('domains = "x"\n', "[domains] must be a table"),
    ("[daemon]\nsettle = nan\n", "settle >= 0"),
])
def test_bad_daemon_config_values(tmp_path, toml, words):
    config = tmp_path / "c.toml"
    config.write_text(toml)
    out = cli("daemon", "--connect", "test:///default", "--config", str(config))
    assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr


def test_text_output_neutralises_separators_and_c1_controls():
    from vfio_advisor.sinks.text import clean

    assert clean("HDMI\u2028  Remove-Item\u009b2J\x1b[31m\n") == "HDMI?  Remove-Item?2J?[31m\n"
