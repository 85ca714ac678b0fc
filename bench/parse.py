"""Decapsulation speed: the collector's decoder against dpkt, and the whole pipeline in packets/s.

    python -m bench.parse [--count 20000] [--flows 512] [--repeat 7] [--rules 2000] [--json]

Both parsers get the same VXLAN payloads in the same run: a mix of IPv4 and IPv6; TCP, UDP, ICMP
and a little GRE/ESP; ACK-sized to MTU-sized packets; some 802.1Q and QinQ tags, a few IPv6
extension headers and fragments; a fifth of the packets cut by a session PacketLength. Each side
turns a datagram into the flow key (VNI, addresses, protocol, ports or ICMP type/code), the IP
length and the TCP flags. dpkt parses the 8 VXLAN bytes by hand, then ``dpkt.ethernet.Ethernet``.

The pipeline figure is ``Pipeline.feed`` over a pre-built list of datagrams plus the expiry and
record building at the end, per core (one process, CPU time); its baselines, in the same run, are a
loop that only takes ``len()`` of each datagram and the dpkt parse alone. Times are
``time.process_time``, the median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import dpkt
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.ipsec import ESP
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from collector.config import build_config
from collector.pipeline import Pipeline
from collector.sessions import build_sessions
from collector.wire import decode
from collector.wire.flowkey import unpack_key

TARGET_RATIO = 15.0  # issue #2: at least 15x dpkt
PACKET_LENGTH = 128  # the truncating sessions' PacketLength
SIZES = ((40, 0.35), (64, 0.1), (300, 0.15), (576, 0.1), (1500, 0.3))  # inner IP sizes, weights


# ---- the packet mix ---------------------------------------------------------------------------------


def _flow(rng: random.Random, i: int) -> tuple[int, list[Packet], bool]:
    """(VNI, [Ethernet(+tags), IP(+extension headers), transport], truncated) for flow ``i``."""
    vni = rng.choice((0x3A91C7, 0x0F00D5, 0xC0FFEE, 0x51D2E4))
    v6 = rng.random() < 0.25
    if v6:
        net: Packet = IPv6(src=f"2001:db8:{vni & 0xFFFF:x}::{i + 1:x}", dst="2001:db8:ffff::10")
    else:
        net = IP(src=f"10.{vni & 0xFF}.{i // 250 % 256}.{i % 250 + 1}", dst="10.200.0.10")
    kind = rng.random()
    transport: Packet
    if kind < 0.70:
        transport = TCP(sport=1024 + i, dport=rng.choice((443, 443, 80, 5432)), flags="A")
    elif kind < 0.92:
        transport = UDP(sport=1024 + i, dport=rng.choice((53, 123, 8125)))
    elif kind < 0.97:
        if v6:
            transport = rng.choice((ICMPv6EchoRequest(id=i), ICMPv6EchoReply(id=i)))
        else:
            transport = ICMP(type=rng.choice((0, 8)), id=i)
    else:
        transport = rng.choice((GRE(), ESP(spi=i + 1)))
    if v6 and rng.random() < 0.03:  # an extension header before the transport
        ext = rng.choice((IPv6ExtHdrHopByHop(), IPv6ExtHdrFragment(offset=0, m=1, id=i)))
        net = net / ext
    elif not v6 and rng.random() < 0.02:  # an IPv4 later fragment: no transport header
        net.flags, net.frag = 0, 185
        transport = Raw(b"\x00" * 8)
    eth: Packet = Ether(src="06:00:00:00:0a:0a", dst="06:00:00:00:01:01")
    tags = rng.random()
    if tags < 0.04:
        eth = eth / Dot1Q(vlan=100)
    elif tags < 0.05:
        eth = Ether(src="06:00:00:00:0a:0a", dst="06:00:00:00:01:01", type=0x88A8)
        eth = eth / Dot1AD(vlan=300) / Dot1Q(vlan=100)
    return vni, [eth, net, transport], rng.random() < 0.2


def build_mix(count: int, flows: int = 512, seed: int = 1) -> list[bytes]:
    """``count`` VXLAN payloads over ``flows`` inner flows (scapy builds each flow/size once)."""
    rng = random.Random(seed)
    templates = [_flow(rng, i) for i in range(flows)]
    sizes = [s for s, _ in SIZES]
    weights = [w for _, w in SIZES]
    cache: dict[tuple[int, int], bytes] = {}
    out = []
    for _ in range(count):
        index = rng.randrange(flows)
        size = rng.choices(sizes, weights)[0]
        data = cache.get((index, size))
        if data is None:
            vni, (eth, net, transport), truncated = templates[index]
            headers = len(net / transport)
            inner = eth / net / transport / Raw(b"\x5a" * max(size - headers, 0))
            frame = bytes(inner)[:PACKET_LENGTH] if truncated else bytes(inner)
            data = cache[(index, size)] = (
                bytes([8, 0, 0, 0]) + (vni << 8).to_bytes(4, "big") + frame
            )
        out.append(data)
    return out


# ---- the two parsers --------------------------------------------------------------------------------

_IP, _IP6 = dpkt.ip.IP, dpkt.ip6.IP6
_TCP, _UDP, _ICMP, _ICMP6 = dpkt.tcp.TCP, dpkt.udp.UDP, dpkt.icmp.ICMP, dpkt.icmp6.ICMP6
_DPKT_ERRORS = (dpkt.UnpackError, ValueError, IndexError, KeyError)


def dpkt_decode(data: bytes) -> tuple[tuple[Any, ...], int, int] | None:
    """The same job with dpkt: flow key, IP length, TCP flags (None for what it cannot use)."""
    if len(data) < 8 or not data[0] & 0x08:
        return None
    vni = int.from_bytes(data[4:7], "big")
    try:
        net = dpkt.ethernet.Ethernet(data[8:]).data
    except _DPKT_ERRORS:
        return None
    if isinstance(net, _IP):
        src, dst, proto, ip_len = net.src, net.dst, net.p, net.len
    elif isinstance(net, _IP6) and hasattr(net, "p"):  # no .p: an extension header was cut
        src, dst, proto, ip_len = net.src, net.dst, net.p, net.plen + 40
    else:
        return None
    l4 = net.data
    sport = dport = flags = 0
    icmp = -1
    if isinstance(l4, _TCP):
        sport, dport, flags = l4.sport, l4.dport, l4.flags
    elif isinstance(l4, _UDP):
        sport, dport = l4.sport, l4.dport
    elif isinstance(l4, _ICMP | _ICMP6):
        icmp = l4.type << 8 | l4.code
    return (vni, src, dst, proto, sport, dport, icmp), ip_len, flags


def loop_decode(datagrams: list[bytes]) -> None:
    for data in datagrams:
        decode(data, len(data))


def loop_dpkt(datagrams: list[bytes]) -> None:
    for data in datagrams:
        dpkt_decode(data)


def loop_len(datagrams: list[bytes]) -> None:
    for data in datagrams:
        len(data)


def pipeline_run(datagrams: list[bytes], settings: dict[str, Any]) -> Callable[[], int]:
    """A fresh pipeline fed the whole list, then expired and flushed; returns the record count."""
    config = build_config(settings)
    sessions = build_sessions(config)
    outer = bytes([10, 1, 0, 10])
    stamps = [1_764_100_000.0 + i * 1e-5 for i in range(len(datagrams))]

    def run() -> int:
        pipeline = Pipeline(config, sessions, exporter="bench")
        feed = pipeline.feed
        for data, now in zip(datagrams, stamps, strict=True):
            feed(data, len(data), now, outer)
        end = stamps[-1]
        records = pipeline.expire(end + 1.0)
        records += pipeline.flush()
        return len(records)

    return run


def big_filter_settings(rules: int) -> dict[str, Any]:
    """Every VNI a session whose filter has ``rules`` egress/ingress rules; the last ones accept."""
    numbered = [
        {
            "direction": "egress" if n % 2 else "ingress",
            "rule_number": n,
            "action": "reject",
            "protocol": 6,
            "source_cidr": f"192.0.{n // 256 % 256}.{n % 256}/32",
            "destination_cidr": "0.0.0.0/0",
        }
        for n in range(1, rules - 3)
    ]
    for direction in ("egress", "ingress"):
        for family in ("0.0.0.0/0", "::/0"):
            numbered.append(
                {
                    "direction": direction,
                    "rule_number": rules + len(numbered),
                    "action": "accept",
                    "source_cidr": family,
                    "destination_cidr": family,
                }
            )
    vnis = (0x3A91C7, 0x0F00D5, 0xC0FFEE, 0x51D2E4)
    return {
        "sessions": [
            {
                "vni": v,
                "name": f"s{v:x}",
                "addresses": ["10.0.0.0/8", "2001:db8::/32"],
                "filter": "big",
            }
            for v in vnis
        ],
        "filters": {"big": {"rules": numbered}},
    }


# ---- measuring --------------------------------------------------------------------------------------


def cpu_times(runs: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median CPU seconds of each run over ``repeat`` rounds, garbage collector off.

    The runs take turns within each round, so a neighbour's load on a shared machine falls on all
    of them alike and the ratios stay fair. One warm-up round is not counted.
    """
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(repeat + 1):
        for name, run in runs.items():
            gc.collect()
            gc.disable()
            try:
                start = time.process_time()
                run()
                elapsed = time.process_time() - start
            finally:
                gc.enable()
            if round_:
                samples[name].append(elapsed)
    return {name: statistics.median(values) for name, values in samples.items()}


