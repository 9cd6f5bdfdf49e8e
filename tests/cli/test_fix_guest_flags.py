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


@pytest.mark.parametrize("rule, line", [
    ("VA4001", "vfio-advisor: VA4001's fix is a domain XML change, not one inside the guest: "
               "`vfio-advisor fix win11 --rule VA4001` (without --guest); fix --guest handles VA1001"),
    ("VA1002", "vfio-advisor: VA1002's fix is a domain XML change, not one inside the guest: "
               "`vfio-advisor fix win11 --rule VA1002` (without --guest); fix --guest handles VA1001"),
    ("VA6001", "vfio-advisor: VA6001 has no fix inside the guest; fix --guest handles VA1001"),
    ("nope", "vfio-advisor: unknown rule 'nope' in --rule; 'vfio-advisor rules' lists them"),
])
def test_fix_guest_refuses_a_rule_whose_fix_is_not_in_the_guest(rule, line):
    """--rule was taken and ignored with --guest: the guest plan (and here,
    win11 having no agent channel, the channel's change) was printed as if
    it fixed that rule's findings. Refused before the domain is looked at."""
    out = run("fix", "--guest", "win11", "--rule", rule, "--connect", NODE, "--host-root", str(HOST))
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stdout == ""
    assert out.stderr == line + "\n"


def test_fix_guest_with_its_own_rule_plans_as_without():
    """The guest fix's own rule (by ID or slug) selects the whole guest plan:
    every step of it serves that rule's findings."""
    plain = run("fix", "--guest", "win11", "--connect", NODE, "--host-root", str(HOST))
    for rule in ("VA1001", "msi-capable-device-on-intx,VA1001"):
        out = run("fix", "--guest", "win11", "--rule", rule, "--connect", NODE, "--host-root", str(HOST))
        assert (out.returncode, out.stdout, out.stderr) == (plain.returncode, plain.stdout, plain.stderr)
