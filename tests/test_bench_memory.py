"""bench.memory still runs, and what it measures holds together (no timing or size thresholds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_memory_benchmark_runs_and_loses_no_flow() -> None:
    command = [sys.executable, "-m", "bench.memory", "--flows", "20000", "--json"]
    command += ["--churn-packets", "200000", "--churn-live", "5000"]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True).stdout
    report = json.loads(out.splitlines()[-1])
    (row,) = report["sizes"]
    assert row["flows"] == row["legacy"]["flows"] == 20000
    for figure in ("rss_bytes_per_flow", "new_flow_ns_per_packet", "known_flow_ns_per_packet"):
        assert row[figure] > 0
    assert row["ratio_vs_legacy"] > 0
    assert row["ratio_vs_dict"] > 0
    churn = report["churn"]
    assert churn["records"] == churn["packets"] == 200000  # every new flow came out as a record
    assert 0 < churn["flows_live_peak"] <= 2 * 5000  # bounded by the expiry, far below max_flows
    assert len(churn["rss_mib_samples"]) == 20
