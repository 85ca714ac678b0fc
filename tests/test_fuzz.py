"""Property tests: whatever a peer sends, the receive path counts it and never raises.

Inputs are random bytes and the golden datagrams mutated (bit flips, bytes set to values the decoder
branches on, truncations, splices of two datagrams, inserted and deleted bytes). ``decode`` must
return a drop reason or a well-formed result, ``decode_packet`` may raise only ``DecodeError``, and
``Pipeline.feed`` must account every datagram exactly once: each one is dropped with a reason or
counted in exactly one record.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.config import build_config
from collector.errors import DecodeError
from collector.pipeline import Pipeline
from collector.sessions import build_sessions
from collector.wire import Drop, decode, decode_packet
from collector.wire.decode import decode_walk
from collector.wire.flowkey import pack_key, unpack_key

GOLDEN = Path(__file__).parent / "data" / "golden"
OUTER_HEADERS = 14 + 20 + 8  # outer Ethernet, IPv4, UDP of every golden frame
VNI = 0x5A17C3  # the golden vectors' VNI


def _payload(pcap: Path) -> bytes:
    data = pcap.read_bytes()
    (captured,) = struct.unpack_from("<I", data, 32)
    return data[40 + OUTER_HEADERS : 40 + captured]


SEEDS = [_payload(p) for p in sorted(GOLDEN.glob("*.pcap")) if "jumbo" not in p.name]
# what the VXLAN decoder may return; the GENEVE path may also return the GENEVE layer's reasons
DECODE_DROPS = {int(d) for d in Drop if d.is_decode_error and not d.is_geneve}
GENEVE_DROPS = {int(d) for d in Drop if d.is_decode_error}
# byte values the decoder branches on: flags, ethertype halves, IHL/version, extension headers
INTERESTING = [0x00, 0xFF, 0x08, 0x45, 0x4F, 0x60, 0x81, 0x88, 0xA8, 0x86, 0xDD, 0x06, 0x11]
INTERESTING += [0x01, 0x3A, 0x2B, 0x2C, 0x33, 0x3C, 0x87, 0x8B, 0x8C, 0x32, 0x2F]

FUZZ = settings(
    max_examples=300,
    deadline=None,  # no timing in tests: slow CI machines must not turn this red
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A golden datagram with a few mutations; offsets favour the headers, where decisions are made."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "splice", "insert", "delete"]))
        limit = max(len(data) - 1, 0)
        at = draw(st.integers(0, min(limit, 160)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from(INTERESTING))
        elif op == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "splice":
            other = draw(st.sampled_from(SEEDS))
            data = data[:at] + other[draw(st.integers(0, len(other))) :]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


datagrams = st.one_of(mutated(), st.binary(max_size=128), st.sampled_from(SEEDS))


def check_shape(result: Any, drops: set[int] = DECODE_DROPS) -> None:
    """A decode result is a decode drop reason or a well-formed (key, ip_len, tcp_flags)."""
    if isinstance(result, int):
        assert result in drops
        return
    key, ip_len, tcp_flags = result
    assert isinstance(key, bytes)  # one copied object: it outlives the buffer
    vni, src, dst, proto, sport, dport, icmp = unpack_key(key)
    assert pack_key(vni, src, dst, proto, sport, dport, icmp) == key
    assert 0 <= vni < 1 << 24
    assert len(src) == len(dst) and len(src) in (4, 16)
    assert isinstance(src, bytes) and isinstance(dst, bytes)  # copied: they outlive the buffer
    assert 0 <= proto <= 255 and 0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF
    assert -1 <= icmp <= 0xFFFF and 0 <= tcp_flags <= 0xFF
    assert (20 if len(src) == 4 else 40) <= ip_len <= 0xFFFF + 40


def check_decode(data: bytes) -> Any:
    """Decode ``data`` and every prefix of it, the ways the code does; return the full result.

    A prefix is what a session PacketLength or a short read leaves; the live path decodes from a
    larger, reused buffer, so the bytes past ``n`` must change nothing.
    """
    result = decode(data, len(data))
    check_shape(result)
    assert decode(memoryview(data), len(data)) == result
    assert decode_walk(data, len(data)) == result  # the fast path changes nothing but speed
    buf = bytearray(data + b"\x5a" * 40)
    for n in range(len(data)):
        prefix = decode(data[:n], n)
        check_shape(prefix)
        assert decode(buf, n) == prefix
        assert decode_walk(buf, n) == prefix
    return result


def test_every_header_byte_value_fast_path_equals_layer_walk() -> None:
    """Each of the 256 values in each header byte the fast path reads, on datagrams it takes."""
    fast = [seed for seed in SEEDS if len(seed) >= 76 and seed[0] & 0x08]
    assert len(fast) >= 10
    differ = []
    for seed in fast:
        data = bytearray(seed)
        for at in range(76):
            original = data[at]
            for value in range(256):
                data[at] = value
                if decode(data, len(data)) != decode_walk(data, len(data)):
                    differ.append((seed[:24].hex(), at, value))
            data[at] = original
    assert not differ, differ[:5]


@FUZZ
@given(st.binary(max_size=256))
def test_decode_random_bytes(data: bytes) -> None:
    check_decode(data)


@FUZZ
@given(mutated())
def test_decode_mutated_datagrams(data: bytes) -> None:
    check_decode(data)


@FUZZ
@given(datagrams)
def test_decode_packet_raises_only_decode_error(data: bytes) -> None:
    result = check_decode(data)
    try:
        packet = decode_packet(data)
    except DecodeError as exc:
        assert exc.reason == result
        assert exc.reason.is_decode_error
        return
    key, ip_len, tcp_flags = result
    vni, _src, _dst, proto, sport, dport, icmp = unpack_key(key)
    assert (packet.vni, packet.protocol, packet.src_port, packet.dst_port) == (
        vni,
        proto,
        sport,
        dport,
    )
    assert (packet.ip_len, packet.tcp_flags) == (ip_len, tcp_flags)
    assert packet.icmp_type == (None if icmp < 0 else icmp >> 8)
    assert packet.ip_version in (4, 6)


ZERO_CONFIG: dict[str, Any] = {"flows": {"max_flows": 8}}
FILTERED: dict[str, Any] = {
    "flows": {"max_flows": 8, "inactive_timeout_s": 2.0, "active_timeout_s": 5.0},
    "sessions": [
        {"vni": VNI, "name": "web", "addresses": ["10.1.0.10", "2001:db8:1::10"], "filter": "f"},
        {"vni": 7, "name": "other"},
    ],
    "filters": {
        "f": {
            "rules": [
                {
                    "direction": "egress",
                    "rule_number": 10,
                    "action": "reject",
                    "protocol": 17,
                    "source_cidr": "0.0.0.0/0",
                    "destination_cidr": "0.0.0.0/0",
                    "destination_ports": "53",
                },
                {
                    "direction": "egress",
                    "rule_number": 20,
                    "action": "accept",
                    "source_cidr": "0.0.0.0/0",
                    "destination_cidr": "0.0.0.0/0",
                },
                {
                    "direction": "egress",
                    "rule_number": 30,
                    "action": "accept",
                    "source_cidr": "::/0",
                    "destination_cidr": "::/0",
                    "source_ports": "1-65535",
                },
            ]
        }
    },
}
outer_sources = st.sampled_from([None, bytes([10, 1, 0, 10]), bytes(16), bytes([10, 2, 0, 20])])


@settings(FUZZ, max_examples=150)
@given(
    st.sampled_from([ZERO_CONFIG, FILTERED]),
    st.lists(st.tuples(datagrams, st.floats(0, 30), outer_sources), max_size=40),
)
def test_pipeline_accounts_every_datagram(
    settings_: dict[str, Any], fed: list[tuple[bytes, float, bytes | None]]
) -> None:
    config = build_config(settings_)
    pipeline = Pipeline(config, build_sessions(config), exporter="fuzz")
    start = 1_764_100_000.0
    records = []
    expected_bytes = 0
    for i, (data, offset, outer) in enumerate(fed):
        now = start + offset  # out of order on purpose: an NLB may reorder
        pipeline.feed(data, len(data), now, outer)
        result = decode(data, len(data))
        if not isinstance(result, int):
            expected_bytes += result[1]
        if i % 7 == 6:
            records += pipeline.expire(now)
    records += pipeline.expire(start + 31.0)
    records += pipeline.flush()
    stats = pipeline.stats
    assert stats.datagrams == len(fed)
    assert stats.rx_bytes == sum(len(d) for d, _, _ in fed)
    assert sum(r.packets for r in records) == stats.kept
    assert [r.sequence for r in records] == list(range(1, len(records) + 1))
    decode_drops = sum(n for i, n in enumerate(stats.drops) if Drop(i).is_decode_error)
    assert decode_drops == sum(1 for d, _, _ in fed if isinstance(decode(d, len(d)), int))
    if settings_ is ZERO_CONFIG:  # nothing filtered: every decoded byte lands in a record
        assert decode_drops == sum(stats.drops)
        assert sum(r.bytes for r in records) == expected_bytes


# ---- GENEVE from a Gateway Load Balancer --------------------------------------------------------
GENEVE_GOLDEN = GOLDEN / "geneve"
GENEVE_SEEDS = [_payload(p) for p in sorted(GENEVE_GOLDEN.glob("*.pcap"))]
# byte values the GENEVE layer branches on: version/options length, O and C bits, protocol type
# halves, option classes and types (0x0108, critical 0x80), IPv4 version/IHL, UDP, 4789 = 0x12b5
GENEVE_INTERESTING = [0x00, 0xFF, 0x08, 0x40, 0x80, 0xC0, 0x3F, 0x01, 0x81, 0x65, 0x58]
GENEVE_INTERESTING += [0x86, 0xDD, 0x45, 0x46, 0x11, 0x06, 0x12, 0xB5, 0x20, 0x1F]


@st.composite
def mutated_geneve(draw: st.DrawFn) -> bytes:
    """A golden GENEVE datagram with a few mutations, favouring the GENEVE and mirror headers."""
    data = bytearray(draw(st.sampled_from(GENEVE_SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "splice", "insert", "delete"]))
        limit = max(len(data) - 1, 0)
        at = draw(st.integers(0, min(limit, 140)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from(GENEVE_INTERESTING))
        elif op == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "splice":
            other = draw(st.sampled_from(GENEVE_SEEDS + SEEDS))
            data = data[:at] + other[draw(st.integers(0, len(other))) :]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


geneve_datagrams = st.one_of(
    mutated_geneve(), st.binary(max_size=160), st.sampled_from(GENEVE_SEEDS)
)


def check_geneve(data: bytes) -> Any:
    """``decode_gwlb`` on ``data`` and every prefix (from the exact bytes and from a larger
    buffer): a decode drop or a well-formed result, the same as the walk's, and as
    ``decode_geneve``'s (which may raise only ``DecodeError``)."""
    from collector.wire import decode_geneve
    from collector.wire.geneve import decode_gwlb, locate_walk

    def walk(buf: bytes | bytearray, n: int) -> Any:
        located = locate_walk(buf, n)
        return located if isinstance(located, int) else decode_walk(buf, n, located[0])

    result = decode_gwlb(data, len(data))
    check_shape(result, GENEVE_DROPS)
    assert decode_gwlb(memoryview(data), len(data)) == result
    assert walk(data, len(data)) == result
    try:
        packet = decode_geneve(data)
    except DecodeError as exc:
        assert exc.reason == result
    else:
        assert not isinstance(result, int)
        assert (packet.packet.ip_len, packet.packet.tcp_flags) == result[1:]
    buf = bytearray(data + b"\x5a" * 40)
    for n in range(len(data)):
        prefix = decode_gwlb(data[:n], n)
        check_shape(prefix, GENEVE_DROPS)
        assert decode_gwlb(buf, n) == prefix
        assert walk(buf, n) == prefix
    return result


