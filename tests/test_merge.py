"""Merging partial records: both directions, two sessions, several collectors, duplicates, any order."""

from __future__ import annotations

import random

import msgspec
from flow_samples import make_record
from hypothesis import given
from hypothesis import strategies as st

from collector.merge import Connection, Merger, merge
from collector.records import FlowRecord

T0 = 1_764_100_000_000  # ms
CLIENT = ("10.0.1.20", 51000)
SERVER = ("10.0.0.5", 443)
A = "collector-a/w0/1764090000"
B = "collector-b/w1/1764090000"
C = "collector-c/w0/1764095000"


def rec(
    exporter: str,
    sequence: int,
    *,
    forward: bool,
    vni: int = 7001,
    packets: int = 10,
    nbytes: int = 1000,
    flags: int = 0x18,
    start: int = 0,
    end: int = 1000,
    end_reason: str = "active_timeout",
) -> FlowRecord:
    """A partial record: forward = client -> server. VNI 7001 mirrors the server's ENI, 7002 the
    client's, so forward is ingress on 7001 and egress on 7002."""
    src, dst = (CLIENT, SERVER) if forward else (SERVER, CLIENT)
    server_side = vni == 7001
    direction = "ingress" if forward == server_side else "egress"
    return make_record(
        exporter=exporter,
        sequence=sequence,
        vni=vni,
        session="web-1" if server_side else "client-1",
        interface_id="eni-0server000000000" if server_side else "eni-0client000000000",
        direction=direction,
        src_addr=src[0],
        src_port=src[1],
        dst_addr=dst[0],
        dst_port=dst[1],
        packets=packets,
        bytes=nbytes,
        tcp_flags=flags,
        start_ms=T0 + start,
        end_ms=T0 + end,
        end_reason=end_reason,
    )


def https_connection() -> list[FlowRecord]:
    """One HTTPS connection of ~5 minutes, as two collectors and a third after an NLB re-hash
    reported it: active timeouts split each direction, the client went quiet for 130 s."""
    return [
        # forward (client -> server) lands on collector A ...
        rec(A, 1, forward=True, packets=12, nbytes=2400, flags=0x02 | 0x10 | 0x08, end=60_000),
        rec(A, 4, forward=True, packets=30, nbytes=9000, start=60_100, end=120_000),
        # ... then nothing for 130 s: the NLB's 120 s UDP idle timeout re-hashes it to collector C
        rec(C, 1, forward=True, packets=5, nbytes=600, flags=0x11, start=250_000, end=255_000,
            end_reason="tcp_fin"),
        # reverse (server -> client) lands on collector B
        rec(B, 2, forward=False, packets=20, nbytes=30_000, flags=0x12 | 0x08, start=1,
            end=60_000),
        rec(B, 7, forward=False, packets=44, nbytes=61_000, start=60_050, end=120_000),
        rec(B, 9, forward=False, packets=4, nbytes=400, flags=0x11, start=250_010, end=255_010,
            end_reason="tcp_fin"),
    ]  # fmt: skip


def test_both_directions_over_three_collectors_make_one_connection() -> None:
    [conn] = merge(https_connection())
    assert (conn.initiator_addr, conn.initiator_port) == CLIENT
    assert (conn.responder_addr, conn.responder_port) == SERVER
    assert [leg.direction for leg in conn.forward] == ["ingress"]
    assert [leg.direction for leg in conn.reverse] == ["egress"]
    fwd, rev = conn.forward[0], conn.reverse[0]
    assert (fwd.packets, fwd.bytes) == (47, 12_000)
    assert (rev.packets, rev.bytes) == (68, 91_400)
    assert (conn.forward_packets, conn.forward_bytes) == (47, 12_000)
    assert (conn.reverse_packets, conn.reverse_bytes) == (68, 91_400)
    assert fwd.tcp_flags == 0x02 | 0x10 | 0x08 | 0x01
    assert rev.tcp_flags == 0x12 | 0x08 | 0x01
    assert (fwd.start_ms, fwd.end_ms) == (T0, T0 + 255_000)
    assert (conn.start_ms, conn.end_ms) == (T0, T0 + 255_010)
    assert fwd.exporters == [A, C]
    assert rev.exporters == [B]
    assert conn.exporters == [A, B, C]
    assert fwd.end_reason == "tcp_fin"
    assert conn.closed
    assert (conn.records, conn.duplicates) == (6, 0)
    assert fwd.session == "web-1"
    assert fwd.interface_id == "eni-0server000000000"
    assert fwd.account_id == "123456789010"


