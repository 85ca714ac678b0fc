# cython: boundscheck=False, wraparound=False, initializedcheck=False
"""Records as goflow2's FlowMessage protobuf (schema/goflow2-flow.proto), length-delimited.

The encoding is written out here (protobuf's wire format is small: varints, tags, length-prefixed
bytes) so the collector needs no protobuf runtime; the tests decode it with the protobuf package
from the .proto, an independent reader. Every message is preceded by its length as a varint, as
goflow2's ``-format=bin`` writes it, in files and in Kafka values alike: ClickHouse's ``Protobuf``
input format (goflow2's ClickHouse example) expects exactly that framing in each Kafka message.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any

from msgspec.structs import astuple

from collector.records import FlowRecord

CONTENT_TYPE = "application/x-protobuf; messageType=flowpb.FlowMessage; delimited=true"
ETYPE_IPV4, ETYPE_IPV6 = 0x0800, 0x86DD
SAMPLING_RATE = 1  # every mirrored packet is counted: nothing is sampled
NS_PER_MS = 1_000_000

# FlowMessage field numbers (goflow2 pb/flow.proto)
F_SAMPLING_RATE = 3
F_SEQUENCE_NUM = 4
F_SRC_ADDR = 6
F_DST_ADDR = 7
F_BYTES = 9
F_PACKETS = 10
F_IN_IF = 18
F_OUT_IF = 19
F_PROTO = 20
F_SRC_PORT = 21
F_DST_PORT = 22
F_FORWARDING_STATUS = 24
F_TCP_FLAGS = 26
F_ETYPE = 30
F_ICMP_TYPE = 31
F_ICMP_CODE = 32
F_OBSERVATION_DOMAIN_ID = 70
F_TIME_RECEIVED_NS = 110
F_TIME_FLOW_START_NS = 111
F_TIME_FLOW_END_NS = 112

WIRE_VARINT, WIRE_LEN = 0, 2  # protobuf wire types


def varint(value: int) -> bytes:
    """Base-128 varint, least significant group first (protobuf encoding guide)."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


# Small values (ports, protocols, flags, most counters) come from a table: no loop per field.
_SMALL = [varint(i) for i in range(1 << 14)]
# The low 14 bits of a larger value as the first two bytes of its varint (continuation bits set).
_LOW14 = [bytes(((i & 0x7F) | 0x80, ((i >> 7) & 0x7F) | 0x80)) for i in range(1 << 14)]
_LARGE = 268_435_456  # 2**28: below it, a value >= 2**14 is _LOW14 then _SMALL


def _uvarint(value: int) -> bytes:
    if value < 16384:
        return _SMALL[value]
    if value < _LARGE:
        return _LOW14[value & 0x3FFF] + _SMALL[value >> 14]
    return _LOW14[value & 0x3FFF] + _LOW14[(value >> 14) & 0x3FFF] + varint(value >> 28)


