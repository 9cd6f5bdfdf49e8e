"""The checked-in journald catalog is the one the registry generates, and
journalctl accepts it."""

import subprocess
from pathlib import Path

from vfio_advisor.catalog import render_catalog
from vfio_advisor.rules import RULES

CATALOG = Path(__file__).resolve().parents[1] / "systemd" / "vfio-advisor.catalog"


def test_checked_in_catalog_matches_registry():
    assert CATALOG.read_text() == render_catalog(), (
        "systemd/vfio-advisor.catalog is stale: run `vfio-advisor catalog -o systemd/vfio-advisor.catalog`")


def test_every_rule_has_an_entry_with_subject():
    text = CATALOG.read_text()
    for rule in RULES:
        assert f"-- {rule.message_id}\nSubject: {rule.id} {rule.title}\n" in text


def test_body_lines_fit_76_columns():
    for line in CATALOG.read_text().splitlines():
        if line.startswith(("--", "#", "Subject:", "Documentation:")):  # one-line fields
            continue
        assert len(line) <= 76, line


def test_journalctl_builds_a_database(tmp_path):
    cat = tmp_path / "usr/lib/systemd/catalog"
    cat.mkdir(parents=True)
    (cat / "vfio-advisor.catalog").write_text(CATALOG.read_text())
    out = subprocess.run(["journalctl", f"--root={tmp_path}", "--update-catalog"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    listed = subprocess.run(["journalctl", f"--root={tmp_path}", "--list-catalog"],
                            capture_output=True, text=True).stdout
    for rule in RULES:
        assert rule.message_id in listed.replace("-", "")
