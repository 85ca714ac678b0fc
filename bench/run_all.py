"""The benchmark suite: every benchmark as a subprocess, one JSON file, plots and a summary table.

    python -m bench.run_all [--only parse,ingest,...] [--skip kafka] [--out bench/results]

Runs parse (decapsulation against dpkt, and the replay pipeline per core), ingest (one worker
against a bare uvloop receiver, loss per offered rate), kafka (records/s against a naive send loop,
on the local broker, started with deploy/kafka/kafkactl when it is not running), memory (bytes per
flow) and scaling (1 worker against one per core), each with ``--json`` and a timeout. A benchmark
whose file is absent is reported as missing, one that fails or times out as such; the others still
run. Writes ``<out>/<YYYY-MM-DD>-<host>.json`` (machine, commands, every figure), PNG plots and
``<out>/latest.md``, the table for the README.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KAFKACTL = ROOT / "deploy" / "kafka" / "kafkactl"
INGEST_RATES = "0,25000,50000,100000,150000"
KAFKA = ("127.0.0.1", 9092)  # kafkactl's and bench.kafka_throughput's default


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
        ("--count", "200000", "--rates", INGEST_RATES),
        420,
        "one worker: CPU per packet against a bare uvloop receiver, loss per offered rate",
    ),
    Bench(
        "kafka",
        "bench.kafka_throughput",
        (),
        300,
        "records/s with acks=all + lz4 against a naive awaited send loop (local broker)",
    ),
    Bench("memory", "bench.memory", (), 300, "bytes per active flow at 10k, 100k, 1M flows"),
    Bench("scaling", "bench.scaling", (), 240, "1 worker against one worker per core"),
)


# ---- running ---------------------------------------------------------------------------------------


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
        done = subprocess.run(
            bench.command(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=bench.timeout_s,
            check=False,
        )
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


def last_json_line(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def broker_listening(address: tuple[str, int] = KAFKA) -> bool:
    """Whether something accepts connections where the kafka benchmark looks for a broker."""
    try:
        with socket.create_connection(address, timeout=2):
            return True
    except OSError:
        return False


class Broker:
    """The local Kafka broker for the kafka benchmark: started when none listens, stopped again
    if this run started it."""

    def __init__(self) -> None:
        self.started = False
        self.error = ""

    def ensure(self) -> bool:
        if not KAFKACTL.exists():
            self.error = "deploy/kafka/kafkactl not found"
            return False
        if broker_listening() or self._ctl("status", 30).returncode == 0:
            return True
        print("  starting the local Kafka broker (deploy/kafka/kafkactl start)", flush=True)
        done = self._ctl("start", 300)
        if done.returncode != 0:
            self.error = "kafkactl start failed: " + " | ".join(
                done.stderr.strip().splitlines()[-4:]
            )
            return False
        self.started = True
        return True

    def stop(self) -> None:
        if self.started:
            self._ctl("stop", 120)

    @staticmethod
    def _ctl(command: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [str(KAFKACTL), command],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess([command], 1, "", f"kafkactl {command} timed out")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    rmem_max: int | None = None
    with contextlib.suppress(OSError, ValueError):
        rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    memory_gib: float | None = None
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory_gib = round(kib / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "host": socket.gethostname(),
        "cpu_model": model or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "system": platform.system(),
        "net_core_rmem_max": rmem_max,
    }


def git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "collector", "bench"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() + ("+local-changes" if dirty.stdout.strip() else "")


# ---- figures ---------------------------------------------------------------------------------------


def dig(data: Any, *path: str) -> Any:
    """data[p0][p1]...; None as soon as a step is missing."""
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def result_of(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    entry = results.get(name) or {}
    return entry.get("result") if entry.get("status") == "ok" else None


def kafka_figures(kafka: dict[str, Any] | None) -> tuple[float | None, float | None]:
    """(collector records/s, naive records/s) from the kafka benchmark's JSON."""
    if kafka is None:
        return None, None
    ours = (
        dig(kafka, "collector", "records_per_s")
        or dig(kafka, "sink", "records_per_s")
        or kafka.get("records_per_s")
        or kafka.get("collector_records_per_s")
    )
    naive = dig(kafka, "naive", "records_per_s") or kafka.get("naive_records_per_s")
    return ours, naive


