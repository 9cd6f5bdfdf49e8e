"""The Windows side on the closest real parts to hand: the exact reg.exe
command lines run by Wine's reg.exe (Debian's wine, a private prefix cached in
/var/cache/vfio-advisor-tests/guestagent/wine), sent by Debian's real qemu-ga
through guest-exec. qemu-ga finds "C:\\Windows\\System32\\reg.exe" the way
GLib's g_spawn searches PATH for a name without a '/': a shim of that literal
name runs Wine's reg.exe with the same arguments.

Nothing here is proven on a real Windows guest: Wine's registry is not
Windows' (no PnP manager fills Enum\\PCI; the test seeds it the way Windows
lays it out), and guest-get-devices' replies are recorded fixtures taken from
QEMU's qga/commands-win32.c.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.guestagent.support import CACHE, HERE, QEMU_GA, missing, stop_qemu_ga
from vfio_advisor.guest import windows
from vfio_advisor.guest.agent import GuestAgent, SocketAgent
from vfio_advisor.guest.changes import load, record
from vfio_advisor.guest.inspect import GuestReport, Target, _read_windows
from vfio_advisor.guest.plan import apply, plan_for

PREFIX = CACHE / "wine" / "prefix"
GPU = "VEN_10DE&DEV_1B81&SUBSYS_61733842&REV_A1"  # GTX 1070 (EVGA), as Windows names it
AUDIO = "VEN_10DE&DEV_10F0&SUBSYS_61733842&REV_A1"  # its HDMI audio function
DISPLAY_CLASS = "{4d36e968-e325-11ce-bfc1-08002be10318}"  # Display adapters (devguid.h)
MEDIA_CLASS = "{4d36e96c-e325-11ce-bfc1-08002be10318}"  # Sound, video and game controllers


def _env() -> dict:
    return {**os.environ, "WINEPREFIX": str(PREFIX), "WINEDEBUG": "-all"}


def _reg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["wine", windows.REG, *args], capture_output=True, text=True, env=_env(), timeout=120)


@pytest.fixture(scope="module")
def wine_prefix():
    reason = missing("wine", QEMU_GA)
    if reason:
        pytest.skip(reason)
    if not (PREFIX / "system.reg").exists():
        PREFIX.parent.mkdir(parents=True, exist_ok=True)
        # First run builds the prefix (about a minute here); later runs reuse it.
        out = subprocess.run(["wineboot", "-i"], capture_output=True, text=True, env=_env(), timeout=900)
        if not (PREFIX / "system.reg").exists():
            pytest.skip(f"wineboot could not build a prefix: {out.stderr[-300:]}")
    # One wineserver for the module: without it each reg.exe pays the
    # server's start (about 6 s here) whenever the last one has just exited.
    subprocess.run(["wineserver", "-p"], env=_env(), timeout=60, check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The first program of a session starts Wine's services (services.exe,
    # winedevice.exe, explorer.exe), which keep the stdout/stderr they inherit
    # open as long as the server lives: start them here on /dev/null, or every
    # captured reg.exe waits for an EOF that never comes.
    subprocess.run(["wine", windows.REG, "query", windows.ENUM_PCI], env=_env(), timeout=300,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield PREFIX
    subprocess.run(["wineserver", "-k"], env=_env(), timeout=60)


@pytest.fixture
def registry(wine_prefix):
    """Seed Enum\\PCI the way Windows lays out a GTX 1070 and its HDMI audio:
    two GPU instances (the old one stays when the guest address changes) and one
    audio instance with MSISupported=0, each with its class key's DriverVersion."""
    def wipe():
        for hwid in (GPU, AUDIO):
            _reg("delete", f"{windows.ENUM_PCI}\\{hwid}", "/f")
        for key in (f"{DISPLAY_CLASS}\\0001", f"{MEDIA_CLASS}\\0002"):
            _reg("delete", f"{windows.CLASS_ROOT}\\{key}", "/f")
    wipe()
    seeds = [
        (f"{windows.ENUM_PCI}\\{GPU}\\3&11583659&0&08", "Driver", "REG_SZ", f"{DISPLAY_CLASS}\\0001"),
        (f"{windows.ENUM_PCI}\\{GPU}\\3&11583659&0&08", "Service", "REG_SZ", "nvlddmkm"),
        (f"{windows.ENUM_PCI}\\{GPU}\\3&11583659&0&28", "Service", "REG_SZ", "nvlddmkm"),
        (f"{windows.ENUM_PCI}\\{AUDIO}\\3&11583659&0&09", "Driver", "REG_SZ", f"{MEDIA_CLASS}\\0002"),
        (f"{windows.ENUM_PCI}\\{AUDIO}\\3&11583659&0&09", "Service", "REG_SZ", "HDAudBus"),
        (f"{windows.ENUM_PCI}\\{AUDIO}\\3&11583659&0&09\\{windows.MSI_SUBKEY}", "MSISupported", "REG_DWORD", "0"),
        (f"{windows.CLASS_ROOT}\\{DISPLAY_CLASS}\\0001", "DriverVersion", "REG_SZ", "31.0.15.3623"),
        (f"{windows.CLASS_ROOT}\\{MEDIA_CLASS}\\0002", "DriverVersion", "REG_SZ", "1.3.39.14"),
    ]
    for key, name, kind, data in seeds:
        out = _reg("add", key, "/v", name, "/t", kind, "/d", data, "/f")
        assert out.returncode == 0, out.stderr
    yield
    wipe()


