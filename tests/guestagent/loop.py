"""The guest loop against a real libvirtd + QEMU (TCG) and a real Debian
qemu-ga in the guest: read, plan, apply, restart, read again. Run inside
run-loop.sh (private mount namespace, private libvirtd). Writes every step's
command, exit status, output and wall time to WORK/transcript.json.

    loop.py WORK IMAGE_DIR [--bench N]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import libvirt  # noqa: E402

from vfio_advisor.guest.agent import GuestAgent, GuestAgentError, LibvirtAgent  # noqa: E402
from tests.guestagent.support import add_agent_channel  # noqa: E402
# The guest's accelerator: KVM only where a Debian kernel really boots under
# this host's /dev/kvm (libvirt's type='kvm'), else TCG (type='qemu'); see
# docs/kvm.md. Probed once per host boot and cached.
from tests.support import accel  # noqa: E402

URI = "qemu:///system"
HDA_IDS = "8086:293e"  # QEMU's ich9-intel-hda (hw/audio/intel-hda.c)
BOOT_LIMIT = 180.0


def domain_xml(name: str, image: Path, work: Path, *, kernel: bool = True) -> str:
    boot = (f"<kernel>{image}/vmlinuz</kernel><initrd>{image}/initrd.img</initrd>"
            "<cmdline>console=ttyS0 panic=-1 quiet</cmdline>") if kernel else ""
    disk = (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{work}/modprobe-d.img'/><target dev='vda' bus='virtio'/></disk>") if kernel else ""
    sound = "<sound model='ich9'><codec type='duplex'/></sound><audio id='1' type='none'/>" if kernel else ""
    return f"""<domain type='{accel.choose(image / "vmlinuz").domain_type}'>
  <name>{name}</name>
  <memory unit='MiB'>384</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type>{boot}</os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {disk}
    {sound}
    <serial type='file'><source path='{work}/{name}.console'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def cli(*args: str, timeout: float = 300) -> dict:
    argv = [sys.executable, "-m", "vfio_advisor", *args]
    started = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    step = {"argv": ["vfio-advisor", *args], "rc": out.returncode, "stdout": out.stdout,
            "stderr": out.stderr, "seconds": round(time.monotonic() - started, 2)}
    print(f"$ vfio-advisor {' '.join(args)}  -> rc {out.returncode} in {step['seconds']} s", flush=True)
    print(out.stdout + out.stderr, flush=True)
    return step


def wait_agent(dom, name: str, limit: float = BOOT_LIMIT, not_boot: str | None = None) -> tuple[float, str]:
    """Seconds until guest-exec answers, and the guest's boot_id (a new one
    after a restart: waits until it differs from not_boot)."""
    agent = GuestAgent(LibvirtAgent(dom, name), timeout=5)
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            boot = agent.run(["/bin/cat", "/proc/sys/kernel/random/boot_id"]).decode().strip()
            if boot and boot != not_boot:
                return time.monotonic() - started, boot
        except GuestAgentError:
            pass
        time.sleep(1)
    raise SystemExit(f"{name}: the guest agent did not answer within {limit:.0f} s")


def main() -> int:
    work, image = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    bench = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--bench" else 0
    state = work / "state"
    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.open(URI)
    tag = os.getpid()
    transcript: dict = {"steps": {}, "timings": {}}
    steps = transcript["steps"]

    def save():
        (work / "transcript.json").write_text(json.dumps(transcript, indent=2))

    try:
        if not bench:
            # Failures first, on diskless SeaBIOS domains (cheap to start).
            bare = f"vfa-nochan-{tag}"
            conn.createXML(domain_xml(bare, image, work, kernel=False), 0)
            steps["no_channel"] = cli("guest", bare, "--connect", URI)
            steps["no_channel_fix"] = cli("fix", "--guest", bare, "--connect", URI)
            conn.lookupByName(bare).destroy()
            silent = f"vfa-silent-{tag}"
            conn.createXML(add_agent_channel(domain_xml(silent, image, work, kernel=False)), 0)
            steps["not_connected"] = cli("guest", silent, "--connect", URI, "--timeout", "3")
            conn.lookupByName(silent).destroy()
            off = f"vfa-off-{tag}"
            conn.defineXML(domain_xml(off, image, work, kernel=False))
            steps["not_running"] = cli("guest", off, "--connect", URI)
            conn.lookupByName(off).undefine()
            save()

        shutil.copy(image / "modprobe-d.img", work / "modprobe-d.img")
        name = f"vfa-guest-{tag}"
        xml = add_agent_channel(domain_xml(name, image, work))
        started = time.monotonic()
        dom = conn.createXML(xml, 0)
        boot_seconds, boot_id = wait_agent(dom, name)
        transcript["timings"]["boot_to_agent_s"] = round(time.monotonic() - started, 1)
        if bench:
            walls = []
            for _ in range(bench):
                step = cli("guest", name, "--connect", URI, "--ids", HDA_IDS, "--format", "json")
                walls.append(step["seconds"])
                devices = len(json.loads(step["stdout"])["devices"]) if step["stdout"] else 0
            transcript["bench"] = {"walls": walls, "devices": devices}
            save()
            return 0
        ro = libvirt.openReadOnly(URI)
        try:
            GuestAgent(LibvirtAgent(ro.lookupByName(name), name), timeout=5).info()
            steps["read_only"] = {"rc": 0, "stderr": "no error"}
        except GuestAgentError as exc:
            steps["read_only"] = {"rc": 2, "kind": exc.kind, "stderr": str(exc)}
        ro.close()
        from vfio_advisor.guest.linux import INVENTORY_ARGV
        raw = GuestAgent(LibvirtAgent(dom, name), timeout=20).run(INVENTORY_ARGV)
        transcript["inventory_before"] = raw.decode("utf-8", "replace")
        common = ("--connect", URI, "--ids", HDA_IDS, "--state-dir", str(state))
        steps["read_before"] = cli("guest", name, *common, "--format", "json")
        steps["read_before_text"] = cli("guest", name, *common)
        # libvirt logs "Domain id=N is tainted: custom-ga-command" to the domain's log
        transcript["tainted"] = "custom-ga-command" in _qemu_log(name)
        steps["plan"] = cli("fix", "--guest", name, *common)
        steps["read_after_plan"] = cli("guest", name, *common, "--format", "json")
        steps["apply"] = cli("fix", "--guest", name, *common, "--apply")
        steps["read_after_apply"] = cli("guest", name, *common, "--format", "json")
        started = time.monotonic()
        steps["apply_reboot"] = cli("fix", "--guest", name, *common, "--apply", "--reboot")
        save()
        if steps["apply_reboot"]["rc"] != 0:
            return 1  # no reboot was asked for: nothing more to see
        _, new_boot = wait_agent(dom, name, not_boot=boot_id)
        transcript["timings"]["restart_to_agent_s"] = round(time.monotonic() - started, 1)
        transcript["boot_ids"] = [boot_id, new_boot]
        steps["read_after_restart"] = cli("guest", name, *common, "--format", "json")
        steps["read_after_restart_text"] = cli("guest", name, *common)
        raw = GuestAgent(LibvirtAgent(dom, name), timeout=20).run(INVENTORY_ARGV)
        transcript["inventory_after"] = raw.decode("utf-8", "replace")
        try:
            transcript["console"] = (work / f"{name}.console").read_text(errors="replace")[-4000:]
        except OSError:
            pass
        dom.destroy()
    finally:
        save()
    return 0


def _qemu_log(name: str) -> str:
    try:
        return Path(f"/var/log/libvirt/qemu/{name}.log").read_text(errors="replace")
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
