"""vfio-advisor(8) is generated from the parser and the registry: every
subcommand, every option and every rule must be in it, and groff must
accept it without a warning."""

import argparse
import shutil
import subprocess

import pytest

from vfio_advisor.catalog import for_reader
from vfio_advisor.cli import build_parser
from vfio_advisor.manpage import render, roff
from vfio_advisor.rules import RULES


@pytest.fixture(scope="module")
def page():
    return render()


def plain(text: str) -> str:
    """The page as a reader sees it, near enough: escapes undone."""
    return text.replace("\\-", "-").replace("\\e", "\\").replace("\\fB", "").replace(
        "\\fI", "").replace("\\fR", "").replace("\\&", "")


def subcommands():
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    raise AssertionError("the parser has no subcommands")


def test_every_subcommand_and_option_is_documented(page):
    text = plain(page)
    subs = subcommands()
    assert len(subs) >= 10
    for name, sub in subs.items():
        assert f"vfio-advisor {name}" in text, f"synopsis lacks {name}"
        assert f"\n.SS {name}\n" in text, f"COMMANDS lacks a section for {name}"
        section = text.split(f"\n.SS {name}\n", 1)[1].split("\n.SS ", 1)[0]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for opt in action.option_strings:
                assert opt in section, f"{name}: option {opt} not documented"
            if not action.option_strings:
                assert str(action.metavar or action.dest) in section, f"{name}: {action.dest}"
            if action.help:
                assert action.help in section, f"{name}: help of {action.dest} missing"
    assert "--version" in text


def test_every_rule_is_documented(page):
    text = plain(page)
    rules_section = text.split("\n.SH RULES\n", 1)[1]
    for rule in RULES:
        assert f".SS {rule.id} {rule.slug} ({rule.severity})" in rules_section, rule.id
        assert rule.title in rules_section
        assert for_reader(rule.explanation, str) in rules_section, rule.id  # @FIELD@ named
        assert rule.remedy in rules_section, rule.id


def test_roff_escapes_what_would_be_requests():
    assert roff(".x\n'y\na-b\\c") == "\\&.x\n\\&'y\na\\-b\\ec"


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
def test_groff_renders_it_without_warnings(page, tmp_path):
    src = tmp_path / "vfio-advisor.8"
    src.write_text(page)
    out = subprocess.run(["groff", "-man", "-ww", "-z", "-Tutf8", str(src)], capture_output=True,
                         text=True)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    text = subprocess.run(["groff", "-man", "-Tutf8", "-P-c", "-P-b", "-P-u", str(src)],
                          capture_output=True, text=True).stdout
    assert "vfio-advisor daemon" in text and RULES[0].id in text


def test_files_names_every_key_the_config_file_takes(page):
    """Every key parse_config reads, taken from a file that sets them all: the
    page listed only some (not connect, host_root, state_dir)."""
    from vfio_advisor.config import _SCALARS, parse_config  # noqa: PLC0415
    config_paragraph = plain(page).split("/etc/vfio-advisor/config.toml\n", 1)[1].split("\n.TP", 1)[0]
    tables = {}
    for section, key, _, kind in _SCALARS:
        tables.setdefault(section, {})[key] = {float: 1.0, int: 1, str: "/x", bool: True}[kind]
    tables["daemon"]["disabled_rules"] = []
    tables["domains"] = {"win11": {"ignore": []}}
    parse_config(tables)  # strict: a key it would refuse is not a key to document
    for section, keys in (("daemon", tables["daemon"]), ("hook", tables["hook"]),
                          ("domains.NAME", tables["domains"]["win11"])):
        listed = config_paragraph.split(f"[{section}]: ", 1)[1].split(")", 1)[0].replace(";", ",")
        for key in keys:
            assert key in [k.strip() for k in listed.split(",")], (section, key, listed)