@FUZZ
@given(st.binary(max_size=200))
def test_geneve_random_bytes(data: bytes) -> None:
    check_geneve(data)


@FUZZ
@given(mutated_geneve())
def test_geneve_mutated_datagrams(data: bytes) -> None:
    check_geneve(data)


def test_every_gwlb_header_byte_value_one_read_equals_walk() -> None:
    """Each of the 256 values of each byte the one-read path looks at, on the GWLB vectors."""
    from collector.wire.geneve import decode_gwlb, locate_walk

    seeds = [s for s in GENEVE_SEEDS if len(s) >= 124 and s[:4] == b"\x08\x00\x08\x00"]
    assert len(seeds) >= 5
    differ = []
    for seed in seeds:
        data = bytearray(seed)
        for at in range(min(144, len(data))):
            original = data[at]
            for value in range(256):
                data[at] = value
                located = locate_walk(data, len(data))
                walked = (
                    located
                    if isinstance(located, int)
                    else decode_walk(data, len(data), located[0])
                )
                if decode_gwlb(data, len(data)) != walked:
                    differ.append((seed[:8].hex(), at, value))
            data[at] = original
    assert not differ, differ[:5]


@settings(FUZZ, max_examples=150)
@given(
    st.sampled_from([ZERO_CONFIG, FILTERED]),
    st.lists(
        st.tuples(st.booleans(), geneve_datagrams, datagrams, st.floats(0, 30), outer_sources),
        max_size=40,
    ),
)
def test_pipeline_accounts_every_geneve_datagram(
    settings_: dict[str, Any], fed: list[tuple[bool, bytes, bytes, float, bytes | None]]
) -> None:
    """GENEVE and VXLAN datagrams mixed on one pipeline: each counted once, as a drop (the GENEVE
    ones in the GENEVE drops too) or in exactly one record."""
    from collector.wire.geneve import decode_gwlb

    config = build_config(settings_)
    pipeline = Pipeline(config, build_sessions(config), exporter="fuzz")
    start = 1_764_100_000.0
    records = []
    geneve_decode_drops = 0
    sent = []
    for i, (is_geneve, g, v, offset, outer) in enumerate(fed):
        now = start + offset
        if is_geneve:
            pipeline.feed_geneve(g, len(g), now, outer)
            geneve_decode_drops += isinstance(decode_gwlb(g, len(g)), int)
            sent.append(g)
        else:
            pipeline.feed(v, len(v), now, outer)
            sent.append(v)
        if i % 7 == 6:
            records += pipeline.expire(now)
    records += pipeline.expire(start + 31.0)
    records += pipeline.flush()
    stats = pipeline.stats
    assert stats.datagrams == len(fed)
    assert stats.geneve_datagrams == sum(1 for f in fed if f[0])
    assert stats.rx_bytes == sum(len(d) for d in sent)
    assert sum(r.packets for r in records) == stats.kept
    assert [r.sequence for r in records] == list(range(1, len(records) + 1))
    geneve_decode = sum(n for i, n in enumerate(stats.geneve_drops) if Drop(i).is_decode_error)
    assert geneve_decode == geneve_decode_drops
    assert all(a >= b for a, b in zip(stats.drops, stats.geneve_drops, strict=True))
    # every record's packets count for its session (rejected-and-recorded flows too)
    assert sum(stats.session_datagrams.values()) == sum(r.packets for r in records)
