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


# --- which devices are looked for -------------------------------------------------------

def test_the_domains_devices_are_looked_for_through_a_socket(agent):
    """-c and --host-root name what to look for even when the agent is on a
    socket: the guest (a recorded Linux inventory, no AMD card) lacks both."""
    ga = agent(LINUX, _answers(INVENTORY))
    out = _cli("guest", "win11", "-c", URI, "--host-root", HOST, "--agent-socket", ga.path)
    assert out.returncode == 1, out
    assert "1002:73ff (host 0000:05:00.0) -> guest -" in out.stdout, out.stdout
    assert "1002:ab28 (host 0000:05:00.1) -> guest -" in out.stdout
    assert "verdict: not-found: no guest function has IDs 1002:ab28" in out.stdout
    assert "no assigned PCI function" not in out.stdout


def test_a_socket_without_a_domain_source_refuses(agent):
    """Nothing names the domain's devices: say so, do not report "nothing
    needs action" (the agent answers: the refusal is not a connection error)."""
    ga = agent(LINUX, _answers(INVENTORY))
    out = _cli("guest", "win11", "--agent-socket", ga.path)
    assert out.returncode == 2, out
    [line] = out.stderr.splitlines()
    assert "win11: --agent-socket reaches the agent only" in line and "--ids" in line, line
    assert out.stdout == "" and ga.ran == []


def test_the_domain_xml_can_come_from_a_file(agent, tmp_path):
    libvirt = pytest.importorskip("libvirt")
    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.openReadOnly(URI)
    xml = tmp_path / "win11.xml"
    xml.write_text(conn.lookupByName("win11").XMLDesc(0))
    conn.close()
    ga = agent(LINUX, _answers(INVENTORY))
    out = _cli("guest", "win11", "--xml", str(xml), "--host-root", HOST, "--agent-socket", ga.path)
    assert out.returncode == 1, out
    assert "1002:ab28 (host 0000:05:00.1)" in out.stdout, out.stdout
    out = _cli("guest", "other", "--xml", str(xml), "--host-root", HOST, "--agent-socket", ga.path)
    assert out.returncode == 2 and "other: no such domain in the XML files given" in out.stderr, out
    out = _cli("guest", "win11", "--xml", str(xml))
    assert out.returncode == 2 and "--xml goes with --agent-socket" in out.stderr, out


def test_ids_alone_through_a_socket_say_the_domain_was_not_read(agent):
    ga = agent(LINUX, _answers(INVENTORY))
    out = _cli("guest", "vm", "--agent-socket", ga.path, "--ids", "8086:293e")
    assert out.returncode == 1, out  # enable_msi=0 in the recorded guest
    assert "note: vm's XML was not read (no -c, --xml or snapshot): only --ids are looked for" in out.stdout


def test_a_hostdev_the_host_tree_lacks_could_not_be_read(agent, tmp_path):
    """A host tree without the assigned functions (a wrong --host-root): their
    IDs are unknown, so they cannot be looked for."""
    empty = tmp_path / "host"
    (empty / "sys" / "bus" / "pci" / "devices").mkdir(parents=True)
    (empty / "proc").mkdir()
    ga = agent(LINUX, _answers(INVENTORY))
    out = _cli("guest", "win11", "-c", URI, "--host-root", str(empty), "--agent-socket", ga.path)
    assert out.returncode == 2, out
    assert "verdict: could-not-read: 0000:05:00.1 is not a PCI device of the host tree" in out.stdout, out.stdout
    assert "no assigned PCI function" not in out.stdout
    [line] = out.stderr.splitlines()
    assert "could not read" in line and "0000:05:00.0" in line and "0000:05:00.1" in line, line


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
