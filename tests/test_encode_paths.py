"""The fast goflow2 and IPFIX encoders write exactly what their readable reference paths write.

goflow2's two fast paths (``encode_tables``: tables, caches, one join and one struct per record,
the interpreted build's ``encode``; ``encode_written``: every varint written into one buffer, the
compiled build's) against ``goflow2.reference_message`` (field by field with ``varint``), both
paths in either build, and ``MessageEncoder.encode``
(records packed in place, one struct per record kind) against the plain loop below that lays out
``MessageEncoder.reference_data_record`` (element by element in template order) while records
fit. The readers in test_goflow2.py (protobuf), test_ipfix.py (nfcapd, tshark)
and test_clickhouse.py check the reference meaning; these tests keep the fast paths equal to it.
"""

from __future__ import annotations

import binascii
import itertools
import socket
import struct
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from flow_samples import make_record
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.encode import make_records
from collector.encoders import goflow2, ipfix
from collector.encoders.ipfix import (
    HEADER,
    SET_HEADER,
    TEMPLATE_V4,
    TEMPLATE_V6,
    VERSION,
    MessageEncoder,
    max_message_bytes,
)
from collector.records import FlowRecord

EDGE_VALUES = (0, 1, 127, 128, 16383, 16384, 2**21, 2**28 - 1, 2**28, 2**32 - 1, 2**32, 2**63 - 1)
# Unix ms around the years goflow2's fast path covers (times of 2**56 to 2**63 ns), and now
EDGE_MS = (72_057_594_037, 72_057_594_038, 1_764_100_000_000, 9_223_372_036_854, 9_223_372_036_855)


def edge_records() -> list[FlowRecord]:
    """Each field at the sizes where its encoding changes, on IPv4 and IPv6 records."""
    out = []
    base = (
        make_record(),
        make_record(
            ip_version=6,
            protocol=58,
            src_addr="2600:1f18:abcd::7",
            dst_addr="::ffff:10.0.0.1",
            src_port=0,
            dst_port=0,
            icmp_type=128,
            icmp_code=0,
            direction="egress",
        ),
    )
    for r in base:
        fields = msgspec.structs.asdict(r)
        variants: list[dict[str, Any]] = [
            *({"sequence": v} for v in EDGE_VALUES),
            *({"bytes": v, "packets": v} for v in EDGE_VALUES),
            *({"vni": v} for v in (0, 1, 127, 128, 16383, 16384, 2**24 - 1)),
            *({"start_ms": v, "end_ms": v} for v in (0, 1, 268, 269, 10**6, 4_398_047, 2**44)),
            *({"start_ms": a, "end_ms": b} for a in EDGE_MS for b in EDGE_MS if a <= b),
            *({"src_port": v, "dst_port": 65535 - v} for v in (0, 1, 127, 128, 16383, 16384)),
            *({"tcp_flags": v, "protocol": p} for v, p in ((0, 0), (1, 6), (255, 255))),
            *({"icmp_type": t, "icmp_code": c} for t in (None, 0, 3, 255) for c in (None, 0, 255)),
            *({"direction": d} for d in ("ingress", "egress", "unknown")),
            *({"end_reason": e} for e in ("shutdown", "evicted", "tcp_rst", "tcp_fin")),
            {"session": None, "interface_id": None, "instance_id": "", "region": None},
            {"session": "s" * 300, "region": "é" * 100, "az_id": "x" * 128},
            {"tags": {"team": "web", "env": "prod"}},
            {"session": None, "tags": {"k": "v"}, "account_id": None, "vpc_id": None},
            *({"action": "reject", "filter_rule": n} for n in (None, 1, 100, 32766)),
        ]
        out += [FlowRecord(**{**fields, **variant}) for variant in variants]
    return out


def sample_records() -> list[FlowRecord]:
    return make_records(2000, seed=1) + make_records(500, seed=99) + edge_records()


