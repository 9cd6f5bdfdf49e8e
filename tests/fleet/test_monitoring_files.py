"""The shipped Prometheus rules and Grafana dashboard (monitoring/): promtool
accepts the rules and their unit tests pass, the dashboard's PromQL parses,
and both use only metrics the renderer exports (or node_exporter's own)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fleet.exposition import parse
from vfio_advisor.sinks.prometheus import DeviceMetrics, OpenFinding, render

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "monitoring/prometheus/vfio-advisor.rules.yml"
RULE_TESTS = REPO / "monitoring/prometheus/vfio-advisor.rules.test.yml"
DASHBOARD = REPO / "monitoring/grafana/vfio-advisor.json"

# node_exporter's own series that the rules may use (textfile collector; the
# systemd collector when enabled). Anything else must come from the renderer.
NODE_EXPORTER = {"node_textfile_mtime_seconds", "node_systemd_unit_state"}

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
            "bool", "offset", "inf", "nan"}


def exported() -> set[str]:
    """Every metric name the renderer writes (one of each kind of sample)."""
    text = render([DeviceMetrics("d", "0000:01:00.0", "msi", 1),
                   DeviceMetrics("d", "0000:02:00.0", "msix", None, observable=False)],
                  [OpenFinding("d", "VA6001", "warning")], 0.0, "v")
    return {name for name, _, _ in parse(text)[1]}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not
    functions, keywords, label names or values, durations or Grafana
    variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, label_values args)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def rule_exprs(text: str) -> list[str]:
    """`expr:` values of a rules file: inline, or a `|` block (the two forms
    the shipped file uses; PyYAML is not a dependency)."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*)$", lines[i])
        i += 1
        if not m:
            continue
        if m.group(2).strip() not in ("|", ">", "|-", ">-"):
            out.append(m.group(2))
            continue
        indent, block = len(m.group(1)), []
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            block.append(lines[i].strip())
            i += 1
        out.append(" ".join(block))
    return out


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            exprs.append(re.fullmatch(r"label_values\((.*),\s*\w+\)", q).group(1))
    return exprs


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_promtool_checks_the_rules():
    run = promtool("check", "rules", str(RULES))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS: 5 rules found" in run.stdout


def test_rule_unit_tests_pass():
    run = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr


def test_every_alert_of_the_issue_is_shipped_and_tested():
    names = re.findall(r"^\s*- alert: (\S+)", RULES.read_text(), re.M)
    assert names == ["VfioAdvisorDeviceStaysOnIntx", "VfioAdvisorIntxStorm", "VfioAdvisorErrorFinding",
                     "VfioAdvisorMetricsStale", "VfioAdvisorDaemonDown"]
    tested = set(re.findall(r"alertname: (\S+)", RULE_TESTS.read_text()))
    assert tested == set(names)


def test_dashboard_promql_parses(tmp_path):
    """promtool has no PromQL checker of its own; a recording rule per
    dashboard expression (Grafana variables filled in) gets the full parser."""
    exprs = [e.replace("$__rate_interval", "1m").replace("$instance", ".*").replace("$domain", ".*")
             for e in dashboard_exprs()]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    run = promtool("check", "rules", str(path))
    assert run.returncode == 0, run.stdout + run.stderr


def test_dashboard_has_the_panels_of_the_issue():
    doc = json.loads(DASHBOARD.read_text())
    by_title = {p["title"]: [t["expr"] for t in p["targets"]] for p in doc["panels"]}
    assert "sum by (instance, domain) (rate(vfio_advisor_device_interrupts_total" in \
        by_title["Interrupt rate per domain"][0]
    assert "by (instance, domain, bdf, mode) (rate(vfio_advisor_device_interrupts_total" in \
        by_title["Interrupt rate per device"][0]
    assert "vfio_advisor_device_mode" in by_title["Interrupt mode"][0]
    assert "vfio_advisor_findings" in by_title["Open findings"][0]
    assert len({p["id"] for p in doc["panels"]}) == len(doc["panels"])


def test_rules_and_dashboard_use_only_exported_metrics():
    ours = exported()
    assert {"vfio_advisor_device_interrupts_total", "vfio_advisor_device_mode", "vfio_advisor_findings",
            "vfio_advisor_last_sample_timestamp_seconds", "vfio_advisor_build_info",
            "vfio_advisor_device_interrupts_observable"} == ours
    used_by_rules = set().union(*map(metric_names, rule_exprs(RULES.read_text())))
    used_by_dashboard = set().union(*map(metric_names, dashboard_exprs()))
    assert used_by_rules - ours - NODE_EXPORTER == set()
    assert used_by_dashboard - ours == set()
    # the reader finds what they use (so the subset checks above are not vacuous)
    assert {"vfio_advisor_findings", "vfio_advisor_device_interrupts_total",
            "node_textfile_mtime_seconds", "node_systemd_unit_state",
            "vfio_advisor_last_sample_timestamp_seconds"} <= used_by_rules
    assert {"vfio_advisor_device_interrupts_total", "vfio_advisor_device_mode", "vfio_advisor_findings",
            "vfio_advisor_build_info"} <= used_by_dashboard


def test_the_metric_reader_sees_through_promql():
    """The name reader the check above relies on catches a metric that is
    not exported, and ignores functions, keywords, labels and durations."""
    assert metric_names('sum by (instance, domain) (rate(vfio_advisor_interrupts_per_second'
                        '{mode="intx", domain=~"$domain"}[$__rate_interval])) > 2e4') == \
        {"vfio_advisor_interrupts_per_second"}
    assert metric_names("a_total unless on (instance) b offset 5m or time() - c > bool 3") == \
        {"a_total", "b", "c"}
    assert rule_exprs("  - alert: X\n    expr: |\n      a\n      or b\n    for: 1m\n  - expr: c > 1\n") == \
        ["a or b", "c > 1"]
