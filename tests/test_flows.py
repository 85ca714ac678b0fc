"""Flow accounting through the pipeline: counters, timeouts, TCP ends, eviction, records, sequences."""

from __future__ import annotations

import gc
import socket
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pipeline_support import T0, drops, icmp, make_pipeline, packed, tcp, udp, vxlan
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP

from collector import flows
from collector.config import build_config
from collector.flows import Flow, FlowTable, RecordMaker
from collector.pipeline import Pipeline
from collector.records import FlowRecord, address_text, flow_id
from collector.sessions import Session, build_sessions
from collector.wire.drops import Drop
from collector.wire.flowkey import pack_key, unpack_key

A, B, C = "10.0.1.10", "198.51.100.7", "203.0.113.9"
A6, B6 = "2600:1f18:1234:5601::10", "2001:db8::7"
VNI = 7


def feed(pipeline: Pipeline, data: bytes, now: float, outer: bytes | None = None) -> None:
    pipeline.feed(data, len(data), now, outer)


def ip_len(data: bytes) -> int:
    """The inner IP packet's own length field, read by scapy (VXLAN 8 + Ethernet 14 before it)."""
    inner = data[22:]
    if inner[0] >> 4 == 4:
        return int(IP(inner).len)
    return int(IPv6(inner).plen) + 40


def test_packets_bytes_and_flags_of_one_flow() -> None:
    pipeline = make_pipeline()
    packets = [
        tcp(VNI, A, B, 40000, 443, "S"),
        tcp(VNI, A, B, 40000, 443, "A"),
        tcp(VNI, A, B, 40000, 443, "PA", payload=517),
        tcp(VNI, A, B, 40000, 443, "A", payload=1200),
    ]
    for i, data in enumerate(packets):
        feed(pipeline, data, T0 + i * 0.25)
    (record,) = pipeline.flush()
    assert record.packets == 4
    assert record.bytes == sum(ip_len(p) for p in packets) == 4 * 40 + 517 + 1200
    assert record.tcp_flags == 0x02 | 0x10 | 0x08
    assert (record.start_ms, record.end_ms) == (int(T0 * 1000), int(T0 * 1000) + 750)
    assert (record.src_addr, record.src_port, record.dst_addr, record.dst_port) == (
        A,
        40000,
        B,
        443,
    )
    assert (record.protocol, record.ip_version, record.vni) == (6, 4, VNI)
    assert (record.icmp_type, record.icmp_code) == (None, None)
    assert record.end_reason == "shutdown"


def test_directions_are_separate_flows_with_one_flow_id() -> None:
    pipeline = make_pipeline()
    feed(pipeline, tcp(VNI, A, B, 40000, 443, "S"), T0)
    feed(pipeline, tcp(VNI, B, A, 443, 40000, "SA"), T0 + 0.001)
    feed(pipeline, udp(VNI, A6, B6, 5353, 53), T0)
    feed(pipeline, udp(VNI, B6, A6, 53, 5353), T0)
    records = pipeline.flush()
    assert len(records) == 4
    by_key = {(r.protocol, r.src_addr): r for r in records}
    assert by_key[6, A].flow_id == by_key[6, B].flow_id
    assert by_key[17, A6].flow_id == by_key[17, B6].flow_id
    assert by_key[6, A].flow_id != by_key[17, A6].flow_id
    assert all(len(r.flow_id) == 16 and int(r.flow_id, 16) >= 0 for r in records)


def test_flow_id_differs_between_connections_and_ignores_the_session() -> None:
    pipeline = make_pipeline()
    base = tcp(VNI, A, B, 40000, 443)
    variants = {
        "base": base,
        "other source port": tcp(VNI, A, B, 40001, 443),
        "other destination port": tcp(VNI, A, B, 40000, 8443),
        "other peer": tcp(VNI, A, C, 40000, 443),
        "other protocol": udp(VNI, A, B, 40000, 443),
        "ports swapped, same hosts": tcp(VNI, A, B, 443, 40000),
        "seen by another session": tcp(VNI + 1, B, A, 443, 40000),
    }
    for data in variants.values():
        feed(pipeline, data, T0)
    records = pipeline.flush()
    assert len(records) == len(variants)
    ids = {
        (r.vni, r.protocol, r.src_addr, r.src_port, r.dst_addr, r.dst_port): r.flow_id
        for r in records
    }
    same = ids[VNI, 6, A, 40000, B, 443]
    assert ids[VNI + 1, 6, B, 443, A, 40000] == same
    others = [
        v
        for k, v in ids.items()
        if k not in {(VNI, 6, A, 40000, B, 443), (VNI + 1, 6, B, 443, A, 40000)}
    ]
    assert len(others) == 5
    assert same not in others
    assert len(set(others)) == 5


