"""The rule registry is complete and well formed (flake8's total mapping,
shellcheck's per-check examples, virtinst's test_checkprops)."""

import re
import subprocess
import sys

import pytest

from vfio_advisor.catalog import for_reader
from vfio_advisor.findings import Severity
from vfio_advisor.rules import RETIRED, RULES, RULES_BY_ID, lookup
from vfio_advisor.rules.base import FAMILIES, RULE_ID_RE, SLUG_RE


def test_ids_and_slugs_unique_and_well_formed():
    ids = [r.id for r in RULES]
    slugs = [r.slug for r in RULES]
    assert len(ids) == len(set(ids))
    assert len(slugs) == len(set(slugs))
    for r in RULES:
        assert RULE_ID_RE.match(r.id), r.id
        assert SLUG_RE.match(r.slug), r.slug
        assert int(r.id[2]) in FAMILIES, f"{r.id}: unknown family"
        assert r.id not in RETIRED


def test_message_ids_unique_and_128_bit():
    mids = [r.message_id for r in RULES]
    assert len(mids) == len(set(mids))
    for m in mids:
        assert len(m) == 32 and int(m, 16) != 0 and m == m.lower()


def test_texts_present_and_titles_one_line():
    for r in RULES:
        assert r.title and "\n" not in r.title and len(r.title) <= 100, r.id
        assert len(r.explanation) > 80, r.id
        assert r.remedy, r.id
        assert isinstance(r.severity, Severity)


def test_lookup_by_id_and_slug():
    assert lookup("va2002") is RULES_BY_ID["VA2002"]
    assert lookup("exclusive-intx-line-required") is RULES_BY_ID["VA2002"]
    assert lookup("VA0000") is None


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vfio_advisor", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_explain_prints_registry_text(rule):
    out = _cli("explain", rule.id)
    assert out.returncode == 0, out.stderr
    assert rule.title in out.stdout
    assert rule.message_id in out.stdout
    # the explanation is wrapped, so compare words; @FIELD@ shows as <field>
    assert " ".join(for_reader(rule.explanation).split()) in " ".join(out.stdout.split())


def test_explain_unknown_rule_is_usage_error():
    out = _cli("explain", "VA0000")
    assert out.returncode == 2
    assert "no rule" in out.stderr and "Traceback" not in out.stderr


def test_rules_lists_every_rule():
    out = _cli("rules")
    assert out.returncode == 0
    for r in RULES:
        assert re.search(rf"^{r.id}\s+{r.severity}\s+{r.slug}\s", out.stdout, re.M), r.id


FAMILY_MODULES = {1: {"mode"}, 2: {"sharing"}, 3: {"platform"}, 4: {"topology"}, 5: {"routing"},
                  6: {"runtime"}, 8: {"coverage", "runtime"}}


def test_rules_in_id_order_each_next_to_its_check_in_its_family_module():
    assert [r.id for r in RULES] == sorted(r.id for r in RULES)
    for r in RULES:
        logic = r.check or r.transition
        if logic is None:
            assert r.family == FAMILIES[9], r.id
            continue
        module = logic.__module__.rsplit(".", 1)[-1]
        assert module in FAMILY_MODULES[int(r.id[2])], f"{r.id} lives in rules/{module}.py"