@st.composite
def records(draw: st.DrawFn) -> FlowRecord:
    v6 = draw(st.booleans())
    address = st.ip_addresses(v=6 if v6 else 4).map(str)
    text = st.none() | st.text(max_size=140)
    counter = st.integers(min_value=0, max_value=2**63 - 1)
    start = draw(st.integers(min_value=0, max_value=2**44))
    return make_record(
        sequence=draw(st.integers(min_value=0, max_value=2**40)),
        vni=draw(st.integers(min_value=0, max_value=2**24 - 1)),
        session=draw(text),
        interface_id=draw(text),
        instance_id=draw(text),
        region=draw(text),
        direction=draw(st.sampled_from(("ingress", "egress", "unknown"))),
        ip_version=6 if v6 else 4,
        protocol=draw(st.integers(min_value=0, max_value=255)),
        src_addr=draw(address),
        dst_addr=draw(address),
        src_port=draw(st.integers(min_value=0, max_value=65535)),
        dst_port=draw(st.integers(min_value=0, max_value=65535)),
        icmp_type=draw(st.none() | st.integers(min_value=0, max_value=255)),
        icmp_code=draw(st.none() | st.integers(min_value=0, max_value=255)),
        packets=draw(counter),
        bytes=draw(counter),
        tcp_flags=draw(st.integers(min_value=0, max_value=255)),
        start_ms=start,
        end_ms=start + draw(st.integers(min_value=0, max_value=2**32)),
        end_reason=draw(
            st.sampled_from(("active_timeout", "inactive_timeout", "tcp_fin", "shutdown"))
        ),
        action=draw(st.sampled_from(("accept", "reject"))),
        filter_rule=draw(st.none() | st.integers(min_value=1, max_value=32766)),
    )


# ---- IPv4 texts -----------------------------------------------------------------------------------


def inet_pton_value(text: str) -> int:
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError):
        return -1


@pytest.mark.parametrize(
    "text",
    [
        *("0.0.0.0", "255.255.255.255", "10.0.1.25", "100.200.10.0", "1.2.3.0"),
        *("1.2.3", "1.2.3.4.", ".1.2.3", "1..2.3", "1.2.3.4.5", "", "...", "1.2.3.-4"),
        *("01.2.3.4", "1.2.3.04", "0.0.0.00", "00.1.1.1", "1.2.3.256", "999.1.1.1"),
        *(" 1.2.3.4", "1.2.3.4 ", "1.2.3.4\x00", "\uff11.2.3.4", "1e1.2.3.4", "::ffff:1.2.3.4"),
    ],
)
def test_a_dotted_quad_is_read_as_inet_pton_reads_it_and_nothing_else_is(text: str) -> None:
    assert goflow2._ipv4_value(text) == inet_pton_value(text)
    assert ipfix._ipv4_value(text) == inet_pton_value(text)


@settings(max_examples=400, deadline=None)
@given(
    text=st.ip_addresses(v=4).map(str)
    | st.text(alphabet="0123456789.", max_size=18)
    | st.lists(st.integers(min_value=0, max_value=999).map(str), min_size=1, max_size=6).map(
        ".".join
    )
)
def test_ipv4_texts_read_as_inet_pton_reads_them(text: str) -> None:
    assert goflow2._ipv4_value(text) == ipfix._ipv4_value(text) == inet_pton_value(text)


# ---- goflow2 ------------------------------------------------------------------------------------


def delimited(message: bytes) -> bytes:
    return goflow2.varint(len(message)) + message


GOFLOW2_PATHS = [
    pytest.param(goflow2.encode_tables, id="tables"),
    pytest.param(goflow2.encode_written, id="written"),
]


def test_goflow2_encode_is_the_path_of_the_build() -> None:
    assert goflow2.encode is (goflow2.encode_written if goflow2.COMPILED else goflow2.encode_tables)


@pytest.mark.parametrize("encode", GOFLOW2_PATHS)
def test_goflow2_fast_path_equals_the_reference_on_every_sample(
    encode: Callable[[FlowRecord], bytes],
) -> None:
    goflow2.clear_caches()
    for r in sample_records():
        assert encode(r) == delimited(goflow2.reference_message(r)), r
    for r in sample_records()[:100]:
        assert goflow2.flow_message(r) == goflow2.reference_message(r)