def test_defaults_are_60_s_active_and_15_s_inactive() -> None:
    table = make_pipeline().table
    assert (table.active_timeout_s, table.inactive_timeout_s) == (60.0, 15.0)


def test_active_timeout() -> None:
    pipeline = make_pipeline()
    data = tcp(VNI, A, B, 40000, 443)
    for i in range(6):
        feed(pipeline, data, T0 + 10 * i)  # never idle for 15 s
        assert pipeline.expire(T0 + 10 * i + 5) == []
    assert pipeline.expire(T0 + 59.999) == []
    (record,) = pipeline.expire(T0 + 60)
    assert (record.end_reason, record.packets) == ("active_timeout", 6)
    assert (record.start_ms, record.end_ms) == (int(T0 * 1000), int((T0 + 50) * 1000))
    feed(pipeline, data, T0 + 61)  # the same 5-tuple goes on in a new record
    (record,) = pipeline.flush()
    assert (record.packets, record.start_ms) == (1, int((T0 + 61) * 1000))


def test_inactive_timeout() -> None:
    pipeline = make_pipeline()
    data = udp(VNI, A, B, 5353, 53)
    feed(pipeline, data, T0)
    feed(pipeline, data, T0 + 5)
    assert pipeline.expire(T0 + 19.999) == []
    (record,) = pipeline.expire(T0 + 20)
    assert (record.end_reason, record.packets) == ("inactive_timeout", 2)
    assert record.end_ms == int((T0 + 5) * 1000)
    assert len(pipeline.table) == 0


def test_configured_timeouts() -> None:
    pipeline = make_pipeline({"flows": {"active_timeout_s": 5, "inactive_timeout_s": 2}})
    busy, idle = udp(VNI, A, B, 1, 2), udp(VNI, A, B, 3, 4)
    feed(pipeline, idle, T0)
    for i in range(5):
        feed(pipeline, busy, T0 + i)
    reasons = {r.src_port: r.end_reason for r in pipeline.expire(T0 + 5)}
    assert reasons == {1: "active_timeout", 3: "inactive_timeout"}


def test_fin_ends_a_flow_at_once() -> None:
    pipeline = make_pipeline()
    feed(pipeline, tcp(VNI, A, B, 40000, 443, "S"), T0)
    feed(pipeline, tcp(VNI, A, B, 40000, 443, "PA", payload=10), T0 + 1)
    feed(pipeline, tcp(VNI, A, B, 40000, 443, "FA"), T0 + 2)
    assert len(pipeline.table) == 0
    (record,) = pipeline.collect()
    assert (record.end_reason, record.packets, record.tcp_flags) == ("tcp_fin", 3, 0x1B)
    assert record.end_ms == int((T0 + 2) * 1000)
    # the last ACK after the FIN is a new (one-packet) record
    feed(pipeline, tcp(VNI, A, B, 40000, 443, "A"), T0 + 3)
    (record,) = pipeline.flush()
    assert (record.end_reason, record.packets, record.tcp_flags) == ("shutdown", 1, 0x10)


def test_rst_ends_a_flow_at_once() -> None:
    pipeline = make_pipeline()
    feed(pipeline, tcp(VNI, B, A, 443, 40000, "SA"), T0)
    feed(pipeline, tcp(VNI, B, A, 443, 40000, "RA"), T0 + 1)
    (record,) = pipeline.expire(T0 + 1)
    assert (record.end_reason, record.packets, record.tcp_flags) == ("tcp_rst", 2, 0x16)


def test_rst_wins_over_fin_and_a_first_packet_can_end_its_flow() -> None:
    pipeline = make_pipeline()
    feed(pipeline, tcp(VNI, A, B, 1, 2, "FR"), T0)
    feed(pipeline, tcp(VNI, A, B, 3, 4, "F"), T0)
    reasons = {r.src_port: (r.end_reason, r.packets) for r in pipeline.collect()}
    assert reasons == {1: ("tcp_rst", 1), 3: ("tcp_fin", 1)}
    assert len(pipeline.table) == 0