def fmt(value: float | None, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def table_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(benchmark, figure, baseline measured in the same run, ratio) rows for latest.md."""
    rows: list[tuple[str, str, str, str]] = []
    parse = result_of(results, "parse")
    if parse:
        rows.append(
            (
                "Parse: decapsulation + flow key",
                fmt(parse.get("decode_ns_per_packet"), " ns/packet", 1),
                "dpkt " + fmt(parse.get("dpkt_ns_per_packet"), " ns/packet", 1),
                fmt(parse.get("ratio_vs_dpkt"), "x faster", 1),
            )
        )
        pipe = parse.get("pipeline") or {}
        rows.append(
            (
                "Replay: whole pipeline, one core",
                fmt(pipe.get("packets_per_s_per_core"), " packets/s")
                + f" ({fmt(pipe.get('filtered_packets_per_s_per_core'), ' packets/s')} "
                f"with {pipe.get('with_filter_rules', '?')} filter rules)",
                "dpkt parse alone " + fmt(parse.get("dpkt_ns_per_packet"), " ns/packet", 1),
                fmt(pipe.get("ratio_vs_dpkt_parse"), "x faster", 1),
            )
        )
    ingest = result_of(results, "ingest")
    if ingest:
        summary = ingest.get("summary", {})
        bare = summary.get("bare-uvloop", {})
        for name, row in summary.items():
            if name == "bare-uvloop":
                continue
            rows.append(
                (
                    f"Live ingest, 1 worker ({name.removeprefix('collector-')} receive path)",
                    fmt(row.get("cpu_us_per_packet"), " µs CPU/packet", 2)
                    + f"; loss starts at {loss_start(ingest, name)}",
                    "bare uvloop receiver "
                    + fmt(bare.get("cpu_us_per_packet"), " µs/packet", 2)
                    + f"; loss starts at {loss_start(ingest, 'bare-uvloop')}",
                    fmt(row.get("ratio_vs_bare"), "x the CPU", 2),
                )
            )
    ours, naive = kafka_figures(result_of(results, "kafka"))
    if ours is not None:
        rows.append(
            (
                "Kafka sink: acks=all, lz4, one worker",
                fmt(ours, " records/s"),
                "naive awaited send loop " + fmt(naive, " records/s"),
                fmt(ours / naive, "x", 1) if naive else "n/a",
            )
        )
    memory = result_of(results, "memory")
    if memory:
        rows.extend(
            (
                f"Memory: {size['flows']:,} active flows",
                fmt(size.get("bytes_per_flow"), " bytes/flow")
                + f" ({fmt(size.get('table_mib'), ' MiB', 1)})",
                "plain dict " + fmt(size.get("dict_bytes_per_key"), " bytes/key"),
                fmt(size.get("ratio_vs_dict"), "x", 1),
            )
            for size in memory.get("sizes", [])
        )
    scaling = result_of(results, "scaling")
    if scaling and scaling.get("runs"):
        first = scaling["runs"][0]
        rows.extend(
            (
                f"Scaling: {run['workers']} workers, senders on the same cores",
                fmt(run.get("received_pps"), " datagrams/s received")
                + f", loss {fmt(run.get('loss_pct'), ' %', 1)}",
                f"{first['workers']} worker "
                + fmt(first.get("received_pps"), " datagrams/s")
                + f", loss {fmt(first.get('loss_pct'), ' %', 1)}",
                fmt(run.get("speedup_vs_first"), "x (lower bound)", 2),
            )
            for run in scaling["runs"][1:]
        )
    for name, entry in results.items():
        if entry.get("status") != "ok":
            error = entry.get("error", "").split(" | ")[-1].strip()
            rows.append((name, entry.get("status", "?"), error, ""))
    return rows


def loss_start(ingest: dict[str, Any], receiver: str) -> str:
    start = dig(ingest, "loss_starts_at_pps", receiver)
    if start is None:
        offered = [r["offered_pps"] for r in ingest.get("runs", []) if r["offered_pps"]]
        return f"> {max(offered):,.0f}/s offered" if offered else "n/a"
    return f"{start:,.0f}/s offered"


# ---- plots -----------------------------------------------------------------------------------------


def plots(results: dict[str, Any], out: Path) -> dict[str, str]:
    """Draw every plot whose data is there; {plot name: file name}."""
    try:
        import matplotlib  # noqa: PLC0415 - only the suite needs it, and with the Agg backend
    except ImportError:
        print("  no plots: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return {}
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    plt.rcParams.update({"figure.dpi": 110, "font.size": 10, "axes.grid": True, "grid.alpha": 0.3})
    drawers: dict[str, tuple[str, Callable[[Any, dict[str, Any]], bool]]] = {
        "loss": ("loss-vs-rate.png", _plot_loss),
        "cpu": ("cpu-per-packet.png", _plot_cpu),
        "kafka": ("kafka-records.png", _plot_kafka),
        "memory": ("memory-per-flow.png", _plot_memory),
        "parse": ("parse.png", _plot_parse),
        "scaling": ("scaling.png", _plot_scaling),
    }
    made = {}
    for name, (filename, draw) in drawers.items():
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        try:
            drawn = draw(ax, results)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            print(f"  plot {filename}: {exc!r}", file=sys.stderr)
            drawn = False
        if drawn:
            fig.tight_layout()
            fig.savefig(out / filename)
            made[name] = filename
        plt.close(fig)
    return made


def _bar_labels(ax: Any, bars: Any, labels: list[str], fontsize: int = 9) -> None:
    for bar, label in zip(bars, labels, strict=True):
        ax.annotate(
            label,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            xytext=(0, 2),
            textcoords="offset points",
            fontsize=fontsize,
        )


def _plot_loss(ax: Any, results: dict[str, Any]) -> bool:
    ingest = result_of(results, "ingest")
    if not ingest:
        return False
    offered = sorted({r["offered_pps"] for r in ingest["runs"]}, key=lambda o: o or float("inf"))
    receivers = list(dict.fromkeys(r["receiver"] for r in ingest["runs"]))
    loss = {(r["receiver"], r["offered_pps"]): r for r in ingest["runs"]}
    width = 0.8 / len(receivers)
    for i, name in enumerate(receivers):
        xs = [j + (i - (len(receivers) - 1) / 2) * width for j in range(len(offered))]
        values = [loss[name, o]["loss_pct"] if (name, o) in loss else 0.0 for o in offered]
        bars = ax.bar(xs, values, width, label=name)
        _bar_labels(ax, bars, [f"{v:.1f}" if v >= 0.05 else "0" for v in values], fontsize=7)
    labels = []
    for o in offered:
        sent = [loss[n, o]["send_rate_pps"] for n in receivers if (n, o) in loss]
        mean = sum(sent) / len(sent)
        labels.append(
            f"flat out\n(sent {mean / 1000:.0f}k/s)"
            if not o
            else f"{o / 1000:.0f}k/s\n(sent {mean / 1000:.0f}k/s)"
        )
    ax.set_xticks(range(len(offered)), labels)
    ax.set_xlabel("offered rate (mean rate the sender reached)")
    ax.set_ylabel("loss (% of sent)")
    ax.set_title(f"Live ingest, one worker: loss per offered rate ({ingest['count']:,} per run)")
    top = max((r["loss_pct"] for r in ingest["runs"]), default=0.0)
    ax.set_ylim(0, max(1.0, top * 1.25))
    ax.legend(fontsize=8, loc="upper left")
    return True


def _plot_cpu(ax: Any, results: dict[str, Any]) -> bool:
    ingest = result_of(results, "ingest")
    if not ingest:
        return False
    summary = ingest["summary"]
    names = list(summary)
    values = [summary[n]["cpu_us_per_packet"] for n in names]
    colors = ["tab:gray" if n == "bare-uvloop" else "tab:blue" for n in names]
    bars = ax.bar(names, values, color=colors)
    _bar_labels(
        ax,
        bars,
        [
            f"{v:.2f} µs ({summary[n]['ratio_vs_bare']:.2f}x)"
            for n, v in zip(names, values, strict=True)
        ],
    )
    ax.set_ylabel("CPU µs per received datagram")
    ax.set_title("CPU per packet, sender flat out: collector (1 worker) vs bare uvloop receiver")
    ax.set_ylim(0, max(values) * 1.2)
    return True


def _plot_kafka(ax: Any, results: dict[str, Any]) -> bool:
    ours, naive = kafka_figures(result_of(results, "kafka"))
    if ours is None:
        return False
    names = ["collector Kafka sink\n(acks=all, lz4)"]
    values = [ours]
    if naive is not None:
        names.append("naive awaited\nsend loop")
        values.append(naive)
    bars = ax.bar(names, values, color=["tab:blue", "tab:gray"][: len(values)])
    labels = [f"{v:,.0f}/s" for v in values]
    if naive:
        labels[0] += f" ({ours / naive:.1f}x)"
    _bar_labels(ax, bars, labels)
    ax.set_ylabel("records per second")
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{v / 1000:.0f}k")
    ax.set_title("Kafka: records/s to the local broker, one worker")
    ax.set_ylim(0, max(values) * 1.2)
    return True


def _plot_memory(ax: Any, results: dict[str, Any]) -> bool:
    memory = result_of(results, "memory")
    if not memory:
        return False
    sizes = memory["sizes"]
    labels = [f"{s['flows']:,}" for s in sizes]
    x = range(len(sizes))
    width = 0.38
    ours = ax.bar(
        [i - width / 2 for i in x],
        [s["bytes_per_flow"] for s in sizes],
        width,
        label="flow table (bytes per flow)",
        color="tab:blue",
    )
    base = ax.bar(
        [i + width / 2 for i in x],
        [s["dict_bytes_per_key"] for s in sizes],
        width,
        label="plain dict (bytes per key)",
        color="tab:gray",
    )
    _bar_labels(ax, ours, [f"{s['bytes_per_flow']:.0f} B" for s in sizes])
    _bar_labels(ax, base, [f"{s['dict_bytes_per_key']:.0f} B" for s in sizes])
    ax.set_xticks(list(x), labels)
    ax.set_xlabel("active flows")
    ax.set_ylabel("bytes")
    ax.set_title("Memory per active flow (tracemalloc)")
    ax.set_ylim(0, max(s["bytes_per_flow"] for s in sizes) * 1.35)
    ax.legend(loc="upper center", ncol=2)
    return True


def _plot_parse(ax: Any, results: dict[str, Any]) -> bool:
    parse = result_of(results, "parse")
    if not parse:
        return False
    pipe = parse.get("pipeline") or {}
    names = ["collector decode", "dpkt parse", "whole pipeline"]
    values = [
        parse["decode_ns_per_packet"],
        parse["dpkt_ns_per_packet"],
        pipe["ns_per_packet"],
    ]
    colors = ["tab:blue", "tab:gray", "tab:green"]
    if pipe.get("filtered_ns_per_packet"):
        names.append(f"pipeline with\n{pipe.get('with_filter_rules', '?')} filter rules")
        values.append(pipe["filtered_ns_per_packet"])
        colors.append("tab:olive")
    bars = ax.bar(names, values, color=colors)
    _bar_labels(ax, bars, [f"{v:,.0f} ns" for v in values])
    ax.set_ylabel("ns CPU per packet (one core)")
    ax.set_title(
        f"Parse: {parse['ratio_vs_dpkt']:.1f}x dpkt; replay pipeline "
        f"{pipe['packets_per_s_per_core']:,.0f} packets/s per core"
    )
    ax.set_ylim(0, max(values) * 1.2)
    return True


def _plot_scaling(ax: Any, results: dict[str, Any]) -> bool:
    scaling = result_of(results, "scaling")
    if not scaling:
        return False
    runs = scaling["runs"]
    names = [f"{r['workers']} worker{'s' if r['workers'] > 1 else ''}" for r in runs]
    values = [r["received_pps"] for r in runs]
    bars = ax.bar(names, values, color="tab:blue")
    _bar_labels(
        ax,
        bars,
        [
            f"{v:,.0f}/s, loss {r['loss_pct']:.1f}%"
            + ("\n(sender-bound)" if r.get("sender_bound") else "")
            for v, r in zip(values, runs, strict=True)
        ],
    )
    ax.set_ylabel("datagrams received per second")
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{v / 1000:.0f}k")
    ax.set_title(
        f"Scaling: {scaling['sender_processes']} senders flat out, "
        f"{scaling['cores']} cores shared (lower bound)"
    )
    ax.set_ylim(0, max(values) * 1.25)
    return True


# ---- report ----------------------------------------------------------------------------------------


def latest_md(report: dict[str, Any], made: dict[str, str], images: str) -> str:
    m = report["machine"]
    rmem = m.get("net_core_rmem_max")
    lines = [
        "<!-- written by `python -m bench.run_all`; image paths are relative to the repository"
        " root, for README.md -->",
        "# Benchmark results",
        "",
        f"Measured {report['date']} on `{m['host']}`: {m['cpu_model']}, {m['cores']} cores, "
        f"{m['memory_gib']} GiB, Linux {m['kernel']}, {m['implementation']} {m['python']}, "
        f"net.core.rmem_max {rmem:,} bytes"
        if rmem
        else f"Measured {report['date']} on `{m['host']}`",
        f"(commit {report['commit']}). Command: `{report['command']}` "
        f"({report['seconds']:.0f} s); every benchmark: `python -m bench.NAME --json`, "
        f"raw figures in `{report['json']}`.",
        "",
        "Each figure comes with a baseline measured in the same run on the same machine.",
        "",
        "| Benchmark | Figure | Baseline (same run) | Ratio |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
        for row in table_rows(report["benchmarks"])
    ]
    scaling = result_of(report["benchmarks"], "scaling")
    if scaling:
        lines += ["", f"Scaling: {scaling['note']}."]
    locust = report.get("locust")
    if locust and locust.get("collector"):
        c = locust["collector"]
        lines += [
            "",
            f"Last Locust run (`make bench-locust`, {locust.get('date', 'date unknown')}): "
            f"{locust['users']} users, profile {locust['profile']}, {locust['seconds']} s, "
            f"sent {locust['sent']:,} datagrams ({locust['sent_pps']:,}/s), collector received "
            f"{c['received']:,}, loss {c['loss_pct']:.3f}%.",
        ]
    if made:
        lines += ["", *[f"![{name}]({images}/{filename})" for name, filename in made.items()]]
    return "\n".join(lines) + "\n"


def relative_to_root(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path.resolve())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated benchmarks to run")
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    parser.add_argument("--out", default=str(HERE / "results"), help="results directory")
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
            if bench.name == "kafka" and bench.path.exists() and not broker.ensure():
                results[bench.name] = {
                    "what": bench.what,
                    "status": "failed",
                    "error": broker.error,
                }
            else:
                results[bench.name] = run_bench(bench)
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
        "command": "make bench",
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
