"""The guest loop on real parts: Debian's libvirtd 9.0 + QEMU 7.2 (TCG), a
guest running Debian's kernel and Debian's qemu-ga 7.2 with an emulated
ich9-intel-hda (snd_hda_intel) and its /etc/modprobe.d on a persistent disk
that starts with `options snd_hda_intel enable_msi=0`.

`guest` must read INTx and "MSI possible but off"; `fix --guest` must show its
plan and write nothing; `--apply` must write, read back and record; `guest`
then says "waiting for a guest restart"; `--apply --reboot` restarts through
libvirt's agent reboot; `guest` then reads MSI. The failure cases (no channel,
agent not connected, domain not running, read-only connection) run against
the same libvirtd. One run (about 1-2 minutes here) feeds every test below.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.guestagent.support import HERE, QEMU_GA, guest_image, missing


@pytest.fixture(scope="module")
def loop(tmp_path_factory, request):
    reason = missing("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "unshare", QEMU_GA, "/bin/busybox")
    if reason:
        pytest.skip(reason)
    image, why = guest_image()
    if image is None:
        pytest.skip(why)
    work = tmp_path_factory.mktemp("guestloop")
    out = subprocess.run([str(HERE / "run-loop.sh"), str(work), str(image), sys.executable],
                         capture_output=True, text=True, timeout=900)
    path = work / "transcript.json"
    assert path.exists(), out.stdout[-3000:] + out.stderr[-3000:]
    transcript = json.loads(path.read_text())
    transcript["work"] = str(work)
    # A step that failed fails its own test below; the loop's log is kept for them.
    transcript["rc"], transcript["log"] = out.returncode, out.stdout[-3000:] + out.stderr[-3000:]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        t = transcript["timings"]
        reporter.write_line(f"guest loop: boot to agent {t.get('boot_to_agent_s')} s, agent reboot to agent "
                            f"{t.get('restart_to_agent_s')} s; guest reads "
                            + ", ".join(f"{k} {v['seconds']} s" for k, v in transcript["steps"].items()
                                        if k.startswith("read_") and "seconds" in v))
    return transcript


def _step(loop: dict, key: str) -> dict:
    assert key in loop["steps"], f"the loop stopped before {key} (rc {loop['rc']}): {loop['log']}"
    return loop["steps"][key]


def _doc(step: dict) -> dict:
    return json.loads(step["stdout"])


def _hda(step: dict) -> dict:
    [dev] = _doc(step)["devices"]
    assert dev["ids"] == "8086:293e"
    return dev


def test_failures_are_one_line_with_exit_2(loop):
    steps = loop["steps"]
    for key, words in (("no_channel", "no guest agent channel"), ("not_connected", "not connected"),
                       ("not_running", "not running")):
        step = steps[key]
        assert step["rc"] == 2, (key, step)
        lines = step["stderr"].strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in step["stderr"], (key, lines)
    # The real libvirtd refuses agent commands on a read-only connection.
    assert steps["read_only"]["kind"] == "read-only", steps["read_only"]


def test_no_channel_names_the_channel(loop):
    """The bare domain has no agent channel and no assigned device on INTx:
    the agent-channel rule does not fire, so nothing is printed as a verified
    change (test_units.py has the case where it fires); the one line says
    what to add."""
    step = _step(loop, "no_channel_fix")
    assert step["rc"] == 2 and step["stdout"] == "", step
    [line] = step["stderr"].strip().splitlines()
    assert "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>" in line


def test_reads_intx_and_msi_possible_but_off(loop):
    step = _step(loop, "read_before")
    assert step["rc"] == 1, step["stderr"]
    doc = _doc(step)
    assert doc["agent"]["available"] is True and doc["agent"]["os"] == "linux"
    assert doc["agent"]["blocked"] == []
    dev = _hda(step)
    assert dev["guest_driver"] == "snd_hda_intel"
    assert dev["guest_mode"] == "intx"
    assert dev["verdict"] == "msi-possible-but-off"
    assert "enable_msi=0" in dev["guest_setting"] and "/etc/modprobe.d/sound.conf" in dev["guest_setting"]
    assert any("IO-APIC" in row for row in dev["interrupts"])
    assert "custom-ga-command" in " ".join(doc["notes"])


def test_plan_shows_the_argv_and_writes_nothing(loop):
    step = _step(loop, "plan")
    assert step["rc"] == 0, step["stderr"]
    assert "/bin/sh -c 'umask 022 && mkdir -p /etc/modprobe.d && cat > /etc/modprobe.d/vfio-advisor-msi.conf.new" \
        in step["stdout"]
    assert "options snd_hda_intel enable_msi=1" in step["stdout"]
    assert "nothing was changed" in step["stdout"]
    after = _hda(_step(loop, "read_after_plan"))
    assert "vfio-advisor-msi.conf" not in after["guest_setting"]
    assert after["verdict"] == "msi-possible-but-off"


def test_apply_writes_reads_back_and_records(loop):
    step = _step(loop, "apply")
    assert step["rc"] == 0, step["stderr"]
    out = step["stdout"]
    assert out.index("running in the guest:") < out.index("read back:") < out.index("restart the guest")
    [record] = Path(loop["work"], "state/guest-changes").glob("*.json")
    [change] = json.loads(record.read_text())["changes"]
    assert change["key"] == "ids:8086:293e" and change["driver"] == "snd_hda_intel"
    assert change["driver_version"] == _hda(_step(loop, "read_before"))["guest_driver_version"]
    waiting = _hda(_step(loop, "read_after_apply"))
    assert waiting["guest_mode"] == "intx"
    assert waiting["verdict"] == "changed-waiting-for-restart"
    assert "next load: 1 (" in waiting["guest_setting"]


def test_agent_reboot_then_msi(loop):
    step = _step(loop, "apply_reboot")
    assert step["rc"] == 0, step["stderr"]
    # Applied already and waiting for the restart: nothing is written twice.
    assert "nothing to change" in step["stdout"] and "agent reboot" in step["stdout"]
    before, after = loop["boot_ids"]
    assert before != after  # the guest really restarted
    step = _step(loop, "read_after_restart")
    assert step["rc"] == 0, step["stderr"]
    dev = _hda(step)
    assert dev["guest_mode"] == "msi"
    assert dev["verdict"] == "consistent"
    assert any("PCI-MSI" in row for row in dev["interrupts"])
    assert dev["guest_setting"].startswith("snd_hda_intel.enable_msi=1")


def test_libvirt_marks_the_domain_tainted(loop):
    assert loop["tainted"] is True
