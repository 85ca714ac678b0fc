"""Live ingest with one worker: CPU per packet against a bare uvloop receiver, and loss per rate.

    python -m bench.ingest [--count 400000] [--rates 0,50000,100000,...] [--json]

For each receiver (the bare uvloop counter, then the collector with one worker and each receive
path) the same blaster sends the same datagrams; CPU time is read from /proc for the receiving
process only, before and after each flood, and divided by the datagrams it received. Loss is sent
minus received. Rate 0 means the sender's flat-out rate.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.blast import blast
from bench.traffic import PROFILES, build

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Run:
    receiver: str
    offered_pps: float  # 0 = flat out
    sent: int
    received: int
    loss: int
    loss_pct: float
    send_rate_pps: float
    cpu_s: float
    cpu_us_per_packet: float


class Bare:
    name = "bare-uvloop"

    def __init__(self) -> None:
        self.port = free_port(socket.SOCK_DGRAM)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bare_receiver", str(self.port), str(32 << 20)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        self.pid = self.proc.pid

    def count(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=10)


class Collector:
    def __init__(self, mode: str) -> None:
        self.name = f"collector-{mode}"
        self.port = free_port(socket.SOCK_DGRAM)
        self.http = free_port(socket.SOCK_STREAM)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "collector",
                "run",
                "--workers",
                "1",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--health",
                f"127.0.0.1:{self.http}",
                "--sink",
                f"file:{os.devnull}",
                "--log-level",
                "error",
            ],
            env={**os.environ, "COLLECTOR_RECV_MODE": mode},
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.http}/healthz", timeout=2
                ) as r:
                    body = json.loads(r.read())
                    self.pid = int(body["workers"][0]["pid"])
                    break
            except (OSError, KeyError, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def count(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("collector_datagrams_received_total "):
                    return int(float(line.split()[1]))
        return 0

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def settle(receiver: Any, expected: int) -> int:
    """Wait until the receiver has counted everything, or its count stops moving."""
    last, still = -1, 0
    while True:
        count = receiver.count()
        if count >= expected:
            return int(count)
        still = still + 1 if count == last else 0
        if still >= 4:
            return int(count)
        last = count
        time.sleep(0.5)


def measure(receiver: Any, datagrams: list[bytes], count: int, rate: float) -> Run:
    before_count = settle(receiver, 0)
    before_cpu = cpu_seconds(receiver.pid)
    result = blast(("127.0.0.1", receiver.port), count, rate=rate, datagrams=datagrams)
    received = settle(receiver, before_count + result.sent) - before_count
    cpu = cpu_seconds(receiver.pid) - before_cpu
    loss = result.sent - received
    return Run(
        receiver=receiver.name,
        offered_pps=rate,
        sent=result.sent,
        received=received,
        loss=loss,
        loss_pct=100.0 * loss / result.sent,
        send_rate_pps=result.rate_pps,
        cpu_s=cpu,
        cpu_us_per_packet=1e6 * cpu / max(received, 1),
    )


def run(count: int, rates: list[float], profile: str) -> dict[str, Any]:
    datagrams = build(PROFILES[profile], 50_000)
    runs: list[Run] = []
    receivers = (Bare, *(lambda m=m: Collector(m) for m in ("mmsg", "reader", "protocol")))
    for factory in receivers:
        receiver = factory()
        try:
            measure(receiver, datagrams, min(count, 50_000), 0)  # warm-up: flows, caches
            runs.extend(measure(receiver, datagrams, count, rate) for rate in rates)
        finally:
            receiver.close()
    flat = {r.receiver: r for r in runs if r.offered_pps == 0}
    base = flat["bare-uvloop"].cpu_us_per_packet
    summary = {
        name: {
            "cpu_us_per_packet": round(r.cpu_us_per_packet, 3),
            "ratio_vs_bare": round(r.cpu_us_per_packet / base, 3),
            "loss_pct_flat_out": round(r.loss_pct, 4),
            "sender_pps": round(r.send_rate_pps),
        }
        for name, r in flat.items()
    }
    loss_starts = {}
    for name in flat:
        lossy = sorted(
            r.offered_pps for r in runs if r.receiver == name and r.loss > 0 and r.offered_pps
        )
        loss_starts[name] = lossy[0] if lossy else None
    return {
        "profile": profile,
        "count": count,
        "runs": [asdict(r) for r in runs],
        "summary": summary,
        "loss_starts_at_pps": loss_starts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=400_000)
    parser.add_argument("--rates", default="0", help="comma-separated offered rates, 0 = flat out")
    parser.add_argument("--profile", default="mixed", choices=sorted(PROFILES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = run(args.count, [float(r) for r in args.rates.split(",")], args.profile)
    if args.json:
        print(json.dumps(report))
        return
    for r in report["runs"]:
        offered = "flat out" if not r["offered_pps"] else f"{r['offered_pps']:,.0f}/s"
        print(
            f"{r['receiver']:>20}  offered {offered:>12}  sent {r['sent']:>8} at "
            f"{r['send_rate_pps']:>9,.0f}/s  loss {r['loss_pct']:6.3f}%  "
            f"cpu {r['cpu_us_per_packet']:6.3f} us/packet"
        )
    for name, s in report["summary"].items():
        print(
            f"{name:>20}: {s['cpu_us_per_packet']:.3f} us/packet = "
            f"{s['ratio_vs_bare']:.2f}x the bare receiver"
        )


if __name__ == "__main__":
    main()
