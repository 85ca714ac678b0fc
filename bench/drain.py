"""Freeze, fill, drain: the rate a receiver sustains with the whole machine to itself.

    python -m bench.drain [--profiles mixed,new-flows] [--receivers recvmmsg,recvmmsg-2p,uvloop,
        collector,collector-pure,collector-2w,collector-geneve] [--geneve] [--repeat 3] [--count N]
        [--buffer-bytes 536870912] [--json]

On a 2-core machine the senders of the rate sweep (bench.ingest) need about a core, so 2 workers
can never show two cores of capacity while they run. Here the senders do not compete:

1. **freeze**: SIGSTOP every process of the receiver (a bare receiver's one process; the
   collector's supervisor and its workers, so the supervisor cannot judge a worker meanwhile);
2. **fill**: blast N datagrams flat out while it is frozen: the kernel queues them in the
   receiver's socket buffers (asked for with ``set_receive_buffer``, ``--buffer-bytes`` each, the
   same for every receiver). The fill must cost no kernel drop (``fill_kernel_drops`` 0): a run
   that overflowed the buffer is reported as invalid (shrink N or grow the buffer);
3. **drain**: SIGCONT, then read the receive queue of each of its sockets in /proc/net/udp every
   1.5 ms (``POLL_S``) until all are empty: ``drain_s``, independent of the collector's 0.5 s
   publication interval. The queue is empty once the receiver has read the last datagram (the
   collector then still processes that batch, at most 512 datagrams, well under 1 % of a drain).
   Finally the receiver's own count must equal what was sent.

Drain rate = N / drain_s: the receiver's zero-loss rate when the senders run elsewhere. Besides
the sweep's receivers, ``recvmmsg-2p`` (two recvmmsg counting loops in one SO_REUSEPORT group)
shows what two receiving processes that do nothing else take here: the machine's own ratio for
two processes, next to the collector's 2w/1w.

The processes are always resumed (SIGCONT in a ``finally``, and a watchdog process that resumes
them after ``FREEZE_LIMIT_S`` should this process die while they are stopped; SIGTERM exits
through the ``finally`` blocks). The freeze lasts about a second, well under the collector's
``max_loop_lag_s`` (5 s): the supervisor restarts only workers that exit, and marks unresponsive
only workers that are silent or lag longer than that; the worker pids and restart counts before
and after are compared (``pids_unchanged``).

With 2 workers the datagrams are spread by SO_REUSEPORT's hash of each sender socket's 4-tuple:
the fill uses ``FILL_SOCKETS_PER_SENDER`` sockets per sender process so the split comes out near
even. Each worker's share and its own rate (its datagrams over its socket's drain time) are
reported; the sum of the per-worker rates is what the workers take when the split is exactly even.

A measurement is taken again (a fresh receiver, up to ``ATTEMPTS`` times; the cleanest attempt is
kept, every attempt is in ``runs``) when it was not clean: not counted exactly, a split worse than
``MAX_SHARE`` of the queued bytes on one socket, or disturbed: the receiving processes waited for a
CPU (/proc/PID/task/*/schedstat) for more than ``MAX_WAIT_SHARE`` of their drain time, i.e. some
other process on a shared machine took their cores (a one-core load elsewhere halves 2 workers
and leaves one worker alone). The same rule holds for every receiver. The medians are of the clean
runs; when a receiver has none, of its valid runs, and the target says n/a (rerun).

``collector-pure`` is one worker of the pure-Python build (COLLECTOR_PURE_PYTHON=1): the compiled
build's one-worker drain rate is judged against ``SPEED_TARGETS`` and shown next to it, bare uvloop
and the recvmmsg floor of the same run.

``collector-geneve`` is one worker fed the same traffic as ``collector`` the way a Gateway Load
Balancer sends it (bench/fleet_gwlb.py: each datagram in GENEVE on its GENEVE listener); the target
"GENEVE costs at most 1.1x VXLAN per datagram" compares their drain rates of the same run
(``--geneve`` measures just these two on mixed). new-flows has no GENEVE form (its datagrams are
made in the sender processes): ``collector-geneve`` skips it.

Each repetition starts every receiver afresh (no flows left from an earlier fill), warms it up
with ``WARMUP`` datagrams of the profile at 100,000/s, and the receivers take turns (the order
rotates per repetition). The figure is the median of the (clean) repetitions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from bench.fleet_gwlb import wrap_all
from bench.harness import (
    RCVBUF,
    BarePair,
    CollectorReceiver,
    Receiver,
    Senders,
    backlog_drops,
    cpu_seconds,
    free_port,
    make_receiver,
    process_state,
    run_and_wait_seconds,
    settle,
    socket_inodes,
    udp_queues,
)
from bench.traffic import PROFILES, build

RECEIVERS = ("recvmmsg", "recvmmsg-2p", "uvloop", "collector", "collector-pure", "collector-2w")
# One worker of the compiled build, drained (issue #22): datagrams/s per profile
SPEED_TARGETS = {"mixed": 1_200_000, "new-flows": 1_000_000}
GENEVE_RECEIVER = "collector-geneve"  # one worker, the same traffic in GENEVE (not by default)
GENEVE_TARGET_RATIO = 1.1  # a GENEVE datagram costs at most this many VXLAN datagrams
BUFFER_BYTES = 512 << 20  # per socket; Linux doubles it (bookkeeping), SO_RCVBUFFORCE as root
COUNTS = {"mixed": 600_000, "new-flows": 400_000}  # ~730 MB and ~330 MB of queued skbs
DEFAULT_COUNT = 400_000
FILL_SOCKETS_PER_SENDER = 256  # 512 4-tuples: the split's spread is about 2 %
WARMUP = 50_000
POLL_S = 0.0015
FILL_QUIET_S = 0.02  # the queues stopped growing: the fill's last datagrams are in
FREEZE_LIMIT_S = 30.0
DRAIN_LIMIT_S = 120.0
MAX_SHARE = 0.55
MAX_WAIT_SHARE = 0.1  # waited for a CPU longer than this share of the drain: disturbed
DISTURBED_PAUSE_S = 3.0
ATTEMPTS = 3
TARGET_RATIO = 1.6


def geneve_receiver(rcvbuf: int) -> CollectorReceiver:
    """One collector worker whose GENEVE listener is on a port of its own; what is sent to
    ``port`` is what it receives as from a Gateway Load Balancer (its VXLAN socket stays idle)."""
    port = free_port(socket.SOCK_DGRAM)
    env = {"COLLECTOR_GENEVE_LISTEN": f"127.0.0.1:{port}"}
    if rcvbuf != RCVBUF:
        env["COLLECTOR_RECV_BUFFER_BYTES"] = str(rcvbuf)
    receiver = CollectorReceiver(1, env=env)
    receiver.name = GENEVE_RECEIVER
    receiver.port = port
    return receiver


def sent_profile(receiver: Receiver, profile: str, senders: Senders) -> str:
    """The profile's datagrams as ``receiver`` takes them: GENEVE-wrapped for collector-geneve
    (built once per run, the same datagrams as the VXLAN profile's)."""
    if receiver.name != GENEVE_RECEIVER:
        return profile
    name = f"{profile}+geneve"
    if name not in senders.data:
        senders.data[name] = wrap_all(senders.data.get(profile) or build(PROFILES[profile], 50_000))
    return name


@dataclass
class Drain:
    receiver: str
    profile: str
    count: int  # datagrams asked of the senders
    sent: int  # what sendmmsg accepted
    fill_s: float
    fill_rate_pps: float
    fill_kernel_drops: int  # must be 0: the buffers held the whole fill
    fill_backlog_drops: int  # dropped before any socket (softnet), machine-wide
    queued_bytes: list[int]  # per socket at the end of the fill (skb truesize)
    frozen_s: float  # SIGSTOP to SIGCONT
    drain_s: float | None  # SIGCONT to every socket empty; None if it never emptied
    drain_pps: float | None  # sent / drain_s
    socket_drain_s: list[float | None]  # per socket, in the order of queued_bytes
    received: int  # the receiver's own count, after the drain
    unexplained: int  # sent - received - fill kernel drops: should be 0
    cpu_s: float  # the receiving processes (the collector's workers), SIGCONT to empty
    cpu_us_per_packet: float | None
    cpu_wait_s: float  # meanwhile runnable but waiting for a CPU: taken by something else
    polls: int
    poller_cpu_s: float  # what reading /proc/net/udp cost this process meanwhile
    load_1m: float
    worker_shares: list[float] | None = None  # several sockets: each process's share
    worker_pps: list[float] | None = None  # each process's datagrams over its socket's drain
    pids_unchanged: bool | None = None  # collector: same worker pids and no restart after
    restarts: int | None = None
    health_after: str | None = None  # /healthz status after the drain
    attempts: int = 1

    @property
    def valid(self) -> bool:
        """Counted exactly, nothing dropped by the fill, no worker restarted."""
        return (
            self.drain_pps is not None
            and self.fill_kernel_drops == 0
            and self.received == self.sent
            and self.pids_unchanged is not False
        )

    @property
    def wait_share(self) -> float:
        """The receiving processes' wait for a CPU over their drain time: what others took."""
        processes = max(len(self.queued_bytes), 1)  # one receiving process per socket
        return self.cpu_wait_s / (processes * self.drain_s) if self.drain_s else 0.0

    @property
    def clean(self) -> bool:
        """Valid, split near even (several sockets), and the receiver had its cores."""
        even = len(self.queued_bytes) < 2 or self.split <= MAX_SHARE
        return self.valid and even and self.wait_share <= MAX_WAIT_SHARE

    @property
    def split(self) -> float:
        """The larger socket's share of the queued bytes (1.0 with one socket)."""
        total = sum(self.queued_bytes)
        return max(self.queued_bytes) / total if total else 1.0


@contextlib.contextmanager
def frozen(pids: list[int], limit_s: float = FREEZE_LIMIT_S) -> Iterator[None]:
    """SIGSTOP ``pids`` for the block, and SIGCONT them whatever happens in it.

    A watchdog process resumes them after ``limit_s`` too, in case this process is killed while
    they are stopped; it is killed as soon as they are resumed here.
    """
    watchdog = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, signal, sys, time\n"
            "time.sleep(float(sys.argv[1]))\n"
            "for pid in sys.argv[2:]:\n"
            "    try: os.kill(int(pid), signal.SIGCONT)\n"
            "    except OSError: pass\n",
            str(limit_s),
            *map(str, pids),
        ]
    )
    stopped: list[int] = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        deadline = time.monotonic() + 2.0
        while any(process_state(p) not in ("T", "") for p in pids):  # the stop is asynchronous
            if time.monotonic() > deadline:
                raise RuntimeError("receiver processes did not stop")
            time.sleep(0.001)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        watchdog.kill()
        watchdog.wait()


