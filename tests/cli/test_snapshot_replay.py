"""A snapshot replays in every command that reads a host, with its own
domains: guest-irqs, fix and device never turn to the replaying machine's
libvirt. SNAPSHOT.txt names the kernel of the tree that was read."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from tests.cli.test_exit_codes import HOST, TWO_INTX, run


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    """The demo host with a recorded kernel release no machine runs, plus
    the demo node's domains and a domain from a file (two-intx)."""
    base = tmp_path_factory.mktemp("replay")
    tree = base / "root"
    shutil.copytree(HOST, tree, symlinks=True)
    (tree / "proc/sys/kernel").mkdir(parents=True)
    (tree / "proc/sys/kernel/osrelease").write_text("6.12.99-recorded-amd64\n")
    path = base / "demo.tar.gz"
    out = run("snapshot", "-o", str(path), "--xml", str(TWO_INTX), "--host-root", str(tree))
    assert out.returncode == 0, out.stderr
    return path


def test_snapshot_records_the_kernel_of_the_tree_it_read(snapshot):
    with tarfile.open(snapshot) as tar:
        note = tar.extractfile("SNAPSHOT.txt").read().decode()
        assert "proc/sys/kernel/osrelease" in tar.getnames()  # the replay has it too
    assert "kernel: 6.12.99-recorded-amd64\n" in note, note


def test_guest_irqs_replays_the_snapshots_domain(snapshot):
    out = run("guest-irqs", "two-intx", "--host-root", str(snapshot), "--format", "json")
    assert out.returncode == 1, out.stderr  # its VA5001 warnings
    doc = json.loads(out.stdout)
    assert doc["domain"] == "two-intx"
    assert {f["rule"] for f in doc["findings"]} == {"VA5001"}
    direct = json.loads(run("guest-irqs", "--xml", str(TWO_INTX), "--host-root", str(HOST),
                            "--format", "json").stdout)
    assert doc == direct
    missing = run("guest-irqs", "nope", "--host-root", str(snapshot))
    assert missing.returncode == 2
    assert missing.stderr.strip() == "vfio-advisor: nope: no such domain in the snapshot"


def test_fix_replays_the_snapshots_domains(snapshot):
    out = run("fix", "--host-root", str(snapshot), "--format", "json")
    assert out.returncode == 0, out.stderr
    (dom,) = json.loads(out.stdout)["domains"]
    assert dom["name"] == "two-intx" and dom["source"] == "snapshot:domains/two-intx.xml"
    assert [c["rule"] for c in dom["changes"]] == ["VA5001"]
    refused = run("fix", "--host-root", str(snapshot), "--apply")
    assert refused.returncode == 2 and "snapshot" in refused.stderr, refused.stderr


def test_device_replays_the_snapshots_tree(snapshot):
    out = run("device", "0000:08:00.0", "--host-root", str(snapshot), "--format", "json")
    assert out.returncode == 0, out.stderr
    direct = run("device", "0000:08:00.0", "--host-root", str(HOST), "--format", "json")
    assert json.loads(out.stdout) == json.loads(direct.stdout)


def test_domains_whose_safe_names_fold_together_both_replay(tmp_path):
    """"win 11" and "win_11" fold to one file name; the archive must still
    hold two members the replay accepts, and replay both domains."""
    xml = TWO_INTX.read_text()
    files = []
    for name in ("win 11", "win_11"):
        f = tmp_path / f"{name.replace(' ', '-')}.xml"
        f.write_text(xml.replace("<name>two-intx</name>", f"<name>{name}</name>", 1))
        files += ["--xml", str(f)]
    archive = tmp_path / "s.tar.gz"
    out = run("snapshot", "-o", str(archive), *files, "--host-root", str(HOST))
    assert out.returncode == 0 and "2 domain(s)" in out.stdout, out.stderr
    replay = run("advise", "--host-root", str(archive), "--format", "json", "--config", "/dev/null")
    assert replay.returncode == 1, replay.stderr  # two-intx's warnings, nothing refused
    assert sorted(d["name"] for d in json.loads(replay.stdout)["domains"]) == ["win 11", "win_11"]


def test_the_same_domain_given_twice_is_archived_once(tmp_path):
    archive = tmp_path / "s.tar.gz"
    out = run("snapshot", "-o", str(archive), "--xml", str(TWO_INTX), "--xml", str(TWO_INTX),
              "--host-root", str(HOST))
    assert out.returncode == 0 and "1 domain(s)" in out.stdout, out.stderr
    assert out.stderr == (f"vfio-advisor: {TWO_INTX}: domain 'two-intx' given again with the "
                          "same XML; archived once\n")
    with tarfile.open(archive) as tar:
        assert [n for n in tar.getnames() if n.startswith("domains/")] == ["domains/two-intx.xml"]
    replay = run("advise", "--host-root", str(archive), "--format", "json", "--config", "/dev/null")
    assert replay.returncode == 1, replay.stderr
    assert [d["name"] for d in json.loads(replay.stdout)["domains"]] == ["two-intx"]


def test_snapshot_of_the_live_host_keeps_its_kernel_release(tmp_path):
    """proc/sys/kernel/osrelease refuses a 64 MiB read(2) with ENOMEM; the
    archive must hold it all the same, as SNAPSHOT.txt's kernel line does."""
    archive = tmp_path / "live.tar.gz"
    out = run("snapshot", "-o", str(archive), "--xml", str(TWO_INTX))
    assert out.returncode == 0, out.stderr
    with open("/proc/sys/kernel/osrelease", "rb") as f:
        live = f.read()
    with tarfile.open(archive) as tar:
        assert tar.extractfile("proc/sys/kernel/osrelease").read() == live
