"""The benchmark plots (matplotlib, Agg): one PNG per figure whose data is in the results."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import kafka_figures, result_of


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
        "drain": ("drain-rate.png", _plot_drain),
        "kafka": ("kafka-records.png", _plot_kafka),
        "memory": ("memory-per-flow.png", _plot_memory),
        "parse": ("parse.png", _plot_parse),
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


RECEIVER_STYLE = {
    "recvmmsg": ("recvmmsg loop (counts only)", "tab:gray", ":"),
    "recvmmsg-2p": ("2 recvmmsg loops, one port (counts only)", "silver", ":"),
    "uvloop": ("bare uvloop (counts only)", "black", "--"),
    "collector": ("collector, 1 worker", "tab:blue", "-"),
    "collector-2w": ("collector, 2 workers", "tab:green", "-"),
}


def _sweep(ax: Any, results: dict[str, Any], field: str, ylabel: str, title: str) -> bool:
    """One panel per profile, one line per receiver, against the offered rate."""
    ingest = result_of(results, "ingest")
    if not ingest or not ingest.get("points"):
        return False
    fig = ax.figure
    ax.remove()
    profiles = ingest["profiles"]
    fig.set_size_inches(5.2 * len(profiles), 4.4)
    offered = sorted({p["offered_pps"] for p in ingest["points"]}, key=lambda r: r or float("inf"))
    for i, profile in enumerate(profiles):
        panel = fig.add_subplot(1, len(profiles), i + 1)
        flat = [
            p["send_rate_pps"]
            for p in ingest["points"]
            if p["profile"] == profile and not p["offered_pps"]
        ]
        labels = [
            f"{r / 1000:.0f}k" if r else f"flat out\n(~{max(flat, default=0) / 1000:.0f}k)"
            for r in offered
        ]
        for name in ingest["receivers"]:
            pts = {
                p["offered_pps"]: p
                for p in ingest["points"]
                if p["receiver"] == name and p["profile"] == profile
            }
            label, color, style = RECEIVER_STYLE.get(name, (name, None, "-"))
            values = [
                float("nan") if r not in pts or pts[r][field] is None else pts[r][field]
                for r in offered
            ]
            panel.plot(
                range(len(offered)), values, linestyle=style, color=color, marker="o", label=label
            )
        panel.set_xticks(range(len(offered)), labels)
        panel.set_xlabel("offered rate (datagrams/s)")
        panel.set_ylabel(ylabel)
        panel.set_title(f"{title}: {profile}", fontsize=10)
        panel.set_ylim(bottom=0)
        panel.grid(True, alpha=0.3)
        if i == 0:
            panel.legend(fontsize=7)
    return True


def _plot_loss(ax: Any, results: dict[str, Any]) -> bool:
    return _sweep(ax, results, "loss_pct", "loss (% of sent; every one a kernel drop)", "Loss")


def _plot_cpu(ax: Any, results: dict[str, Any]) -> bool:
    return _sweep(
        ax, results, "cpu_us_per_packet", "CPU µs per received datagram", "CPU per packet"
    )


def _plot_drain(ax: Any, results: dict[str, Any]) -> bool:
    """Freeze, fill, drain: each receiver's median drain rate, grouped by profile."""
    drain = (result_of(results, "ingest") or {}).get("drain")
    if not drain or not drain.get("summary"):
        return False
    summary = drain["summary"]
    profiles, receivers = drain["profiles"], drain["receivers"]
    width = 0.8 / max(len(receivers), 1)
    for j, name in enumerate(receivers):
        label, color, _ = RECEIVER_STYLE.get(name, (name, None, "-"))
        values = [
            (summary.get(f"{name}/{profile}") or {}).get("drain_pps") or 0.0 for profile in profiles
        ]
        bars = ax.bar(
            [i + (j - (len(receivers) - 1) / 2) * width for i in range(len(profiles))],
            [v / 1000 for v in values],
            width,
            label=label,
            color=color,
        )
        _bar_labels(ax, bars, [f"{v / 1000:,.0f}k" if v else "-" for v in values], fontsize=7)
    ax.set_xticks(range(len(profiles)), profiles)
    ax.set_ylabel("drain rate (k datagrams/s), senders stopped")
    ax.set_title(
        f"Freeze, fill, drain: median of {drain['repeat']}; 2w/1w is the scaling target",
        fontsize=10,
    )
    ax.legend(fontsize=7)
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
    if not memory or not memory.get("sizes"):
        return False
    sizes = memory["sizes"]
    series = [
        (
            "flow table",
            "tab:blue",
            [s.get("rss_bytes_per_flow", s.get("bytes_per_flow")) for s in sizes],
        ),
        (
            "previous table",
            "tab:orange",
            [(s.get("legacy") or {}).get("rss_bytes_per_flow") for s in sizes],
        ),
        (
            "plain dict (per key)",
            "tab:gray",
            [s.get("dict_rss_bytes_per_key", s.get("dict_bytes_per_key")) for s in sizes],
        ),
    ]
    series = [(n, c, v) for n, c, v in series if all(x is not None for x in v)]
    width = 0.8 / len(series)
    for i, (name, color, values) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(sizes))]
        bars = ax.bar(xs, values, width, label=name, color=color)
        _bar_labels(ax, bars, [f"{v:.0f} B" for v in values])
    ax.set_xticks(range(len(sizes)), [f"{s['flows']:,}" for s in sizes])
    ax.set_xlabel("active flows")
    ax.set_ylabel("bytes per flow")
    ax.set_title(f"Memory per active flow ({memory.get('method', 'tracemalloc')})", fontsize=9)
    top = max(v for _, _, values in series for v in values)
    ax.set_ylim(0, top * 1.3)
    ax.legend(loc="upper center", ncol=len(series), fontsize=8)
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