def quiet_queues(port: int) -> dict[int, tuple[int, int]]:
    """The port's queues once they stopped growing (the fill's datagrams all arrived)."""
    last = udp_queues(port)
    while True:
        time.sleep(FILL_QUIET_S)
        now = udp_queues(port)
        if now == last:
            return now
        last = now


def wait_empty(port: int, inodes: list[int], start: float) -> tuple[list[float | None], int]:
    """Poll until each socket's queue is empty: (seconds from ``start`` per socket, polls)."""
    empty_at: dict[int, float] = {}
    polls = 0
    while len(empty_at) < len(inodes):
        queues = udp_queues(port)
        now = time.perf_counter()
        polls += 1
        for inode in inodes:
            if inode not in empty_at and queues.get(inode, (0, 0))[0] == 0:
                empty_at[inode] = now - start
        if now - start > DRAIN_LIMIT_S:
            break
        time.sleep(POLL_S)
    return [empty_at.get(i) for i in inodes], polls


def shares_and_rates(result: Drain, taken: list[int], pids: list[int], inodes: list[int]) -> None:
    """Per receiving process (worker index order): its share of the datagrams, and its rate: its
    datagrams over the drain time of the socket it holds (the supervisor holds them all too)."""
    result.worker_shares = [round(t / max(sum(taken), 1), 3) for t in taken]
    owner: dict[int, int] = {}
    for index, pid in enumerate(pids):
        with contextlib.suppress(OSError):
            owner.update(dict.fromkeys(socket_inodes(pid), index))
    seconds: dict[int, float | None] = {
        owner[inode]: s
        for inode, s in zip(inodes, result.socket_drain_s, strict=True)
        if inode in owner
    }
    rates: list[float] = []
    for index, datagrams in enumerate(taken):
        drained_in = seconds.get(index)
        rates.append(round(datagrams / drained_in) if drained_in else 0.0)
    result.worker_pps = rates


