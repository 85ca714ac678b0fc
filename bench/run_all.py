"""The benchmark suite runner: every benchmark as a subprocess, one JSON file, plots, a table.

    python -m bench.run_all [--only parse,ingest,...] [--skip kafka] [--out bench/results]

Runs parse (decapsulation against dpkt, and the replay pipeline per core), ingest (the rate sweep:
a recvmmsg counting loop, bare uvloop and the collector with 1 and 2 workers, for the mixed and
new-flows profiles; then freeze, fill, drain (bench.drain), where 2 workers are compared with one
while the senders do not compete; then a sustained new-flows flood), kafka (records/s against a
naive send loop, on the local broker, started with deploy/kafka/kafkactl when it is not running),
flood and flood-pure (a port scan through one worker's Kafka sink, compiled and pure-Python builds),
memory (bytes per flow) and encode (IPFIX and goflow2 encoding cost per record against JSON), each
with ``--json`` and a timeout (past it: SIGTERM, so the benchmark resumes and stops what it
started, then SIGKILL). A benchmark whose file is absent is reported as missing, one that fails or
times out as such; the others still run. Writes ``<out>/<YYYY-MM-DD>-<host>.json`` (machine,
commands, every figure), PNG plots (bench/plots.py) and ``<out>/latest.md``, the table for the
README (bench/report.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import Broker
from bench.plots import plots
from bench.report import git_commit, latest_md, machine, relative_to_root, table_rows

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass(frozen=True)
class Bench:
    name: str
    module: str
    args: tuple[str, ...]
    timeout_s: float
    what: str

    @property
    def path(self) -> Path:
        return ROOT / (self.module.replace(".", "/") + ".py")

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args, "--json"]


SUITE = (
    Bench("parse", "bench.parse", (), 240, "decode against dpkt; replay pipeline per core"),
    Bench(
        "ingest",
        "bench.ingest",
        (),
        900,
        "rate sweep: recvmmsg loop, bare uvloop, collector 1 and 2 workers; mixed and new-flows; "
        "freeze-fill-drain (2 workers vs 1); a sustained new-flows flood",
    ),
    Bench(
        "kafka",
        "bench.kafka_throughput",
        (),
        300,
        "records/s with acks=all + lz4 against a naive awaited send loop (local broker)",
    ),
    Bench(
        "flood",
        "bench.flood_kafka",
        (),
        600,
        "a port scan through Kafka: new-flow flood, 1 s timeout, records/s end to end, one worker",
    ),
    Bench(
        "flood-pure",
        "bench.flood_kafka",
        ("--pure",),
        600,
        "the same flood on the pure-Python build (what a machine without a C compiler gets)",
    ),
    Bench("memory", "bench.memory", (), 900, "RSS per active flow at 400k and 1M flows"),
    Bench("encode", "bench.encode", (), 240, "IPFIX and goflow2 encoding per record against JSON"),
)


def run_bench(bench: Bench) -> dict[str, Any]:
    """Run one benchmark; its entry in the results file."""
    entry: dict[str, Any] = {
        "what": bench.what,
        "command": shlex.join(["python", *bench.command()[1:]]),
    }
    if not bench.path.exists():
        return {**entry, "status": "missing", "error": f"{bench.path.relative_to(ROOT)} not found"}
    start = time.monotonic()
    try:
        done = run_to_end(bench.command(), bench.timeout_s)
    except subprocess.TimeoutExpired:
        return {
            **entry,
            "status": "timeout",
            "seconds": round(time.monotonic() - start, 1),
            "error": f"no result within {bench.timeout_s:.0f} s",
        }
    entry["seconds"] = round(time.monotonic() - start, 1)
    result = last_json_line(done.stdout)
    if done.returncode != 0 or result is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-8:]
        return {
            **entry,
            "status": "failed",
            "error": f"exit status {done.returncode}: " + " | ".join(tail),
        }
    return {**entry, "status": "ok", "result": result}


def run_to_end(command: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run a benchmark; past ``timeout_s`` it gets SIGTERM first, so that it resumes what it
    froze and stops what it started (bench.drain, the collectors), and SIGKILL 30 s later."""
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            raise
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def last_json_line(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated benchmarks to run")
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    parser.add_argument("--out", default=str(HERE / "results"), help="results directory")
    parser.add_argument(
        "--ingest-repeat",
        type=int,
        default=1,
        help="ingest sweeps, each point keeping the one that lost least (a busy shared machine)",
    )
    parser.add_argument(
        "--replot",
        metavar="JSON",
        help="redraw plots and latest.md from a results file, run nothing",
    )
    args = parser.parse_args()
    if args.replot:
        report = json.loads(Path(args.replot).read_text())
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        made = plots(report["benchmarks"], out)
        (out / "latest.md").write_text(latest_md(report, made, relative_to_root(out)))
        print(f"wrote {out / 'latest.md'} and {len(made)} plots")
        return 0
    only = {n for n in args.only.split(",") if n}
    skip = {n for n in args.skip.split(",") if n}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    broker = Broker()
    results: dict[str, Any] = {}
    try:
        for bench in SUITE:
            if (only and bench.name not in only) or bench.name in skip:
                continue
            print(f"{bench.name}: {bench.what}", flush=True)
            needs_broker = bench.name in {"kafka", "flood", "flood-pure"}
            if needs_broker and bench.path.exists() and not broker.ensure():
                results[bench.name] = {
                    "what": bench.what,
                    "status": "failed",
                    "error": broker.error,
                }
            else:
                chosen = bench
                if bench.name == "ingest" and args.ingest_repeat > 1:
                    chosen = dataclasses.replace(
                        bench,
                        args=(*bench.args, "--repeat", str(args.ingest_repeat)),
                        timeout_s=bench.timeout_s * args.ingest_repeat,
                    )
                results[bench.name] = run_bench(chosen)
            entry = results[bench.name]
            print(
                f"  {entry['status']} in {entry.get('seconds', 0):.0f} s"
                + (f": {entry['error']}" if "error" in entry else ""),
                flush=True,
            )
    finally:
        broker.stop()
    today = dt.date.today().isoformat()
    info = machine()
    json_path = out / f"{today}-{info['host']}.json"
    json_name = relative_to_root(json_path)
    report: dict[str, Any] = {
        "date": today,
        "command": "make bench"
        if args.ingest_repeat == 1
        else f"python -m bench.run_all --ingest-repeat {args.ingest_repeat}",
        "commit": git_commit(),
        "seconds": round(time.monotonic() - started, 1),
        "machine": info,
        "json": json_name,
        "benchmarks": results,
    }
    locust_path = out / "locust-latest.json"
    if locust_path.exists():
        with contextlib.suppress(ValueError):
            report["locust"] = json.loads(locust_path.read_text())
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    made = plots(results, out)
    (out / "latest.md").write_text(latest_md(report, made, relative_to_root(out)))
    latest = relative_to_root(out / "latest.md")
    print(f"\nwrote {json_name}, {latest} and {len(made)} plots in {report['seconds']:.0f} s\n")
    for a, b, c, d in table_rows(results):
        print(f"{a}: {b} | baseline {c} | {d}")
    return 0 if all(e["status"] in ("ok", "missing") for e in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