@pytest.fixture
def agent(tmp_path, wine_prefix):
    shim = tmp_path / "shim"
    shim.mkdir()
    exe = shim / windows.REG  # a file literally named C:\Windows\System32\reg.exe
    exe.write_text(f"#!/bin/sh\nexec wine '{windows.REG}' \"$@\"\n")
    exe.chmod(0o755)
    sock = tmp_path / "qga.sock"
    (tmp_path / "state").mkdir()
    env = {**_env(), "PATH": f"{shim}:/usr/bin:/bin"}
    proc = subprocess.Popen([QEMU_GA, "-m", "unix-listen", "-p", str(sock), "-t", str(tmp_path / "state")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if sock.exists():
            break
        time.sleep(0.05)
    client = GuestAgent(SocketAgent(str(sock)), timeout=60)
    yield client
    client.transport.close()
    stop_qemu_ga(proc)


def _targets(host_mode: str) -> list[Target]:
    return [Target("0000:01:00.0", "0000:01:00.0", 0x10DE, 0x1B81, 0x3842, 0x6173, host_mode=host_mode,
                   msi_capable=True, card="0000:01:00"),
            Target("0000:01:00.1", "0000:01:00.1", 0x10DE, 0x10F0, 0x3842, 0x6173, host_mode=host_mode,
                   msi_capable=True, card="0000:01:00")]


def _read(agent, host_mode: str, changes: list[dict]) -> GuestReport:
    report = GuestReport("win-vm", os="windows")
    _read_windows(agent, report, _targets(host_mode), changes, devices_enabled=False)
    return report


def test_reads_every_instance_and_the_driver_version(agent, registry):
    report = _read(agent, "intx", [])
    gpu, audio = report.devices
    assert [i.instance for i in gpu.instances] == ["3&11583659&0&08", "3&11583659&0&28"]
    assert [i.msi_supported for i in gpu.instances] == [None, None]
    assert gpu.guest_driver == "nvlddmkm" and gpu.guest_driver_version == "31.0.15.3623"
    assert audio.instances[0].msi_supported == 0 and audio.guest_driver_version == "1.3.39.14"
    assert gpu.verdict.name == audio.verdict.name == "msi-possible-but-off"
    assert "2 instances" in gpu.verdict.detail


def test_apply_creates_the_key_reads_back_and_records(agent, registry, tmp_path):
    report = _read(agent, "intx", [])
    plan = plan_for(report)
    # every function of the card, every instance: 2 GPU + 1 audio
    assert [s.argv for s in plan.steps] == [
        windows.set_msi_argv(GPU, "3&11583659&0&08"), windows.set_msi_argv(GPU, "3&11583659&0&28"),
        windows.set_msi_argv(AUDIO, "3&11583659&0&09")]
    assert plan.steps[0].argv == (windows.REG, "add", f"{windows.ENUM_PCI}\\{GPU}\\3&11583659&0&08\\"
                                  f"{windows.MSI_SUBKEY}", "/v", "MSISupported", "/t", "REG_DWORD", "/d", "1", "/f")
    said: list[str] = []
    entries = apply(agent, plan, report, said.append)
    assert len(entries) == 3 and sum(line.startswith("read back") for line in said) == 3
    # the key did not exist for the GPU: reg add created it
    out = _reg("query", windows.msi_key(GPU, "3&11583659&0&28"), "/v", "MSISupported")
    assert out.returncode == 0 and "0x1" in out.stdout
    record(str(tmp_path), "win-vm", entries)
    changes = load(str(tmp_path), "win-vm")
    # host still on INTx, the setting on, same driver: waiting for the restart
    waiting = _read(agent, "intx", changes)
    assert [d.verdict.name for d in waiting.devices] == ["changed-waiting-for-restart"] * 2
    # a restart later the host sees MSI
    done = _read(agent, "msi", changes)
    assert [d.verdict.name for d in done.devices] == ["consistent"] * 2
    # a driver update: new version in the class key, MSISupported gone
    assert _reg("delete", windows.msi_key(GPU, "3&11583659&0&08"), "/v", "MSISupported", "/f").returncode == 0
    assert _reg("add", f"{windows.CLASS_ROOT}\\{DISPLAY_CLASS}\\0001", "/v", "DriverVersion", "/t", "REG_SZ",
                "/d", "32.0.15.6094", "/f").returncode == 0
    reset = _read(agent, "intx", changes)
    assert reset.devices[0].verdict.name == "reset-since-change"
    assert "newer than the recorded change" in reset.devices[0].verdict.detail
    assert "31.0.15.3623" in reset.devices[0].verdict.detail and "32.0.15.6094" in reset.devices[0].verdict.detail


def test_a_second_apply_changes_nothing(agent, registry):
    report = _read(agent, "intx", [])
    plan = plan_for(report)
    apply(agent, plan, report, lambda _line: None)
    again = plan_for(_read(agent, "intx", []))
    assert again.steps == []


def test_hostile_registry_names_never_reach_an_argv(agent, registry):
    """A key name with shell or path characters in Enum\\PCI is not a hardware
    ID or an instance: it is skipped, never put into a command line."""
    bad_instance = "3&1&0&08 & calc"
    assert _reg("add", f"{windows.ENUM_PCI}\\{GPU}\\{bad_instance}", "/v", "Service", "/t", "REG_SZ",
                "/d", "x", "/f").returncode == 0
    report = _read(agent, "intx", [])
    assert bad_instance not in [i.instance for i in report.devices[0].instances]
    for step in plan_for(report).steps:
        assert all("calc" not in a for a in step.argv)
    with pytest.raises(ValueError):
        windows.set_msi_argv(GPU, "..\\..\\Control")
    with pytest.raises(ValueError):
        windows.hardware_id_argv("VEN_10DE&DEV_1B81 /f")


def test_guest_get_devices_fixture_format():
    """guest-get-devices as QEMU 7.2's qga/commands-win32.c builds it (lines
    2449-2545 of the tree cited in the fixture): only VEN_1AF4/1B36 devices."""
    doc = json.loads((HERE / "data/guest-get-devices.json").read_text())
    reply = doc["return"]
    assert all(d["id"]["type"] == "pci" and d["id"]["vendor-id"] in (0x1AF4, 0x1B36) for d in reply)
    found = windows.agent_device_driver(reply, 0x1AF4, 0x1041)
    assert found == ("Red Hat VirtIO Ethernet Adapter", "100.94.104.24200", "2023-07-11")
    assert windows.agent_device_driver(reply, 0x10DE, 0x1B81) is None  # a GPU is never listed