def measure(receiver: Receiver, profile: str, count: int, senders: Senders) -> Drain:
    """One freeze, fill, drain of ``count`` datagrams of ``profile``."""
    port = receiver.port
    collector = receiver if isinstance(receiver, CollectorReceiver) else None
    workers0 = collector.workers() if collector else []
    group = receiver if isinstance(receiver, BarePair | CollectorReceiver) else None
    counts0 = group.per_worker() if group is not None and len(receiver.pids) > 1 else []
    before = receiver.count()
    queues0 = udp_queues(port)
    drops0, backlog0 = sum(d for _, d in queues0.values()), backlog_drops()
    load = os.getloadavg()[0]
    frozen_at = time.perf_counter()
    with frozen(receiver.freeze_pids):
        sending = sent_profile(receiver, profile, senders)
        fill = senders.send(port, sending, count, 0, sockets=FILL_SOCKETS_PER_SENDER)
        queues = quiet_queues(port)
        cpu0, poller0 = cpu_seconds(receiver.pids), time.thread_time()
        wait0 = run_and_wait_seconds(receiver.pids)[1]
        start = time.perf_counter()
    inodes = sorted(queues)
    socket_s, polls = wait_empty(port, inodes, start)
    cpu = cpu_seconds(receiver.pids) - cpu0
    wait = run_and_wait_seconds(receiver.pids)[1] - wait0
    poller = time.thread_time() - poller0
    fill_drops = sum(queues[i][1] for i in inodes) - drops0
    received = settle(receiver, before, fill.sent, drops0)
    drain_s = None if None in socket_s else max(s or 0.0 for s in socket_s)
    result = Drain(
        receiver=receiver.name,
        profile=profile,
        count=count,
        sent=fill.sent,
        fill_s=round(fill.seconds, 3),
        fill_rate_pps=round(fill.rate_pps),
        fill_kernel_drops=fill_drops,
        fill_backlog_drops=backlog_drops() - backlog0,
        queued_bytes=[queues[i][0] for i in inodes],
        frozen_s=round(start - frozen_at, 3),
        drain_s=round(drain_s, 4) if drain_s else None,
        drain_pps=round(fill.sent / drain_s) if drain_s else None,
        socket_drain_s=[None if s is None else round(s, 4) for s in socket_s],
        received=received,
        unexplained=fill.sent - received - fill_drops,
        cpu_s=round(cpu, 3),
        cpu_us_per_packet=round(1e6 * cpu / received, 3) if received else None,
        cpu_wait_s=round(wait, 3),
        polls=polls,
        poller_cpu_s=round(poller, 3),
        load_1m=round(load, 2),
    )
    if group is not None and counts0:
        taken = [b - a for a, b in zip(counts0, group.per_worker(), strict=True)]
        pids = [int(w["pid"]) for w in workers0] if collector else receiver.pids
        shares_and_rates(result, taken, pids, inodes)
    if collector is not None:
        after(collector, result, workers0)
    return result


