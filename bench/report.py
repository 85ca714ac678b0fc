"""The benchmark report: what the figures were measured on, the table of figures, latest.md."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


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
    rows.extend(ingest_rows(result_of(results, "ingest")))
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
    for name, build in (("flood", "compiled"), ("flood-pure", "pure Python")):
        flood = result_of(results, name)
        if flood:
            rows.append(
                (
                    f"Port scan through Kafka: new flow + record per packet, one worker ({build})",
                    fmt(flood.get("best_lossless_records_per_s"), " records/s")
                    + f" lossless (target {fmt(flood.get('target_records_per_s'), '/s')})",
                    "naive awaited send loop "
                    + fmt(flood.get("naive_records_per_s"), " records/s"),
                    fmt(flood.get("flood_vs_naive"), "x", 2),
                )
            )
    memory = result_of(results, "memory")
    if memory:
        for size in memory.get("sizes", []):
            legacy = size.get("legacy") or {}
            ours = size.get("rss_bytes_per_flow", size.get("bytes_per_flow"))
            base = "plain dict " + fmt(
                size.get("dict_rss_bytes_per_key", size.get("dict_bytes_per_key")), " bytes/key"
            )
            if legacy.get("rss_bytes_per_flow") is not None:
                base = f"previous table {fmt(legacy['rss_bytes_per_flow'], ' bytes/flow')}; " + base
            rows.append(
                (
                    f"Memory: {size['flows']:,} active flows",
                    fmt(ours, " bytes/flow") + f" ({memory.get('method', 'tracemalloc')})",
                    base,
                    fmt(size.get("ratio_vs_legacy", size.get("ratio_vs_dict")), "x", 2),
                )
            )
    encode = result_of(results, "encode")
    if encode:
        ns = encode.get("ns_per_record") or {}
        for fmt_name in ("ipfix", "goflow2"):
            ratio = (encode.get("ratio_to_json") or {}).get(fmt_name)
            rows.append(
                (
                    f"Encoding: {fmt_name} per record",
                    fmt(ns.get(fmt_name), " ns/record", 0),
                    "JSON (msgspec) " + fmt(ns.get("json"), " ns/record", 0),
                    fmt(ratio, "x JSON", 2),
                )
            )
    for name, entry in results.items():
        if entry.get("status") != "ok":
            error = entry.get("error", "").split(" | ")[-1].strip()
            rows.append((name, entry.get("status", "?"), error, ""))
    return rows


def sweep_table(ingest: dict[str, Any] | None) -> list[str]:
    """Markdown: per profile and offered rate, each receiver's loss and CPU per packet."""
    if not ingest or not ingest.get("points"):
        return []
    receivers = ingest["receivers"]
    lines = [
        "| profile | offered | " + " | ".join(receivers) + " |",
        "| --- | --- | " + " | ".join("---" for _ in receivers) + " |",
    ]
    offered = sorted({p["offered_pps"] for p in ingest["points"]}, key=lambda r: r or float("inf"))
    for profile in ingest["profiles"]:
        for rate in offered:
            pts = {
                p["receiver"]: p
                for p in ingest["points"]
                if p["profile"] == profile and p["offered_pps"] == rate
            }
            if not pts:
                continue
            sent = max(p["send_rate_pps"] for p in pts.values())
            label = f"{rate / 1000:,.0f}k/s" if rate else f"flat out (up to {sent / 1000:,.0f}k/s)"
            if rate and rate == (ingest.get("matched_pps") or {}).get(profile):
                label += " (bare uvloop's flat-out rate, paced)"
            cells = []
            for name in receivers:
                p = pts.get(name)
                if p is None:
                    cells.append("-")
                    continue
                loss = "0 %" if p["sent"] == p["received"] else f"**{p['loss_pct']:.1f} % lost**"
                cells.append(f"{loss}, {fmt(p['cpu_us_per_packet'], ' µs', 2)}")
            lines.append(f"| {profile} | {label} | " + " | ".join(cells) + " |")
    return lines


def _ratio(ours: dict[str, Any], base: dict[str, Any]) -> float | None:
    a, b = ours.get("cpu_us_per_packet"), base.get("cpu_us_per_packet")
    return a / b if a and b else None


def ingest_rows(ingest: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """The ingest sweep: knees per profile, CPU per packet, 2 workers, health, the targets."""
    if not ingest:
        return []
    rows = []
    knees = ingest.get("knees_pps", {})

    def knee(name: str, profile: str) -> str:
        value = knees.get(f"{name}/{profile}")
        return fmt(value, "/s") if value else "loss at every rate"

    for profile in ingest.get("profiles", []):
        rows.append(
            (
                f"Live ingest ({profile}): highest zero-loss rate, 1 worker",
                knee("collector", profile) + f"; 2 workers {knee('collector-2w', profile)}",
                f"bare uvloop {knee('uvloop', profile)}; recvmmsg loop {knee('recvmmsg', profile)}",
                f"senders' max {fmt(ingest.get('sender_max_pps'), '/s')}",
            )
        )
        points = {
            (p["receiver"], p["offered_pps"]): p
            for p in ingest.get("points", [])
            if p["profile"] == profile
        }
        # paced rates only, as the targets: flat out offers each receiver a different rate
        clean = [
            r
            for (name, r), p in points.items()
            if name == "uvloop" and r and p["sent"] == p["received"] and ("collector", r) in points
        ]
        if clean:
            top = max(clean)
            ours, bare = points["collector", top], points["uvloop", top]
            floor = points.get(("recvmmsg", top))
            label = f"{top:,.0f}/s"
            ratios = fmt(_ratio(ours, bare), "x", 2)
            if floor:
                ratios += " / " + fmt(_ratio(ours, floor), "x", 2)
            rows.append(
                (
                    f"Live ingest ({profile}): CPU per packet at {label}, 1 worker",
                    fmt(ours["cpu_us_per_packet"], " µs", 2),
                    f"bare uvloop {fmt(bare['cpu_us_per_packet'], ' µs', 2)}"
                    + (
                        f"; recvmmsg loop {fmt(floor['cpu_us_per_packet'], ' µs', 2)}"
                        if floor
                        else ""
                    ),
                    ratios,
                )
            )
    rows.extend(drain_rows(ingest.get("drain")))
    rows.extend(flood_rows(ingest.get("flood")))
    rows.extend(
        (
            f"Target: {t['target']}",
            t["value"],
            "same run",
            "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL"),
        )
        for t in ingest.get("targets", [])
    )
    return rows


