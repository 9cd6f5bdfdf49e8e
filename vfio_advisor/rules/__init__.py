"""The rule registry: one explicit tuple, feeding the engine, `explain`,
`rules`, the journald catalog and the completeness test."""

from __future__ import annotations

from vfio_advisor.findings import Finding
from vfio_advisor.rules.base import Rule
from vfio_advisor.rules.stepping import RuntimeRules
from vfio_advisor.rules import (
    coverage, internal, mode, platform, routing, runtime, sharing, topology,
)

# Every rule, one family module each, in ID order (the catalog's and `rules`'
# order; a test checks it). Static rules carry a `check` over DomainFacts,
# runtime rules a `transition` (rules/stepping.py). A new rule goes into its
# family module, with its examples; nothing else changes.
RULES: tuple[Rule, ...] = (
    *mode.RULES,  # VA1xxx
    *sharing.RULES,  # VA2xxx
    *platform.RULES,  # VA3xxx
    *topology.RULES,  # VA4xxx
    *routing.RULES,  # VA5xxx
    *runtime.RULES,  # VA6xxx
    *coverage.RULES,  # VA8xxx
    *internal.RULES,  # VA9xxx
)

RULES_BY_ID: dict[str, Rule] = {r.id: r for r in RULES}
# The runtime rules in registry order, for the daemon's Watcher.
RUNTIME = RuntimeRules(RULES)
RULES_BY_SLUG: dict[str, Rule] = {r.slug: r for r in RULES}

# Retired IDs stay here forever so nobody hands them to a new rule.
RETIRED: dict[str, str] = {}


def lookup(key: str) -> Rule | None:
    """By ID (case-insensitive, "va1001") or slug."""
    return RULES_BY_ID.get(key.upper()) or RULES_BY_SLUG.get(key.lower())


def rules_named(values: list[str], option: str = "--rule") -> list[Rule]:
    """The rules an option names, each value a comma-separated list of IDs
    or slugs (fix's and fix --guest's --rule); UsageError on a name no
    rule has."""
    from vfio_advisor.errors import UsageError  # noqa: PLC0415 - only the CLI asks

    out = []
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            rule = lookup(item)
            if rule is None:
                raise UsageError(f"unknown rule {item!r} in {option}; 'vfio-advisor rules' lists them")
            out.append(rule)
    return out


# The hook's own failure (VA9001): a shell tells it apart from the advice.
INTERNAL_ERROR = RULES_BY_ID["VA9001"]


def internal_error(domain: str | None, message: str) -> Finding:
    return RULES_BY_ID["VA9001"].finding(domain, None, message)


def run_summary(name: str | None, counts, devices: int) -> Finding:
    """VA9002: one line per run with the counts (findings.RunCounts; the
    hook's journal summary carries the same counts as fields)."""
    text = (f"{name or '-'}: {counts.total} finding{'s' if counts.total != 1 else ''} "
            f"({counts.errors} error, {counts.warnings} warning, "
            f"{counts.infos} info) for {devices} assigned PCI device"
            f"{'s' if devices != 1 else ''}")
    return RULES_BY_ID["VA9002"].finding(name, None, text)


__all__ = ["RULES", "RULES_BY_ID", "RULES_BY_SLUG", "RETIRED", "Rule", "lookup", "internal_error", "run_summary",
           "INTERNAL_ERROR", "RUNTIME"]