def after(receiver: CollectorReceiver, result: Drain, workers0: list[dict[str, Any]]) -> None:
    """The collector's side: no worker replaced, no restart, what /healthz says."""
    health = receiver.collector.health()
    workers = receiver.workers()
    result.health_after = str(health.get("status"))
    result.restarts = sum(int(w.get("restarts", 0)) for w in workers) - sum(
        int(w.get("restarts", 0)) for w in workers0
    )
    pids0 = [w.get("pid") for w in workers0]
    result.pids_unchanged = pids0 == [w.get("pid") for w in workers] and not result.restarts


def receivers_for(names: list[str]) -> list[str]:
    """The drain receivers of an ingest run's receivers (the recvmmsg pair comes with recvmmsg,
    the pure-Python build with the collector)."""
    comes_with = {"recvmmsg-2p": "recvmmsg", "collector-pure": "collector"}
    return [n for n in RECEIVERS if n in names or comes_with.get(n) in names]


def warm(receiver: Receiver, profile: str, senders: Senders) -> None:
    """Flows, caches and page faults before the fill (the same for every receiver)."""
    sent = senders.send(
        receiver.port, sent_profile(receiver, profile, senders), WARMUP, 100_000
    ).sent
    settle(receiver, 0, sent, 0)


def drain_once(
    name: str, profile: str, count: int, senders: Senders, buffer_bytes: int = BUFFER_BYTES
) -> list[Drain]:
    """A fresh receiver, warmed up, frozen, filled, drained; again (a fresh receiver each time,
    up to ATTEMPTS) while that was not ``clean``: invalid, split worse than MAX_SHARE, or
    disturbed (the receiver waited for a CPU more than MAX_WAIT_SHARE of the drain). Every
    attempt."""
    tries: list[Drain] = []
    for attempt in range(1, ATTEMPTS + 1):
        receiver = (
            geneve_receiver(buffer_bytes)
            if name == GENEVE_RECEIVER
            else make_receiver(name, rcvbuf=buffer_bytes)
        )
        try:
            warm(receiver, profile, senders)
            result = measure(receiver, profile, count, senders)
        finally:
            receiver.close()
        result.attempts = attempt
        tries.append(result)
        print(line(result), file=sys.stderr, flush=True)
        if result.clean:
            break
        if result.valid and result.wait_share > MAX_WAIT_SHARE:
            time.sleep(DISTURBED_PAUSE_S)  # let a burst of other work pass
    return tries


