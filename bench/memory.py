"""Memory and stalls of the flow table under a flood of new flows, and RSS over a long churning run.

    python -m bench.memory [--flows 400000,1000000] [--churn-packets 8000000] [--json]

Every figure comes from a fresh child process, so resident memory (RSS, from /proc/self/statm: the
allocator's arenas included, not only what tracemalloc sees) belongs to that measurement alone.

- ``table``: a Pipeline (no sessions: every VNI accepted, unfiltered; timeouts of an hour) fed N
  distinct IPv4 TCP flows, one datagram each, then the same N datagrams again. Reported: RSS bytes
  per active flow; ns per packet for new flows and for known flows (and their ratio: the new-flow
  path should hold the known-flow rate); the longest 1000-packet batch against the median one (a
  garbage collection or a dict resize that stalls the loop shows up there); the cyclic GC's
  collections and longest pause while feeding; what one expiry scan of the full table and the
  record building of every flow cost; and a flood of N new flows into a table of N/4 (every new
  flow evicts).
- ``legacy``: the same flood into the flow-table layout this collector used before (a 7-tuple key
  and a 7-slot list entry per flow, both tracked by the garbage collector), written out below as
  the baseline of the same run: RSS per flow, GC pauses, longest batch.
- ``dict``: a dict of N int keys -> None: the hash table alone, the floor of any dict-based table.
- ``churn``: a long run with the worker's expiry cadence on a simulated clock: every datagram a
  new flow, flows idle out after the inactive timeout, records built and dropped; the table holds
  ~``--churn-live`` flows throughout. RSS is sampled twenty times; a table that leaks (or a GC that
  collects less and lets garbage pile up) would grow from sample to sample; the allocator's
  fragmentation settles after a few generations of the table, so the second half is the figure.

Datagrams come from one template patched in place with struct (source address and port), so
building them costs nothing per flow; each flow gets its own timestamp.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import struct
import subprocess
import sys
import time
from typing import Any

VNI = 4242
# VXLAN (RFC 7348: I flag, VNI) + Ethernet + IPv4 (20 bytes, total length 40) + TCP (ACK)
_TEMPLATE = (
    struct.pack("!B3xI", 0x08, VNI << 8)
    + bytes.fromhex("0200000000020200000000010800")
    + struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, bytes(4), bytes([172, 16, 0, 1]))
    + struct.pack("!HHIIBBHHH", 0, 443, 0, 0, 0x50, 0x10, 65535, 0, 0)
)
_SRC_OFFSET = 8 + 14 + 12
_SPORT_OFFSET = 8 + 14 + 20
_ADDR = struct.Struct("!I")
_PORT = struct.Struct("!H")
PORTS_PER_SOURCE = 64
BATCH = 1000  # packets per timed batch
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * _PAGE


class GcPauses:
    """Collections and their durations, through gc.callbacks."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._start))

    def stop(self) -> dict[str, Any]:
        gc.callbacks.remove(self._callback)
        full = [s for g, s in self.pauses if g == 2]
        return {
            "collections": len(self.pauses),
            "full_collections": len(full),
            "longest_pause_ms": round(max((s for _, s in self.pauses), default=0.0) * 1000, 2),
            "total_pause_ms": round(sum(s for _, s in self.pauses) * 1000, 1),
        }