T_SAMPLING = _tag(F_SAMPLING_RATE, WIRE_VARINT) + varint(SAMPLING_RATE)
T_SEQUENCE = _tag(F_SEQUENCE_NUM, WIRE_VARINT)
T_SRC4 = _tag(F_SRC_ADDR, WIRE_LEN) + b"\x04"
T_DST4 = _tag(F_DST_ADDR, WIRE_LEN) + b"\x04"
T_SRC6 = _tag(F_SRC_ADDR, WIRE_LEN) + b"\x10"
T_DST6 = _tag(F_DST_ADDR, WIRE_LEN) + b"\x10"
T_BYTES = _tag(F_BYTES, WIRE_VARINT)
T_PACKETS = _tag(F_PACKETS, WIRE_VARINT)
T_IN_IF = _tag(F_IN_IF, WIRE_VARINT)
T_OUT_IF = _tag(F_OUT_IF, WIRE_VARINT)
T_PROTO = _tag(F_PROTO, WIRE_VARINT)
T_SRC_PORT = _tag(F_SRC_PORT, WIRE_VARINT)
T_DST_PORT = _tag(F_DST_PORT, WIRE_VARINT)
T_TCP_FLAGS = _tag(F_TCP_FLAGS, WIRE_VARINT)
# forwarding_status as IPFIX's forwardingStatus (RFC 7270) for flows the session's filter rejected
# (records of filters with record_rejected): "Dropped: ACL deny"; accepted flows leave it 0
FORWARDING_REJECTED = 0x81
T_REJECTED = _tag(F_FORWARDING_STATUS, WIRE_VARINT) + varint(FORWARDING_REJECTED)
T_ETYPE4 = _tag(F_ETYPE, WIRE_VARINT) + varint(ETYPE_IPV4)
T_ETYPE6 = _tag(F_ETYPE, WIRE_VARINT) + varint(ETYPE_IPV6)
T_ICMP_TYPE = _tag(F_ICMP_TYPE, WIRE_VARINT)
T_ICMP_CODE = _tag(F_ICMP_CODE, WIRE_VARINT)
T_DOMAIN = _tag(F_OBSERVATION_DOMAIN_ID, WIRE_VARINT)
T_RECEIVED = _tag(F_TIME_RECEIVED_NS, WIRE_VARINT)
T_START = _tag(F_TIME_FLOW_START_NS, WIRE_VARINT)
T_END = _tag(F_TIME_FLOW_END_NS, WIRE_VARINT)
T_SAMPLING_SEQUENCE = T_SAMPLING + T_SEQUENCE

# tag + value of the byte-sized fields, b"" for 0 (proto3 leaves zero scalars out)
_PROTO = [b""] + [T_PROTO + _SMALL[i] for i in range(1, 256)]
_FLAGS = [b""] + [T_TCP_FLAGS + _SMALL[i] for i in range(1, 256)]
_ICMP_TYPE = [b""] + [T_ICMP_TYPE + _SMALL[i] for i in range(1, 256)]
_ICMP_CODE = [b""] + [T_ICMP_CODE + _SMALL[i] for i in range(1, 256)]
_SRC_PORT = [b""] + [T_SRC_PORT + _uvarint(i) for i in range(1, 65536)]
_DST_PORT = [b""] + [T_DST_PORT + _uvarint(i) for i in range(1, 65536)]
_pton = socket.inet_pton

# Tag and value of the three counters below 2**14, b"" for 0 (proto3 leaves zero scalars out); the
# sequence number's entries carry the constant sampling rate in front.
_SEQUENCE = [T_SAMPLING] + [T_SAMPLING_SEQUENCE + _SMALL[i] for i in range(1, 1 << 14)]
_OCTETS = [b""] + [T_BYTES + _SMALL[i] for i in range(1, 1 << 14)]
_PACKETS = [b""] + [T_PACKETS + _SMALL[i] for i in range(1, 1 << 14)]
# The three times as one struct: received (its tag ends the kind's middle), start, end; each time
# is its low 28 bits as two 14-bit groups and the varint of the rest, 5 bytes from 2**56 ns (1972)
# to 2**63 ns (2262). Outside those years the record is written by ``reference_message``.
_TIMES = struct.Struct("2s2s5s2s2s2s5s2s2s2s5s").pack
_TAIL_MIN, _TAIL_END = 1 << 28, 1 << 35  # ns >> 28 with a 5-byte varint

# (vni, direction, protocol, tcp_flags, ip_version, icmp_type, icmp_code, action) -> the encoded
# fields 18-20 (interfaces, protocol), those from 24 to the received-time tag (forwarding status,
# flags, etype, ICMP,
# domain), the address family, the address tags, and the last source and destination addresses
# seen with that kind and their encoding (the ENI's own address is one side of each of its
# records). ICMP type/code come from the sender: the table is bounded, cleared when full.
_KIND_CACHE_MAX = 65_536


