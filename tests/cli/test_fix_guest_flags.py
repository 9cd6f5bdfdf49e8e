"""`fix --guest` from the outside: what a domain without an agent channel
prints in each format, and the --guest options refused without --guest.
Domains come from libvirt's test driver (the demo node)."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_exit_codes import HOST, NODE, run


def test_fix_guest_json_without_a_channel_prints_no_fix_document():
    """A fix/1 document on stdout would be read as fix-guest/1's plan; a
    failure of `fix --guest --format json` prints no document, and the line
    names the command whose document holds the change instead of "above"."""
    out = run("fix", "--guest", "win11", "--connect", NODE, "--host-root", str(HOST),
              "--format", "json")
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    [line] = out.stderr.splitlines()
    assert "no guest agent channel" in line and "above" not in line, line
    assert "`vfio-advisor fix win11 --rule VA1002` shows the verified change that adds it" in line
    listed = json.loads(run("fix", "win11", "--rule", "VA1002", "--connect", NODE, "--host-root",
                            str(HOST), "--format", "json").stdout)
    assert [c["rule"] for c in listed["domains"][0]["changes"]] == ["VA1002"]


def test_fix_guest_text_without_a_channel_says_where_the_change_is():
    out = run("fix", "--guest", "win11", "--connect", NODE, "--host-root", str(HOST))
    assert out.returncode == 2, out.stderr
    assert "resolves VA1002" in out.stdout
    [line] = out.stderr.splitlines()
    assert line.endswith("`vfio-advisor fix win11 --rule VA1002 --apply` defines the change printed "
                         "on standard output; restart the domain"), line


@pytest.mark.parametrize("flags, named", [
    (["--reboot"], "--reboot goes"),
    (["--timeout", "10"], "--timeout goes"),  # the default's own value, given on purpose
    (["--ids", "1002:ab28"], "--ids goes"),
    (["--agent-socket", "/run/qga.sock"], "--agent-socket goes"),
    (["--reboot", "--timeout", "5"], "--reboot, --timeout go"),
])
def test_guest_options_without_guest_are_refused(flags, named):
    """Accepted and ignored, they exited 0 as if the guest had been
    rebooted or waited for; refused in one line as `--reboot` without
    --apply is."""
    out = run("fix", "win11", *flags, "--connect", NODE, "--host-root", str(HOST))
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stdout == ""
    assert out.stderr == (f"vfio-advisor: {named} with --guest DOMAIN (the guest's own setting); "
                          f"without it nothing uses {'them' if named.endswith(' go') else 'it'}\n")