def test_fin_and_rst_do_not_end_udp_or_truncated_tcp() -> None:
    """Only TCP flags can end a flow; a TCP header cut after the ports has no flags."""
    pipeline = make_pipeline()
    fin = tcp(VNI, A, B, 40000, 443, "F")
    cut = fin[: 8 + 14 + 20 + 4]  # ports only
    feed(pipeline, cut, T0)
    assert len(pipeline.table) == 1
    assert pipeline.collect() == []


def test_max_flows_evicts_the_oldest_and_emits_it() -> None:
    pipeline = make_pipeline({"flows": {"max_flows": 3}})
    for port in (1, 2, 3):
        feed(pipeline, udp(VNI, A, B, port, 53), T0 + port)
    assert pipeline.collect() == []
    feed(pipeline, udp(VNI, A, B, 4, 53), T0 + 4)
    (evicted,) = pipeline.collect()
    assert (evicted.src_port, evicted.end_reason, evicted.packets) == (1, "evicted", 1)
    assert pipeline.table.evictions == 1
    assert len(pipeline.table) == 3
    feed(pipeline, udp(VNI, A, B, 5, 53), T0 + 5)
    assert [r.src_port for r in pipeline.collect()] == [2]
    assert pipeline.table.evictions == 2
    assert pipeline.stats.records == {"evicted": 2}
    assert sorted(r.src_port for r in pipeline.flush()) == [3, 4, 5]


def test_a_flow_ending_with_its_first_packet_evicts_nothing() -> None:
    pipeline = make_pipeline({"flows": {"max_flows": 2}})
    feed(pipeline, udp(VNI, A, B, 1, 53), T0)
    feed(pipeline, udp(VNI, A, B, 2, 53), T0)
    feed(pipeline, tcp(VNI, A, B, 3, 80, "R"), T0)
    (record,) = pipeline.collect()
    assert (record.src_port, record.end_reason) == (3, "tcp_rst")
    assert pipeline.table.evictions == 0
    assert len(pipeline.table) == 2


def test_flush_ends_every_flow_with_shutdown() -> None:
    pipeline = make_pipeline()
    for port in range(10):
        feed(pipeline, udp(VNI, A, B, 1000 + port, 53), T0 + port)
    records = pipeline.flush()
    assert len(records) == 10
    assert {r.end_reason for r in records} == {"shutdown"}
    assert len(pipeline.table) == 0
    assert pipeline.flush() == []


def test_sequences_are_gap_free_per_exporter_across_calls() -> None:
    first = make_pipeline(exporter="host-a/w0/1764100000")
    second = make_pipeline(exporter="host-a/w1/1764100000")
    batches: list[list[FlowRecord]] = []
    others: list[FlowRecord] = []
    for step in range(12):
        now = T0 + step * 4
        feed(first, udp(VNI, A, B, 1000 + step, 53), now)
        if step % 3 == 0:
            feed(first, tcp(VNI, A, B, 2000 + step, 80, "F"), now)  # ends at once
        feed(second, udp(VNI, A, B, 1000 + step, 53), now)
        batches.append(first.expire(now))
        others += second.expire(now)
    batches.append(first.expire(T0 + 1000))
    feed(first, udp(VNI, A, B, 9, 9), T0 + 1001)
    batches.append(first.flush())
    batches.append(first.flush())
    records = [r for batch in batches for r in batch]
    assert [] in batches  # some calls had nothing to emit
    assert [r.sequence for r in records] == list(range(1, 12 + 4 + 1 + 1))
    assert {r.exporter for r in records} == {"host-a/w0/1764100000"}
    others += second.flush()
    assert [r.sequence for r in others] == list(range(1, 12 + 1))
    assert {r.exporter for r in others} == {"host-a/w1/1764100000"}