class _Last:
    """The last source and destination address texts of a kind and their encoded fields."""

    __slots__ = ("dst", "dst_text", "src", "src_text")

    def __init__(self) -> None:
        self.src_text: str | None = None
        self.src = b""
        self.dst_text: str | None = None
        self.dst = b""


_Kind = tuple[bytes, bytes, int, bytes, bytes, _Last]
_kinds: dict[tuple[int | str | None, ...], _Kind] = {}
# varint(ns >> 28) of a time: it changes every 268 ms, so records of one batch share few; bounded
_TAIL_CACHE_MAX = 4096
_tails: dict[int, bytes] = {}


class _OutOfRangeError(Exception):
    """A time outside the years the fast path's layout covers."""


def _kind(key: tuple[int | str | None, ...]) -> _Kind:
    vni, direction, protocol, flags, version, icmp_type, icmp_code, action = key
    assert isinstance(vni, int) and isinstance(protocol, int) and isinstance(flags, int)
    interface = _uvarint(vni) if vni else b""
    # the ENI as an interface (its VNI): egress flows come in on it, ingress flows go out on it
    head = b"".join(
        (
            T_IN_IF + interface if interface and direction == "egress" else b"",
            T_OUT_IF + interface if interface and direction == "ingress" else b"",
            _PROTO[protocol],
        )
    )
    middle = b"".join(
        (
            T_REJECTED if action == "reject" else b"",
            _FLAGS[flags],
            T_ETYPE4 if version == 4 else T_ETYPE6,
            _ICMP_TYPE[icmp_type] if isinstance(icmp_type, int) else b"",
            _ICMP_CODE[icmp_code] if isinstance(icmp_code, int) else b"",
            T_DOMAIN + interface if interface else b"",
            T_RECEIVED,
        )
    )
    last = _Last()
    if version == 4:
        kind = head, middle, socket.AF_INET, T_SRC4, T_DST4, last
    else:
        kind = head, middle, socket.AF_INET6, T_SRC6, T_DST6, last
    if len(_kinds) >= _KIND_CACHE_MAX:
        _kinds.clear()
    _kinds[key] = kind
    return kind


def _tail(top: int) -> bytes:
    if not _TAIL_MIN <= top < _TAIL_END:
        raise _OutOfRangeError
    if len(_tails) >= _TAIL_CACHE_MAX:
        _tails.clear()
    encoded = _tails[top] = _uvarint(top)
    return encoded


def _field(tag: bytes, value: int) -> bytes:
    return tag + _uvarint(value)


def clear_caches() -> None:
    """Forget every cached encoding (benchmarks start each pass from empty caches)."""
    _kinds.clear()
    _tails.clear()
    for last in _last_addresses:
        last[:] = [None, b""]


