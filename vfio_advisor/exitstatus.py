"""The exit status of every `vfio-advisor` command: one table, printed by
--help (cli.py), the man page (manpage.py) and docs/exit-codes.md."""

from __future__ import annotations

import textwrap

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# 128 + SIGPIPE: what a shell reports for a command that SIGPIPE killed, the
# status `yes | head` leaves in PIPESTATUS. Python ignores SIGPIPE and gets
# EPIPE instead, so cli.main says it itself.
EXIT_BROKEN_PIPE = 141

# (status, the commands it applies to, what it means). An input that could
# not be analysed gives EXIT_USAGE even when others could, which are still
# analysed and reported: a script must not read "no findings" into a run
# that skipped a domain.
EXIT_STATUS: tuple[tuple[int, str, str], ...] = (
    (EXIT_OK, "every command", "Success."),
    (EXIT_OK, "advise, guest-irqs", "No finding of warning or worse."),
    (EXIT_OK, "fix",
     "Every finding of warning or worse that fix handles got a verified change, or there was "
     "none."),
    (EXIT_OK, "guest", "No device whose setting in the guest needs action."),
    (EXIT_FINDINGS, "advise", "At least one finding of warning or worse."),
    (EXIT_FINDINGS, "guest-irqs",
     "At least one finding of warning or worse among the guest-routing findings it shows."),
    (EXIT_FINDINGS, "fix",
     "A finding of warning or worse that fix handles has no verified change."),
    (EXIT_FINDINGS, "guest",
     "A device whose setting in the guest needs action: MSI possible but off, reset since the "
     "recorded change, on but still INTx, or no guest function matching its IDs."),
    (EXIT_USAGE, "every command",
     "A usage error, or an input that could not be read or analysed: a file that is not a "
     "domain XML, a domain that libvirt or the snapshot does not have, a BDF that is not a "
     "PCI device of the host, a damaged snapshot, a failed libvirt connection."),
    (EXIT_USAGE, "advise, device, snapshot",
     "Also: every other input is still analysed, reported or archived."),
    (EXIT_USAGE, "advise, fix",
     "Also: a damaged /proc/interrupts (no rows, or rows not read whole that may be an assigned "
     "device's) cost a device its interrupt checks; an info finding names them and every "
     "finding is still reported. One that cannot be read at all (permissions, "
     "ProcSubset=pid) gives that info finding alone and does not change the status."),
    (EXIT_USAGE, "guest",
     "Also: no agent channel, the agent not connected or timing out, guest-exec blocked, a "
     "command failing in the guest, a domain not running, a read-only connection, an answer "
     "empty or cut short, a hostdev the host tree lacks, no domain XML to look in."),
    (EXIT_USAGE, "fix",
     "Also: a domain that changed since the analysis, or a refused --apply (nothing is "
     "applied then)."),
    (EXIT_INTERRUPTED, "every command", "Interrupted (SIGINT, Ctrl-C)."),
    (EXIT_BROKEN_PIPE, "every command",
     "Standard output was closed before everything was written (its reader, such as head, "
     "exited early): the output is incomplete, and no status is claimed for what it left out."),
)


def exit_status_rows(command: str | None = None) -> list[tuple[int, str, str]]:
    """EXIT_STATUS, or the rows that apply to `command`."""
    return [row for row in EXIT_STATUS
            if command is None or row[1] == "every command" or command in row[1].split(", ")]


def exit_status_help(command: str | None = None) -> str:
    """The exit-status table as --help prints it (argparse keeps the lines):
    every row with its commands, or for one command its rows of each status
    as one entry, in the table's order, so no command's help speaks of
    another's."""
    entries: list[tuple[int, str]] = []
    for code, commands, meaning in exit_status_rows(command):
        if command is None:
            entries.append((code, f"{commands}: {meaning}"))
        elif entries and entries[-1][0] == code:
            entries[-1] = (code, f"{entries[-1][1]} {meaning}")
        else:
            entries.append((code, meaning))
    lines = ["exit status:"]
    for code, text in entries:
        lines += textwrap.wrap(text, 78, initial_indent=f"  {code:<4}", subsequent_indent=" " * 6,
                               break_on_hyphens=False)
    return "\n".join(lines)


def exit_status_markdown() -> str:
    """docs/exit-codes.md (a test keeps the file equal to this)."""
    out = ["# Exit status of `vfio-advisor`", "",
           "Generated from `vfio_advisor/exitstatus.py`, which `--help` and the man page print too.",
           "", "| Status | Commands | Meaning |", "|---|---|---|"]
    out += [f"| {code} | {commands} | {meaning} |" for code, commands, meaning in EXIT_STATUS]
    return "\n".join(out) + "\n"
