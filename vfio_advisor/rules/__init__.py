"""The rule registry: one explicit tuple, feeding the engine, `explain`,
`rules`, the journald catalog and the completeness test."""

from __future__ import annotations

from vfio_advisor.findings import Finding
from vfio_advisor.rules.base import Rule
from vfio_advisor.rules.checks import RULES

RULES_BY_ID: dict[str, Rule] = {r.id: r for r in RULES}
RULES_BY_SLUG: dict[str, Rule] = {r.slug: r for r in RULES}

# Retired IDs stay here forever so nobody hands them to a new rule.
RETIRED: dict[str, str] = {}


def lookup(key: str) -> Rule | None:
    """By ID (case-insensitive, "va1001") or slug."""
    return RULES_BY_ID.get(key.upper()) or RULES_BY_SLUG.get(key.lower())


def internal_error(domain: str | None, message: str) -> Finding:
    return Finding(rule_id="VA9001", domain=domain, subject=None, message=message,
                   remedy=RULES_BY_ID["VA9001"].remedy)


__all__ = ["RULES", "RULES_BY_ID", "RULES_BY_SLUG", "RETIRED", "Rule", "lookup", "internal_error"]