def kept(tries: list[Drain]) -> Drain:
    """Of the attempts of one measurement, the clean one, else the least disturbed valid one."""
    return min(tries, key=lambda d: (not d.valid, not d.clean, d.wait_share + d.split))


def run(
    profiles: list[str],
    receivers: list[str],
    repeat: int,
    senders: Senders,
    count: int = 0,
    buffer_bytes: int = BUFFER_BYTES,
) -> dict[str, Any]:
    """Every receiver, every profile, ``repeat`` times (the order rotating); medians."""
    runs: list[Drain] = []
    chosen: list[Drain] = []
    for rep in range(repeat):
        for profile in profiles:
            n = count or COUNTS.get(profile, DEFAULT_COUNT)
            order = receivers[rep % len(receivers) :] + receivers[: rep % len(receivers)]
            for name in order:
                if name == GENEVE_RECEIVER and profile == "new-flows":
                    continue  # its datagrams are made in the senders: no GENEVE form
                tries = drain_once(name, profile, n, senders, buffer_bytes)
                runs += tries
                chosen.append(kept(tries))
    summary = summarize(chosen, profiles, receivers)
    return {
        "profiles": profiles,
        "receivers": receivers,
        "repeat": repeat,
        "counts": {p: count or COUNTS.get(p, DEFAULT_COUNT) for p in profiles},
        "buffer_bytes": buffer_bytes,
        "fill_sockets_per_sender": FILL_SOCKETS_PER_SENDER,
        "poll_s": POLL_S,
        "max_share": MAX_SHARE,
        "max_wait_share": MAX_WAIT_SHARE,
        "runs": [
            {
                **asdict(d),
                "valid": d.valid,
                "split": round(d.split, 3),
                "wait_share": round(d.wait_share, 3),
                "kept": any(d is c for c in chosen),
            }
            for d in runs
        ],
        "summary": summary,
        "targets": targets(summary, profiles)
        + speed_targets(summary, profiles)
        + geneve_targets(summary, profiles),
    }


def summarize(
    drains: list[Drain], profiles: list[str], receivers: list[str]
) -> dict[str, dict[str, Any]]:
    """Per ``receiver/profile`` (one kept run per repetition): the median drain rate and CPU per
    packet of the clean runs, or of the valid ones when none was clean (``disturbed_only``)."""
    out: dict[str, dict[str, Any]] = {}
    for profile in profiles:
        for name in receivers:
            mine = [d for d in drains if d.receiver == name and d.profile == profile]
            good = [d for d in mine if d.valid]
            clean = [d for d in good if d.clean]
            if not mine:
                continue
            entry: dict[str, Any] = {
                "runs": len(mine),
                "valid": len(good),
                "clean": len(clean),
                "disturbed_only": bool(good) and not clean,
            }
            pool = clean or good
            if pool:
                rates = [d.drain_pps or 0.0 for d in pool]
                median = statistics.median(rates)
                balanced = [sum(d.worker_pps) for d in pool if d.worker_pps]
                middle = min(pool, key=lambda d: abs((d.drain_pps or 0.0) - median))
                entry.update(
                    drain_pps=round(median),
                    drain_pps_all=rates,
                    cpu_us_per_packet=statistics.median(
                        [d.cpu_us_per_packet for d in pool if d.cpu_us_per_packet is not None]
                        or [0.0]
                    ),
                    worker_shares=middle.worker_shares,
                    balanced_pps=round(statistics.median(balanced)) if balanced else None,
                    wait_share=round(max(d.wait_share for d in pool), 3),
                )
            entry["fill_kernel_drops"] = sum(d.fill_kernel_drops for d in mine)
            entry["unexplained"] = sum(d.unexplained for d in mine)
            if any(d.pids_unchanged is not None for d in mine):
                entry["pids_unchanged"] = all(d.pids_unchanged for d in mine)
                entry["restarts"] = sum(d.restarts or 0 for d in mine)
            out[f"{name}/{profile}"] = entry
    return out


