"""Scaling: datagrams received per second with 1 worker against N workers (N = CPU count).

    python -m bench.scaling [--count 600000] [--procs 2] [--workers 1,N] [--json]

The collector runs with a /dev/null file sink; the same datagrams (the ``mixed`` profile) are sent
flat out by ``--procs`` sender processes. Each process sends from several sockets in turn, so that
SO_REUSEPORT, which picks a worker from the sender's address and port, spreads the load over the
workers as many mirror sources do; the share each worker received is reported. Received/s is the
received count divided by the time between the first and the last change of the collector's
counter (polled every 0.1 s; workers publish their counts every 0.5 s). On a machine whose
cores are shared by the senders and the workers, the figures are a lower bound of what the
collector does with cores of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import socket
import threading
import time
from typing import Any

from bench.harness import LOOPBACK, Collector
from bench.traffic import PROFILES, build

BURST = 64
SOCKETS_PER_PROCESS = 8
POLL_S = 0.1
SENDER_BOUND_LOSS_PCT = 0.1


def _send(
    datagrams: list[bytes],
    target: tuple[str, int],
    count: int,
    sockets: int,
    out: multiprocessing.Queue,  # type: ignore[type-arg]
) -> None:
    socks = []
    for _ in range(sockets):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.bind((LOOPBACK, 0))
        socks.append(sock)
    n = len(datagrams)
    sent = i = turn = 0
    start = time.perf_counter()
    while sent < count:
        sendto = socks[turn].sendto
        turn = turn + 1 if turn + 1 < sockets else 0
        for _ in range(min(BURST, count - sent)):
            try:
                sendto(datagrams[i], target)
            except OSError:  # ENOBUFS and the like: not sent, try again
                continue
            i = i + 1 if i + 1 < n else 0
            sent += 1
    out.put((sent, time.perf_counter() - start))
    for sock in socks:
        sock.close()


def send(target: tuple[str, int], datagrams: list[bytes], count: int, procs: int) -> dict[str, Any]:
    """Send exactly ``count`` datagrams from ``procs`` processes, flat out."""
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    shares = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
    workers = [
        ctx.Process(
            target=_send,
            args=(datagrams[i::procs] or datagrams, target, share, SOCKETS_PER_PROCESS, out),
        )
        for i, share in enumerate(shares)
    ]
    for w in workers:
        w.start()
    results = [out.get(timeout=300) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    sent = sum(r[0] for r in results)
    seconds = max(r[1] for r in results)
    return {"sent": sent, "seconds": seconds, "rate_pps": sent / seconds if seconds else 0.0}


class Poller(threading.Thread):
    """Samples the collector's received counter as (monotonic time, count) until stopped."""

    def __init__(self, collector: Collector) -> None:
        super().__init__(daemon=True)
        self.collector = collector
        self.samples: list[tuple[float, int]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(OSError):  # a slow answer: the next poll will do
                self.samples.append((time.monotonic(), self.collector.received()))
            self.stopping.wait(POLL_S)


def receive_rate(samples: list[tuple[float, int]], before: int, final: int) -> float:
    """Datagrams/s between the first sample past ``before`` and the first one at ``final``."""
    moving = [(t, c) for t, c in samples if c > before]
    if not moving:
        return 0.0
    t_first, c_first = moving[0]
    # the first sample already holds up to one publication interval of traffic
    t_last = next(t for t, c in moving if c >= final)
    if t_last <= t_first:
        return 0.0
    return (final - c_first) / (t_last - t_first)


def measure(workers: int, datagrams: list[bytes], count: int, procs: int) -> dict[str, Any]:
    with Collector(workers) as collector:
        target = (LOOPBACK, collector.port)
        send(target, datagrams, min(count, 100_000), procs)  # warm-up: flows, caches
        before = collector.settle(min(count, 100_000))
        shares_before = worker_counts(collector)
        poller = Poller(collector)
        poller.start()
        result = send(target, datagrams, count, procs)
        final = collector.settle(before + result["sent"])
        time.sleep(2 * POLL_S)
        poller.stopping.set()
        poller.join()
        shares = [a - b for a, b in zip(worker_counts(collector), shares_before, strict=True)]
    received = final - before
    loss_pct = 100.0 * (result["sent"] - received) / result["sent"]
    return {
        "workers": workers,
        "sent": result["sent"],
        "send_rate_pps": round(result["rate_pps"]),
        "received": received,
        "loss_pct": round(loss_pct, 3),
        "received_pps": round(receive_rate(poller.samples, before, final)),
        # nothing lost: the senders, not the workers, set the rate
        "sender_bound": loss_pct < SENDER_BOUND_LOSS_PCT,
        "worker_shares": [round(s / max(received, 1), 3) for s in shares],
    }


def worker_counts(collector: Collector) -> list[int]:
    workers = collector.health().get("workers", [])
    assert isinstance(workers, list)
    return [int(w["datagrams"]) for w in sorted(workers, key=lambda w: int(w["index"]))]


def run(count: int, procs: int, workers: list[int]) -> dict[str, Any]:
    datagrams = build(PROFILES["mixed"], 50_000)
    runs = [measure(w, datagrams, count, procs) for w in workers]
    base = runs[0]["received_pps"] or 1
    for r in runs:
        r["speedup_vs_first"] = round(r["received_pps"] / base, 2)
    cores = os.cpu_count() or 1
    return {
        "profile": "mixed",
        "count": count,
        "sender_processes": procs,
        "sockets_per_sender": SOCKETS_PER_PROCESS,
        "cores": cores,
        "runs": runs,
        "note": (
            f"this machine has {cores} cores shared by {procs} sender processes and the "
            "collector's workers, so these figures are a lower bound of the collector's "
            "throughput with cores of its own; a run without loss was limited by the senders"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=600_000)
    parser.add_argument("--procs", type=int, default=2, help="sender processes")
    parser.add_argument(
        "--workers", default=f"1,{os.cpu_count() or 1}", help="comma-separated worker counts"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = run(args.count, args.procs, [int(w) for w in args.workers.split(",")])
    if args.json:
        print(json.dumps(report))
        return
    for r in report["runs"]:
        print(
            f"{r['workers']} worker(s): sent {r['sent']:,} at {r['send_rate_pps']:,}/s, "
            f"received {r['received_pps']:,}/s ({r['speedup_vs_first']:.2f}x), "
            f"loss {r['loss_pct']:.2f}%, shares {r['worker_shares']}"
            + (" (sender-bound)" if r["sender_bound"] else "")
        )
    print(f"note: {report['note']}")


if __name__ == "__main__":
    main()
