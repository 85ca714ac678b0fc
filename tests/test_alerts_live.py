"""The paging loss alert against a real collector's /metrics: a worker killed while it holds flows
makes CollectorRecordsLost fire, evaluated by promtool over series scraped from the collector itself
(names, labels and values exactly as exported), and the scrape before the kill keeps it quiet."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.service_harness import Collector, udp, wait_for
from tests.test_alerts import ALERTS, RULES, promtool

TARGET = {"job": "collector", "instance": "live:8080"}
LOSS_FAMILIES = (
    "collector_sink_records_dropped",
    "collector_sink_records_failed",
    "collector_worker_exit_lost",
)


def loss_samples(metrics_text: str) -> dict[str, float]:
    """The loss counters of one scrape, as promtool series names with the scrape's labels."""
    out = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name not in LOSS_FAMILIES:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = {**sample.labels, **TARGET}
            selector = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            out[f"{sample.name}{{{selector}}}"] = sample.value
    return out


def test_records_lost_fires_on_a_real_collectors_metrics_when_a_worker_dies_holding_flows(
    tmp_path: Path,
) -> None:
    config = "[flows]\nactive_timeout_s = 600\ninactive_timeout_s = 600\n"
    flows = 40
    with Collector(tmp_path, config=config, workers=2) as c:
        c.send(udp(7, "10.0.0.5", "10.0.1.9", 21000 + i, 53, 10) for i in range(flows))
        c.wait_received(flows)

        def held() -> dict[int, tuple[int, int]] | None:
            _, body = c.health()
            table = {w["index"]: (w.get("flows_active", 0), w["pid"]) for w in body["workers"]}
            return table if sum(n for n, _ in table.values()) == flows else None

        table = wait_for(held, "every flow in a worker's table")
        victim = max(table, key=lambda index: table[index][0])
        before = loss_samples(c.get("/metrics")[1].decode())
        os.kill(table[victim][1], signal.SIGKILL)
        wait_for(lambda: c.metric("collector_worker_restarts_total") == 1, "a restart")
        after = loss_samples(c.get("/metrics")[1].decode())
        assert c.stop() == 0
    assert before.keys() == after.keys()
    assert len(before) == 5  # dropped, failed, and worker_exit_lost for flows, records, datagrams
    lost = sum(after.values()) - sum(before.values())
    assert lost == table[victim][0] > 0

    (rule,) = [a for a in ALERTS if a["alert"] == "CollectorRecordsLost"]
    annotations: dict[str, Any] = dict(rule["annotations"])
    annotations["summary"] = f"live:8080 lost {int(lost)} flow records in 5 minutes"
    # the scrape before the kill for minutes 0-4, the scrape after it from minute 5 on
    series = [
        {"series": name, "values": f"{int(before[name])}x4 {int(after[name])}x10"}
        for name in sorted(before)
    ]
    tests = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "4m", "alertname": "CollectorRecordsLost", "exp_alerts": []},
                    {
                        "eval_time": "7m",
                        "alertname": "CollectorRecordsLost",
                        "exp_alerts": [
                            {
                                "exp_labels": {**TARGET, "severity": "page"},
                                "exp_annotations": annotations,
                            }
                        ],
                    },
                ],
            }
        ],
    }
    shutil.copy(RULES, tmp_path / "alerts.yml")
    (tmp_path / "live_test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    assert "SUCCESS" in promtool("test", "rules", "live_test.yml", cwd=tmp_path)