def test_icmp_type_and_code_are_carried() -> None:
    pipeline = make_pipeline()
    feed(pipeline, icmp(VNI, A, B, 8, 0), T0)
    feed(pipeline, icmp(VNI, B, A, 0, 0), T0)
    feed(pipeline, icmp(VNI, B, A, 3, 3), T0)
    feed(pipeline, icmp(VNI, A6, B6), T0)
    records = {(r.src_addr, r.icmp_type, r.icmp_code): r for r in pipeline.flush()}
    assert set(records) == {(A, 8, 0), (B, 0, 0), (B, 3, 3), (A6, 128, 0)}
    for record in records.values():
        assert (record.src_port, record.dst_port, record.tcp_flags) == (0, 0, 0)
    assert records[A, 8, 0].protocol == 1
    assert records[A6, 128, 0].protocol == 58
    assert records[A, 8, 0].flow_id == records[B, 0, 0].flow_id


def test_bytes_come_from_the_ip_header_of_truncated_packets() -> None:
    pipeline = make_pipeline()
    full = tcp(VNI, A, B, 40000, 443, "A", payload=1400)
    v6 = udp(VNI, A6, B6, 5353, 53, payload=3000)
    headers_only = full[: 8 + 14 + 20 + 20]
    ports_only = full[: 8 + 14 + 20 + 4]
    no_ports = full[: 8 + 14 + 20 + 2]
    v6_cut = v6[: 8 + 14 + 40 + 8]
    for data in (full, headers_only, ports_only, no_ports, v6_cut):
        feed(pipeline, data, T0)
    records = {(r.ip_version, r.src_port): r for r in pipeline.flush()}
    assert (records[4, 40000].packets, records[4, 40000].bytes) == (3, 3 * 1440)
    # the IP header survived, the ports did not: counted with ports 0
    assert (records[4, 0].packets, records[4, 0].bytes, records[4, 0].dst_port) == (1, 1440, 0)
    assert (records[6, 5353].packets, records[6, 5353].bytes) == (1, 40 + 8 + 3000)
    assert drops(pipeline) == {}


def test_only_the_first_n_bytes_of_the_buffer_count() -> None:
    """The receive path reuses one buffer: bytes past ``n`` are left over from earlier datagrams."""
    pipeline = make_pipeline()
    data = tcp(VNI, A, B, 40000, 443, "S")
    buffer = bytearray(b"\xff" * 2048)
    buffer[: len(data)] = data
    pipeline.feed(memoryview(buffer), len(data), T0, None)
    pipeline.feed(buffer, 8 + 14 + 20 + 4, T0 + 1, None)  # as if cut at the ports
    (record,) = pipeline.flush()
    assert (record.packets, record.bytes, record.tcp_flags) == (2, 80, 0x02)


BAD_DATAGRAMS = {
    "vxlan_short": b"\x08\x00\x00",
    "vxlan_flags": b"\x00" * 8 + tcp(VNI, A, B, 1, 2)[8:],
    "ethernet_short": tcp(VNI, A, B, 1, 2)[:20],
    "ipv4_short": tcp(VNI, A, B, 1, 2)[: 8 + 14 + 19],
}


def test_malformed_datagrams_are_dropped_by_reason() -> None:
    pipeline = make_pipeline()
    arp = vxlan(VNI, ARP(psrc=A, pdst=B))
    for data in [*BAD_DATAGRAMS.values(), arp]:
        feed(pipeline, data, T0)
    assert drops(pipeline) == {**dict.fromkeys(BAD_DATAGRAMS, 1), "non_ip": 1}
    assert pipeline.flush() == []
    assert pipeline.stats.kept == 0


