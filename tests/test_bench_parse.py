"""The parse benchmark still runs, and on its packet mix the decoder and dpkt agree (no timing here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_parse_benchmark_runs_and_the_decoder_agrees_with_dpkt() -> None:
    command = [sys.executable, "-m", "bench.parse", "--count", "600", "--repeat", "1"]
    command += ["--flows", "64", "--rules", "40", "--json"]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True).stdout
    [line] = out.splitlines()
    report = json.loads(line)
    mix = report["mix"]
    assert mix["dpkt_keyed"] > 500
    assert mix["dpkt_agrees"] == mix["dpkt_keyed"]  # same key, IP length and flags on each packet
    pipeline = report["pipeline"]
    assert pipeline["records"] == pipeline["filtered_records"] == 64  # the filter keeps every flow
    for figure in ("decode_ns_per_packet", "dpkt_ns_per_packet", "ratio_vs_dpkt"):
        assert report[figure] > 0
