"""IPFIX (RFC 7011) messages for flow records: information elements, templates, framing. Sans-IO.

The element numbers are IANA's "IP Flow Information Export (IPFIX) Entities" registry (RFC 7012 and
later additions). What IANA has no element for (the mirror session's name, the AWS context of the
source ENI, the direction-free connection id, the record's exporter sequence) is exported as
enterprise-specific elements under a configurable Private Enterprise Number; docs/integrations.md
carries their registry. IPv4 and IPv6 records use separate templates (RFC 7011 section 3.4.1: a
field's length is fixed by its template, so the address families cannot share one).

``MessageEncoder`` keeps the state RFC 7011 ties to one transport session and Observation Domain:
the sequence number (data records sent before the message, modulo 2**32, section 3.1) and when the
templates were last sent. The I/O side (collector.io.ipfix) owns sockets and clocks and passes
``now`` in.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from operator import attrgetter
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from collector.records import FlowRecord

VERSION = 10  # RFC 7011 section 3.1: IPFIX is version 10 of the NetFlow header layout
HEADER = struct.Struct(">HHIII")  # version, length, export time, sequence number, domain id
SET_HEADER = struct.Struct(">HH")  # set id, length (section 3.3.2)
TEMPLATE_SET_ID = 2  # section 3.3.2
TEMPLATE_V4 = 256  # data set ids start at 256 (section 3.3.2)
TEMPLATE_V6 = 257
VARLEN = 65535  # section 7: variable-length field, length carried in the record
ENTERPRISE_BIT = 0x8000  # section 3.2: the field specifier carries a 4-byte enterprise number
MAX_MESSAGE_BYTES = 65535  # section 3.1: the length field is 16 bits
MAX_STRING_BYTES = 128  # an exported string is cut to this many bytes (at a character boundary)


class Element(NamedTuple):
    """An information element: (enterprise, number) and the length this exporter encodes it with."""

    name: str
    number: int
    length: int
    enterprise: bool = False


# IANA elements, in the order the fixed-length part of a record is packed.
FLOW_START_MS = Element("flowStartMilliseconds", 152, 8)
FLOW_END_MS = Element("flowEndMilliseconds", 153, 8)
OCTETS = Element("octetDeltaCount", 1, 8)
PACKETS = Element("packetDeltaCount", 2, 8)
SRC_V4 = Element("sourceIPv4Address", 8, 4)
DST_V4 = Element("destinationIPv4Address", 12, 4)
SRC_V6 = Element("sourceIPv6Address", 27, 16)
DST_V6 = Element("destinationIPv6Address", 28, 16)
SRC_PORT = Element("sourceTransportPort", 7, 2)
DST_PORT = Element("destinationTransportPort", 11, 2)
PROTOCOL = Element("protocolIdentifier", 4, 1)
TCP_FLAGS = Element("tcpControlBits", 6, 2)  # RFC 7125: unsigned16 (flags in the low byte)
ICMP_V4 = Element("icmpTypeCodeIPv4", 32, 2)  # type * 256 + code
ICMP_V6 = Element("icmpTypeCodeIPv6", 139, 2)
END_REASON = Element("flowEndReason", 136, 1)
DIRECTION = Element("flowDirection", 61, 1)
SEGMENT = Element("layer2SegmentId", 351, 8)  # top byte segment type, low 56 bits the id
# The mirror-source ENI as an interface index (its VNI: one session = one ENI): flows leaving the
# ENI (egress) came in on it, flows to it (ingress) go out on it. Collectors such as Akvorado
# drop flows with neither interface set.
INGRESS_IF = Element("ingressInterface", 10, 4)
EGRESS_IF = Element("egressInterface", 14, 4)
INTERFACE_NAME = Element("interfaceName", 82, VARLEN)  # the mirror-source ENI id

# Enterprise-specific elements (numbers are this project's; the PEN is configurable).
CONNECTION_ID = Element("connectionId", 1, 8, enterprise=True)
EXPORTER_SEQUENCE = Element("exporterSequence", 2, 8, enterprise=True)
SESSION_NAME = Element("mirrorSessionName", 3, VARLEN, enterprise=True)
INSTANCE_ID = Element("awsInstanceId", 4, VARLEN, enterprise=True)
SUBNET_ID = Element("awsSubnetId", 5, VARLEN, enterprise=True)
VPC_ID = Element("awsVpcId", 6, VARLEN, enterprise=True)
AZ_ID = Element("awsAvailabilityZoneId", 7, VARLEN, enterprise=True)
ACCOUNT_ID = Element("awsAccountId", 8, VARLEN, enterprise=True)
REGION = Element("awsRegion", 9, VARLEN, enterprise=True)

ENTERPRISE_ELEMENTS = (
    CONNECTION_ID,
    EXPORTER_SEQUENCE,
    SESSION_NAME,
    INSTANCE_ID,
    SUBNET_ID,
    VPC_ID,
    AZ_ID,
    ACCOUNT_ID,
    REGION,
)

SEGMENT_TYPE_VXLAN = 0x01  # IANA layer2SegmentId: the top byte is the segment type, 0x01 VxLAN
# IANA flowEndReason values
END_REASONS = {
    "inactive_timeout": 0x01,  # idle timeout
    "active_timeout": 0x02,  # active timeout
    "tcp_fin": 0x03,  # end of Flow detected
    "tcp_rst": 0x03,
    "shutdown": 0x04,  # forced end
    "evicted": 0x05,  # lack of resources
}
# IANA flowDirection: 0 ingress, 1 egress. IANA defines no value for "not known"; 0xFF says it.
DIRECTIONS = {"ingress": 0x00, "egress": 0x01, "unknown": 0xFF}


def template_elements(ip_version: int, *, enterprise: bool) -> tuple[Element, ...]:
    """The fields of the IPv4 or IPv6 data template, fixed-length ones first.

    The order follows how a record is packed (counters and ports in one struct, the few values
    that need a lookup next, then the addresses and the per-session strings), not the registry.
    """
    src, dst, icmp = (SRC_V4, DST_V4, ICMP_V4) if ip_version == 4 else (SRC_V6, DST_V6, ICMP_V6)
    fields: tuple[Element, ...] = (FLOW_START_MS, FLOW_END_MS, OCTETS, PACKETS, SRC_PORT, DST_PORT)
    fields += (PROTOCOL, TCP_FLAGS, icmp, END_REASON, DIRECTION, SEGMENT, INGRESS_IF, EGRESS_IF)
    if not enterprise:
        return (*fields, src, dst, INTERFACE_NAME)
    fields += (EXPORTER_SEQUENCE, src, dst, CONNECTION_ID, INTERFACE_NAME)
    return (*fields, *ENTERPRISE_ELEMENTS[2:])


def template_record(template_id: int, elements: Iterable[Element], pen: int) -> bytes:
    """A template record (section 3.4.1): id, field count, field specifiers."""
    fields = list(elements)
    out = [struct.pack(">HH", template_id, len(fields))]
    for element in fields:
        if element.enterprise:
            out.append(struct.pack(">HHI", element.number | ENTERPRISE_BIT, element.length, pen))
        else:
            out.append(struct.pack(">HH", element.number, element.length))
    return b"".join(out)


def _set(set_id: int, body: bytes) -> bytes:
    return SET_HEADER.pack(set_id, SET_HEADER.size + len(body)) + body


def _string(value: str | None) -> bytes:
    """A variable-length string field (section 7): one length byte, UTF-8, cut to the bound."""
    if not value:
        return b"\x00"
    data = value.encode()
    if len(data) > MAX_STRING_BYTES:
        data = data[:MAX_STRING_BYTES].decode(errors="ignore").encode()
    return bytes((len(data),)) + data


# flowStart, flowEnd, octets, packets, sport, dport, proto, flags: one struct, one attrgetter
_HEAD = struct.Struct(">QQQQHHBH")
_head = attrgetter(
    "start_ms", "end_ms", "bytes", "packets", "src_port", "dst_port", "protocol", "tcp_flags"
)
# icmpTypeCode, flowEndReason, flowDirection and the segment type byte of layer2SegmentId come
# from a small table keyed by these (few distinct combinations)
_kind = attrgetter("ip_version", "icmp_type", "icmp_code", "end_reason", "direction")
# the low 32 bits of layer2SegmentId (the VNI), ingress/egressInterface, then exporterSequence
# when enterprise IEs are on
_TAIL = struct.Struct(">III")
_TAIL_ENTERPRISE = struct.Struct(">IIIQ")
_context = attrgetter(
    "interface_id", "session", "instance_id", "subnet_id", "vpc_id", "az_id", "account_id", "region"
)
_CACHE_MAX = 65_536  # entries of each lookup table; bounded (cleared when full)


def _bounded_put(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value


class MessageEncoder:
    """Data records into IPFIX messages for one transport session and Observation Domain."""

    def __init__(
        self,
        observation_domain_id: int,
        max_message_bytes: int,
        enterprise_number: int,
    ) -> None:
        if not 0 <= observation_domain_id < 2**32:
            raise ValueError("observation_domain_id is 32 bits")
        self.observation_domain_id = observation_domain_id
        self.max_message_bytes = min(max_message_bytes, MAX_MESSAGE_BYTES)
        self.enterprise_number = enterprise_number
        self.enterprise = enterprise_number != 0
        self.sequence = 0  # data records sent in this transport session (mod 2**32 on the wire)
        self.templates_sent_at: float | None = None
        self._templates = {
            TEMPLATE_V4: template_elements(4, enterprise=self.enterprise),
            TEMPLATE_V6: template_elements(6, enterprise=self.enterprise),
        }
        body = b"".join(
            template_record(tid, fields, enterprise_number)
            for tid, fields in self._templates.items()
        )
        self.template_set = _set(TEMPLATE_SET_ID, body)
        self._contexts: dict[tuple[str | None, ...], bytes] = {}
        self._addresses: dict[str, bytes] = {}
        self._kinds: dict[tuple[Any, ...], tuple[int, bytes]] = {}
        # the longest record: fixed part, two ids, every string at its bound
        longest = _HEAD.size + 4 + _TAIL_ENTERPRISE.size + 16 + 16 + 8 + 8 * (1 + MAX_STRING_BYTES)
        floor = (
            HEADER.size + SET_HEADER.size + longest
        )  # templates may go in a message of their own
        if self.max_message_bytes < floor:
            raise ValueError(f"messages of {self.max_message_bytes} bytes cannot hold a record")

    def restart(self) -> None:
        """A new transport session (TCP reconnect): sequence from 0, templates before data."""
        self.sequence = 0
        self.templates_sent_at = None

    def templates(self) -> dict[int, tuple[Element, ...]]:
        """Template id -> its fields."""
        return dict(self._templates)

    def _new_context(self, r: FlowRecord) -> bytes:
        """The variable-length part; sessions repeat it for every record, so it is built once."""
        key = _context(r)
        strings = key if self.enterprise else key[:1]
        encoded = b"".join([_string(s) for s in strings])
        _bounded_put(self._contexts, key, encoded)
        return encoded

    def _new_address(self, text: str) -> bytes:
        packed = socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
        _bounded_put(self._addresses, text, packed)
        return packed

    def _new_kind(self, r: FlowRecord) -> tuple[int, bytes]:
        key = _kind(r)
        version, icmp_type, icmp_code, end_reason, direction = key
        icmp = 0 if icmp_type is None else (icmp_type << 8) | (icmp_code or 0)
        packed = struct.pack(
            ">HBBB3x", icmp, END_REASONS[end_reason], DIRECTIONS[direction], SEGMENT_TYPE_VXLAN
        )
        kind = (TEMPLATE_V4 if version == 4 else TEMPLATE_V6), packed
        _bounded_put(self._kinds, key, kind)
        return kind

    def data_records(self, records: Iterable[FlowRecord]) -> tuple[list[bytes], list[bytes]]:
        """The encoded data records, (IPv4 ones, IPv6 ones), each list in the records' order."""
        kinds, addresses, contexts = self._kinds, self._addresses, self._contexts
        head, get_head, get_kind, get_context = _HEAD.pack, _head, _kind, _context
        v4: list[bytes] = []
        v6: list[bytes] = []
        enterprise = self.enterprise
        for r in records:
            tid, kind = kinds.get(get_kind(r)) or self._new_kind(r)
            src = addresses.get(r.src_addr) or self._new_address(r.src_addr)
            dst = addresses.get(r.dst_addr) or self._new_address(r.dst_addr)
            context = contexts.get(get_context(r)) or self._new_context(r)
            vni, direction = r.vni, r.direction
            in_if = vni if direction == "egress" else 0
            out_if = vni if direction == "ingress" else 0
            if enterprise:
                tail = _TAIL_ENTERPRISE.pack(vni, in_if, out_if, r.sequence)
                ident = bytes.fromhex(r.flow_id)
                data = b"".join((head(*get_head(r)), kind, tail, src, dst, ident, context))
            else:
                tail = _TAIL.pack(vni, in_if, out_if)
                data = b"".join((head(*get_head(r)), kind, tail, src, dst, context))
            (v4 if tid == TEMPLATE_V4 else v6).append(data)
        return v4, v6

    def templates_due(self, now: float, refresh_s: float | None) -> bool:
        """True before the first data of a session and, with ``refresh_s``, every refresh_s."""
        sent = self.templates_sent_at
        return sent is None or (refresh_s is not None and now - sent >= refresh_s)

    def _header(self, length: int, export_time: int) -> bytes:
        return HEADER.pack(
            VERSION, length, export_time, self.sequence & 0xFFFFFFFF, self.observation_domain_id
        )

    def encode(
        self, records: Iterable[FlowRecord], now: float, refresh_s: float | None = None
    ) -> list[tuple[bytes, int]]:
        """Messages carrying ``records``, each with its number of data records.

        Templates lead the first message when they are due (``templates_due``). Each message stays
        within ``max_message_bytes``; the sequence number advances by the records of each message.
        IPv4 records go in sets of the IPv4 template, IPv6 ones in sets of the IPv6 template, each
        family in the records' order.
        """
        export_time = int(now)
        messages: list[tuple[bytes, int]] = []
        limit = self.max_message_bytes
        parts: list[bytes] = []
        size = HEADER.size
        count = 0
        if self.templates_due(now, refresh_s):
            parts.append(self.template_set)
            size += len(self.template_set)
            self.templates_sent_at = now
        for set_id, items in zip(
            (TEMPLATE_V4, TEMPLATE_V6), self.data_records(records), strict=True
        ):
            start = 0
            while start < len(items):
                room = limit - size - SET_HEADER.size
                end, used = start, 0
                while end < len(items) and used + len(items[end]) <= room:
                    used += len(items[end])
                    end += 1
                if end == start:  # not even one more record fits: send this message first
                    messages.append((self._header(size, export_time) + b"".join(parts), count))
                    self.sequence += count
                    parts, size, count = [], HEADER.size, 0
                    continue
                parts.append(SET_HEADER.pack(set_id, SET_HEADER.size + used))
                parts.extend(items[start:end])
                size += SET_HEADER.size + used
                count += end - start
                start = end
        if parts:
            messages.append((self._header(size, export_time) + b"".join(parts), count))
            self.sequence += count
        return messages

    def withdrawal(self, now: float) -> bytes:
        """A message withdrawing both templates (section 8.1: a template record with no fields)."""
        body = b"".join(struct.pack(">HH", tid, 0) for tid in self._templates)
        tset = _set(TEMPLATE_SET_ID, body)
        return self._header(HEADER.size + len(tset), int(now)) + tset


def max_message_bytes(mtu_bytes: int, ipv6: bool) -> int:
    """The largest IPFIX message one UDP datagram carries unfragmented on a path of ``mtu_bytes``."""
    return mtu_bytes - (40 if ipv6 else 20) - 8
