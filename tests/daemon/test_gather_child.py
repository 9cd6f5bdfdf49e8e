"""The daemon gathers domains in a child process (vfio_advisor/daemon/gather_child.py)
so that it never imports lxml and the engine's readers (RSS: CPython never
unloads a C extension).

What the child sends back must be exactly what the engine gathers in
process, on every real lab capture and published platform tree; bad XML and
a failing child give one-line reasons; and the answer unpickles where lxml
cannot be imported, as in the daemon."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from tests.rules.examples import _both_on_msi_host
from vfio_advisor.config import DEFAULTS
from vfio_advisor.engine import Engine
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.pci_config import UNKNOWN
from vfio_advisor.daemon.gather_child import GatherFailure, gather_in_child
from vfio_advisor.daemon.state import facts_to_keep
from vfio_advisor.daemon.watch import Watcher
from vfio_advisor.sinks.base import CallbackSink
from vfio_advisor.testing.hosttree import build, capture_under_platform
from vfio_advisor.testing.scenes import domain_xml, gpu_audio_hostdevs

REPO = Path(__file__).resolve().parents[2]
CAPTURES = REPO / "lab/captures"
LAB_XML = sorted((REPO / "tests/data/domains/lab").glob("*.xml"))
PLATFORMS = sorted(p for p in (REPO / "tests/data/hosts").glob("posted-*") if p.is_dir())


def in_process(root: Path, xmls: list[str]) -> list:
    engine = Engine(str(root))
    return [facts_to_keep(engine.gather(parse_domain_xml(x))) for x in xmls]


@pytest.mark.parametrize("capture", sorted(p.name for p in CAPTURES.iterdir() if p.is_dir()))
def test_child_gathers_what_the_engine_gathers_on_every_lab_capture(capture):
    xmls = [p.read_text() for p in LAB_XML]
    got = gather_in_child(str(CAPTURES / capture), xmls)
    assert got == in_process(CAPTURES / capture, xmls)
    # and what the Watcher needs is there: the capture's devices, config space read
    assert any(d.device is not None and d.device.config is not None for facts in got for d in facts.devices)


@pytest.mark.parametrize("platform", [p.name for p in PLATFORMS])
def test_child_gathers_the_posting_verdict_of_published_platforms(tmp_path, platform):
    root = capture_under_platform(tmp_path / "root", CAPTURES / "switch-5", REPO / "tests/data/hosts" / platform)
    xml = (REPO / "tests/data/domains/lab/switch.xml").read_text()
    [got] = gather_in_child(str(root), [xml])
    [want] = in_process(root, [xml])
    assert got == want
    assert got.host.posting == want.host.posting and got.host.posting is not None
    assert got.host.msi_posted == want.host.msi_posted


def unknown_paths(value, path="") -> tuple[list[str], int]:
    """Where UNKNOWN is in a fact tree, and how many UNKNOWN-typed values are
    not the singleton itself."""
    if type(value) is type(UNKNOWN):
        return ([path], 0) if value is UNKNOWN else ([], 1)
    found, strays = [], 0
    if isinstance(value, tuple):
        items = value._asdict().items() if hasattr(value, "_asdict") else enumerate(value)
        for key, item in items:
            f, s = unknown_paths(item, f"{path}.{key}")
            found += f
            strays += s
    return found, strays


def test_unknown_stays_the_one_unknown_across_the_pipe(tmp_path):
    """A 64-byte config read (no CAP_SYS_ADMIN): the facts that could not be
    read are the UNKNOWN singleton, which rules and sinks test with `is`."""
    build(tmp_path / "root", _both_on_msi_host(config_bytes=64))
    xml = domain_xml("win11", gpu_audio_hostdevs())
    [got] = gather_in_child(str(tmp_path / "root"), [xml])
    [want] = in_process(tmp_path / "root", [xml])
    found, strays = unknown_paths(got)
    assert found and strays == 0, (found, strays)
    assert found == unknown_paths(want)[0]


def test_the_host_table_is_not_sent_and_not_kept():
    """A followed domain kept the host's whole parsed /proc/interrupts for its
    run: on a 256-CPU, 2000-row host the daemon's RSS was 79.2 MiB instead of
    44 (make bench). Neither the child's answer nor the Watcher
    (in-process add_domain, as replays use it) keeps it now."""
    [got] = gather_in_child(str(CAPTURES / "shared"), [LAB_XML[0].read_text()])
    assert got.host.interrupts is None and got.host.later is None
    watcher = Watcher(HostRoot(str(CAPTURES / "shared")), DEFAULTS, CallbackSink(lambda f, d: None))
    state = watcher.add_domain(parse_domain_xml(LAB_XML[0].read_text()))
    assert state.facts.host.interrupts is None and state.facts.host.later is None
    assert watcher.pci_ids is None  # nor pci.ids between domain events
    assert state.facts.devices  # the facts themselves are there
    # ...while the engine itself read it (advise and the hook use it)
    assert Engine(str(CAPTURES / "shared")).host().interrupts is not None


def test_bad_xml_gives_one_line_per_domain_and_the_others_are_gathered():
    good = (REPO / "tests/data/domains/lab/edu.xml").read_text()
    got = gather_in_child(str(CAPTURES / "stays-intx-1"), ["<domain", good, "<node/>", ""])
    assert [type(g).__name__ for g in got] == ["GatherFailure", "DomainFacts", "GatherFailure", "GatherFailure"]
    for failure in (got[0], got[2], got[3]):
        assert failure.kind == "xml" and "\n" not in failure.reason and failure.reason
    assert "not <domain>" in got[2].reason
    assert got[1].domain.name == "lab-edu"


def test_a_child_that_fails_or_hangs_is_one_line_for_each_domain(monkeypatch, tmp_path):
    xmls = [LAB_XML[0].read_text()] * 2
    # A real program in the child's place that fails, one that cannot be
    # started, and one that outlives the timeout.
    failing = tmp_path / "failing"
    failing.write_text("#!/bin/sh\necho 'first line' >&2\necho 'MemoryError: out of memory' >&2\nexit 1\n")
    failing.chmod(0o755)
    slow = tmp_path / "slow"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    for program, timeout, reason in ((failing, 30, "the gathering child failed: MemoryError: out of memory"),
                                     (tmp_path / "absent", 30, "cannot start"),
                                     (slow, 0.5, "the gathering child took more than 0.5 s")):
        monkeypatch.setattr(sys, "executable", str(program))
        got = gather_in_child(str(CAPTURES / "shared"), xmls, timeout=timeout)
        assert len(got) == 2 and all(isinstance(g, GatherFailure) and g.kind == "gather" for g in got)
        assert got[0].reason.startswith(reason), got[0].reason
        assert "\n" not in got[0].reason


def strings_not_str(value, path="") -> list[str]:
    if isinstance(value, str):
        return [] if type(value) is str else [f"{path}: {type(value).__name__}"]
    out = []
    if isinstance(value, (tuple, frozenset)):
        items = value._asdict().items() if hasattr(value, "_asdict") else enumerate(sorted(value, key=repr))
        for key, item in items:
            out += strings_not_str(item, f"{path}.{key}")
    return out


def test_the_answer_unpickles_without_lxml(tmp_path):
    """The daemon's side: the fact types hold no lxml object (lxml's "smart"
    xpath strings did: virt_type, machine, arch), so unpickling needs no lxml."""
    xml = domain_xml("win11", gpu_audio_hostdevs()).replace(
        "</domain>", "<metadata><va:advisor xmlns:va='urn:x-vfio-advisor:domain:1'>"
        "<va:ignore rule='VA6001'/></va:advisor></metadata></domain>")
    [facts] = gather_in_child(str(CAPTURES / "shared"), [xml])
    assert facts.domain.ignored_rules == {"VA6001"}
    assert strings_not_str(facts.domain) == []
    data = pickle.dumps(facts)
    run = subprocess.run([sys.executable, "-c",
                          "import sys, pickle; sys.modules['lxml'] = None; "
                          "f = pickle.loads(sys.stdin.buffer.read()); print(f.domain.name, sorted(f.domain.ignored_rules))"],
                         input=data, capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.decode().split() == ["win11", "['VA6001']"]


def test_the_child_finds_the_daemons_own_copy_without_an_installed_one(monkeypatch, tmp_path):
    """The system tier's guest runs the suite from a plain source tree
    (`python3 -m vfio_advisor daemon` in its directory; no editable install):
    the child, in cwd "/", found no vfio_advisor and the daemon followed
    nothing. Here the child's interpreter runs without site (`-S`: no venv
    .pth, so no editable-install finder), lxml reachable by its path only."""
    import lxml  # noqa: PLC0415 - where this venv's lxml lives, for the child

    site_dir = str(Path(lxml.__file__).resolve().parents[1])
    wrapper = tmp_path / "python-without-site"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{site_dir}" '
                       f'exec {sys.executable} -S "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(wrapper))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    [got] = gather_in_child(str(CAPTURES / "stays-intx-1"), [(REPO / "tests/data/domains/lab/edu.xml").read_text()])
    assert not isinstance(got, GatherFailure), got
    assert got.domain.name == "lab-edu" and got.devices[0].device is not None


def test_a_relative_host_root_is_the_daemons_not_the_childs(monkeypatch):
    """`vfio-advisor daemon --host-root lab/captures/x` from a checkout: the
    child runs in "/", so the path must cross absolute (it came back with no
    devices at all, silently)."""
    monkeypatch.chdir(REPO)
    xml = (REPO / "tests/data/domains/lab/edu.xml").read_text()
    [got] = gather_in_child("lab/captures/stays-intx-1", [xml])
    [want] = in_process(CAPTURES / "stays-intx-1", [xml])
    assert got == want and got.devices[0].device is not None


def test_a_child_stopped_with_the_daemon_is_not_a_failure(monkeypatch, tmp_path):
    """systemd stops the unit by signalling its cgroup: the child gets
    SIGTERM too. That is the daemon stopping, not a domain it cannot follow."""
    stopped = tmp_path / "stopped"
    stopped.write_text("#!/bin/sh\nkill -TERM $$\n")
    stopped.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(stopped))
    got = gather_in_child(str(CAPTURES / "shared"), [LAB_XML[0].read_text()])
    assert got == [GatherFailure("stopped", "the daemon is stopping")]


def test_files_changed_under_a_running_daemon_say_restart(tmp_path):
    """`vfio-advisor install` after a pull rewrites the program under a
    daemon that keeps running: its child would pickle the new fact types to
    the old parent. The child sees the files changed and says what to do."""
    import shutil  # noqa: PLC0415

    copy = tmp_path / "copy"
    shutil.copytree(REPO / "vfio_advisor", copy / "vfio_advisor",
                    ignore=shutil.ignore_patterns("__pycache__"))
    xml = (REPO / "tests/data/domains/lab/edu.xml").read_text()
    script = (
        "import sys, pathlib\n"
        f"sys.path.insert(0, {str(copy)!r})\n"
        "from vfio_advisor.daemon import gather_child as g\n"
        f"assert g.__file__.startswith({str(copy)!r}), g.__file__\n"
        f"xml = {xml!r}\n"
        f"before = g.gather_in_child({str(CAPTURES / 'stays-intx-1')!r}, [xml])\n"
        "print(type(before[0]).__name__)\n"
        f"model = pathlib.Path({str(copy / 'vfio_advisor/facts/model.py')!r})\n"
        "model.write_text(model.read_text() + '\\n# a newer version\\n')\n"
        f"after = g.gather_in_child({str(CAPTURES / 'stays-intx-1')!r}, [xml])\n"
        "print(after[0].kind, '|', after[0].reason)\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd="/")
    assert run.returncode == 0, run.stderr
    first, second = run.stdout.strip().splitlines()
    assert first == "DomainFacts"
    assert second == ("gather | vfio-advisor's files changed since the daemon started (a reinstall or "
                      "update): restart it (systemctl restart vfio-advisor)")