def test_duplicates_are_dropped_by_exporter_and_sequence() -> None:
    records = https_connection()
    resent = [records[1], records[4], records[4]]  # a sink re-sent after a timeout, twice
    [conn] = merge(records + resent)
    assert conn.duplicates == 3
    assert conn.records == 6
    assert (conn.forward_packets, conn.reverse_packets) == (47, 68)


def test_order_does_not_matter() -> None:
    records = https_connection()
    expected = merge(records)
    rng = random.Random(4789)
    for _ in range(20):
        shuffled = records[:]
        rng.shuffle(shuffled)
        assert merge(shuffled) == expected


def test_two_mirrored_endpoints_do_not_double_count() -> None:
    # both ENIs are mirror sources: each packet is reported by VNI 7001 and by VNI 7002
    records = [
        rec(A, 1, forward=True, vni=7001, packets=20, nbytes=3000, flags=0x1A),
        rec(B, 1, forward=True, vni=7002, packets=15, nbytes=2000, flags=0x1A),  # filtered a bit
        rec(A, 2, forward=False, vni=7001, packets=25, nbytes=40_000, flags=0x12),
        rec(B, 2, forward=False, vni=7002, packets=25, nbytes=40_000, flags=0x12, start=1),
    ]
    [conn] = merge(records)
    assert [(leg.vni, leg.direction) for leg in conn.forward] == [
        (7001, "ingress"),
        (7002, "egress"),
    ]
    assert [(leg.vni, leg.direction) for leg in conn.reverse] == [
        (7001, "egress"),
        (7002, "ingress"),
    ]
    assert (conn.forward_packets, conn.forward_bytes) == (20, 3000)
    assert (conn.reverse_packets, conn.reverse_bytes) == (25, 40_000)
    assert [leg.session for leg in conn.reverse] == ["web-1", "client-1"]


def test_initiator_from_first_packet_then_from_ports() -> None:
    # the server's answer was received first (out of order behind the NLB) in the same millisecond:
    # the side that sent to the lower port is the initiator
    same_ms = [
        rec(A, 1, forward=False, start=0, end=10),
        rec(B, 1, forward=True, start=0, end=10),
    ]
    [conn] = merge(same_ms)
    assert (conn.initiator_addr, conn.initiator_port) == CLIENT
    # only the answers were mirrored: still the client initiated
    [conn] = merge([rec(A, 1, forward=False)])
    assert (conn.initiator_addr, conn.initiator_port) == CLIENT
    assert conn.forward == []
    assert [leg.packets for leg in conn.reverse] == [10]
    assert (conn.forward_packets, conn.reverse_packets) == (0, 10)


def test_icmp_echo_request_and_reply() -> None:
    common = {"protocol": 1, "src_port": 0, "dst_port": 0, "tcp_flags": 0, "icmp_code": 0}
    request = make_record(
        **common, sequence=1, icmp_type=8, src_addr="10.0.1.20", dst_addr="10.0.0.5",
        start_ms=T0, end_ms=T0 + 3000, packets=4, bytes=336,
    )  # fmt: skip
    reply = make_record(
        **common, sequence=2, icmp_type=0, src_addr="10.0.0.5", dst_addr="10.0.1.20",
        direction="egress", start_ms=T0 + 1, end_ms=T0 + 3001, packets=4, bytes=336,
    )  # fmt: skip
    assert request.flow_id == reply.flow_id
    [conn] = merge([reply, request])
    assert conn.initiator_addr == "10.0.1.20"
    assert [leg.icmp_type for leg in conn.forward] == [8]
    assert [leg.icmp_type for leg in conn.reverse] == [0]
    [only_reply] = merge([reply])
    assert only_reply.initiator_addr == "10.0.1.20"


def test_separate_connections_stay_apart() -> None:
    other = make_record(src_port=51001, dst_addr="10.0.0.5", src_addr="10.0.1.20", dst_port=443)
    conns = merge([*https_connection(), other])
    assert len(conns) == 2
    assert {c.initiator_port for c in conns} == {51000, 51001}