@settings(max_examples=400, deadline=None)
@given(r=records())
def test_goflow2_fast_path_equals_the_reference(r: FlowRecord) -> None:
    expected = delimited(goflow2.reference_message(r))
    assert goflow2.encode_tables(r) == expected
    assert goflow2.encode_written(r) == expected


def test_goflow2_counters_beyond_64_bits_are_written_as_the_reference_writes_them() -> None:
    """The compiled varint loop takes 64 bits: longer counters go the reference's way."""
    for value in (2**64 - 1, 2**64, 2**70):
        r = make_record(bytes=value, packets=value)
        expected = delimited(goflow2.reference_message(r))
        assert goflow2.encode_written(r) == expected
        assert goflow2.encode(r) == expected


def test_goflow2_caches_are_bounded_and_change_no_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(goflow2, "_KIND_CACHE_MAX", 8)
    monkeypatch.setattr(goflow2, "_TAIL_CACHE_MAX", 2)
    goflow2.clear_caches()
    for icmp_type, ms in itertools.product(range(40), (1, 2**42, 2**43, 3 * 2**42)):
        r = make_record(protocol=1, src_port=0, dst_port=0, icmp_type=icmp_type, icmp_code=0)
        r = FlowRecord(**{**msgspec.structs.asdict(r), "start_ms": ms // 10**6, "end_ms": ms})
        assert goflow2.encode_tables(r) == delimited(goflow2.reference_message(r))
        assert len(goflow2._kinds) <= 8
        assert len(goflow2._tails) <= 2
    goflow2.clear_caches()


def same_kind_records() -> list[FlowRecord]:
    """Records of one kind whose addresses repeat as the same text object, as equal texts in
    other objects, alternate, and change between records."""
    a, b = "10.0.0.1", "10.0.0.2"
    texts = [a, a, "".join(["10.0.0.", "1"]), b, a, b, b, "10.0.0.3", a]
    return [
        make_record(sequence=i, src_addr=src, dst_addr=dst)
        for i, (src, dst) in enumerate(zip(texts, [*texts[3:], *texts[:3]], strict=True))
    ]


@pytest.mark.parametrize("encode", GOFLOW2_PATHS)
def test_goflow2_addresses_seen_last_change_no_byte(encode: Callable[[FlowRecord], bytes]) -> None:
    goflow2.clear_caches()
    for r in same_kind_records() * 2:
        assert encode(r) == delimited(goflow2.reference_message(r))


# ---- IPFIX --------------------------------------------------------------------------------------


ENCODERS = [
    pytest.param(1500, False, 32473, id="udp-1500-enterprise"),
    pytest.param(1280, True, 32473, id="udp-1280-v6-enterprise"),
    pytest.param(1500, False, 0, id="udp-1500-iana-only"),
    pytest.param(None, False, 32473, id="tcp-65535"),
]


def new_encoder(mtu: int | None, ipv6: bool, pen: int) -> MessageEncoder:
    size = 65535 if mtu is None else max_message_bytes(mtu, ipv6=ipv6)
    return MessageEncoder(7, size, pen)


def reference_encode(
    encoder: MessageEncoder, records: list[FlowRecord], now: float, templates: bool
) -> list[tuple[bytes, int]]:
    """Messages as RFC 7011 lays them out, record by record: templates first when due, then the
    IPv4 records in sets of their template and the IPv6 ones in sets of theirs, each record in
    the current message while it fits, else in a new one."""
    messages: list[tuple[bytes, int]] = []
    body: list[bytes] = [encoder.template_set] if templates else []
    count = 0
    sequence = encoder.sequence

    def send() -> None:
        nonlocal body, count, sequence
        length = HEADER.size + sum(map(len, body))
        head = HEADER.pack(VERSION, length, int(now), sequence & 0xFFFFFFFF, 7)
        messages.append((head + b"".join(body), count))
        sequence += count
        body, count = [], 0

    for set_id in (TEMPLATE_V4, TEMPLATE_V6):
        data = [
            encoder.reference_data_record(r)
            for r in records
            if (r.ip_version == 4) == (set_id == TEMPLATE_V4)
        ]
        current: list[bytes] = []
        for record in data:
            used = HEADER.size + sum(map(len, body)) + SET_HEADER.size + sum(map(len, current))
            if used + len(record) > encoder.max_message_bytes:
                if current:
                    body.append(SET_HEADER.pack(set_id, SET_HEADER.size + sum(map(len, current))))
                    body += current
                    count += len(current)
                    current = []
                send()
            current.append(record)
        if current:
            body.append(SET_HEADER.pack(set_id, SET_HEADER.size + sum(map(len, current))))
            body += current
            count += len(current)
    if body:
        send()
    return messages


@pytest.fixture(params=["packed", "written"])
def ipfix_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each IPFIX test on both record paths, whichever build runs: ``_fill_packed`` (one struct
    per record, the interpreted build's) and ``_fill_written`` (fields written in place, the
    compiled build's)."""
    monkeypatch.setattr(ipfix, "COMPILED", request.param == "written")
    return str(request.param)


@pytest.mark.usefixtures("ipfix_path")
@pytest.mark.parametrize(("mtu", "ipv6", "pen"), ENCODERS)
def test_ipfix_messages_equal_the_record_by_record_layout(
    mtu: int | None, ipv6: bool, pen: int
) -> None:
    encoder = new_encoder(mtu, ipv6, pen)
    reference = new_encoder(mtu, ipv6, pen)
    samples = sample_records()
    # batches of every size the sinks hand over, in a row: sequence numbers carry on
    for batch in (samples[:1], samples[1:900], samples[900:901], samples[901:], [], samples):
        due = reference.templates_due(1_764_100_000.0, 60.0)
        expected = reference_encode(reference, batch, 1_764_100_000.0, due)
        if due:
            reference.templates_sent_at = 1_764_100_000.0
        reference.sequence += sum(n for _, n in expected)
        assert encoder.encode(batch, 1_764_100_000.0, 60.0) == expected
        assert encoder.sequence == reference.sequence
    for message, count in encoder.encode(samples, 1_764_100_100.0, 60.0):
        assert len(message) <= encoder.max_message_bytes
        version, length = struct.unpack_from(">HH", message)
        assert (version, length) == (VERSION, len(message))
        assert count > 0


@settings(max_examples=150, deadline=None)
@given(batch=st.lists(records(), max_size=40))
def test_ipfix_fast_paths_equal_the_reference(batch: list[FlowRecord]) -> None:
    build = ipfix.COMPILED
    try:
        for written in (False, True):
            ipfix.COMPILED = written
            encoder = new_encoder(1280, False, 32473)
            expected = reference_encode(encoder, batch, 1_764_100_000.0, templates=True)
            assert encoder.encode(batch, 1_764_100_000.0) == expected
    finally:
        ipfix.COMPILED = build


@pytest.mark.usefixtures("ipfix_path")
@pytest.mark.parametrize("flow_id", ["00ff10a0b0c0d0e0", "00FF10A0B0C0D0E0", "00fF10a0B0c0D0e0"])
def test_ipfix_connection_ids_of_either_case_are_their_octets(flow_id: str) -> None:
    batch = [make_record(flow_id=flow_id)]
    encoder = new_encoder(1500, False, 32473)
    expected = reference_encode(encoder, batch, 1.0, templates=True)
    assert encoder.encode(batch, 1.0) == expected


@pytest.mark.parametrize("flow_id", ["abcd", "00ff10a0b0c0d0e0ff", ""])
def test_ipfix_connection_ids_of_another_length_are_cut_or_padded_alike_on_both_paths(
    flow_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """connectionId is 8 octets: a longer hex text is cut, a shorter one padded with zeros."""
    batch = [make_record(flow_id=flow_id)]
    messages = []
    for written in (False, True):
        monkeypatch.setattr(ipfix, "COMPILED", written)
        messages.append(new_encoder(1500, False, 32473).encode(batch, 1.0))
    assert messages[0] == messages[1]
    octets = bytes.fromhex(flow_id)[:8].ljust(8, b"\x00")
    assert octets in messages[0][0][0]


@pytest.mark.parametrize(
    "fields",
    [
        {"bytes": 2**64},
        {"packets": -1},
        {"src_port": 65536},
        {"protocol": 256},
        {"sequence": 2**64},
    ],
)
def test_an_ipfix_value_its_field_cannot_hold_is_refused_alike_by_both_builds(
    fields: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """struct refuses it on the packed path; the compiled written path's C conversion refuses it
    too and says so as struct does (the written path run interpreted, which no build uses,
    takes the low bits: it is held to the reference on values that fit)."""
    record = make_record(flow_id="00ff10a0b0c0d0e0", **fields)
    for written in (False, True) if ipfix.COMPILED else (False,):
        monkeypatch.setattr(ipfix, "COMPILED", written)
        with pytest.raises(struct.error):
            new_encoder(1500, False, 32473).encode([record], 1.0)


@pytest.mark.usefixtures("ipfix_path")
@pytest.mark.parametrize("flow_id", ["00ff10a0b0c0d0eg", "0"])
def test_an_ipfix_connection_id_that_is_not_hex_is_refused(flow_id: str) -> None:
    with pytest.raises(binascii.Error):
        new_encoder(1500, False, 32473).encode([make_record(flow_id=flow_id)], 1.0)


@pytest.mark.usefixtures("ipfix_path")
def test_ipfix_kind_tables_are_bounded_and_change_no_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ipfix, "_CACHE_MAX", 8)
    encoder = new_encoder(1500, False, 32473)
    batch = [
        make_record(protocol=1, src_port=0, dst_port=0, icmp_type=t, icmp_code=c, ip_version=v, **a)
        for t in range(20)
        for c in range(3)
        for v, a in ((4, {}), (6, {"src_addr": "2600:1f18::1", "dst_addr": "2600:1f18::2"}))
    ]
    expected = reference_encode(encoder, batch, 1.0, templates=True)
    assert encoder.encode(batch, 1.0) == expected
    assert len(encoder._kinds4) <= 8
    assert len(encoder._kinds6) <= 8


@pytest.mark.usefixtures("ipfix_path")
def test_ipfix_addresses_seen_last_change_no_byte() -> None:
    encoder = new_encoder(1500, False, 32473)
    batch = same_kind_records()
    for now in (1.0, 2.0):
        expected = reference_encode(encoder, batch, now, templates=now == 1.0)
        assert encoder.encode(batch, now, 60.0) == expected
        encoder.sequence = 0


def test_ipfix_templates_alone_when_due_with_no_records() -> None:
    encoder = new_encoder(1500, False, 32473)
    (message, count), *rest = encoder.encode([], 1.0, 60.0)
    assert (message, count, rest) == (reference_encode(encoder, [], 1.0, True)[0][0], 0, [])
    assert encoder.encode([], 2.0, 60.0) == []


def test_a_message_size_too_small_for_the_longest_record_is_refused() -> None:
    longest = make_record(
        ip_version=6,
        src_addr="2600:1f18::1",
        dst_addr="2600:1f18::2",
        **dict.fromkeys(("session", "interface_id", "instance_id", "subnet_id"), "x" * 200),
        **dict.fromkeys(("vpc_id", "az_id", "account_id", "region"), "y" * 200),
    )
    size = (
        HEADER.size
        + SET_HEADER.size
        + len(new_encoder(None, False, 32473).reference_data_record(longest))
    )
    encoder = MessageEncoder(1, size, 32473)  # the smallest size that must work
    ((message, count),) = encoder.encode([longest], 1.0, None)[1:]
    assert (len(message), count) == (size, 1)
    with pytest.raises(ValueError, match="cannot hold a record"):
        MessageEncoder(1, size - 1, 32473)