def targets(summary: dict[str, dict[str, Any]], profiles: list[str]) -> list[dict[str, Any]]:
    """2 workers' drain rate over one worker's, per profile, with pass/fail (n/a when no run
    was valid, or every run of one of them was disturbed by other work on the machine)."""
    out: list[dict[str, Any]] = []
    for profile in profiles:
        one, two = summary.get(f"collector/{profile}"), summary.get(f"collector-2w/{profile}")
        if one is None or two is None:
            continue
        name = f"{profile}: 2 workers >= {TARGET_RATIO}x one worker's zero-loss rate"
        if not one.get("drain_pps") or not two.get("drain_pps"):
            out.append(
                {
                    "target": name,
                    "value": "no valid freeze-fill-drain run (see drain.runs)",
                    "pass": None,
                }
            )
            continue
        ratio = two["drain_pps"] / one["drain_pps"]
        floor = summary.get(f"recvmmsg/{profile}", {}).get("drain_pps")
        pair = summary.get(f"recvmmsg-2p/{profile}", {}).get("drain_pps")
        machine = f"; 2 recvmmsg loops {pair / floor:.2f}x one" if floor and pair else ""
        shares = "/".join(f"{s:.2f}" for s in two.get("worker_shares") or [])
        pids = "worker pids unchanged" if two.get("pids_unchanged") else "a worker was replaced"
        disturbed = one.get("disturbed_only") or two.get("disturbed_only")
        out.append(
            {
                "target": name,
                "value": f"{ratio:.2f}x ({two['drain_pps']:,.0f} vs {one['drain_pps']:,.0f}/s "
                f"drained with the senders stopped, median of {len(two['drain_pps_all'])}; "
                f"worker shares {shares}; {pids}{machine})"
                + (
                    "; every run disturbed: other processes took the cores, rerun"
                    if disturbed
                    else ""
                ),
                "pass": None if disturbed else ratio >= TARGET_RATIO,
            }
        )
    return out


def speed_targets(summary: dict[str, dict[str, Any]], profiles: list[str]) -> list[dict[str, Any]]:
    """One worker's drain rate against SPEED_TARGETS, next to the pure-Python build, bare uvloop
    and the recvmmsg floor of the same run (n/a when its runs were all disturbed or invalid)."""
    out: list[dict[str, Any]] = []
    for profile in profiles:
        one = summary.get(f"collector/{profile}")
        target = SPEED_TARGETS.get(profile)
        if one is None or target is None:
            continue
        name = f"{profile}: one worker drains >= {target:,} datagrams/s"
        if not one.get("drain_pps"):
            out.append({"target": name, "value": "no valid run (see drain.runs)", "pass": None})
            continue
        rate = one["drain_pps"]
        context = []
        for other, label in (
            ("collector-pure", "pure-Python build"),
            ("uvloop", "bare uvloop"),
            ("recvmmsg", "recvmmsg loop"),
        ):
            theirs = summary.get(f"{other}/{profile}", {}).get("drain_pps")
            if theirs:
                context.append(f"{label} {theirs:,.0f}/s ({rate / theirs:.2f}x)")
        disturbed = one.get("disturbed_only")
        out.append(
            {
                "target": name,
                "value": f"{rate:,.0f}/s; "
                + "; ".join(context)
                + ("; every run disturbed: rerun" if disturbed else ""),
                "pass": None if disturbed else rate >= target,
            }
        )
    return out


