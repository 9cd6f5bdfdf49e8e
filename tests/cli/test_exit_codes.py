"""Exit status, per command, as vfio_advisor/exitstatus.py states it: an
input that could not be analysed gives 2 while every other input is still
analysed and reported; the table is the one --help, the man page and
docs/exit-codes.md print. Domains come from libvirt's test driver (the demo
node) and the demo host tree."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from vfio_advisor.cli import build_parser
from vfio_advisor.exitstatus import EXIT_STATUS, exit_status_markdown
from vfio_advisor.manpage import render

REPO = Path(__file__).resolve().parents[2]
HOST = REPO / "examples/demo-host/root"
NODE = f"test://{REPO / 'examples/demo-host/node.xml'}"
TWO_INTX = REPO / "tests/data/fix/q35-two-intx.xml"


def run(*args):
    return subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=dict(os.environ, NO_COLOR="1"))


@pytest.fixture(scope="module")
def bad_xml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "bad.xml"
    path.write_text("<domain type='kvm'><name>broken</name><devices><hostdev")
    return path


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    """The demo node's domains with PCI hostdevs, and the files they read."""
    path = tmp_path_factory.mktemp("snap") / "demo.tar.gz"
    out = run("snapshot", "-o", str(path), "--connect", NODE, "--host-root", str(HOST))
    assert out.returncode == 0, out.stderr
    return path


def test_advise_good_and_bad_xml_reports_the_good_and_exits_2(bad_xml):
    out = run("advise", "--xml", str(TWO_INTX), "--xml", str(bad_xml), "--host-root", str(HOST),
              "--format", "json", "--config", "/dev/null")
    assert out.returncode == 2, out.stderr
    doc = json.loads(out.stdout)
    assert [d["name"] for d in doc["domains"]] == ["two-intx"]  # still analysed
    assert [e["source"] for e in doc["errors"]] == [str(bad_xml)]
    alone = run("advise", "--xml", str(TWO_INTX), "--host-root", str(HOST), "--config", "/dev/null")
    assert alone.returncode == 1, alone.stderr  # its own findings (VA5001 warnings) alone give 1


def test_advise_named_domain_libvirt_lacks_exits_2():
    out = run("advise", "win11", "nope", "--connect", NODE, "--host-root", str(HOST),
              "--config", "/dev/null")
    assert out.returncode == 2, out.stderr
    assert "win11" in out.stdout and "nope" not in out.stdout
    assert out.stderr == "vfio-advisor: nope: Domain not found\n"
    alone = run("advise", "win11", "--connect", NODE, "--host-root", str(HOST),
                "--config", "/dev/null")
    assert alone.returncode == 1 and "warning VA1001" in alone.stdout  # its findings alone


def test_advise_named_domain_the_snapshot_lacks_exits_2(snapshot):
    out = run("advise", "--host-root", str(snapshot), "nope", "--config", "/dev/null")
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.strip() == "vfio-advisor: nope: no such domain in the snapshot"
    out = run("advise", "--host-root", str(snapshot), "win11", "nope", "--config", "/dev/null")
    assert out.returncode == 2 and "win11" in out.stdout, out.stderr


def test_snapshot_of_a_missing_domain_or_only_a_bad_xml_exits_2(tmp_path, bad_xml):
    archive = tmp_path / "s.tar.gz"
    out = run("snapshot", "-o", str(archive), "--connect", NODE, "--host-root", str(HOST),
              "win11", "nope")
    assert out.returncode == 2, out.stderr
    assert "skipped nope" in out.stderr and "1 domain(s)" in out.stdout
    with tarfile.open(archive) as tar:  # the domain that exists is archived all the same
        assert "domains/win11.xml" in tar.getnames()
    out = run("snapshot", "-o", str(tmp_path / "t.tar.gz"), "--xml", str(bad_xml),
              "--host-root", str(HOST))
    assert out.returncode == 2, out.stderr
    assert run("snapshot", "-o", str(tmp_path / "u.tar.gz"), "--xml", str(TWO_INTX),
               "--host-root", str(HOST)).returncode == 0


def test_guest_irqs_exits_1_after_routing_warnings():
    out = run("guest-irqs", "--xml", str(TWO_INTX), "--host-root", str(HOST))
    assert "warning VA5001" in out.stdout
    assert out.returncode == 1, out.stderr
    quiet = run("guest-irqs", "win11", "--connect", NODE, "--host-root", str(HOST))
    assert "warning" not in quiet.stdout and quiet.returncode == 0, quiet.stderr


