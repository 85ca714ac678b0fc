"""The Locust load test from one command: a collector, Locust headless for a while, the report.

    python -m bench.locust_headless [--users 4] [--run-time 30s] [--profile mixed]
        [--workers 1] [--report-json bench/results/locust-latest.json] [--json]

Starts ``python -m collector run`` on free loopback ports with a /dev/null file sink, runs
``locust -f bench/locustfile.py --headless`` against it as a subprocess, prints Locust's summary
and the loss report (sent by all users against the collector's received counter, drops by reason),
then stops the collector.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.harness import LOOPBACK, Collector, format_locust_report

HERE = Path(__file__).resolve().parent
DEFAULT_REPORT = HERE / "results" / "locust-latest.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--run-time", default="30s", help="Locust --run-time (e.g. 30s, 2m)")
    parser.add_argument("--profile", default="mixed", help="traffic profile (bench/traffic.py)")
    parser.add_argument("--workers", type=int, default=1, help="collector worker processes")
    parser.add_argument("--report-json", default=str(DEFAULT_REPORT))
    parser.add_argument("--json", action="store_true", help="print the report as JSON only")
    args = parser.parse_args()
    report_path = Path(args.report_json)
    report_path.unlink(missing_ok=True)
    with Collector(args.workers) as collector:
        command = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(HERE / "locustfile.py"),
            "--headless",
            "--users",
            str(args.users),
            "--spawn-rate",
            str(args.users),
            "--run-time",
            args.run_time,
            "--stop-timeout",
            "5",
            "--only-summary",
            "--host",
            f"udp://{LOOPBACK}:{collector.port}",
            "--collector-metrics",
            collector.metrics_url,
            "--traffic-profile",
            args.profile,
            "--report-json",
            str(report_path),
            # failed sends are part of the report; they do not make the run fail
            "--exit-code-on-error",
            "0",
        ]
        locust = subprocess.run(
            command,
            stdout=subprocess.DEVNULL if args.json else None,
            stderr=subprocess.DEVNULL if args.json else None,
            check=False,
            timeout=3600,
        )
    if locust.returncode != 0 or not report_path.exists():
        print(f"locust exited with status {locust.returncode}, no report", file=sys.stderr)
        return locust.returncode or 1
    report = json.loads(report_path.read_text())
    if args.json:
        print(json.dumps(report))
    else:
        print()
        print(format_locust_report(report))
        print(f"report: {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
