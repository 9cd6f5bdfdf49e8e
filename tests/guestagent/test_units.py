"""The pure parts of vfio_advisor.guest on recorded real inputs: the inventory
parser on output captured from the test guest (tests/guestagent/data, see
PROVENANCE there), the verdicts' examples, the strict argv patterns, the
channel planner on libvirt's test driver, and docs/guest-commands.md against
the code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.guestagent.support import HERE, REPO
from vfio_advisor.guest import linux, windows
from tests.guestagent.support import add_agent_channel
from vfio_advisor.guest.inspect import DeviceReport, GuestReport, Target
from vfio_advisor.guest.options import KNOWN_OPTIONS
from vfio_advisor.guest.plan import MODPROBE_FILE, WRITE_MODPROBE_ARGV, plan_for
from vfio_advisor.guest.verdict import Verdict, decide

DATA = HERE / "data"


def _inventory(name: str) -> linux.LinuxInventory:
    return linux.parse_inventory((DATA / name).read_text())


def test_inventory_before_the_fix():
    inv = _inventory("inventory-intx.txt")
    assert inv.release == "6.1.0-57-amd64" and inv.odd == []
    hda = [f for f in inv.functions if f.ids == "8086:293e"]
    assert len(hda) == 1 and hda[0].driver == "snd_hda_intel" and hda[0].msi == []
    assert inv.mode(hda[0]) == "intx"
    assert inv.parameters["snd_hda_intel"]["enable_msi"] == "0"
    assert inv.configured("snd_hda_intel", "enable_msi") == [("/etc/modprobe.d/sound.conf", "0")]
    # the virtio functions in the same guest use MSI-X: the parser tells them apart
    assert {inv.mode(f) for f in inv.functions if f.vendor == 0x1AF4} == {"msix"}


def test_inventory_after_the_fix_and_restart():
    inv = _inventory("inventory-msi.txt")
    [hda] = [f for f in inv.functions if f.ids == "8086:293e"]
    assert inv.mode(hda) == "msi" and len(hda.msi) == 1
    assert inv.parameters["snd_hda_intel"]["enable_msi"] == "1"
    assert inv.configured("snd_hda_intel", "enable_msi")[-1] == (MODPROBE_FILE, "1")
    [row] = inv.rows_of(hda)
    assert row.chip == "PCI-MSI"


def test_inventory_odd_input_never_raises():
    inv = linux.parse_inventory("D\tnot-a-bdf\t0x8086\nM\t0000:00:01.0\t5\tmsi\nZ\twhat\n")
    assert inv.functions == [] and len(inv.odd) == 4  # three records + no interrupts section
    assert linux.parse_inventory("").odd


def _dev(module: str, verdict: str, ids=(0x8086, 0x293E)) -> DeviceReport:
    dev = DeviceReport(Target(f"ids:{ids[0]:04x}:{ids[1]:04x}", None, *ids))
    dev.module, dev.guest_driver, dev.verdict = module, module, Verdict(verdict, "")
    return dev


def test_linux_plan_only_from_the_table():
    report = GuestReport("vm", os="linux", devices=[_dev("snd_hda_intel", "msi-possible-but-off"),
                                                    _dev("xhci_hcd", "msi-possible-but-off", (0x1B36, 0xD)),
                                                    _dev("amdgpu", "consistent", (0x1002, 0x73BF))])
    report.linux = _inventory("inventory-intx.txt")
    plan = plan_for(report, now=0)
    [step] = plan.steps
    assert step.argv == WRITE_MODPROBE_ARGV
    assert step.stdin.decode().splitlines()[-1] == "options snd_hda_intel enable_msi=1"
    assert "amdgpu" not in step.stdin.decode()  # consistent: left alone
    assert plan.unfixable and "xhci_hcd" in plan.unfixable[0]
    assert any("initramfs" in n for n in plan.notes)


def test_a_later_file_or_the_cmdline_is_named():
    report = GuestReport("vm", os="linux", devices=[_dev("snd_hda_intel", "msi-possible-but-off")])
    inv = _inventory("inventory-intx.txt")
    inv.options.append(("/etc/modprobe.d/zz-local.conf", "options snd_hda_intel enable_msi=0"))
    inv.cmdline += " snd_hda_intel.enable_msi=0"
    report.linux = inv
    notes = " ".join(plan_for(report, now=0).notes)
    assert "zz-local.conf sets snd_hda_intel.enable_msi=0 and wins" in notes
    assert "/proc/cmdline sets snd_hda_intel.enable_msi=0 and wins" in notes


CHANGE = {"at": "2026-12-01T10:00:00Z", "epoch": 1000.0, "driver_version": "31.0.15.3623"}


@pytest.mark.parametrize("kwargs,expected", [
    (dict(mode="msi", setting="on", msi_capable=True, change=None, driver_version=None,
          restarted_since_change=None), "consistent"),
    (dict(mode="intx", setting="off", msi_capable=True, change=None, driver_version=None,
          restarted_since_change=None), "msi-possible-but-off"),
    (dict(mode="intx", setting="default", msi_capable=None, change=None, driver_version=None,
          restarted_since_change=None), "msi-possible-but-off"),
    (dict(mode="intx", setting="on", msi_capable=True, change=CHANGE, driver_version="31.0.15.3623",
          restarted_since_change=False), "changed-waiting-for-restart"),
    (dict(mode="intx", setting="default", msi_capable=True, change=CHANGE, driver_version="32.0.15.6094",
          restarted_since_change=None), "reset-since-change"),
    (dict(mode="intx", setting="on", msi_capable=True, change=CHANGE, driver_version="31.0.15.3623",
          restarted_since_change=True), "on-but-still-intx"),
    (dict(mode="intx", setting="off", msi_capable=False, change=None, driver_version=None,
          restarted_since_change=None), "intx-only"),
    (dict(mode="none", setting="unknown", msi_capable=True, change=None, driver_version=None,
          restarted_since_change=None), "no-driver"),
    (dict(mode="unknown", setting="off", msi_capable=True, change=None, driver_version=None,
          restarted_since_change=None), "msi-possible-but-off"),
    (dict(mode="unknown", setting="on", msi_capable=True, change=None, driver_version=None,
          restarted_since_change=None), "unknown"),
])
def test_verdicts(kwargs, expected):
    verdict = decide(**kwargs)
    assert verdict.name == expected
    if expected == "reset-since-change":
        assert "newer than the recorded change" in verdict.detail


@pytest.mark.parametrize("hwid,instance", [
    ("VEN_10DE&DEV_1B81&SUBSYS_61733842&REV_A1", "3&11583659&0&08\\..\\x"),
    ("VEN_10DE&DEV_1B81&SUBSYS_61733842&REV_A1", "3&1 /f"),
    ("VEN_10DE&DEV_1B81&SUBSYS_61733842&REV_A1\\x", "3&11583659&0&08"),
    ("VEN_10de&DEV_1B81&SUBSYS_61733842&REV_A1\"", "3&11583659&0&08"),
    ("", "3&11583659&0&08"),
])
def test_strict_patterns_refuse(hwid, instance):
    with pytest.raises(ValueError):
        windows.set_msi_argv(hwid, instance)


def test_strict_patterns_accept_what_windows_writes():
    argv = windows.set_msi_argv("VEN_10DE&DEV_1B81&SUBSYS_61733842&REV_A1", "4&2d78ab8f&0&0008")
    assert argv[1] == "add" and argv[-1] == "/f"
    assert windows.driver_version_argv("{4d36e968-e325-11ce-bfc1-08002be10318}\\0001")[-1] == "DriverVersion"
    with pytest.raises(ValueError):
        windows.driver_version_argv("{4d36e968-e325-11ce-bfc1-08002be10318}\\..\\..\\Services")


def test_channel_planner_on_libvirts_test_driver():
    libvirt = pytest.importorskip("libvirt")
    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.open("test:///default")
    xml = conn.lookupByName("test").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    fixed = add_agent_channel(xml)
    assert fixed is not None and add_agent_channel(fixed) is None
    assert fixed.replace("    <channel type='unix'>\n      <target type='virtio' name='org.qemu.guest_agent.0'/>\n"
                         "    </channel>\n", "") == xml
    dom = conn.defineXML(fixed.replace("<name>test</name>", "<name>with-agent</name>")
                         .replace(conn.lookupByName("test").UUIDString(), "6f1d3c1e-4d0c-4a55-9a3e-2b1f3c9d0e11"))
    assert "org.qemu.guest_agent.0" in dom.XMLDesc(0)


def _fix_guest_on_demo_host(name: str) -> subprocess.CompletedProcess:
    demo = REPO / "examples/demo-host"
    return subprocess.run([sys.executable, "-m", "vfio_advisor", "fix", "--guest", name, "--connect",
                           f"test://{demo / 'node.xml'}", "--host-root", str(demo / "root")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_fix_guest_without_a_channel_shows_the_rules_verified_change():
    """win11 keeps its HDMI audio on INTx and has no agent channel: `fix
    --guest` prints the channel as the agent-channel rule's own fix, with
    every check `fix` runs, and the one line names the command that defines it."""
    out = _fix_guest_on_demo_host("win11")
    assert out.returncode == 2, out
    [line] = out.stderr.strip().splitlines()
    assert "no guest agent channel" in line and "`vfio-advisor fix win11 --rule VA1002 --apply`" in line
    assert "# win11 (running): 1 verified change" in out.stdout
    assert "resolves VA1002" in out.stdout
    assert "verified: reanalysis ok; layout ok; schema ok; testdriver ok" in out.stdout
    added = [line[1:].strip() for line in out.stdout.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert added == ["<channel type='unix'>", "<target type='virtio' name='org.qemu.guest_agent.0'/>", "</channel>"]


def test_fix_guest_without_a_channel_and_no_finding_says_so():
    """nvme-linux has no agent channel either, but no device on INTx: the
    rule does not fire, so no change is called verified; the line says
    what to add by hand and why nothing was planned."""
    out = _fix_guest_on_demo_host("nvme-linux")
    assert out.returncode == 2 and out.stdout == "", out
    [line] = out.stderr.strip().splitlines()
    assert "add <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>" in line
    assert "only while the guest keeps an assigned device on INTx" in line and "verified change" in line


def test_docs_list_everything_run_in_a_guest():
    doc = (REPO / "docs/guest-commands.md").read_text()
    assert linux.INVENTORY_SCRIPT in doc
    assert WRITE_MODPROBE_ARGV[2] in doc
    for option in KNOWN_OPTIONS.values():
        assert f"| {option.module} | {option.parameter} | {option.on} | {option.source} |" in doc
    assert " ".join(windows.list_hardware_ids_argv()) in doc
    assert f"/v MSISupported /t REG_DWORD /d 1 /f" in doc
    assert "nothing is proven on a real Windows guest" in doc


def test_cli_usage_errors_are_one_line():
    for args in (["guest", "vm", "--ids", "zz:1"], ["fix", "--guest", "vm", "--reboot"]):
        out = subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True, text=True,
                             cwd=REPO, timeout=60)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "Traceback" not in out.stderr


def test_a_recorded_change_is_readable_by_the_daemon_and_carries_its_run(tmp_path):
    """fix --guest --apply runs as root; the daemon reads the record as its
    DynamicUser (not the file's owner): the file must be readable by others,
    and it carries libvirt's domain ID, the daemon's sign of a restart."""
    import stat

    from vfio_advisor.daemon.state import StateStore
    from vfio_advisor.guest.changes import record

    path = record(str(tmp_path), "win 11", [{"key": "0000:01:00.0", "host_bdf": "0000:01:00.0",
                                             "os": "windows", "target": "MSISupported=1"}],
                  now=1000.0, run_id=7)
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o044 == 0o044
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) & 0o055 == 0o055
    change = StateStore(str(tmp_path)).guest_changes("win 11")["0000:01:00.0"]
    assert (change.epoch, change.run_id, change.os, change.target) == (1000.0, 7, "windows", "MSISupported=1")


def test_targets_from_a_domain_and_the_host_tree():
    """The demo host (examples/demo-host: a recorded host tree) assigns an AMD
    GPU on MSI and its HDMI audio on INTx to win11: both become targets with
    the host's IDs, mode and MSI capability, and one card."""
    libvirt = pytest.importorskip("libvirt")
    from vfio_advisor.guest.command import _hostdev_targets

    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.open(f"test://{REPO}/examples/demo-host/node.xml")
    gpu, audio = _hostdev_targets(conn.lookupByName("win11").XMLDesc(0), str(REPO / "examples/demo-host/root"))
    assert (gpu.host_bdf, gpu.host_mode, audio.host_bdf, audio.host_mode) == (
        "0000:05:00.0", "msi", "0000:05:00.1", "intx")
    assert gpu.card == audio.card == "0000:05:00" and audio.msi_capable is True
    assert (audio.vendor, gpu.vendor) == (0x1002, 0x1002)

    # Windows: the audio function is off; the plan covers every function of the card.
    def instance(hwid, msi):
        return windows.WindowsInstance(hwid, "4&2d78ab8f&0&0008", msi, None, "x", None, None, "1.0")
    devs = []
    for target, hwid, msi, verdict in ((gpu, "VEN_1002&DEV_73FF&SUBSYS_0E361002&REV_C7", None, "consistent"),
                                       (audio, "VEN_1002&DEV_AB28&SUBSYS_AB281002&REV_00", 0,
                                        "msi-possible-but-off")):
        dev = DeviceReport(target, setting="default" if msi is None else "off",
                           verdict=Verdict(verdict, ""))
        dev.instances = [instance(hwid, msi)]
        devs.append(dev)
    plan = plan_for(GuestReport("win11", os="windows", devices=devs))
    assert [s.argv[2].split("\\")[5] for s in plan.steps] == [
        "VEN_1002&DEV_73FF&SUBSYS_0E361002&REV_C7", "VEN_1002&DEV_AB28&SUBSYS_AB281002&REV_00"]


def test_the_guest_fix_hangs_on_its_rule():
    """VA1001 (the guest keeps an MSI-capable device on INTx) names the guest
    planner; its findings point at `fix --guest`, whose plan that planner makes."""
    from vfio_advisor.guest import plan
    from vfio_advisor.rules import RULES, RULES_BY_ID
    from vfio_advisor.rules.remedies import GUEST

    guest_rules = [r.id for r in RULES if r.fix is not None and r.fix.kind == GUEST]
    assert guest_rules == ["VA1001"]
    assert plan.guest_planner() is plan.plan_for
    finding = RULES_BY_ID["VA1001"].finding("my vm", "0000:05:00.1", "on INTx")
    assert finding.fix_pointer.startswith(" Exact guest commands: `vfio-advisor fix --guest 'my vm'`")
    assert "vfio-advisor fix" not in finding.remedy


def test_guest_changes_go_where_the_daemon_reads_them(tmp_path):
    """`fix --guest` and `guest` record and read in the config's [daemon]
    state_dir (the daemon's StateDirectory), unless --state-dir says otherwise."""
    from vfio_advisor.cli import build_parser
    from vfio_advisor.config import load_config
    from vfio_advisor.guest.command import state_dir_of

    conf = tmp_path / "config.toml"
    conf.write_text(f'[daemon]\nstate_dir = "{tmp_path / "daemon-state"}"\n')
    parser = build_parser()
    daemon_dir = load_config(str(conf)).state_dir
    assert daemon_dir == str(tmp_path / "daemon-state")
    for argv in (["fix", "--guest", "vm", "--config", str(conf)], ["guest", "vm", "--config", str(conf)]):
        assert state_dir_of(parser.parse_args(argv)) == daemon_dir, argv
    given = parser.parse_args(["fix", "--guest", "vm", "--config", str(conf), "--state-dir", "/srv/x"])
    assert state_dir_of(given) == "/srv/x"


def test_sriov_vfs_sharing_a_host_slot_are_cards_of_their_own(tmp_path):
    """Two VFs of one PF at one host slot (tests/rules/examples.py's NFV
    host): fix --guest must not set MSISupported on the other VF as if it
    were a function of the same card."""
    from tests.rules.examples import _hostdev, _two_vfs_host, domain_xml  # noqa: PLC0415
    from vfio_advisor.guest.command import _hostdev_targets  # noqa: PLC0415
    from vfio_advisor.testing.hosttree import build  # noqa: PLC0415

    host, vfs = _two_vfs_host()
    build(tmp_path, host)
    xml = domain_xml("nfv", [_hostdev(vfs[0], (0x01, 0, 0)), _hostdev(vfs[1], (0x02, 0, 0))], os="linux")
    targets = _hostdev_targets(xml, str(tmp_path))
    assert [t.host_bdf for t in targets] == vfs
    assert len({t.card for t in targets}) == 2, [t.card for t in targets]


def test_a_hostdev_whose_ids_cannot_be_read_is_said_so(tmp_path):
    """A device that is in the host tree but whose IDs cannot be read (no
    vendor/device files, no config space) is not "not a PCI device of the
    host tree": the line says what could not be read."""
    from vfio_advisor.guest.command import _hostdev_targets
    from vfio_advisor.testing.hosttree import Device, Host, build
    from vfio_advisor.testing.scenes import domain_xml, hostdev_xml

    build(tmp_path / "root", Host(devices=[Device("0000:05:00.1", None, iommu_group=1, irq=28)],
                                  interrupts=""))
    xml = domain_xml("win11", [hostdev_xml("0000:05:00.1", (1, 0, 1))])
    (target,) = _hostdev_targets(xml, str(tmp_path / "root"))
    assert target.unread.startswith("the vendor and device IDs of 0000:05:00.1 could not be read"), \
        target.unread
    (gone,) = _hostdev_targets(xml.replace("bus='0x05'", "bus='0x06'"), str(tmp_path / "root"))
    assert gone.unread.startswith("0000:06:00.1 is not a PCI device of the host tree"), gone.unread
