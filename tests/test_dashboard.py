"""The Grafana dashboard as an on-call reads it: every query is valid PromQL (promtool parses it),
rates use $__rate_interval and a per-second unit, each state has its own colours, the loss stat
counts what the paging alert counts, and every metric the collector exports has a panel."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.metrics import Aggregate
from tests.test_alerts import ALERTS, promtool

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "collector-dashboard.json").read_text())
PANELS: list[dict[str, Any]] = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
PER_SECOND_UNITS = {"pps", "Bps", "cps", "ops", "reqps"}
# Grafana's variables, replaced the way Grafana does before the query reaches Prometheus
VARIABLES = {"$job": ".*", "$instance": ".*", "$__rate_interval": "1m", "$__range": "3h"}
_METRIC = re.compile(r"\bcollector_[a-z0-9_]+\b")


def exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel.get("targets", [])]


def by_title(title: str) -> dict[str, Any]:
    (panel,) = [p for p in PANELS if p["title"] == title]
    return panel


def test_layout_has_unique_ids_and_no_overlapping_panels() -> None:
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in DASHBOARD["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    rules = []
    for panel in PANELS:
        for n, query in enumerate(exprs(panel)):
            expr = query
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"{panel['title']}: a variable Grafana does not define"
            rules.append({"record": f"dashboard:panel{panel['id']}:q{n}", "expr": expr})
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool("check", "rules", path.name, cwd=tmp_path)
    assert f"SUCCESS: {len(rules)} rules found" in checked


@pytest.mark.parametrize("panel", PANELS, ids=[p["title"] for p in PANELS])
def test_rates_use_the_rate_interval_and_a_per_second_unit(panel: dict[str, Any]) -> None:
    unit = panel["fieldConfig"]["defaults"].get("unit")
    for expr in exprs(panel):
        # $__interval can be shorter than two scrapes, and rate() over one sample is empty
        assert "[$__interval]" not in expr, panel["title"]
        if "rate(" not in expr or "histogram_quantile" in expr:
            continue
        if "_sum" in expr and "_count" in expr:  # a mean duration from a histogram
            assert unit == "s", panel["title"]
        elif "/" in expr or "collector_process_cpu_seconds_total" in expr:  # a share
            assert unit == "percentunit", panel["title"]
        else:
            assert unit in PER_SECOND_UNITS, f"{panel['title']}: {unit} is not per second"


@pytest.mark.parametrize(
    "panel",
    [p for p in PANELS if p["type"] == "state-timeline"],
    ids=lambda p: p["title"],
)
def test_each_state_query_has_its_own_value_mappings(panel: dict[str, Any]) -> None:
    """One set of thresholds shared by "healthy" and "draining" painted a bad 0 as calmly as a good
    one: each query names and colours its own 0 and 1."""
    field = panel["fieldConfig"]
    targets = panel["targets"]
    per_ref = {
        o["matcher"]["options"]: prop["value"]
        for o in field["overrides"]
        if o["matcher"]["id"] == "byFrameRefID"
        for prop in o["properties"]
        if prop["id"] == "mappings"
    }
    for target in targets:
        mappings = per_ref.get(target["refId"]) or (
            field["defaults"].get("mappings") if len(targets) == 1 else None
        )
        assert mappings, f"{panel['title']} {target['refId']} has no value mappings of its own"
        values = {k: v for m in mappings if m["type"] == "value" for k, v in m["options"].items()}
        assert {"0", "1"} <= set(values)
        assert values["0"]["text"] != values["1"]["text"]
        assert values["0"]["color"] != values["1"]["color"]


def test_healthy_zero_is_red_and_draining_is_not_green() -> None:
    panel = by_title("Healthy / draining")
    colours = {
        o["matcher"]["options"]: o["properties"][0]["value"][0]["options"]
        for o in panel["fieldConfig"]["overrides"]
    }
    healthy, draining = (
        next(t["refId"] for t in panel["targets"] if metric in t["expr"])
        for metric in ("collector_healthy", "collector_draining")
    )
    assert colours[healthy]["0"]["color"] == "red"
    assert colours[healthy]["1"]["color"] == "green"
    assert colours[draining]["1"]["color"] not in {"red", "green"}


def test_records_lost_is_an_instant_total_of_what_the_paging_alert_counts() -> None:
    panel = by_title("Records lost")
    (target,) = panel["targets"]
    assert target.get("instant") is True
    assert target.get("range") is False
    assert "[$__range]" in target["expr"]
    (alert,) = [a for a in ALERTS if a["alert"] == "CollectorRecordsLost"]
    assert alert["labels"]["severity"] == "page"
    assert set(_METRIC.findall(target["expr"])) == set(_METRIC.findall(alert["expr"]))


def test_scrape_up_is_shown_per_target() -> None:
    panel = by_title("Scrape up")
    (expr,) = exprs(panel)
    assert expr.startswith("max by (instance) (up{")


def test_emitted_and_delivered_share_a_panel() -> None:
    panel = by_title("Records emitted, delivered and lost")
    names = {m for e in exprs(panel) for m in _METRIC.findall(e)}
    assert {"collector_records_emitted_total", "collector_records_delivered_total"} <= names


def test_no_title_says_kafka_for_data_of_every_sink() -> None:
    for panel in DASHBOARD["panels"]:
        if "Kafka" in panel["title"]:
            assert "file" in panel["title"], panel["title"]


def _exported_series() -> set[str]:
    """Series names a query would use for every family the collector exports."""
    names = set()
    for family in Aggregate().collect():
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    names.add("collector_sink_delivery_latency_seconds_bucket")
    return names


def test_every_exported_metric_has_a_panel() -> None:
    shown = {m for p in PANELS for e in exprs(p) for m in _METRIC.findall(e)}
    missing = _exported_series() - shown
    assert not missing, f"exported but on no panel: {sorted(missing)}"
