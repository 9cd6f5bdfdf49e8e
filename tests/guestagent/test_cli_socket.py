"""`guest` and `fix --guest` through --agent-socket, end to end through the CLI,
against ScriptedAgent where a real qemu-ga on this host cannot play the guest
(a Windows guest, a program failing in the guest, output cut short):

- which devices are looked for: the domain's, read from -c, with its host
  tree; never "nothing needs action" without having looked;
- a guest whose answer came back empty or cut short is "could not read"
  (exit 2), never "not found" (exit 1);
- a program failing in the guest is one line on stderr.

The domain and host are examples/demo-host: win11 is assigned 0000:05:00.0
(1002:73ff, on MSI) and 0000:05:00.1 (1002:ab28, on INTx).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.guestagent.support import HERE, REPO, ScriptedAgent

DEMO = REPO / "examples" / "demo-host"
URI = f"test://{DEMO}/node.xml"
HOST = str(DEMO / "root")
LINUX = {"id": "debian", "name": "Debian GNU/Linux", "kernel-release": "6.1.0-57-amd64"}
WINDOWS = {"id": "mswindows", "name": "Microsoft Windows 11 Pro", "kernel-version": "10.0"}
INVENTORY = (HERE / "data" / "inventory-intx.txt").read_bytes()  # a guest with 8086:293e, no AMD card


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


@pytest.fixture
def agent(tmp_path):
    started: list[ScriptedAgent] = []

    def start(osinfo: dict, run) -> ScriptedAgent:
        started.append(ScriptedAgent(str(tmp_path / f"qga{len(started)}.sock"), osinfo, run))
        return started[-1]
    yield start
    for one in started:
        one.close()


def _answers(output: bytes, code: int = 0, err: bytes = b""):
    return lambda argv: (code, output, err)


# --- a program failing in the guest ------------------------------------------------------

def test_a_failed_inventory_is_one_line_with_the_guests_reason(agent):
    err = b"sh: 1: cannot open /proc/x: No such file\nsh: 2: more noise\n"
    ga = agent(LINUX, _answers(b"", 1, err))
    out = _cli("guest", "vm", "--agent-socket", ga.path, "--ids", "8086:293e")
    assert out.returncode == 2, out
    [line] = out.stderr.splitlines()
    assert "exited with status 1 in the guest: sh: 1: cannot open /proc/x: No such file" in line, line
    assert line.startswith(f"vfio-advisor: agent socket {ga.path}: /bin/sh -c "), line
    assert "/proc/interrupts" not in line and len(line) < 300, line  # not the whole script
    assert out.stdout == ""


# --- a guest whose answer is empty or cut short ------------------------------------------

def test_an_empty_windows_listing_could_not_be_read(agent):
    ga = agent(WINDOWS, _answers(b""))
    out = _cli("guest", "win11", "--agent-socket", ga.path, "--ids", "1002:ab28")
    assert out.returncode == 2, out
    assert "verdict: could-not-read: reg.exe listed nothing under HKLM\\SYSTEM\\CurrentControlSet\\Enum\\PCI" \
        in out.stdout, out.stdout
    assert "not-found" not in out.stdout
    [line] = out.stderr.splitlines()
    assert "win11: could not read 1002:ab28 in the guest" in line, line


def test_fix_guest_on_an_empty_windows_listing_plans_nothing_and_fails(agent):
    ga = agent(WINDOWS, _answers(b""))
    out = _cli("fix", "--guest", "win11", "--agent-socket", ga.path, "--ids", "1002:ab28")
    assert out.returncode == 2, out
    assert "# 1002:ab28: could-not-read" in out.stdout, out.stdout
    assert "0 change(s)" in out.stdout
    [line] = out.stderr.splitlines()
    assert "win11: could not read 1002:ab28 in the guest" in line, line


@pytest.mark.parametrize("output", [INVENTORY.partition(b"\nI\n")[0] + b"\n", b""],
                         ids=["cut-before-interrupts", "empty"])
def test_a_linux_inventory_without_its_interrupts_could_not_be_read(agent, output):
    """8086:293e is in the inventory's device list (with enable_msi=0 set),
    1002:ab28 is not: without /proc/interrupts neither can be judged."""
    ga = agent(LINUX, _answers(output))
    out = _cli("guest", "vm", "--agent-socket", ga.path, "--ids", "8086:293e", "--ids", "1002:ab28")
    assert out.returncode == 2, out
    verdicts = [ln.strip() for ln in out.stdout.splitlines() if ln.strip().startswith("verdict:")]
    assert verdicts == ["verdict: could-not-read: the inventory came back without its /proc/interrupts "
                        "section (cut short)"] * 2, out.stdout
    [line] = out.stderr.splitlines()
    assert "vm: could not read 8086:293e, 1002:ab28 in the guest" in line, line