def encode_tables(r: FlowRecord) -> bytes:
    """``encode`` of the interpreted build: table lookups, one join, one struct.

    Fields in number order; zero-valued scalars are left out, as proto3 encoders do (decoders read
    them as 0). Equal byte for byte to ``reference_message`` with its length in front
    (tests/test_encode_paths.py); this one trades readability for table lookups, one join of at
    most 10 parts (``bytes.join`` allocates for more) and the times packed by one struct. The
    addresses are of the record's ``ip_version``, as the pipeline makes them (and as ``etype``
    says).
    """
    low = _LOW14
    try:
        n = r.sequence
        if n < 16384:
            sequence = _SEQUENCE[n]
        elif n < _LARGE:
            sequence = T_SAMPLING_SEQUENCE + low[n & 0x3FFF] + _SMALL[n >> 14]
        else:
            n &= 0xFFFFFFFF
            sequence = _SEQUENCE[n] if n < 16384 else _field(T_SAMPLING_SEQUENCE, n)
        n = r.bytes
        if n < 16384:
            octets = _OCTETS[n]
        elif n < _LARGE:
            octets = T_BYTES + low[n & 0x3FFF] + _SMALL[n >> 14]
        else:
            octets = _field(T_BYTES, n)
        n = r.packets
        if n < 16384:
            packets = _PACKETS[n]
        elif n < _LARGE:
            packets = T_PACKETS + low[n & 0x3FFF] + _SMALL[n >> 14]
        else:
            packets = _field(T_PACKETS, n)
        key = (
            r.vni,
            r.direction,
            r.protocol,
            r.tcp_flags,
            r.ip_version,
            r.icmp_type,
            r.icmp_code,
            r.action,
        )
        try:
            head, middle, family, src_tag, dst_tag, last = _kinds[key]
        except KeyError:
            head, middle, family, src_tag, dst_tag, last = _kind(key)
        # the same text object as the kind's last one: its encoding again (no parse)
        text = r.src_addr
        if text is last.src_text:
            src = last.src
        else:
            src = last.src = src_tag + _pton(family, text)
            last.src_text = text
        text = r.dst_addr
        if text is last.dst_text:
            dst = last.dst
        else:
            dst = last.dst = dst_tag + _pton(family, text)
            last.dst_text = text
        ns = r.end_ms * NS_PER_MS
        e0 = low[ns & 0x3FFF]
        e1 = low[(ns >> 14) & 0x3FFF]
        top = ns >> 28
        e2 = _tails.get(top) or _tail(top)
        ns = r.start_ms * NS_PER_MS
        top = ns >> 28
        message = b"".join(
            (
                sequence,
                src,
                dst,
                octets,
                packets,
                head,
                _SRC_PORT[r.src_port],
                _DST_PORT[r.dst_port],
                middle,
                _TIMES(
                    e0,
                    e1,
                    e2,
                    T_START,
                    low[ns & 0x3FFF],
                    low[(ns >> 14) & 0x3FFF],
                    _tails.get(top) or _tail(top),
                    T_END,
                    e0,
                    e1,
                    e2,
                ),
            )
        )
    except _OutOfRangeError:
        message = reference_message(r)
    return _SMALL[len(message)] + message  # a FlowMessage of these fields is < 200 bytes


# ---- the compiled build: every field written in place ----------------------------------------------
# Compiled, the table path above would still pay for its Python objects (a bytes object per
# field, a join, a struct call) and for its tables' cache misses; C writes each varint into one
# buffer instead. Interpreted, these loops are slower than the tables, so each build takes the
# path that is fast for it (``encode``); the tests run both paths in either build against
# ``reference_message``. Typing: goflow2.pxd.

_BUFFER_BYTES = 256  # the longest message (every field at its longest) is < 200 bytes
_out = bytearray(_BUFFER_BYTES)
_out_view = memoryview(_out)  # written through (a C array once compiled)
_MIN_MS = 269  # 2**28 ns and up: below, times are written as ``_time_reference`` pads them
_MAX_MS = (1 << 64) // NS_PER_MS - 1  # the last ms whose ns fit 64 bits
# the tags as numbers (C constants once compiled: goflow2.pxd)
_SAMPLING = (F_SAMPLING_RATE << 3) | WIRE_VARINT
_SEQUENCE_NUM = (F_SEQUENCE_NUM << 3) | WIRE_VARINT
_SRC_ADDR = (F_SRC_ADDR << 3) | WIRE_LEN
_DST_ADDR = (F_DST_ADDR << 3) | WIRE_LEN
_BYTES = (F_BYTES << 3) | WIRE_VARINT
_PACKETS_NUM = (F_PACKETS << 3) | WIRE_VARINT
_IN_IF = (F_IN_IF << 3) | WIRE_VARINT
_OUT_IF = (F_OUT_IF << 3) | WIRE_VARINT
_PROTO_NUM = (F_PROTO << 3) | WIRE_VARINT
_SRC_PORT_NUM = (F_SRC_PORT << 3) | WIRE_VARINT
_DST_PORT_NUM = (F_DST_PORT << 3) | WIRE_VARINT
_FORWARDING = (F_FORWARDING_STATUS << 3) | WIRE_VARINT
_TCP_FLAGS_NUM = (F_TCP_FLAGS << 3) | WIRE_VARINT
_ETYPE = (F_ETYPE << 3) | WIRE_VARINT
_ICMP_TYPE_NUM = (F_ICMP_TYPE << 3) | WIRE_VARINT
_ICMP_CODE_NUM = (F_ICMP_CODE << 3) | WIRE_VARINT
_DOMAIN = (F_OBSERVATION_DOMAIN_ID << 3) | WIRE_VARINT
_RECEIVED = (F_TIME_RECEIVED_NS << 3) | WIRE_VARINT
_START = (F_TIME_FLOW_START_NS << 3) | WIRE_VARINT
_END = (F_TIME_FLOW_END_NS << 3) | WIRE_VARINT
_NS = NS_PER_MS
_REJECTED = FORWARDING_REJECTED
_ETYPE4, _ETYPE6 = ETYPE_IPV4, ETYPE_IPV6
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6