def test_fix_and_device_exit_2_on_input_they_cannot_analyse(bad_xml):
    out = run("fix", "--xml", str(TWO_INTX), "--xml", str(bad_xml), "--host-root", str(HOST))
    assert out.returncode == 2 and str(bad_xml) in out.stderr, out.stderr
    out = run("device", "0000:08:00.0", "0000:7f:00.0", "--host-root", str(HOST))
    assert out.returncode == 2 and "0000:08:00.0" in out.stdout, out.stderr


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_help_of_every_command_prints_its_rows_of_the_table():
    top = build_parser().format_help()
    assert "exit status:" in top
    for code, commands, _ in EXIT_STATUS:
        assert f"  {code:<4}{commands}: " in top, (code, commands)
    for name, sub in _subparsers().items():
        text = sub.format_help()
        assert "exit status:" in text, name
        codes = {code for code, commands, _ in EXIT_STATUS
                 if commands == "every command" or name in commands.split(", ")}
        shown = {int(line.split()[0]) for line in text.split("exit status:")[1].splitlines()
                 if line[:2] == "  " and line.split() and line.split()[0].isdigit()}
        assert shown == codes, name


def test_man_page_and_docs_carry_the_same_table():
    page = render()
    section = page.split(".SH EXIT STATUS")[1].split(".SH ")[0]
    for code, commands, _ in EXIT_STATUS:
        assert f"\n{code} ({commands})\n" in section.replace("\\-", "-"), (code, commands)
    assert "fix" in section  # the old page had no word about fix
    assert (REPO / "docs/exit-codes.md").read_text() == exit_status_markdown(), \
        "regenerate docs/exit-codes.md from vfio_advisor.exitstatus.exit_status_markdown()"


def test_every_option_of_every_subcommand_has_help_text():
    missing = [f"{name} {action.dest}" for name, sub in _subparsers().items()
               for action in sub._actions
               if not isinstance(action, argparse._HelpAction) and not action.help]
    assert missing == []


def test_an_also_row_follows_the_row_it_adds_to():
    """'Also: ...' extends the general row of the same status; printed first
    (as `guest --help` did), it reads as if it stood alone."""
    from vfio_advisor.exitstatus import exit_status_rows  # noqa: PLC0415
    for command in ("guest", "fix", None):
        rows = exit_status_rows(command)
        for index, (code, commands, meaning) in enumerate(rows):
            if meaning.startswith("Also:"):
                assert any(c == code and not m.startswith("Also:") for c, _, m in rows[:index]), \
                    (command, commands, meaning)


def test_no_commands_help_speaks_of_another_command():
    """`explain --help` once read "advise and guest-irqs: ... fix: ..." in its
    exit status: each command's help merges only its own rows."""
    import re  # noqa: PLC0415

    names = set(_subparsers())
    # "device" and "snapshot" are words of the shared rows too ("a PCI device", "a damaged snapshot").
    named = sorted(names - {"device", "snapshot"})
    for name, sub in _subparsers().items():
        section = sub.format_help().split("exit status:")[1]
        for other in named:
            if other != name:
                assert not re.search(rf"(?<![\w-]){re.escape(other)}(?![\w-])", section), (name, other, section)