def drain_rows(drain: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """Freeze, fill, drain (bench.drain): per profile, the median drain rates and 2w/1w."""
    if not drain:
        return []
    rows = []
    summary = drain.get("summary", {})

    def rate(name: str, profile: str) -> float | None:
        return (summary.get(f"{name}/{profile}") or {}).get("drain_pps")

    for profile in drain.get("profiles", []):
        one, two = rate("collector", profile), rate("collector-2w", profile)
        if one is None and two is None:
            continue
        shares = (summary.get(f"collector-2w/{profile}") or {}).get("worker_shares") or []
        figure = fmt(one, "/s") + f"; 2 workers {fmt(two, '/s')}"
        if shares:
            figure += " (shares " + "/".join(f"{x:.2f}" for x in shares) + ")"
        pair, floor = rate("recvmmsg-2p", profile), rate("recvmmsg", profile)
        rows.append(
            (
                f"Live ingest ({profile}): drain rate with the senders stopped "
                f"(freeze, fill {drain.get('counts', {}).get(profile, 0):,}, drain), 1 worker",
                figure,
                f"bare uvloop {fmt(rate('uvloop', profile), '/s')}; "
                f"recvmmsg loop {fmt(floor, '/s')}"
                + (
                    f", 2 of them {fmt(pair, '/s')} ({pair / floor:.2f}x)" if pair and floor else ""
                ),
                f"2w/1w {two / one:.2f}x" if one and two else "n/a",
            )
        )
    return rows


def flood_rows(flood: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """The sustained new-flows flood: the collector's loss and CPU against the baselines."""
    if not flood:
        return []
    points = {p["receiver"]: p for p in flood.get("points", [])}
    ours = points.get("collector")
    if ours is None:
        return []

    def cell(p: dict[str, Any]) -> str:
        loss = "0 % lost" if p["sent"] == p["received"] else f"{p['loss_pct']:.1f} % lost"
        return f"{loss}, {fmt(p['cpu_us_per_packet'], ' µs/packet', 2)}"

    base = [f"{label} {cell(points[n])}" for n, label in BASELINES if n in points]
    ratios = [fmt(_ratio(ours, points[n]), "x", 2) for n, _ in BASELINES if n in points]
    records = flood.get("collector_records")
    return [
        (
            f"Live ingest (new-flows flood, {flood['rate_pps']:,.0f}/s for {flood['seconds']:g} s, "
            f"inactive timeout {flood['inactive_timeout_s']:g} s), 1 worker",
            cell(ours) + (f", {records:,} records written" if records is not None else ""),
            "; ".join(base),
            " / ".join(ratios),
        )
    ]


BASELINES = (("uvloop", "bare uvloop"), ("recvmmsg", "recvmmsg loop"))


def drain_table(drain: dict[str, Any] | None) -> list[str]:
    """Markdown: each receiver's median drain rate, CPU per packet, runs, shares."""
    if not drain or not drain.get("summary"):
        return []
    lines = [
        "| profile | receiver | drain rate (median) | runs in the median | CPU per packet "
        "| runs: clean/valid/all | worker shares |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, entry in drain["summary"].items():
        name, profile = key.split("/", 1)
        every = ", ".join(f"{r / 1000:,.0f}k" for r in entry.get("drain_pps_all", []))
        shares = "/".join(f"{x:.2f}" for x in entry.get("worker_shares") or []) or "-"
        lines.append(
            f"| {profile} | {name} | {fmt(entry.get('drain_pps'), '/s')} | {every or '-'} | "
            f"{fmt(entry.get('cpu_us_per_packet'), ' µs', 2)} | "
            f"{entry.get('clean', 0)}/{entry.get('valid', 0)}/{entry.get('runs', 0)} | {shares} |"
        )
    return lines


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
    ingest = result_of(report["benchmarks"], "ingest")
    if ingest:
        table = sweep_table(ingest)
        if table:
            lines += [
                "",
                "Live ingest, every point of the sweep (loss, CPU per received packet; "
                f"{ingest.get('seconds_per_point', '?')} s of traffic per point):",
                "",
                *table,
            ]
        if ingest.get("note"):
            lines += ["", f"Ingest: {ingest['note']}"]
        drain = ingest.get("drain")
        table = drain_table(drain)
        if drain and table:
            lines += [
                "",
                "Freeze, fill, drain (`bench/drain.py`): every process of the receiver stopped "
                "(SIGSTOP), the datagrams queued in its socket buffers "
                f"({drain['buffer_bytes'] >> 20} MiB asked per socket) by the senders flat out, "
                "then resumed and timed until its sockets are empty (their queues in "
                f"/proc/net/udp read every {drain['poll_s'] * 1000:g} ms); drain rate = "
                "datagrams / drain time, the receiver's zero-loss rate with the machine to itself; "
                f"median of {drain['repeat']}:",
                "",
                *table,
            ]
        flood = ingest.get("flood")
        if flood and flood.get("note"):
            lines += ["", f"Flood: {flood['note']}"]
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