def _put(o: int, value: int) -> int:
    """``value`` as a varint at ``_out[o:]``; returns the offset after it."""
    while value >= 0x80:
        _out_view[o] = (value & 0x7F) | 0x80
        value >>= 7
        o += 1
    _out_view[o] = value
    return o + 1


def _put_field(o: int, tag: int, value: int) -> int:
    """A varint field with a tag below 2**14 (two bytes at most), left out when ``value`` is 0."""
    if not value:
        return o
    if tag < 0x80:
        _out_view[o] = tag
        o += 1
    else:
        _out_view[o] = (tag & 0x7F) | 0x80
        _out_view[o + 1] = tag >> 7
        o += 2
    return _put(o, value)


def _put_bytes(o: int, tag: int, data: bytes) -> int:
    """A length-delimited field (tag below 2**7, ``data`` shorter than 2**7)."""
    n = len(data)
    _out_view[o] = tag
    _out_view[o + 1] = n
    o += 2
    for i in range(n):
        _out_view[o + i] = data[i]
    return o + n


def encode_written(r: FlowRecord) -> bytes:
    """``encode`` of the compiled build: each field's varint written into one buffer, the
    message at offset 2 and its length in the one or two bytes before it."""
    fields = astuple(r)
    try:
        start_ms = fields[_AT_START_MS]
        end_ms = fields[_AT_END_MS]
        if _MIN_MS <= start_ms <= _MAX_MS and _MIN_MS <= end_ms <= _MAX_MS:
            return _written(fields, start_ms, end_ms)
    except OverflowError:  # a value of 2**64 or more: too long for the C varint loop
        pass
    message = reference_message(r)
    return varint(len(message)) + message


# A record's fields in one tuple (one call, where reading 17 attributes costs twice as much once
# compiled), read at their positions in FlowRecord
_FIELDS = FlowRecord.__struct_fields__
_AT_SEQUENCE = _FIELDS.index("sequence")
_AT_VNI = _FIELDS.index("vni")
_AT_DIRECTION = _FIELDS.index("direction")
_AT_IP_VERSION = _FIELDS.index("ip_version")
_AT_PROTOCOL = _FIELDS.index("protocol")
_AT_SRC_ADDR = _FIELDS.index("src_addr")
_AT_DST_ADDR = _FIELDS.index("dst_addr")
_AT_SRC_PORT = _FIELDS.index("src_port")
_AT_DST_PORT = _FIELDS.index("dst_port")
_AT_ICMP_TYPE = _FIELDS.index("icmp_type")
_AT_ICMP_CODE = _FIELDS.index("icmp_code")
_AT_PACKETS = _FIELDS.index("packets")
_AT_BYTES = _FIELDS.index("bytes")
_AT_TCP_FLAGS = _FIELDS.index("tcp_flags")
_AT_ACTION = _FIELDS.index("action")
_AT_START_MS = _FIELDS.index("start_ms")
_AT_END_MS = _FIELDS.index("end_ms")
# the last address text seen on each side of each family and its field: [text, field] for IPv4
# source, IPv4 destination, IPv6 source, IPv6 destination (the ENI's own address is one side of
# each record of its session: parsed once)
_last_addresses: list[list[str | bytes | None]] = [[None, b""] for _ in range(4)]


