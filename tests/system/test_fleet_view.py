"""The fleet view (deploy/prometheus, deploy/grafana) against what gpuletd really exports: the
dashboard loads as JSON and every metric its queries and the recording rules name is in a
real scrape (or is dcgm-exporter's, or a rule's own); promtool accepts the rules and their
unit tests (deploy/prometheus/gpulet.rules.test.yaml) pass."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.system.test_metrics import Scrapes, scrapes  # noqa: F401  (the module's fixture)

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "gpulet.rules.yaml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "gpulet.rules.test.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "gpulet-fleet.json"
# Series the fleet view joins with that gpuletd does not export: dcgm-exporter's.
EXTERNAL = {"DCGM_FI_DEV_FB_USED"}
PROMTOOL = shutil.which("promtool")
NEEDS_PROMTOOL = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian package `prometheus`, which .ci/run installs)",
)

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
KEYWORDS |= {"and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once strings, label
    matchers, ranges, label lists and function names are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", expr)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = m.group(0)
        rest = expr[m.end() :].lstrip()
        # A function's or an aggregation's name: `rate(`, `sum by (`.
        if word in KEYWORDS or rest.startswith("(") or re.match(r"(by|without)\b", rest):
            continue
        names.add(word)
    return names


def exported(text: str) -> set[str]:
    """Every series name in a scrape, and each family's names by its TYPE (a labelled family
    with no child yet shows no sample, but a dashboard may name it)."""
    names = {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][\w:]*)[{ ]", text, re.M)}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def dashboard_queries() -> list[str]:
    dash: dict[str, Any] = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((\w+),\s*\w+\)", q)
            assert m is not None, q
            exprs.append(m.group(1))
    return exprs


def rules() -> list[dict[str, str]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_the_name_extraction_finds_what_it_must() -> None:
    expr = (
        "max by (UUID) (DCGM_FI_DEV_FB_USED) * 1048576 * on (UUID) group_left (node, gpu) "
        '(sum by (node, le) (rate(gpulet_x_bucket{node=~"$node", a="b{c}"}[$__rate_interval])) '
        "> bool 0)"
    )
    assert metric_names(expr) == {"DCGM_FI_DEV_FB_USED", "gpulet_x_bucket"}


def test_every_dashboard_query_names_an_exported_metric(scrapes: Scrapes) -> None:  # noqa: F811
    have = exported(scrapes.busy) | exported(scrapes.after)
    queries = dashboard_queries()
    used = set().union(*(metric_names(q) for q in queries))
    unknown = sorted(used - have - EXTERNAL)
    assert not unknown, f"the dashboard names metrics gpuletd does not export: {unknown}"
    # What the issue asks the fleet view to show is there.
    for needed in (
        "gpulet_model_loads_total",
        "gpulet_model_evictions_total",
        "gpulet_request_wait_seconds_bucket",
        "gpulet_gpu_memory_reserved_bytes",
        "DCGM_FI_DEV_FB_USED",
        "gpulet_leases_held",
    ):
        assert needed in used, needed
    # The DCGM join is by the GPU's UUID, the label gpuletd's GPU series carry.
    assert re.search(r'gpulet_gpu_memory_reserved_bytes\{UUID="GPU-', scrapes.busy)
    assert any("on (UUID)" in q and "DCGM_FI_DEV_FB_USED" in q for q in queries)


def test_every_recording_rule_names_an_exported_metric(scrapes: Scrapes) -> None:  # noqa: F811
    have = exported(scrapes.busy) | exported(scrapes.after)
    recorded = {r["record"] for r in rules()}
    for r in rules():
        unknown = sorted(metric_names(r["expr"]) - have - EXTERNAL - recorded)
        assert not unknown, f"{r['record']} names metrics gpuletd does not export: {unknown}"


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all(t["refId"] for t in p["targets"]), p["title"]


@NEEDS_PROMTOOL
def test_promtool_checks_the_rules() -> None:
    assert PROMTOOL is not None
    r = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules())} rules found" in r.stdout


@NEEDS_PROMTOOL
def test_the_rules_compute_what_the_dashboard_shows() -> None:
    assert PROMTOOL is not None
    r = subprocess.run(
        [PROMTOOL, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