def test_accounting_of_a_mixed_stream() -> None:
    settings = {
        "sessions": [
            {"vni": 10, "name": "A", "addresses": [A], "filter": "tcp-out"},
            {"vni": 11, "name": "B"},
        ],
        "filters": {
            "tcp-out": {
                "rules": [
                    {
                        "direction": "egress",
                        "rule_number": 1,
                        "action": "accept",
                        "protocol": 6,
                        "source_cidr": "0.0.0.0/0",
                        "destination_cidr": "0.0.0.0/0",
                    }
                ]
            }
        },
        "flows": {"max_flows": 4},
    }
    pipeline = make_pipeline(settings)
    stream = [
        tcp(10, A, B, 40000, 443, "S"),  # kept
        tcp(10, A, B, 40000, 443, "A"),
        udp(10, A, B, 5353, 53),  # filter_reject
        tcp(10, B, A, 443, 40000, "SA"),  # filter_reject (no ingress rules)
        tcp(10, B, C, 1, 2),  # unknown_direction
        tcp(12, A, B, 1, 2),  # unknown_vni
        *BAD_DATAGRAMS.values(),
        *(udp(11, A, B, port, 53) for port in range(10)),  # evictions
        tcp(10, A, B, 40000, 443, "FA"),
        icmp(11, B, A),
    ]
    for i, data in enumerate(stream * 3):
        feed(pipeline, data, T0 + i * 0.5)
        if i % 7 == 0:
            pipeline.expire(T0 + i * 0.5)
    pipeline.expire(T0 + 100)
    assert len(pipeline.table) == 0
    assert pipeline.flush() == []
    stats = pipeline.stats
    assert stats.datagrams == len(stream) * 3
    assert stats.datagrams == stats.kept + sum(stats.drops)
    assert drops(pipeline) == {
        "filter_reject": 6,
        "unknown_direction": 3,
        "unknown_vni": 3,
        **dict.fromkeys(BAD_DATAGRAMS, 3),
    }
    assert stats.kept == 3 * (3 + 10 + 1)
    emitted = sum(stats.records.values())
    assert emitted == pipeline.sequence
    assert stats.records["evicted"] == pipeline.table.evictions > 0


# ---- property: the accounting invariant and gap-free sequences hold for any stream --------------

_POOL = [
    tcp(7, A, B, 40000, 443, "S"),
    tcp(7, A, B, 40000, 443, "PA", payload=100),
    tcp(7, A, B, 40000, 443, "FA"),
    tcp(7, B, A, 443, 40000, "RA"),
    tcp(8, A, B, 40000, 443, "A"),
    udp(7, A, B, 5353, 53, payload=30),
    udp(9, A6, B6, 1, 2),
    icmp(7, A, B),
    tcp(7, A, B, 40000, 443, "A", payload=1400)[:50],
    b"\x08\x00\x00\x00\x00\x00\x07",
    b"\x00" * 60,
]
_CONFIGS: list[dict[str, Any]] = [
    {"flows": {"max_flows": 2, "inactive_timeout_s": 3, "active_timeout_s": 7}},
    {
        "sessions": [{"vni": 7, "addresses": [A], "filter": "f"}],
        "filters": {
            "f": {
                "rules": [
                    {
                        "direction": "egress",
                        "rule_number": 1,
                        "action": "accept",
                        "source_cidr": "0.0.0.0/0",
                        "destination_cidr": "0.0.0.0/0",
                    }
                ]
            }
        },
        "flows": {"max_flows": 3, "inactive_timeout_s": 2},
    },
]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(_CONFIGS),
    st.lists(
        st.tuples(
            st.integers(0, len(_POOL) - 1),
            st.floats(0, 5, allow_nan=False),
            st.booleans(),
        ),
        max_size=60,
    ),
)
def test_accounting_invariant_holds_for_any_stream(
    config: dict[str, Any], steps: list[tuple[int, float, bool]]
) -> None:
    pipeline = make_pipeline(config)
    now = T0
    records: list[FlowRecord] = []
    for index, delay, expire in steps:
        now += delay
        feed(pipeline, _POOL[index], now, packed(A))
        if expire:
            records += pipeline.expire(now)
    records += pipeline.flush()
    stats = pipeline.stats
    assert stats.datagrams == len(steps) == stats.kept + sum(stats.drops)
    assert sum(r.packets for r in records) == stats.kept
    assert [r.sequence for r in records] == list(range(1, len(records) + 1))
    assert sum(stats.records.values()) == len(records)
    assert all(r.start_ms <= r.end_ms for r in records)


def test_flow_table_is_sans_io() -> None:
    """The table runs on the time it is given: a clock far in the past or future is just a number."""
    table = FlowTable(active_timeout_s=60, inactive_timeout_s=15, max_flows=10)
    session = Session(vni=1, name="a")
    key = pack_key(1, packed(A), packed(B), 17, 1, 2, -1)
    table.add(key, 100, 0, 0.0, session, "egress")
    table.expire(14.9)
    assert table.take_ended() == []
    table.expire(15.0)
    ((ended_key, flow, reason),) = table.take_ended()
    assert (ended_key, flow.packets, flow.bytes, reason) == (key, 1, 100, "inactive_timeout")