def _address(slot: int, family: int, text: str) -> bytes:
    last = _last_addresses[slot]
    if last[0] is text:
        packed = last[1]
        assert isinstance(packed, bytes)
        return packed
    packed = _pton(family, text)
    last[0] = text
    last[1] = packed
    return packed


def _ipv4_value(text: str) -> int:
    """A dotted quad (four decimal octets, no leading zeros, nothing else: what inet_pton reads)
    as a 32-bit number; -1 for any other text, left to inet_pton to read or refuse. A C loop
    once compiled, where inet_pton costs a call with argument parsing and a bytes object (the
    same function is in goflow2.py and ipfix.py: a compiled module calls only its own C
    functions, so neither depends on the other being compiled)."""
    value = 0
    octet = 0
    digits = 0
    dots = 0
    for ch in text:
        c = ord(ch)
        if 48 <= c <= 57:  # 0-9
            if digits and not octet:  # a leading zero
                return -1
            octet = octet * 10 + (c - 48)
            if octet > 255:
                return -1
            digits += 1
        elif c == 46 and digits and dots < 3:  # a dot after an octet
            value = (value << 8) | octet
            octet = 0
            digits = 0
            dots += 1
        else:
            return -1
    if dots != 3 or not digits:
        return -1
    return (value << 8) | octet


def _put_address(o: int, tag: int, slot: int, family: int, text: str) -> int:
    """An address field: a dotted quad read in place, any other text by ``_address``."""
    if family == _AF_INET:
        value = _ipv4_value(text)
        if value >= 0:
            _out_view[o] = tag
            _out_view[o + 1] = 4
            _out_view[o + 2] = value >> 24
            _out_view[o + 3] = (value >> 16) & 0xFF
            _out_view[o + 4] = (value >> 8) & 0xFF
            _out_view[o + 5] = value & 0xFF
            return o + 6
    return _put_bytes(o, tag, _address(slot, family, text))


def _written(fields: tuple[Any, ...], start_ms: int, end_ms: int) -> bytes:
    vni = fields[_AT_VNI]
    direction = fields[_AT_DIRECTION]
    v4 = fields[_AT_IP_VERSION] == 4
    family = _AF_INET if v4 else _AF_INET6
    slot = 0 if v4 else 2
    _out_view[2] = _SAMPLING
    _out_view[3] = SAMPLING_RATE
    sequence = fields[_AT_SEQUENCE]
    o = _put_field(4, _SEQUENCE_NUM, sequence & 0xFFFFFFFF)
    o = _put_address(o, _SRC_ADDR, slot, family, fields[_AT_SRC_ADDR])
    o = _put_address(o, _DST_ADDR, slot + 1, family, fields[_AT_DST_ADDR])
    o = _put_field(o, _BYTES, fields[_AT_BYTES])
    o = _put_field(o, _PACKETS_NUM, fields[_AT_PACKETS])
    # the ENI as an interface (its VNI): egress flows come in on it, ingress flows go out on it
    if direction == "egress":
        o = _put_field(o, _IN_IF, vni)
    elif direction == "ingress":
        o = _put_field(o, _OUT_IF, vni)
    o = _put_field(o, _PROTO_NUM, fields[_AT_PROTOCOL])
    o = _put_field(o, _SRC_PORT_NUM, fields[_AT_SRC_PORT])
    o = _put_field(o, _DST_PORT_NUM, fields[_AT_DST_PORT])
    if fields[_AT_ACTION] == "reject":
        o = _put_field(o, _FORWARDING, _REJECTED)
    o = _put_field(o, _TCP_FLAGS_NUM, fields[_AT_TCP_FLAGS])
    o = _put_field(o, _ETYPE, _ETYPE4 if v4 else _ETYPE6)
    icmp = fields[_AT_ICMP_TYPE]
    if icmp is not None:
        o = _put_field(o, _ICMP_TYPE_NUM, icmp)
    icmp = fields[_AT_ICMP_CODE]
    if icmp is not None:
        o = _put_field(o, _ICMP_CODE_NUM, icmp)
    o = _put_field(o, _DOMAIN, vni)
    end_ns = end_ms * _NS
    o = _put_field(o, _RECEIVED, end_ns)
    o = _put_field(o, _START, start_ms * _NS)
    o = _put_field(o, _END, end_ns)
    n = o - 2
    # the buffer as a char pointer once compiled: its slice is one new bytes object
    message = _out
    if n < 0x80:
        _out_view[1] = n
        return bytes(message[1:o])
    _out_view[0] = (n & 0x7F) | 0x80
    _out_view[1] = n >> 7
    return bytes(message[:o])


