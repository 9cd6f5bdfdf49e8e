"""Rule.builds_on: a rule whose finding only makes sense with another's
(VA1002, the way to VA1001's guest-side fix) is silenced with it, by ID or
slug, through IgnorePolicy.ignores_rule, the test every shell applies."""

from __future__ import annotations

import pytest

from vfio_advisor.config import IgnorePolicy
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.findings import Severity
from vfio_advisor.rules import RULES, RULES_BY_ID
from vfio_advisor.rules.base import Rule, register

BUILDS_ON = [(r, RULES_BY_ID[b]) for r in RULES for b in r.builds_on]


def test_va1002_builds_on_va1001():
    assert (RULES_BY_ID["VA1002"], RULES_BY_ID["VA1001"]) in BUILDS_ON


@pytest.mark.parametrize("rule,base", BUILDS_ON, ids=lambda r: r.id)
def test_silencing_the_base_silences_the_rule_everywhere(rule, base):
    domain = parse_domain_xml("<domain type='kvm'><name>d</name><os><type>hvm</type></os>"
                              "<metadata><a:advisor xmlns:a='urn:x-vfio-advisor:domain:1'>"
                              f"<a:ignore rule='{base.slug}'/></a:advisor></metadata>"
                              "<devices/></domain>")
    other = parse_domain_xml("<domain type='kvm'><name>e</name><os><type>hvm</type></os>"
                             "<devices/></domain>")
    assert not IgnorePolicy().ignores_rule(rule, other)
    assert IgnorePolicy(frozenset({base.id})).ignores_rule(rule, other)
    assert IgnorePolicy(frozenset(), {"e": frozenset({base.slug})}).ignores_rule(rule, other)
    assert IgnorePolicy().ignores_rule(rule, domain)  # <metadata>
    # ...and not the other way round: the base keeps its own findings
    assert not IgnorePolicy(frozenset({rule.id})).ignores_rule(base, other)


def test_a_rule_cannot_build_on_one_not_registered_before_it():
    rule = Rule("VA1999", "test-only", Severity.INFO, "t", "e", "r", "0" * 32, None,
                builds_on=("VA1998",))
    with pytest.raises(ValueError, match="builds on"):
        register(rule)
    assert "VA1999" not in RULES_BY_ID