@pytest.mark.parametrize("command", [["fix"], ["advise"]])
def test_output_closed_by_its_reader_is_not_success(command):
    """`vfio-advisor fix ... | true`: the findings were never read, so 0
    ("every fix verified", "no findings") would be false; 141 is the
    shell's status for a writer SIGPIPE ended, with no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first write
    try:
        out = subprocess.run([sys.executable, "-m", "vfio_advisor", *command, "--connect", NODE,
                              "--host-root", str(HOST), "--config", "/dev/null"],
                             stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
                             cwd=REPO, env=dict(os.environ, NO_COLOR="1"))
    finally:
        os.close(write_end)
    assert out.returncode == 141, out.stderr
    assert out.stderr == ""


@pytest.mark.parametrize("where", [["--connect", NODE], ["--connect", NODE, "--host-root", str(HOST)],
                                   ["--host-root", "SNAPSHOT"]])
def test_advise_json_is_a_document_whatever_was_refused(where, snapshot):
    """Only a name nobody has: --format json still prints its document
    (errors[], no domain), with or without --host-root, from libvirt or a
    snapshot; the error line goes to stderr; text prints only that line."""
    where = [str(snapshot) if w == "SNAPSHOT" else w for w in where]
    out = run("advise", "nope", *where, "--format", "json", "--config", "/dev/null")
    assert out.returncode == 2, out.stderr
    doc = json.loads(out.stdout)
    assert doc["schema"] == "vfio-advisor/advice/1" and doc["domains"] == []
    assert [e["source"] for e in doc["errors"]] == ["nope"]
    [line] = out.stderr.splitlines()
    assert line.startswith("vfio-advisor: nope: ")
    text = run("advise", "nope", *where, "--config", "/dev/null")
    assert text.returncode == 2 and text.stdout == "" and text.stderr == out.stderr


def test_advise_json_with_every_xml_refused_is_a_document(bad_xml):
    out = run("advise", "--xml", str(bad_xml), "--host-root", str(HOST), "--format", "json",
              "--config", "/dev/null")
    assert out.returncode == 2, out.stderr
    assert [e["source"] for e in json.loads(out.stdout)["errors"]] == [str(bad_xml)]
    assert out.stderr.startswith(f"vfio-advisor: {bad_xml}: ") and len(out.stderr.splitlines()) == 1


@pytest.mark.parametrize("target", [["nope", "--connect", NODE], ["nope", "--host-root", "SNAPSHOT"],
                                    ["--xml", "BAD"]])
def test_guest_irqs_json_is_a_document_whatever_was_refused(target, snapshot, bad_xml):
    """As advise: --format json prints its document (the same members,
    empty, and the refusal in errors[]) and the line on stderr, exit 2; it
    printed the line alone. Text prints only the line."""
    target = [str(snapshot) if t == "SNAPSHOT" else str(bad_xml) if t == "BAD" else t for t in target]
    host = [] if "--host-root" in target else ["--host-root", str(HOST)]
    out = run("guest-irqs", *target, *host, "--format", "json")
    assert out.returncode == 2, (out.stdout, out.stderr)
    doc = json.loads(out.stdout)
    source = "nope" if "nope" in target else str(bad_xml)
    assert doc == {"schema": "vfio-advisor/guest-irqs/1", "domain": "nope" if source == "nope" else None,
                   "chipset": None, "machine": None, "functions": [], "unaddressed": [], "findings": [],
                   "errors": [{"source": source, "message": doc["errors"][0]["message"]}]}
    [line] = out.stderr.splitlines()
    assert line == f"vfio-advisor: {source}: {doc['errors'][0]['message']}"
    text = run("guest-irqs", *target, *host)
    assert text.returncode == 2 and text.stdout == "" and text.stderr == out.stderr
    good = json.loads(run("guest-irqs", "--xml", str(TWO_INTX), "--host-root", str(HOST),
                          "--format", "json").stdout)
    assert good["errors"] == [] and set(good) == set(doc)  # one shape


@pytest.mark.parametrize("target", [["win11", "nope", "--connect", NODE],
                                    ["--xml", str(TWO_INTX), "--xml", "BAD"]])
def test_fix_json_is_a_document_whatever_was_refused(target, bad_xml):
    """As advise: fix --format json prints its document with the refusals in
    errors[] and no domain planned (one refused input refuses the run, as in
    text, so --apply would change nothing), each refusal a line on stderr."""
    target = [str(bad_xml) if t == "BAD" else t for t in target]
    source = "nope" if "nope" in target else str(bad_xml)
    out = run("fix", *target, "--host-root", str(HOST), "--format", "json", "--config", "/dev/null")
    assert out.returncode == 2, (out.stdout, out.stderr)
    doc = json.loads(out.stdout)
    assert doc["schema"] == "vfio-advisor/fix/1" and doc["domains"] == []
    assert [e["source"] for e in doc["errors"]] == [source]
    [line] = out.stderr.splitlines()
    assert line == f"vfio-advisor: {source}: {doc['errors'][0]['message']}"
    text = run("fix", *target, "--host-root", str(HOST), "--config", "/dev/null")
    assert text.returncode == 2 and text.stdout == "" and text.stderr == out.stderr
    good = json.loads(run("fix", "--xml", str(TWO_INTX), "--host-root", str(HOST), "--format", "json",
                          "--config", "/dev/null").stdout)
    assert good["errors"] == [] and set(good) == set(doc)  # one shape