def test_streaming_hands_out_a_connection_once_when_idle() -> None:
    merger = Merger(idle_s=300)
    first = https_connection()
    for record in first[:3]:
        assert merger.feed(record)
    assert merger.expire() == []  # record time has not moved past the idle window
    late = rec(A, 30, forward=True, start=200_000, end=260_000)  # another connection's port
    late = msgspec.structs.replace(
        late, src_port=52000, flow_id=make_record(src_port=52000, src_addr=CLIENT[0],
                                                  dst_addr=SERVER[0], dst_port=443).flow_id
    )  # fmt: skip
    merger.feed(late)
    for record in first[3:]:
        merger.feed(record)
    assert len(merger) == 2
    # nothing for 300 s after the https connection's last packet
    assert merger.expire(T0 + 255_010 + 299_999) == []
    [done] = merger.expire(T0 + 255_010 + 300_000)
    assert done.initiator_port == 51000
    assert done.records == 6
    assert merger.expire(T0 + 255_010 + 300_000) == []
    # a late duplicate of a handed-out record is recognised, not a new connection
    assert not merger.feed(first[0])
    assert merger.duplicates == 1
    assert len(merger) == 1
    [rest] = merger.flush()
    assert rest.initiator_port == 52000
    assert len(merger) == 0


def test_streaming_expires_in_record_time_by_default() -> None:
    merger = Merger(idle_s=60)
    merger.feed(rec(A, 1, forward=True, start=0, end=1000))
    merger.feed(rec(A, 2, forward=True, start=1000, end=2000))
    newer = make_record(exporter=A, sequence=3, src_port=40000, start_ms=T0 + 70_000,
                        end_ms=T0 + 70_500)  # fmt: skip
    merger.feed(newer)
    assert merger.watermark_ms == T0 + 70_500
    [old] = merger.expire()
    assert old.records == 2
    assert len(merger) == 1


def test_streaming_is_bounded() -> None:
    merger = Merger(idle_s=300, max_connections=2, max_remembered=3)
    records = [
        make_record(exporter=A, sequence=i, src_port=40000 + i, start_ms=T0 + i, end_ms=T0 + i)
        for i in range(1, 6)
    ]
    for record in records:
        merger.feed(record)
    assert len(merger) == 2
    assert merger.evicted == 3
    early = merger.expire(T0)  # nothing idle yet: only the evicted ones come out
    assert [c.initiator_port for c in early] == [40001, 40002, 40003]
    assert [c.initiator_port for c in merger.flush()] == [40004, 40005]
    # only the last three handed-out record ids (3, 4, 5) are remembered
    assert not merger.feed(records[2])
    assert merger.feed(records[0])


def test_connection_encodes_as_json() -> None:
    [conn] = merge(https_connection())
    data = msgspec.json.encode(conn)
    assert msgspec.json.decode(data, type=Connection) == conn


_piece = st.tuples(st.booleans(), st.integers(1, 50), st.integers(40, 9000), st.integers(0, 0xFF))


@given(
    pieces=st.lists(_piece, min_size=1, max_size=30),
    dup_indices=st.lists(st.integers(0, 29), max_size=10),
    seed=st.integers(0, 2**32),
)
def test_totals_survive_splitting_duplicates_and_reordering(
    pieces: list[tuple[bool, int, int, int]], dup_indices: list[int], seed: int
) -> None:
    exporters = (A, B, C)
    records = [
        rec(exporters[i % 3], i, forward=fwd, packets=p, nbytes=n, flags=f,
            start=i * 1000, end=i * 1000 + 500)
        for i, (fwd, p, n, f) in enumerate(pieces)
    ]  # fmt: skip
    stream = records + [records[i % len(records)] for i in dup_indices]
    random.Random(seed).shuffle(stream)
    [conn] = merge(stream)
    fwd = [r for r in records if r.src_port == CLIENT[1]]
    rev = [r for r in records if r.src_port == SERVER[1]]
    assert conn.forward_packets + conn.reverse_packets == sum(r.packets for r in records)
    assert conn.forward_bytes + conn.reverse_bytes == sum(r.bytes for r in records)
    ours = {CLIENT[1]: conn.forward_packets, SERVER[1]: conn.reverse_packets}
    if conn.initiator_port == SERVER[1]:
        ours = {CLIENT[1]: conn.reverse_packets, SERVER[1]: conn.forward_packets}
    assert ours[CLIENT[1]] == sum(r.packets for r in fwd)
    assert ours[SERVER[1]] == sum(r.packets for r in rev)
    assert conn.records == len(records)
    assert conn.duplicates == len(stream) - len(records)
    assert conn.start_ms == min(r.start_ms for r in records)
    assert conn.end_ms == max(r.end_ms for r in records)