def _flood(feed: Any, count: int, now: float) -> tuple[float, list[float]]:
    """Feed ``count`` distinct flows; (seconds, seconds of each BATCH-packet batch)."""
    buf = bytearray(_TEMPLATE)
    n = len(buf)
    pack_addr = _ADDR.pack_into
    pack_port = _PORT.pack_into
    batches = []
    start = time.perf_counter()
    for first in range(0, count, BATCH):
        t0 = time.perf_counter()
        for i in range(first, min(count, first + BATCH)):
            pack_addr(buf, _SRC_OFFSET, 0x0A000000 + i // PORTS_PER_SOURCE)  # 10.0.0.0/8
            pack_port(buf, _SPORT_OFFSET, 1024 + i % PORTS_PER_SOURCE)
            feed(buf, n, now + i * 1e-6, None)
        batches.append(time.perf_counter() - t0)
    return time.perf_counter() - start, batches


def _batch_figures(batches: list[float]) -> dict[str, float]:
    median = statistics.median(batches)
    return {
        "median_batch_ms": round(median * 1000, 3),
        "longest_batch_ms": round(max(batches) * 1000, 2),
        "longest_vs_median": round(max(batches) / median, 1),
    }


def child_table(count: int) -> dict[str, Any]:
    from collector.config import Config, FlowsConfig  # noqa: PLC0415 - after the RSS baseline
    from collector.pipeline import Pipeline  # noqa: PLC0415
    from collector.sessions import SessionMap  # noqa: PLC0415

    config = Config(
        flows=FlowsConfig(max_flows=count + 1, inactive_timeout_s=3600, active_timeout_s=3600)
    )
    pipeline = Pipeline(config, SessionMap([], accept_unknown=True), exporter="bench")
    now = time.time()
    gc.collect()
    base = rss_bytes()
    pauses = GcPauses()
    new_s, new_batches = _flood(pipeline.account, count, now)
    gc_new = pauses.stop()
    used = rss_bytes() - base
    if len(pipeline.table) != count:
        raise RuntimeError(f"expected {count} flows, the table holds {len(pipeline.table)}")
    known_s, known_batches = _flood(pipeline.account, count, now + 1)
    start = time.perf_counter()
    pipeline.table.expire(now + 1)  # nothing is due: the cost of the scan alone
    scan_s = time.perf_counter() - start
    start = time.perf_counter()
    records = pipeline.flush()
    flush_s = time.perf_counter() - start
    if sum(r.packets for r in records) != 2 * count:
        raise RuntimeError("packets lost")
    # a flood into a full table: every new flow evicts (in batches) the oldest
    full = Pipeline(
        Config(flows=FlowsConfig(max_flows=count // 4, inactive_timeout_s=3600)),
        SessionMap([], accept_unknown=True),
        exporter="bench",
    )
    full_s, full_batches = _flood(full.account, count, now)
    if len(full.table) > count // 4:
        raise RuntimeError("the table outgrew max_flows")
    return {
        "flows": count,
        "rss_bytes_per_flow": round(used / count, 1),
        "full_table_ns_per_packet": round(full_s / count * 1e9, 1),
        "full_table": _batch_figures(full_batches),
        "new_flow_ns_per_packet": round(new_s / count * 1e9, 1),
        "known_flow_ns_per_packet": round(known_s / count * 1e9, 1),
        "new_vs_known": round(new_s / known_s, 2),
        "new_flows": _batch_figures(new_batches),
        "known_flows": _batch_figures(known_batches),
        "gc_while_flooding": gc_new,
        "expiry_scan_ms": round(scan_s * 1000, 1),
        "records_of_every_flow_ms": round(flush_s * 1000, 1),
    }


def child_legacy(count: int) -> dict[str, Any]:
    """The layout before: a tuple key and a list entry per flow, on the same decode fast path,
    and eviction of the single oldest flow when the table is full."""
    fast_v4 = struct.Struct("!B3xI12xHBxH2xHxB2x4s4sHH9xB")
    flows: dict[tuple[int, bytes, bytes, int, int, int, int], list[Any]] = {}
    session = object()
    max_flows = count + 1

    def feed(buf: bytearray, n: int, now: float, outer_src: None) -> None:
        _, word, _, _, ip_len, _, proto, src, dst, sport, dport, tflags = fast_v4.unpack_from(buf)
        key = (word >> 8, src, dst, proto, sport, dport, -1)
        entry = flows.get(key)
        if entry is not None:
            entry[0] += 1
            entry[1] += ip_len
            if now > entry[4]:
                entry[4] = now
            entry[2] |= tflags
            return
        if len(flows) >= max_flows:
            del flows[next(iter(flows))]
        flows[key] = [1, ip_len, tflags, now, now, session, "unknown"]

    now = time.time()
    gc.collect()
    base = rss_bytes()
    pauses = GcPauses()
    _, batches = _flood(feed, count, now)
    gc_new = pauses.stop()
    used = rss_bytes() - base
    if len(flows) != count:
        raise RuntimeError("legacy table size")
    flows.clear()
    max_flows = count // 4
    full_s, full_batches = _flood(feed, count, now)
    return {
        "flows": count,
        "rss_bytes_per_flow": round(used / count, 1),
        "new_flows": _batch_figures(batches),
        "gc_while_flooding": gc_new,
        "full_table_ns_per_packet": round(full_s / count * 1e9, 1),
        "full_table": _batch_figures(full_batches),
    }


def child_dict(count: int) -> dict[str, Any]:
    keys = list(range(count))
    gc.collect()
    base = rss_bytes()
    table = dict.fromkeys(keys)
    used = rss_bytes() - base
    return {"flows": len(table), "rss_bytes_per_key": round(used / count, 1)}


def child_churn(packets: int, live: int) -> dict[str, Any]:
    from collector.config import Config, FlowsConfig  # noqa: PLC0415
    from collector.pipeline import Pipeline  # noqa: PLC0415
    from collector.sessions import SessionMap  # noqa: PLC0415

    rate = 100_000  # simulated datagrams per second, each a new flow
    inactive = live / rate
    config = Config(
        flows=FlowsConfig(max_flows=2 * live, inactive_timeout_s=inactive, active_timeout_s=60)
    )
    pipeline = Pipeline(config, SessionMap([], accept_unknown=True), exporter="bench")
    buf = bytearray(_TEMPLATE)
    n = len(buf)
    pack_addr = _ADDR.pack_into
    pack_port = _PORT.pack_into
    feed = pipeline.account
    t0 = 1_764_100_000.0
    next_expiry = t0 + 1.0
    samples = []
    records = 0
    peak = 0
    every = packets // 20
    for i in range(packets):
        # 2**26 addresses x 64 ports: a new 5-tuple every time, never repeating in the run
        pack_addr(buf, _SRC_OFFSET, 0x0A000000 + (i // PORTS_PER_SOURCE) % (1 << 24))
        pack_port(buf, _SPORT_OFFSET, 1024 + i % PORTS_PER_SOURCE)
        now = t0 + i / rate
        feed(buf, n, now, None)
        if now >= next_expiry:  # the worker's ticker: once a (simulated) second, in steps
            for step in pipeline.expire_steps(now):
                records += len(step)
            peak = max(peak, len(pipeline.table))
            next_expiry = now + 1.0
        if (i + 1) % every == 0:
            samples.append(rss_bytes())
    records += len(pipeline.flush())
    if records != packets:
        raise RuntimeError(f"{packets} flows but {records} records")
    mib = [round(s / 2**20, 1) for s in samples]
    return {
        "packets": packets,
        "flows_live_peak": peak,
        "records": records,
        "simulated_seconds": round(packets / rate, 1),
        "rss_mib_samples": mib,
        # the allocator settles after a few table generations; a leak would keep growing
        "rss_growth_second_half_mib": round((samples[-1] - samples[len(samples) // 2]) / 2**20, 1),
    }


def _child(kind: str, *args: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--child", kind, *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


def run(sizes: list[int], churn_packets: int, churn_live: int) -> dict[str, Any]:
    rows = []
    for count in sizes:
        table = _child("table", count)
        legacy = _child("legacy", count)
        plain = _child("dict", count)
        table["legacy"] = legacy
        table["dict_rss_bytes_per_key"] = plain["rss_bytes_per_key"]
        table["ratio_vs_legacy"] = round(
            table["rss_bytes_per_flow"] / legacy["rss_bytes_per_flow"], 2
        )
        table["ratio_vs_dict"] = round(table["rss_bytes_per_flow"] / plain["rss_bytes_per_key"], 2)
        rows.append(table)
    return {
        "bench": "memory",
        "method": "RSS delta (/proc/self/statm) in a fresh process per figure",
        "baselines": "legacy tuple-key/list-entry table and a plain dict, same run",
        "python": ".".join(map(str, sys.version_info[:3])),
        "target_bytes_per_flow": 350,
        "sizes": rows,
        "churn": _child("churn", churn_packets, churn_live),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", default="400000,1000000", help="comma-separated sizes")
    parser.add_argument("--churn-packets", type=int, default=8_000_000)
    parser.add_argument("--churn-live", type=int, default=200_000, help="flows alive in churn")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *numbers = args.child
        children = {
            "table": child_table,
            "legacy": child_legacy,
            "dict": child_dict,
            "churn": child_churn,
        }
        print(json.dumps(children[kind](*map(int, numbers))))
        return
    report = run([int(s) for s in args.flows.split(",")], args.churn_packets, args.churn_live)
    if args.json:
        print(json.dumps(report))
        return
    for row in report["sizes"]:
        legacy = row["legacy"]
        print(
            f"{row['flows']:>9,} flows: {row['rss_bytes_per_flow']:6.1f} B/flow RSS "
            f"(legacy layout {legacy['rss_bytes_per_flow']:.1f}: {row['ratio_vs_legacy']:.2f}x; "
            f"plain dict {row['dict_rss_bytes_per_key']:.1f}: {row['ratio_vs_dict']:.2f}x)"
        )
        print(
            f"           new flows {row['new_flow_ns_per_packet']:.0f} ns/packet, known flows "
            f"{row['known_flow_ns_per_packet']:.0f} ns/packet: new/known {row['new_vs_known']:.2f}"
        )
        print(
            f"           longest 1000-packet batch {row['new_flows']['longest_batch_ms']} ms "
            f"({row['new_flows']['longest_vs_median']}x the median; legacy "
            f"{legacy['new_flows']['longest_batch_ms']} ms, "
            f"{legacy['new_flows']['longest_vs_median']}x); GC while flooding: "
            f"{row['gc_while_flooding']['full_collections']} full collections, longest pause "
            f"{row['gc_while_flooding']['longest_pause_ms']} ms (legacy "
            f"{legacy['gc_while_flooding']['full_collections']}, "
            f"{legacy['gc_while_flooding']['longest_pause_ms']} ms)"
        )
        print(
            f"           into a full table (max_flows = flows/4): {row['full_table_ns_per_packet']:.0f}"
            f" ns/packet, longest batch {row['full_table']['longest_batch_ms']} ms (legacy "
            f"one-at-a-time eviction {legacy['full_table_ns_per_packet']:.0f} ns/packet, "
            f"{legacy['full_table']['longest_batch_ms']} ms)"
        )
        print(
            f"           expiry scan {row['expiry_scan_ms']} ms, records of every flow "
            f"{row['records_of_every_flow_ms']} ms"
        )
    churn = report["churn"]
    print(
        f"churn: {churn['packets']:,} new flows over {churn['simulated_seconds']} simulated s, "
        f"peak {churn['flows_live_peak']:,} live; RSS MiB {churn['rss_mib_samples']}; "
        f"growth over the second half {churn['rss_growth_second_half_mib']} MiB"
    )


if __name__ == "__main__":
    main()
