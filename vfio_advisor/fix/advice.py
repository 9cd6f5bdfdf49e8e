"""What `advise` says about findings that have a domain XML fix.

A finding of a rule with a domain XML fix (Rule.fix) carries a pointer to
`vfio-advisor fix DOMAIN`, which the sinks print after its remedy: the hook
cannot plan, because planning verifies with libvirt's test driver and the
hook must never load libvirt. `advise` already talks to libvirt, so for a
domain with such a finding it plans (the same plan_domain as `fix`, on the
same engine session, so the host facts are read once) and replaces that
pointer by the outcome: the verified change (summary and per-device
details), or why there is none.
Domains without a fixable finding are not planned, so advise stays fast.
"""

from __future__ import annotations

import shlex
from typing import Callable

from vfio_advisor.findings import Finding
from vfio_advisor.fix.planner import FIXABLE_RULES, Analyzer, fix_for_finding, plan_domain

FixKey = tuple[str, str]  # Finding.key


def fix_command(name: str, from_files: bool, host_root: str = "/") -> str:
    """How to get this domain's change from `fix`, for a person to copy.
    Paths stay placeholders (DIR, FILE): the advice must not depend on where
    the host facts were read from (a snapshot replays to the same advice,
    tests/cli/test_sample_and_snapshot.py)."""
    words = ["vfio-advisor", "fix"] + (["--host-root", "DIR"] if host_root != "/" else [])
    if from_files:
        # `fix --apply` defines through libvirt, so it takes names, not files.
        return ("As a diff, from the domain's XML file FILE"
                + (" and the same host tree DIR" if host_root != "/" else "") + ":\n  "
                + " ".join(words + ["--xml", "FILE"]))
    return ("As a diff (add --apply to define it):\n  "
            + " ".join(words + [shlex.quote(name)]))


def advised_remedy(f: Finding, fix: dict, command: str) -> str:
    """The finding's remedy (plain prose) with the plan's outcome instead of
    its `fix` pointer: the verified change first (the rule's prose after it, as the
    way by hand), or the prose and why no change was verified. Detail lines
    start with two spaces, which the text report keeps as they are
    (sinks/text.py)."""
    prose = f.remedy
    if fix.get("verified"):
        resolves = ", ".join(r["rule"] + (f" {r['subject']}" if r["subject"] else "")
                             for r in fix["resolves"])
        lines = [f"Exact verified change: {fix['summary']} (resolves {resolves}):"]
        lines += [f"  {d}" for d in fix["details"]]
        # A change that brings in a finding is offered only with the later
        # change that resolves it: `fix` prints and applies them together.
        lines += [f"  on its own it adds {r['rule']}" + (f" {r['subject']}" if r["subject"] else "")
                  + f" ({r['severity']}), which the {r['resolved_by']} change of the same plan resolves"
                  for r in fix.get("introduces", ())]
        lines.append(command)
        lines.append(f"By hand instead: {prose}")
        return "\n".join(lines)
    return prose + "\nNo verified domain XML change: " + fix["reason"].rstrip(".") + "."


class AdviseFixes:
    """Plans for advise, over advise's own engine session."""

    def __init__(self, engine, command: Callable[[str], str]):
        self.analyzer = Analyzer.from_engine(engine)
        self.command = command

    def annotate(self, name: str, xml: str,
                 findings: list[Finding]) -> tuple[list[Finding], dict[FixKey, dict | None]]:
        """(findings with the remedies advise prints, the "fix" object per
        finding). Only a domain with a fixable finding is planned."""
        if not any(f.rule_id in FIXABLE_RULES for f in findings):
            return findings, {}
        try:
            plan = plan_domain(self.analyzer, xml)
        except Exception as exc:  # noqa: BLE001 - the advice itself must still be printed
            # Nothing expected here (the XML was parsed and analysed already);
            # should planning break, say so per finding rather than lose the report.
            reason = f"planning failed: {type(exc).__name__}: {exc}"
            fixes = {f.key: {"verified": False, "rule": f.rule_id, "kind": "unverified",
                                 "reason": reason}
                     for f in findings if f.rule_id in FIXABLE_RULES}
        else:
            fixes = {}
            for f in findings:
                if f.rule_id in FIXABLE_RULES:
                    fixes[f.key] = fix_for_finding(plan, f)
        out = []
        for f in findings:
            fix = fixes.get(f.key)
            out.append(f if fix is None else f._replace(
                remedy=advised_remedy(f, fix, self.command(name)), fix_pointer=""))
        return out, fixes
