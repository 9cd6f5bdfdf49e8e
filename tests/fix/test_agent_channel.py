"""VA1002's fix, the QEMU guest agent channel, through `vfio-advisor fix`
like every XML fix: the printed XML is the user's file with only the new
<channel> inserted, its diff applies with patch(1), it passes the same
verification (re-analysis, layout, schema, libvirt's test driver), and the
fixed domain no longer raises VA1002 while VA1001 (the guest's own
setting) stays."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.fix.conftest import REPO

DEMO = REPO / "examples" / "demo-host"
# What the planner inserts, in the file's quote style at its device indentation.
CHANNEL_LINES = ("      <channel type='unix'>\n"
                 "        <target type='virtio' name='org.qemu.guest_agent.0'/>\n"
                 "      </channel>\n")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


@pytest.fixture()
def win11(tmp_path):
    """The demo's win11 as a user's file: its bytes as the demo holds them."""
    node = (DEMO / "node.xml").read_text()
    (text,) = [m.group(0) for m in re.finditer(r"<domain\b.*?</domain>", node, re.S)
               if "<name>win11</name>" in m.group(0)]
    assert "org.qemu.guest_agent.0" not in text
    path = tmp_path / "win11.xml"
    path.write_text(text + "\n")
    return path


def fix(path, fmt: str) -> subprocess.CompletedProcess:
    return run("fix", "--xml", str(path), "--host-root", str(DEMO / "root"), "--rule", "VA1002",
               "--format", fmt)


def test_xml_is_the_users_bytes_with_only_the_channel_inserted(win11):
    out = fix(win11, "xml")
    assert out.returncode == 0, out.stderr
    original = win11.read_text()
    assert out.stdout.count(CHANNEL_LINES) == 1
    # the only difference: the channel, as the last device
    assert out.stdout.replace(CHANNEL_LINES, "", 1) == original
    assert CHANNEL_LINES + "    </devices>" in out.stdout


def test_the_diff_applies_with_patch(win11):
    if shutil.which("patch") is None:
        pytest.skip("patch(1) is not installed (Debian package patch)")
    expected = fix(win11, "xml").stdout
    diff = fix(win11, "diff")
    assert diff.returncode == 0, diff.stderr
    body = diff.stdout[diff.stdout.index("\n--- "):].lstrip("\n")
    applied = subprocess.run(["patch", "--silent", str(win11)], input=body, capture_output=True,
                             text=True, timeout=30)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert win11.read_text() == expected


def test_verified_like_every_xml_fix(win11):
    out = fix(win11, "json")
    assert out.returncode == 0, out.stderr
    (dom,) = json.loads(out.stdout)["domains"]
    (change,) = dom["changes"]
    assert change["rule"] == "VA1002" and change["verified"]
    assert [o["op"] for o in change["operations"]] == ["append-device"]
    checks = change["verification"]
    assert {k for k, v in checks.items() if v["ran"]} == {"reanalysis", "layout", "schema", "testdriver"}
    assert all(v["ok"] for v in checks.values())
    assert "gone: VA1002" in checks["reanalysis"]["detail"]


def test_the_fixed_domain_keeps_va1001_and_loses_va1002(win11, tmp_path):
    fixed = tmp_path / "fixed.xml"
    fixed.write_text(fix(win11, "xml").stdout)
    for path, expect in ((win11, {"VA1001", "VA1002"}), (fixed, {"VA1001"})):
        out = run("advise", "--xml", str(path), "--host-root", str(DEMO / "root"), "--format", "json")
        assert out.returncode == 1, out.stderr  # VA1001, a warning
        (dom,) = json.loads(out.stdout)["domains"]
        rules = {f["rule"] for f in dom["findings"]} | {f["rule"] for d in dom["devices"]
                                                        for f in d["findings"]}
        assert rules & {"VA1001", "VA1002"} == expect, rules
