"""The checked-in journald catalog is the one the registry generates, and
journalctl accepts it."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from vfio_advisor.catalog import render_catalog
from vfio_advisor.cli import main
from vfio_advisor.manpage import render as render_manpage
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


# --- the rule texts outside the journal ---------------------------------------
PLACEHOLDER = re.compile(r"@[A-Z][A-Z0-9_]*@")


def test_explain_names_what_journalctl_fills_in():
    """Before: `explain VA9002` printed "the domain @VFIO_ADVISOR_DOMAIN@
    (@VFIO_ADVISOR_SOURCE@)", the catalog's substitutions, raw."""
    out = subprocess.run([sys.executable, "-m", "vfio_advisor", "explain", "VA9002"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert not PLACEHOLDER.search(out.stdout), out.stdout
    text = " ".join(out.stdout.split())
    assert "checked the domain <domain> (<source>) and logged <findings> findings for <devices> assigned" in text


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_no_rule_text_shows_a_raw_substitution(rule, capsys):
    assert main(["explain", rule.id]) == 0
    assert not PLACEHOLDER.search(capsys.readouterr().out)


def test_man_page_names_them_in_italics():
    page = render_manpage()
    assert not PLACEHOLDER.search(page), PLACEHOLDER.findall(page)
    assert "checked the domain \\fIdomain\\fR (\\fIsource\\fR)" in page


def test_the_catalog_keeps_them_for_journalctl():
    """journalctl -x fills @FIELD@ from the entry (the system tier shows
    "Domain: passthru."): the catalog is the one place they stay."""
    va9002 = CATALOG.read_text().split("Subject: VA9002 ", 1)[1].split("\n-- ", 1)[0]
    assert "the domain @VFIO_ADVISOR_DOMAIN@ (@VFIO_ADVISOR_SOURCE@)" in " ".join(va9002.split())
