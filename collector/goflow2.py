"""Records as goflow2's FlowMessage protobuf (schema/goflow2-flow.proto), length-delimited.

The encoding is written out here (protobuf's wire format is small: varints, tags, length-prefixed
bytes) so the collector needs no protobuf runtime; the tests decode it with the protobuf package
from the .proto, an independent reader. Every message is preceded by its length as a varint, as
goflow2's ``-format=bin`` writes it, in files and in Kafka values alike: ClickHouse's ``Protobuf``
input format (goflow2's ClickHouse example) expects exactly that framing in each Kafka message.
"""

from __future__ import annotations

import socket
from operator import attrgetter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
_HIGH: dict[int, bytes] = {}  # varint(ns >> 28) of recent times: they share their high bits
_HIGH_MAX = 4096


def _uvarint(value: int) -> bytes:
    if value < 16384:
        return _SMALL[value]
    if value < 268_435_456:  # 2**28
        return _LOW14[value & 0x3FFF] + _SMALL[value >> 14]
    return _LOW14[value & 0x3FFF] + _LOW14[(value >> 14) & 0x3FFF] + varint(value >> 28)


def _high(high: int) -> bytes:
    """varint(high) for the bits of a time in ns above the low 28 (cached, bounded)."""
    if len(_HIGH) >= _HIGH_MAX:
        _HIGH.clear()
    # below 2**28 ns (the first 0.27 s of 1970) this is 0x00: a valid varint, not a minimal one
    encoded = _HIGH[high] = varint(high)
    return encoded


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
T_ETYPE4 = _tag(F_ETYPE, WIRE_VARINT) + varint(ETYPE_IPV4)
T_ETYPE6 = _tag(F_ETYPE, WIRE_VARINT) + varint(ETYPE_IPV6)
T_ICMP_TYPE = _tag(F_ICMP_TYPE, WIRE_VARINT)
T_ICMP_CODE = _tag(F_ICMP_CODE, WIRE_VARINT)
T_DOMAIN = _tag(F_OBSERVATION_DOMAIN_ID, WIRE_VARINT)
T_RECEIVED = _tag(F_TIME_RECEIVED_NS, WIRE_VARINT)
T_START = _tag(F_TIME_FLOW_START_NS, WIRE_VARINT)
T_END = _tag(F_TIME_FLOW_END_NS, WIRE_VARINT)

_fields = attrgetter(
    "sequence",
    "bytes",
    "packets",
    "protocol",
    "src_port",
    "dst_port",
    "tcp_flags",
    "icmp_type",
    "icmp_code",
    "vni",
    "start_ms",
    "end_ms",
)
# tag + value of the byte-sized fields, b"" for 0 (proto3 leaves zero scalars out)
_PROTO = [b""] + [T_PROTO + _SMALL[i] for i in range(1, 256)]
_FLAGS = [b""] + [T_TCP_FLAGS + _SMALL[i] for i in range(1, 256)]
_ICMP_TYPE = [b""] + [T_ICMP_TYPE + _SMALL[i] for i in range(1, 256)]
_ICMP_CODE = [b""] + [T_ICMP_CODE + _SMALL[i] for i in range(1, 256)]
_SRC_PORT = [b""] + [T_SRC_PORT + _uvarint(i) for i in range(1, 65536)]
_DST_PORT = [b""] + [T_DST_PORT + _uvarint(i) for i in range(1, 65536)]
_ADDRESS_CACHE_MAX = 65_536
_src: dict[str, bytes] = {}  # address text -> tag, length and packed address (bounded)
_dst: dict[str, bytes] = {}


def _address(cache: dict[str, bytes], v4_tag: bytes, v6_tag: bytes, text: str) -> bytes:
    if ":" in text:
        encoded = v6_tag + socket.inet_pton(socket.AF_INET6, text)
    else:
        encoded = v4_tag + socket.inet_pton(socket.AF_INET, text)
    if len(cache) >= _ADDRESS_CACHE_MAX:
        cache.clear()
    cache[text] = encoded
    return encoded


def flow_message(r: FlowRecord) -> bytes:
    """The FlowMessage of one record, without the length prefix (fields in number order).

    Zero-valued scalars are left out, as proto3 encoders do; decoders read them as 0.
    """
    seq, nbytes, packets, proto, sport, dport, flags, itype, icode, vni, start, end = _fields(r)
    src = _src.get(r.src_addr) or _address(_src, T_SRC4, T_SRC6, r.src_addr)
    dst = _dst.get(r.dst_addr) or _address(_dst, T_DST4, T_DST6, r.dst_addr)
    seq &= 0xFFFFFFFF
    small = _SMALL
    # the ENI as an interface (its VNI): egress flows come in on it, ingress flows go out on it
    direction = r.direction
    interface = (small[vni] if vni < 16384 else _uvarint(vni)) if vni else b""
    in_if = T_IN_IF + interface if interface and direction == "egress" else b""
    out_if = T_OUT_IF + interface if interface and direction == "ingress" else b""
    # the times: low 28 bits from the tables, the high part (changes every 0.27 s) cached
    end_n = end * NS_PER_MS
    start_n = start * NS_PER_MS
    end_high = _HIGH.get(end_n >> 28) or _high(end_n >> 28)
    start_high = _HIGH.get(start_n >> 28) or _high(start_n >> 28)
    low = _LOW14
    end_ns = low[end_n & 0x3FFF] + low[(end_n >> 14) & 0x3FFF] + end_high
    return b"".join(
        (
            T_SAMPLING,
            (T_SEQUENCE + (small[seq] if seq < 16384 else _uvarint(seq))) if seq else b"",
            src,
            dst,
            (T_BYTES + (small[nbytes] if nbytes < 16384 else _uvarint(nbytes))) if nbytes else b"",
            (T_PACKETS + (small[packets] if packets < 16384 else _uvarint(packets)))
            if packets
            else b"",
            in_if,
            out_if,
            _PROTO[proto],
            _SRC_PORT[sport],
            _DST_PORT[dport],
            _FLAGS[flags],
            T_ETYPE4 if r.ip_version == 4 else T_ETYPE6,
            _ICMP_TYPE[itype] if itype else b"",
            _ICMP_CODE[icode] if icode else b"",
            T_DOMAIN + interface if interface else b"",
            T_RECEIVED,
            end_ns,
            T_START,
            low[start_n & 0x3FFF],
            low[(start_n >> 14) & 0x3FFF],
            start_high,
            T_END,
            end_ns,
        )
    )


def encode(r: FlowRecord) -> bytes:
    """One record as a length-delimited FlowMessage (goflow2's ``-format=bin`` framing)."""
    message = flow_message(r)
    return _SMALL[len(message)] + message  # a FlowMessage of these fields is < 200 bytes
