"""Packet blaster: mirrored traffic as VXLAN datagrams over UDP, flat out or at a target rate.

    python -m bench.blast --target 127.0.0.1:4789 --count 1000000 [--rate 200000] [--procs 2]
        [--profile mixed|small|large|many-flows] [--json]

Exact counts: every process reports how many datagrams its sendto() calls accepted (a datagram the
local kernel refused, e.g. ENOBUFS, is counted as not sent and retried).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import time
from dataclasses import asdict, dataclass

from bench.traffic import PROFILES, build

BURST = 64  # datagrams between clock checks when pacing


@dataclass
class BlastResult:
    sent: int
    seconds: float
    rate_pps: float
    bytes: int
    procs: int
    profile: str


def _send(
    datagrams: list[bytes],
    target: tuple[str, int],
    count: int,
    rate: float,
    out: multiprocessing.Queue,
) -> None:  # type: ignore[type-arg]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sendto = sock.sendto
    n = len(datagrams)
    sent = 0
    nbytes = 0
    start = time.perf_counter()
    i = 0
    while sent < count:
        burst = min(BURST, count - sent)
        for _ in range(burst):
            d = datagrams[i]
            try:
                sendto(d, target)
            except OSError:  # ENOBUFS and the like: not sent, try the same datagram again
                continue
            i = i + 1 if i + 1 < n else 0
            sent += 1
            nbytes += len(d)
        if rate:
            ahead = sent / rate - (time.perf_counter() - start)
            if ahead > 0:
                time.sleep(ahead)
    out.put((sent, nbytes, time.perf_counter() - start))


def blast(
    target: tuple[str, int],
    count: int,
    *,
    rate: float = 0.0,
    procs: int = 1,
    profile: str = "mixed",
    datagrams: list[bytes] | None = None,
) -> BlastResult:
    """Send ``count`` datagrams split over ``procs`` processes; ``rate`` 0 means flat out."""
    data = datagrams if datagrams is not None else build(PROFILES[profile], min(count, 50_000))
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    shares = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
    workers = [
        ctx.Process(target=_send, args=(data[i::procs] or data, target, share, rate / procs, out))
        for i, share in enumerate(shares)
    ]
    for w in workers:
        w.start()
    results = [out.get() for _ in workers]
    for w in workers:
        w.join()
    sent = sum(r[0] for r in results)
    seconds = max(r[2] for r in results)
    return BlastResult(
        sent=sent,
        seconds=seconds,
        rate_pps=sent / seconds if seconds else 0.0,
        bytes=sum(r[1] for r in results),
        procs=procs,
        profile=profile,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="127.0.0.1:4789")
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument(
        "--rate", type=float, default=0.0, help="datagrams/s in total; 0 = flat out"
    )
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="mixed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    result = blast(
        (host, int(port)), args.count, rate=args.rate, procs=args.procs, profile=args.profile
    )
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(
            f"sent {result.sent} datagrams ({result.bytes} bytes) in {result.seconds:.2f} s "
            f"= {result.rate_pps:,.0f}/s with {result.procs} process(es), profile {result.profile}"
        )


if __name__ == "__main__":
    main()
