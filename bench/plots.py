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
    "uvloop": ("bare uvloop (counts only)", "black", "--"),
    "collector": ("collector, 1 worker", "tab:blue", "-"),
    "collector-2w": ("collector, 2 workers", "tab:green", "-"),
}


def _sweep(ax: Any, results: dict[str, Any], field: str) -> bool:
    """One line per (receiver, profile) against the rate the senders reached."""
    ingest = result_of(results, "ingest")
    if not ingest or not ingest.get("points"):
        return False
    markers = {"mixed": "o", "new-flows": "s"}
    for profile in ingest["profiles"]:
        for name in ingest["receivers"]:
            pts = sorted(
                (p for p in ingest["points"] if p["receiver"] == name and p["profile"] == profile),
                key=lambda p: p["send_rate_pps"],
            )
            if not pts:
                continue
            label, color, style = RECEIVER_STYLE.get(name, (name, None, "-"))
            ax.plot(
                [p["send_rate_pps"] / 1000 for p in pts],
                [p[field] for p in pts],
                linestyle=style,
                color=color,
                marker=markers.get(profile, "^"),
                fillstyle="full" if profile == "mixed" else "none",
                label=f"{label}, {profile}",
            )
    ax.set_xlabel("rate the senders reached (k datagrams/s; the last point of each line: flat out)")
    ax.legend(fontsize=7, ncol=2)
    return True


def _plot_loss(ax: Any, results: dict[str, Any]) -> bool:
    if not _sweep(ax, results, "loss_pct"):
        return False
    ax.set_ylabel("loss (% of sent; all of it kernel drops)")
    ax.set_title("Live ingest: loss against offered rate (filled: mixed, open: new-flows)")
    ax.set_ylim(bottom=0)
    return True


def _plot_cpu(ax: Any, results: dict[str, Any]) -> bool:
    if not _sweep(ax, results, "cpu_us_per_packet"):
        return False
    ax.set_ylabel("CPU µs per received datagram (receiver only)")
    ax.set_title("Live ingest: CPU per packet against offered rate")
    ax.set_ylim(bottom=0)
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