def geneve_targets(summary: dict[str, dict[str, Any]], profiles: list[str]) -> list[dict[str, Any]]:
    """Per profile measured both ways: a GENEVE datagram's cost over a VXLAN datagram's, as
    the ratio of one worker's drain rates (and of its CPU per packet), in the same run."""
    out: list[dict[str, Any]] = []
    for profile in profiles:
        vxlan, geneve = (
            summary.get(f"collector/{profile}"),
            summary.get(f"{GENEVE_RECEIVER}/{profile}"),
        )
        if vxlan is None or geneve is None:
            continue
        name = f"{profile}: GENEVE costs at most {GENEVE_TARGET_RATIO}x VXLAN per datagram"
        if not vxlan.get("drain_pps") or not geneve.get("drain_pps"):
            out.append({"target": name, "value": "no valid run (see drain.runs)", "pass": None})
            continue
        ratio = vxlan["drain_pps"] / geneve["drain_pps"]
        cpu_ratio = (geneve.get("cpu_us_per_packet") or 0.0) / (
            vxlan.get("cpu_us_per_packet") or float("inf")
        )
        disturbed = vxlan.get("disturbed_only") or geneve.get("disturbed_only")
        out.append(
            {
                "target": name,
                "value": f"{ratio:.3f}x per datagram ({geneve['drain_pps']:,.0f} vs "
                f"{vxlan['drain_pps']:,.0f}/s drained by one worker; CPU per packet "
                f"{cpu_ratio:.3f}x)" + ("; every run disturbed, rerun" if disturbed else ""),
                "ratio": round(ratio, 3),
                "cpu_ratio": round(cpu_ratio, 3),
                "pass": None if disturbed else ratio <= GENEVE_TARGET_RATIO,
            }
        )
    return out


def line(d: Drain) -> str:
    rate = f"{d.drain_pps:>10,.0f}/s" if d.drain_pps else "   not empty"
    extra = ""
    if d.worker_shares:
        extra += "  shares " + "/".join(f"{s:.2f}" for s in d.worker_shares)
        extra += "  worker rates " + "/".join(f"{r:,.0f}" for r in d.worker_pps or [])
    if d.pids_unchanged is not None:
        extra += f"  pids unchanged {d.pids_unchanged}, health {d.health_after}"
    return (
        f"drain {d.profile:>9} {d.receiver:>12}  sent {d.sent:>8,} (fill {d.fill_rate_pps:,.0f}/s, "
        f"kernel drops {d.fill_kernel_drops})  drained in {d.drain_s or 0:.3f} s = {rate}  "
        f"received {d.received:>8,}  cpu {d.cpu_us_per_packet or 0:.2f} us/packet  "
        f"waited for a CPU {d.cpu_wait_s:.3f} s  frozen {d.frozen_s:.2f} s  polls {d.polls} "
        f"({d.poller_cpu_s:.3f} s CPU)  load {d.load_1m:.1f}"
        + extra
        + (f"  (attempt {d.attempts})" if d.attempts > 1 else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", default="mixed,new-flows")
    parser.add_argument("--receivers", default=",".join(RECEIVERS))
    parser.add_argument(
        "--geneve",
        action="store_true",
        help=f"only collector and {GENEVE_RECEIVER} on mixed: the GENEVE/VXLAN cost ratio",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--count", type=int, default=0, help="datagrams per fill (0: per profile)")
    parser.add_argument("--buffer-bytes", type=int, default=BUFFER_BYTES)
    parser.add_argument("--procs", type=int, default=2, help="sender processes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # finally blocks resume and close
    profiles = [p for p in args.profiles.split(",") if p]
    receivers = [r for r in args.receivers.split(",") if r]
    if args.geneve:
        profiles, receivers = ["mixed"], ["collector", GENEVE_RECEIVER]
    report = run(
        profiles,
        receivers,
        args.repeat,
        Senders(args.procs),
        args.count,
        args.buffer_bytes,
    )
    if args.json:
        print(json.dumps(report))
        return
    for key, entry in report["summary"].items():
        print(f"{key}: {entry.get('drain_pps', 0):,.0f}/s drained, {entry}")
    for t in report["targets"]:
        verdict = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        print(f"{verdict}  {t['target']}: {t['value']}")


if __name__ == "__main__":
    main()
