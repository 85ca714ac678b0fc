"""The fleet on one machine, end to end: two mirror sources, an NLB stand-in (nftables + conntrack
+ a health checker), three or four collectors and a Kafka broker, each in a network namespace of its
own, through steady state, scale-out, scale-in, a crash and two sessions with a filter.

    python -m bench.fleet [--json] [--scenario NAME ...] [--profile NAME] [--gwlb] [--plot PATH]

Needs root (namespaces, nftables). Prints per scenario and collector the datagrams received and
overall ``sent``, ``counted``, ``explained_loss``, ``unexplained_loss`` and ``split_flows``
(bench/fleet_scenarios.py says how each is measured); with ``--json`` one JSON object last.
The sources mirror flows in the mix of a bench/traffic.py profile (``--profile``, default
``mixed``); per flow, packets and bytes on the topic are held against what was sent.
``--plot`` draws the datagrams per second each collector received over the run. ``--gwlb``: the
sources mirror to a Gateway Load Balancer endpoint instead, and the stand-in forwards GENEVE on
6081 from its own address with the same 5-tuple stickiness (bench/fleet_lb.py); the same totals
must hold, and every record names its source's GWLB endpoint.
Design and where the stand-in differs from an NLB: docs/fleet.md.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.fleet_harness import SAMPLE_S, Fleet
from bench.fleet_net import namespaces_supported
from bench.fleet_scenarios import SCENARIOS
from bench.traffic import PROFILES, Profile

TOTALS = ("sent", "counted", "explained_loss", "unexplained_loss", "split_flows")
BYTES = ("bytes_sent", "bytes_counted")


def run(
    names: list[str], profile: Profile = PROFILES["mixed"], *, gwlb: bool = False
) -> tuple[dict[str, Any], Fleet]:
    """Build a fleet, run the scenarios on it, tear it down; the report and the (closed) fleet."""
    began = time.monotonic()
    with Fleet(profile, gwlb=gwlb) as fleet:
        results = [SCENARIOS[name](fleet) for name in names]
    for result in results:
        result.pop("_on", None)
    report: dict[str, Any] = {
        "scenarios": results,
        "profile": profile.name,
        "target": "gwlb-endpoint (GENEVE)" if gwlb else "nlb (VXLAN)",
    }
    for key in (*TOTALS, *BYTES):
        report[key] = sum(int(r[key]) for r in results)
    report["packet_length"] = fleet.packet_length
    report["events"] = [[round(t, 3), what] for t, what in fleet.marks]
    report["seconds"] = round(time.monotonic() - began, 1)  # build, scenarios and teardown
    return report, fleet


def text(report: dict[str, Any]) -> str:
    lines = []
    for r in report["scenarios"]:
        lines.append(
            f"{r['scenario']:<10} sent {r['sent']:>6}  counted {r['counted']:>6}  "
            f"explained_loss {r['explained_loss']:>4}  unexplained_loss {r['unexplained_loss']:>3}"
            f"  split_flows {r['split_flows']}  flows {r['flows_exact']}/{r['flows']} exact"
            f" (bytes {r['flows_bytes_exact']}/{r['flows']})"
        )
        for name, c in r["collectors"].items():
            lines.append(
                f"    {name:<4} datagrams {c['datagrams']:>6} (LB forwarded {c['lb_forwarded']:>6})"
                f"  packets on topic {c['packets_on_topic']:>6}  flows {c['flows']:>3}"
            )
        extra = {k: r[k] for k in ("crash", "checks", "mix") if r[k]}
        if r["probes_sent"]:
            extra["filter"] = {"probes_sent": r["probes_sent"], "rejected": r["filter_rejected"]}
        if extra:
            lines.append(f"    {json.dumps(extra, sort_keys=True)}")
    lines.append("total      " + "  ".join(f"{k} {report[k]}" for k in TOTALS))
    lines.append(
        f"profile {report['profile']}: bytes_sent {report['bytes_sent']}  bytes_counted "
        f"{report['bytes_counted']}  PacketLength per session {report['packet_length']}"
    )
    lines.append(f"{report['seconds']} s with the fleet's build and teardown")
    return "\n".join(lines)


def plot(fleet: Fleet, path: Path) -> None:
    """Datagrams per second per collector over time, with the harness's events marked."""
    import matplotlib  # noqa: PLC0415 - only the plot needs it, with the Agg backend set first

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    start = min((t for t, _, _ in fleet.samples), default=0.0)
    series: dict[str, list[tuple[float, float]]] = {}
    history: dict[str, list[tuple[float, float]]] = {}
    for t, name, value in fleet.samples:
        seen = history.setdefault(name, [])
        # the rate over two samples: workers report every 0.5 s too, one sample would alias
        if len(seen) >= 2 and t > seen[-2][0]:
            rate = (value - seen[-2][1]) / (t - seen[-2][0])
            series.setdefault(name, []).append((t - start, rate))
        seen.append((t, value))
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for name, points in sorted(series.items(), key=lambda kv: int(kv[0][1:])):
        ax.plot([p[0] for p in points], [p[1] for p in points], label=name, linewidth=1.2)
    for t, what in fleet.marks:
        if what.endswith("begins") or "SIG" in what or "registered" in what:
            ax.axvline(t - start, color="grey", linewidth=0.6, linestyle=":")
            ax.annotate(what, (t - start, 1), rotation=90, fontsize=7, color="dimgrey",
                        xycoords=("data", "axes fraction"), va="top", ha="right")  # fmt: skip
    ax.set_xlabel("seconds")
    ax.set_ylabel(f"datagrams/s (over {2 * SAMPLE_S:g} s)")
    ax.set_title("Per-collector load behind the NLB stand-in")
    ax.legend(loc="upper left", fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS), default=None)
    parser.add_argument("--plot", type=Path, help="write the per-collector load plot (PNG)")
    parser.add_argument(
        "--profile", choices=list(PROFILES), default="mixed", help="traffic mix (bench/traffic.py)"
    )
    parser.add_argument(
        "--gwlb", action="store_true", help="mirror to a GWLB endpoint: GENEVE on 6081"
    )
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the fleet is torn down (a SIGKILLed run's namespaces are
    # removed by the next run: they are named after its pid)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    refused = namespaces_supported()
    if refused:
        print(f"bench.fleet: {refused}", file=sys.stderr)
        return 2
    report, fleet = run(args.scenario or list(SCENARIOS), PROFILES[args.profile], gwlb=args.gwlb)
    print(text(report))
    if args.plot:
        plot(fleet, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        print(json.dumps(report, sort_keys=True))
    return 0 if report["unexplained_loss"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