def test_rejected_cache_is_bounded_by_max_flows() -> None:
    table = FlowTable(active_timeout_s=60, inactive_timeout_s=15, max_flows=3)
    for port in range(10):
        table.reject(
            pack_key(1, packed(A), packed(B), 17, port, 2, -1), 60, 0, T0, Drop.FILTER_REJECT
        )
    assert table.not_kept == 3
    assert table.rejected_evictions == 7
    assert [unpack_key(k)[4] for k in table.not_kept_keys()] == [7, 8, 9]


def _flood_datagram(buf: bytearray, i: int) -> None:
    """Patch a new 5-tuple into an IPv4 UDP datagram: source address and port from ``i``."""
    buf[8 + 14 + 12 : 8 + 14 + 16] = (0x0A000000 + i // 64).to_bytes(4, "big")
    buf[8 + 14 + 20 : 8 + 14 + 22] = (1024 + i % 64).to_bytes(2, "big")


def test_the_table_never_holds_more_than_max_flows_under_a_flood_or_a_smaller_reload() -> None:
    """A flood of new flows, one packet each: the bound holds after every packet, evicted flows are
    emitted (none lost), and a reload to a smaller bound evicts the excess at once."""
    max_flows = 3000  # evicts in batches of max(1, max_flows // 1024)
    pipeline = make_pipeline({"flows": {"max_flows": max_flows}})
    buf = bytearray(udp(VNI, A, B, 1, 53))
    records = []
    for i in range(20_000):
        _flood_datagram(buf, i)
        feed(pipeline, bytes(buf), T0 + i * 1e-4)
        assert len(pipeline.table) <= max_flows
        if i % 1000 == 0:
            records += pipeline.collect()
    records += pipeline.collect()
    evicted = pipeline.table.evictions
    assert evicted == len(records) == 20_000 - len(pipeline.table)
    assert {r.end_reason for r in records} == {"evicted"}
    # the oldest go first
    assert [r.start_ms for r in records] == sorted(r.start_ms for r in records)

    smaller = build_config({"flows": {"max_flows": 500}})
    pipeline.reconfigure(smaller, pipeline.sessions)
    assert len(pipeline.table) == 500
    records += pipeline.collect()
    records += pipeline.flush()
    assert sum(r.packets for r in records) == 20_000
    assert len({(r.src_addr, r.src_port) for r in records}) == 20_000


def test_flow_entries_and_keys_are_invisible_to_the_cyclic_garbage_collector() -> None:
    """What keeps a flood of flows from stalling the loop: a full collection walks tracked objects
    only, and nothing the table keeps per flow is tracked."""
    pipeline = make_pipeline()
    for port in range(100):
        feed(pipeline, tcp(VNI, A, B, 40000 + port, 443), T0)
    gc.collect()
    key = pack_key(VNI, packed(A), packed(B), 6, 40000, 443, -1)
    flow = pipeline.table.get(key)
    assert flow is not None
    assert not gc.is_tracked(flow)
    assert not gc.is_tracked(key)
    assert not any(isinstance(o, Flow) for o in gc.get_objects())


def test_a_stepped_expiry_ends_what_one_scan_ends_even_with_packets_in_between() -> None:
    whole, stepped = make_pipeline(), make_pipeline()
    for pipeline in (whole, stepped):
        for port in range(40):
            feed(pipeline, udp(VNI, A, B, port, 53), T0 + port % 4)  # ports % 4 == 3: still active
    expected = {(r.src_port, r.end_reason) for r in whole.expire(T0 + 17.5)}
    assert len(expected) == 30
    steps = stepped.table.expire_steps(T0 + 17.5, step=7)
    next(steps)
    # between two steps: a flow the scan has not reached yet gets a packet, and a new flow starts
    feed(stepped, udp(VNI, A, B, 38, 53), T0 + 17)  # (38 % 4 == 2: due, but now active again)
    feed(stepped, udp(VNI, A, B, 99, 53), T0 + 17)
    for _ in steps:
        pass
    got = {(r.src_port, r.end_reason) for r in stepped.collect()}
    assert got == expected - {(38, "inactive_timeout")}
    assert len(stepped.table) == len(whole.table) + 2


def _reference_record(
    key: bytes, flow: Flow, reason: str, exporter: str, sequence: int
) -> FlowRecord:
    """The record of a flow built field by field, the plain way (what RecordMaker must equal)."""
    vni, src, dst, proto, sport, dport, icmp_value = unpack_key(key)
    session = flow.session
    icmp_fields = (
        {} if icmp_value < 0 else {"icmp_type": icmp_value >> 8, "icmp_code": icmp_value & 0xFF}
    )
    return FlowRecord(
        flow_id=flow_id(proto, src, sport, dst, dport),
        exporter=exporter,
        sequence=sequence,
        vni=vni,
        session=session.name,
        interface_id=session.interface_id,
        direction=flow.direction,
        ip_version=4 if len(src) == 4 else 6,
        protocol=proto,
        src_addr=address_text(src),
        dst_addr=address_text(dst),
        src_port=sport,
        dst_port=dport,
        packets=flow.packets,
        bytes=flow.bytes,
        tcp_flags=flow.tcp_flags,
        start_ms=int(flow.first * 1000),
        end_ms=int(flow.last * 1000),
        end_reason=reason,  # type: ignore[arg-type]
        instance_id=session.instance_id,
        subnet_id=session.subnet_id,
        vpc_id=session.vpc_id,
        az_id=session.az_id,
        account_id=session.account_id,
        region=session.region,
        tags=dict(session.tags),
        **icmp_fields,  # type: ignore[arg-type]
    )


RECORD_SESSIONS = (
    Session(vni=7, name=None),
    Session(
        vni=3_000_001,
        name="web-1",
        interface_id="eni-0a1b2c3d4e5f60718",
        instance_id="i-0123456789abcdef0",
        subnet_id="subnet-0aa11bb22cc33dd44",
        vpc_id="vpc-0123",
        az_id="use1-az1",
        account_id="123456789012",
        region="us-east-1",
        tags={"team": "edge", "env": "prod"},
    ),
)
V4A, V4B = bytes([10, 0, 0, 1]), bytes([172, 16, 255, 254])
V6A, V6B = bytes.fromhex("20010db8" + "00" * 11 + "01"), bytes.fromhex("fe80" + "11" * 14)


@given(
    session=st.sampled_from(RECORD_SESSIONS),
    v6=st.booleans(),
    swap=st.booleans(),
    proto=st.sampled_from((6, 17, 1, 58, 47, 132)),
    sport=st.integers(0, 65535),
    dport=st.integers(0, 65535),
    icmp_value=st.sampled_from((-1, 0x0800, 0x0000, 0x0303, 0x8000, 0xFFFF)),
    packets=st.integers(1, 2**40),
    nbytes=st.integers(20, 2**50),
    flags=st.integers(0, 255),
    first=st.floats(1.6e9, 1.9e9),
    direction=st.sampled_from(("ingress", "egress", "unknown")),
    reason=st.sampled_from(("active_timeout", "inactive_timeout", "tcp_fin", "shutdown")),
)
@settings(max_examples=300, deadline=None)
def test_record_maker_equals_the_plain_record(
    session: Session,
    v6: bool,
    swap: bool,
    proto: int,
    sport: int,
    dport: int,
    icmp_value: int,
    packets: int,
    nbytes: int,
    flags: int,
    first: float,
    direction: Any,
    reason: Any,
) -> None:
    src, dst = (V6A, V6B) if v6 else (V4A, V4B)
    if swap:
        src, dst = dst, src
    key = pack_key(session.vni, src, dst, proto, sport, dport, icmp_value)
    flow = Flow(packets, nbytes, flags, first, first + 12.5, session, direction)
    maker = RecordMaker("host/w0/1")
    for sequence in (1, 2):  # the second record comes from the cached template and texts
        record = maker.make(key, flow, reason, sequence)
        assert record == _reference_record(key, flow, reason, "host/w0/1", sequence)


def test_record_maker_shares_no_mutable_field_and_follows_replaced_sessions() -> None:
    tagged = RECORD_SESSIONS[1]
    key = pack_key(tagged.vni, V4A, V4B, 6, 1, 2, -1)
    maker = RecordMaker("x")
    one = maker.make(key, Flow(1, 60, 2, T0, T0, tagged, "egress"), "shutdown", 1)
    two = maker.make(key, Flow(1, 60, 2, T0, T0, tagged, "egress"), "shutdown", 2)
    assert one.tags == two.tags == {"team": "edge", "env": "prod"}
    one.tags["team"] = "changed"
    assert two.tags["team"] == "edge" and tagged.tags["team"] == "edge"
    bare = RECORD_SESSIONS[0]
    three = maker.make(key, Flow(1, 60, 0, T0, T0, bare, "ingress"), "shutdown", 3)
    four = maker.make(key, Flow(1, 60, 0, T0, T0, bare, "ingress"), "shutdown", 4)
    three.tags["x"] = "y"
    assert four.tags == {}
    # a session replaced by another (reload, enrichment) gets its own template
    renamed = Session(vni=tagged.vni, name="web-2", interface_id="eni-0b")
    five = maker.make(key, Flow(1, 60, 2, T0, T0, renamed, "egress"), "shutdown", 5)
    assert (five.session, five.interface_id, five.instance_id) == ("web-2", "eni-0b", None)


def test_record_maker_caches_are_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(flows, "MAX_ADDRESS_TEXTS", 8)
    monkeypatch.setattr(flows, "MAX_TEMPLATES", 4)
    maker = RecordMaker("x")
    for i in range(100):
        session = Session(vni=i, name=None)
        src = bytes([10, 0, 0, i])
        record = maker.make(
            pack_key(i, src, V4B, 17, i, 53, -1),
            Flow(1, 60, 0, T0, T0, session, "unknown"),
            "shutdown",
            i + 1,
        )
        assert (record.vni, record.src_addr) == (i, f"10.0.0.{i}")
        assert len(maker._texts) <= 8 and len(maker._templates) <= 4


def sockaddr(address: str, port: int = 4789) -> memoryview:
    """A ``struct sockaddr_in``/``sockaddr_in6`` as recvmmsg(2) fills it in (28 octets)."""
    raw = bytearray(28)
    if ":" in address:
        struct.pack_into("=H", raw, 0, socket.AF_INET6)
        raw[8:24] = socket.inet_pton(socket.AF_INET6, address)
    else:
        struct.pack_into("=H", raw, 0, socket.AF_INET)
        raw[4:8] = socket.inet_pton(socket.AF_INET, address)
    struct.pack_into("!H", raw, 2, port)
    return memoryview(raw)


def test_each_new_flow_takes_its_own_sender_and_session_through_changes_and_a_reload() -> None:
    """New flows as the receive path hands them (the sender as a raw sockaddr): the direction
    follows each datagram's own sender and the session its own VNI, however they alternate,
    IPv4, IPv6 and IPv4-mapped senders alike; after a reload new flows take the new session."""
    pipeline = make_pipeline({"flows": {"accept_unknown_vni": True}})
    cases = [  # (vni, sender, source port, expected direction of A -> B)
        (VNI, A, 40000, "egress"),
        (VNI, B, 40001, "ingress"),
        (VNI, B, 40002, "ingress"),
        (VNI + 1, B, 40003, "ingress"),
        (VNI + 1, A, 40004, "egress"),
        (VNI, C, 40005, "unknown"),
        (VNI, "::ffff:" + A, 40006, "egress"),
        (VNI, "2001:db8::99", 40007, "unknown"),
        (VNI, A, 40008, "egress"),
    ]
    for vni, sender, port, _ in cases:
        data = tcp(vni, A, B, port, 443)
        pipeline.account(data, len(data), T0, sockaddr(sender))
    config = build_config(
        {"sessions": [{"vni": VNI, "name": "reloaded"}], "flows": {"accept_unknown_vni": True}}
    )
    pipeline.reconfigure(config, build_sessions(config))
    data = tcp(VNI, A, B, 40009, 443)
    pipeline.account(data, len(data), T0, sockaddr(B))
    records = {r.src_port: r for r in pipeline.flush()}
    assert {port: records[port].direction for _, _, port, _ in cases} == {
        port: direction for _, _, port, direction in cases
    }
    assert {port: records[port].vni for _, _, port, _ in cases} == {
        port: vni for vni, _, port, _ in cases
    }
    assert (records[40009].session, records[40009].direction) == ("reloaded", "ingress")
    assert records[40008].session is None
