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


# Small values (ports, protocols, flags, most packet counts) come from a table: no loop per field.
_SMALL = [varint(i) for i in range(1 << 14)]
_NS9 = struct.Struct(">9B")


def _uvarint(value: int) -> bytes:
    if value < 16384:
        return _SMALL[value]
    return varint(value)


def _ns_varint(ms: int) -> bytes:
    """Varint of ms * 10**6; Unix times in ns take 9 bytes from 2004 to 2262, unrolled here."""
    n = ms * NS_PER_MS
    if not (1 << 56) <= n < (1 << 63):
        return varint(n)
    return bytes(
        (
            (n & 0x7F) | 0x80,
            ((n >> 7) & 0x7F) | 0x80,
            ((n >> 14) & 0x7F) | 0x80,
            ((n >> 21) & 0x7F) | 0x80,
            ((n >> 28) & 0x7F) | 0x80,
            ((n >> 35) & 0x7F) | 0x80,
            ((n >> 42) & 0x7F) | 0x80,
            ((n >> 49) & 0x7F) | 0x80,
            n >> 56,
        )
    )


T_SAMPLING = _tag(F_SAMPLING_RATE, WIRE_VARINT) + varint(SAMPLING_RATE)
T_SEQUENCE = _tag(F_SEQUENCE_NUM, WIRE_VARINT)
T_SRC4 = _tag(F_SRC_ADDR, WIRE_LEN) + b"\x04"
T_DST4 = _tag(F_DST_ADDR, WIRE_LEN) + b"\x04"
T_SRC6 = _tag(F_SRC_ADDR, WIRE_LEN) + b"\x10"
T_DST6 = _tag(F_DST_ADDR, WIRE_LEN) + b"\x10"
T_BYTES = _tag(F_BYTES, WIRE_VARINT)
T_PACKETS = _tag(F_PACKETS, WIRE_VARINT)
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

_inet_pton = socket.inet_pton
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6


def flow_message(r: FlowRecord) -> bytes:
    """The FlowMessage of one record, without the length prefix (fields in number order).

    Zero-valued scalars are left out, as proto3 encoders do; decoders read them as 0.
    """
    small = _SMALL
    if r.ip_version == 4:
        addrs = (
            T_SRC4 + _inet_pton(_AF_INET, r.src_addr) + T_DST4 + _inet_pton(_AF_INET, r.dst_addr)
        )
        etype = T_ETYPE4
    else:
        addrs = T_SRC6 + _inet_pton(_AF_INET6, r.src_addr)
        addrs += T_DST6 + _inet_pton(_AF_INET6, r.dst_addr)
        etype = T_ETYPE6
    end = _ns_varint(r.end_ms)
    parts = [T_SAMPLING]
    sequence = r.sequence & 0xFFFFFFFF
    if sequence:
        parts += (T_SEQUENCE, _uvarint(sequence))
    parts.append(addrs)
    if r.bytes:
        parts += (T_BYTES, _uvarint(r.bytes))
    if r.packets:
        parts += (T_PACKETS, _uvarint(r.packets))
    if r.protocol:
        parts += (T_PROTO, small[r.protocol])
    if r.src_port:
        parts += (T_SRC_PORT, _uvarint(r.src_port))
    if r.dst_port:
        parts += (T_DST_PORT, _uvarint(r.dst_port))
    if r.tcp_flags:
        parts += (T_TCP_FLAGS, small[r.tcp_flags])
    parts.append(etype)
    if r.icmp_type:
        parts += (T_ICMP_TYPE, small[r.icmp_type])
    if r.icmp_code:
        parts += (T_ICMP_CODE, small[r.icmp_code])
    if r.vni:
        parts += (T_DOMAIN, _uvarint(r.vni))
    parts += (T_RECEIVED, end, T_START, _ns_varint(r.start_ms), T_END, end)
    return b"".join(parts)


def encode(r: FlowRecord) -> bytes:
    """One record as a length-delimited FlowMessage (goflow2's ``-format=bin`` framing)."""
    message = flow_message(r)
    return _uvarint(len(message)) + message