# which path ``encode`` is: the compiled module's file is not a .py
COMPILED = not __file__.endswith(".py")
encode: Callable[[FlowRecord], bytes] = encode_written if COMPILED else encode_tables
"""One record as a length-delimited FlowMessage (goflow2's ``-format=bin`` framing)."""


def encoder(_: str | None = None) -> Callable[[FlowRecord], bytes]:
    """The value encoder (goflow2 takes no options)."""
    return encode


def flow_message(r: FlowRecord) -> bytes:
    """The FlowMessage of one record, without the length prefix."""
    return encode(r)[1:]


def _scalar(field: int, value: int) -> bytes:
    return _tag(field, WIRE_VARINT) + varint(value) if value else b""


def _time_reference(ns: int) -> bytes:
    # the encoders write the low 28 bits of a time as four groups even below 2**28 ns (the first
    # 0.27 s of 1970): a valid varint, not a minimal one
    minimal = varint(ns)
    if ns >> 28:
        return minimal
    return bytes(b | 0x80 for b in minimal).ljust(4, b"\x80") + b"\x00"


def reference_message(r: FlowRecord) -> bytes:
    """The FlowMessage of ``r`` written field by field: the readable definition of ``encode``."""
    family = socket.AF_INET if r.ip_version == 4 else socket.AF_INET6
    addresses = b""
    for field, text in ((F_SRC_ADDR, r.src_addr), (F_DST_ADDR, r.dst_addr)):
        packed = socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
        addresses += _tag(field, WIRE_LEN) + varint(len(packed)) + packed
    end_ns = r.end_ms * NS_PER_MS
    return b"".join(
        (
            _scalar(F_SAMPLING_RATE, SAMPLING_RATE),
            _scalar(F_SEQUENCE_NUM, r.sequence & 0xFFFFFFFF),
            addresses,
            _scalar(F_BYTES, r.bytes),
            _scalar(F_PACKETS, r.packets),
            _scalar(F_IN_IF, r.vni if r.direction == "egress" else 0),
            _scalar(F_OUT_IF, r.vni if r.direction == "ingress" else 0),
            _scalar(F_PROTO, r.protocol),
            _scalar(F_SRC_PORT, r.src_port),
            _scalar(F_DST_PORT, r.dst_port),
            _scalar(F_FORWARDING_STATUS, FORWARDING_REJECTED if r.action == "reject" else 0),
            _scalar(F_TCP_FLAGS, r.tcp_flags),
            _scalar(F_ETYPE, ETYPE_IPV4 if family == socket.AF_INET else ETYPE_IPV6),
            _scalar(F_ICMP_TYPE, r.icmp_type or 0),
            _scalar(F_ICMP_CODE, r.icmp_code or 0),
            _scalar(F_OBSERVATION_DOMAIN_ID, r.vni),
            _tag(F_TIME_RECEIVED_NS, WIRE_VARINT) + _time_reference(end_ns),
            _tag(F_TIME_FLOW_START_NS, WIRE_VARINT) + _time_reference(r.start_ms * NS_PER_MS),
            _tag(F_TIME_FLOW_END_NS, WIRE_VARINT) + _time_reference(end_ns),
        )
    )