def agreement(datagrams: list[bytes]) -> tuple[int, int]:
    """(packets on which both parsers give the same key, IP length and flags; packets dpkt keys)."""
    same = keyed = 0
    for data in datagrams:
        theirs = dpkt_decode(data)
        if theirs is None:
            continue
        keyed += 1
        ours = decode(data, len(data))
        if not isinstance(ours, int):
            key, ip_len, tcp_flags = ours
            same += (unpack_key(key), ip_len, tcp_flags) == theirs
    return same, keyed


def measure(count: int, repeat: int, rules: int, flows: int = 512) -> dict[str, Any]:
    datagrams = build_mix(count, flows)
    zero_config = pipeline_run(datagrams, {})
    filtered = pipeline_run(datagrams, big_filter_settings(rules))
    records, kept_by_filter = zero_config(), filtered()
    t = cpu_times(
        {
            "decode": lambda: loop_decode(datagrams),
            "dpkt": lambda: loop_dpkt(datagrams),
            "len": lambda: loop_len(datagrams),
            "pipeline": zero_config,
            "filtered": filtered,
        },
        repeat,
    )
    parse_ours, parse_dpkt, bare_loop = t["decode"], t["dpkt"], t["len"]
    pipe, pipe_filtered = t["pipeline"], t["filtered"]
    same, keyed = agreement(datagrams)
    ns = 1e9 / count
    return {
        "bench": "parse",
        "python": sys.version.split()[0],
        "dpkt": dpkt.__version__,
        "packets": count,
        "flows": flows,
        "repeat": repeat,
        "mix": {
            "bytes_mean": round(sum(map(len, datagrams)) / count, 1),
            "truncated_to": PACKET_LENGTH,
            "dpkt_keyed": keyed,
            "dpkt_agrees": same,
        },
        "decode_ns_per_packet": round(parse_ours * ns, 1),
        "dpkt_ns_per_packet": round(parse_dpkt * ns, 1),
        "ratio_vs_dpkt": round(parse_dpkt / parse_ours, 2),
        "target_ratio": TARGET_RATIO,
        "pipeline": {
            "records": records,
            "ns_per_packet": round(pipe * ns, 1),
            "packets_per_s_per_core": round(count / pipe),
            "with_filter_rules": rules,
            "filtered_records": kept_by_filter,
            "filtered_ns_per_packet": round(pipe_filtered * ns, 1),
            "filtered_packets_per_s_per_core": round(count / pipe_filtered),
            "len_loop_ns_per_packet": round(bare_loop * ns, 1),
            "len_loop_packets_per_s": round(count / bare_loop),
            "ratio_vs_len_loop": round(pipe / bare_loop, 2),
            "ratio_vs_dpkt_parse": round(parse_dpkt / pipe, 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="datagrams in the mix")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs; the median is reported")
    parser.add_argument("--flows", type=int, default=512, help="inner flows in the mix")
    parser.add_argument("--rules", type=int, default=2000, help="rules of the filtered pipeline")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of the text")
    args = parser.parse_args()
    r = measure(args.count, args.repeat, args.rules, args.flows)
    if args.json:
        print(json.dumps(r, separators=(",", ":")))
        return
    p, mix = r["pipeline"], r["mix"]
    print(
        f"mix: {r['packets']} VXLAN datagrams, mean {mix['bytes_mean']} bytes; "
        f"dpkt keys {mix['dpkt_keyed']}, same result as ours on {mix['dpkt_agrees']}"
    )
    print(f"decode (collector.wire)  {r['decode_ns_per_packet']:8.1f} ns/packet")
    print(f"dpkt                     {r['dpkt_ns_per_packet']:8.1f} ns/packet")
    verdict = "meets" if r["ratio_vs_dpkt"] >= TARGET_RATIO else "MISSES"
    print(f"ratio                    {r['ratio_vs_dpkt']:8.2f}x dpkt ({verdict} {TARGET_RATIO:g}x)")
    print(
        f"pipeline (feed + expire + records)  {p['ns_per_packet']:8.1f} ns/packet = "
        f"{p['packets_per_s_per_core']:,} packets/s per core, {p['records']} records"
    )
    print(
        f"  with a {p['with_filter_rules']}-rule filter      {p['filtered_ns_per_packet']:8.1f} "
        f"ns/packet = {p['filtered_packets_per_s_per_core']:,} packets/s per core"
    )
    print(
        f"  baseline: len() loop {p['len_loop_ns_per_packet']:.1f} ns/packet "
        f"({p['ratio_vs_len_loop']:.1f}x faster than the pipeline); dpkt parse alone is "
        f"{p['ratio_vs_dpkt_parse']:.2f}x the whole pipeline's time"
    )


if __name__ == "__main__":
    main()
