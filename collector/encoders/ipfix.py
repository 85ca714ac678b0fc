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
from binascii import unhexlify
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple

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
# RFC 7270 forwardingStatus: accepted flows "Forwarded: unknown" (64), flows the session's filter
# rejected (records of filters with record_rejected) "Dropped: ACL deny" (129)
FORWARDING_STATUS = Element("forwardingStatus", 89, 1)

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
FILTER_RULE = Element("mirrorFilterRuleNumber", 10, 2, enterprise=True)  # 0: none

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
    FILTER_RULE,
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
# IANA forwardingStatus (RFC 7270): status in the top two bits, the reason in the low six
FORWARDING = {"accept": 0x40, "reject": 0x81}  # Forwarded: unknown; Dropped: ACL deny


def template_elements(ip_version: int, *, enterprise: bool) -> tuple[Element, ...]:
    """The fields of the IPv4 or IPv6 data template, fixed-length ones first.

    The order follows how a record is packed (counters and ports in one struct, the few values
    that need a lookup next, then the addresses and the per-session strings), not the registry.
    """
    src, dst, icmp = (SRC_V4, DST_V4, ICMP_V4) if ip_version == 4 else (SRC_V6, DST_V6, ICMP_V6)
    fields: tuple[Element, ...] = (FLOW_START_MS, FLOW_END_MS, OCTETS, PACKETS, SRC_PORT, DST_PORT)
    fields += (PROTOCOL, TCP_FLAGS, icmp, END_REASON, DIRECTION, SEGMENT, INGRESS_IF, EGRESS_IF)
    fields += (FORWARDING_STATUS,)
    if not enterprise:
        return (*fields, src, dst, INTERFACE_NAME)
    fields += (FILTER_RULE, EXPORTER_SEQUENCE, src, dst, CONNECTION_ID, INTERFACE_NAME)
    return (*fields, *ENTERPRISE_ELEMENTS[2:-1])


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


# The longest record: fixed part, two IPv6 addresses, the ids, every string at its bound.
_HEAD_BYTES = 8 * 4 + 2 + 2 + 1 + 2  # flowStart, flowEnd, octets, packets, ports, proto, flags
# icmpTypeCode, end reason, direction, segment, interfaces, forwarding status (and with enterprise
# elements the filter rule)
_KIND_BYTES = 2 + 1 + 1 + 8 + 4 + 4 + 1
_ENTERPRISE_KIND_BYTES = _KIND_BYTES + 2
_LONGEST_RECORD = (
    _HEAD_BYTES + _ENTERPRISE_KIND_BYTES + 8 + 16 + 16 + 8 + 8 * (1 + MAX_STRING_BYTES)
)
# A record kind is what records of one address family share when they share their ICMP type/code,
# end reason, direction, VNI and session strings: the struct of the whole record, the packed
# fixed fields, the encoded strings, built once. ICMP type/code come from the sender: each
# family's table of kinds holds _CACHE_MAX entries and is cleared when full.
_CACHE_MAX = 65_536
_KindKey = tuple[int | str | None, ...]
# (IPv4?, enterprise elements?, bytes of the strings) -> struct; bounded by the string bound
_record_structs: dict[tuple[bool, bool, int], struct.Struct] = {}
_header_into = HEADER.pack_into
_set_header_into = SET_HEADER.pack_into


class _Last:
    """The last source and destination address texts of a kind and their packed forms."""

    __slots__ = ("dst", "dst_text", "src", "src_text")

    def __init__(self) -> None:
        self.src_text: str | None = None
        self.src = b""
        self.dst_text: str | None = None
        self.dst = b""


# (pack_into of the record's struct, its size, fixed bytes, strings, the kind's last addresses)
_Kind = tuple[Callable[..., None], int, bytes, bytes, _Last]


def _record_struct(v4: bool, enterprise: bool, context_bytes: int) -> struct.Struct:
    """One struct for a whole data record of a template: the head, the kind's bytes (icmp type
    and code, end reason, direction, layer2SegmentId, interfaces), exporterSequence, the
    addresses, connectionId and the strings (pre-encoded) in template order."""
    key = (v4, enterprise, context_bytes)
    found = _record_structs.get(key)
    if found is None:
        address = "4s" if v4 else "16s"
        ids = "Q" if enterprise else ""
        connection = "8s" if enterprise else ""
        kind = _ENTERPRISE_KIND_BYTES if enterprise else _KIND_BYTES
        fmt = f">QQQQHHBH{kind}s{ids}{address}{address}{connection}{context_bytes}s"
        found = _record_structs[key] = struct.Struct(fmt)
    return found


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
        self._kinds4: dict[_KindKey, _Kind] = {}
        self._kinds6: dict[_KindKey, _Kind] = {}
        # a message is packed in place here, then copied out
        self._buffer = bytearray(self.max_message_bytes)
        self._view = memoryview(self._buffer)
        floor = HEADER.size + SET_HEADER.size + _LONGEST_RECORD  # templates may go on their own
        if self.max_message_bytes < floor:
            raise ValueError(f"messages of {self.max_message_bytes} bytes cannot hold a record")

    def restart(self) -> None:
        """A new transport session (TCP reconnect): sequence from 0, templates before data."""
        self.sequence = 0
        self.templates_sent_at = None

    def templates(self) -> dict[int, tuple[Element, ...]]:
        """Template id -> its fields."""
        return dict(self._templates)

    def clear_caches(self) -> None:
        """Forget the cached kinds (benchmarks start each pass from empty caches)."""
        self._kinds4.clear()
        self._kinds6.clear()

    def _new_kind(self, key: _KindKey, v4: bool) -> _Kind:
        icmp_type, icmp_code, end_reason, direction, vni, action = key[:6]
        assert isinstance(vni, int) and isinstance(end_reason, str) and isinstance(direction, str)
        assert isinstance(action, str)
        icmp = 0 if icmp_type is None else (int(icmp_type) << 8) | int(icmp_code or 0)
        in_if = vni if direction == "egress" else 0
        out_if = vni if direction == "ingress" else 0
        fixed = struct.pack(
            ">HBBB3xIIIB",
            icmp,
            END_REASONS[end_reason],
            DIRECTIONS[direction],
            SEGMENT_TYPE_VXLAN,
            vni,
            in_if,
            out_if,
            FORWARDING[action],
        )
        strings = key[6:]
        if self.enterprise:  # the filter rule follows the forwarding status
            fixed += struct.pack(">H", strings[0] or 0)
            strings = strings[1:]
        context = b"".join([_string(s if isinstance(s, str) else None) for s in strings])
        record = _record_struct(v4, self.enterprise, len(context))
        kind = record.pack_into, record.size, fixed, context, _Last()
        kinds = self._kinds4 if v4 else self._kinds6
        if len(kinds) >= _CACHE_MAX:
            kinds.clear()
        kinds[key] = kind
        return kind

    def _close(
        self,
        messages: list[tuple[bytes, int]],
        end: int,
        set_start: int,
        set_id: int,
        count: int,
        export_time: int,
        sequence: int,
    ) -> int:
        """Finish the message in the buffer, ``end`` bytes with the set open at ``set_start``
        (dropped if it holds no record); returns the sequence number after it."""
        buf = self._buffer
        if end > set_start + SET_HEADER.size:
            _set_header_into(buf, set_start, set_id, end - set_start)
        else:
            end = set_start
        domain = self.observation_domain_id
        _header_into(buf, 0, VERSION, end, export_time, sequence & 0xFFFFFFFF, domain)
        messages.append((self._view[:end].tobytes(), count))
        return sequence + count

    def encode(
        self, records: Iterable[FlowRecord], now: float, refresh_s: float | None = None
    ) -> list[tuple[bytes, int]]:
        """Messages carrying ``records``, each with its number of data records.

        Templates lead the first message when they are due (``templates_due``). Each message stays
        within ``max_message_bytes``; the sequence number advances by the records of each message.
        IPv4 records go in sets of the IPv4 template, IPv6 ones in sets of the IPv6 template, each
        family in the records' order: a message takes records while the next one fits, as
        ``reference_data_record`` lays each out (tests/test_encode_paths.py), and its set headers
        and header are written when it is full. The records are packed in place, one struct per
        record kind.
        """
        export_time = int(now)
        sequence = self.sequence
        messages: list[tuple[bytes, int]] = []
        buf, top, close = self._buffer, self.max_message_bytes, self._close
        o = HEADER.size  # where the next record, set header or template set goes
        if self.templates_due(now, refresh_s):
            buf[o : o + len(self.template_set)] = self.template_set
            o += len(self.template_set)
            self.templates_sent_at = now
        v4: list[FlowRecord] = []
        v6: list[FlowRecord] = []
        add4, add6 = v4.append, v6.append
        for r in records:
            if r.ip_version == 4:
                add4(r)
            else:
                add6(r)
        new_kind, pton = self._new_kind, socket.inet_pton
        count = 0  # records in the message
        set_id, set_start = 0, o  # the open set (none yet) and where its header goes
        for items, family, kinds, family_set in (
            (v4, socket.AF_INET, self._kinds4, TEMPLATE_V4),
            (v6, socket.AF_INET6, self._kinds6, TEMPLATE_V6),
        ):
            if not items:
                continue
            if o > set_start + SET_HEADER.size:  # the other family's set ends, the message goes on
                _set_header_into(buf, set_start, set_id, o - set_start)
            v4_set = family_set == TEMPLATE_V4
            set_id, set_start = family_set, o
            o += SET_HEADER.size
            # an address is packed again unless it is the text its kind saw last (the ENI's own
            # address is one side of every record of its session); the family is the record's
            # ip_version, as the template's
            if self.enterprise:
                for r in items:
                    key: _KindKey = (
                        r.icmp_type,
                        r.icmp_code,
                        r.end_reason,
                        r.direction,
                        r.vni,
                        r.action,
                        r.filter_rule,
                        r.interface_id,
                        r.session,
                        r.instance_id,
                        r.subnet_id,
                        r.vpc_id,
                        r.az_id,
                        r.account_id,
                        r.region,
                    )
                    try:
                        pack_into, size, fixed, context, last = kinds[key]
                    except KeyError:
                        pack_into, size, fixed, context, last = new_kind(key, v4_set)
                    end = o + size
                    if end > top:
                        sequence = close(
                            messages, o, set_start, set_id, count, export_time, sequence
                        )
                        count, set_start = 0, HEADER.size
                        o = set_start + SET_HEADER.size
                        end = o + size
                    text = r.src_addr
                    if text is last.src_text:
                        src = last.src
                    else:
                        src = last.src = pton(family, text)
                        last.src_text = text
                    text = r.dst_addr
                    if text is last.dst_text:
                        dst = last.dst
                    else:
                        dst = last.dst = pton(family, text)
                        last.dst_text = text
                    pack_into(
                        buf,
                        o,
                        r.start_ms,
                        r.end_ms,
                        r.bytes,
                        r.packets,
                        r.src_port,
                        r.dst_port,
                        r.protocol,
                        r.tcp_flags,
                        fixed,
                        r.sequence,
                        src,
                        dst,
                        unhexlify(r.flow_id),
                        context,
                    )
                    o = end
                    count += 1
            else:
                for r in items:
                    key = (  # without enterprise elements the ENI is the only string
                        r.icmp_type,
                        r.icmp_code,
                        r.end_reason,
                        r.direction,
                        r.vni,
                        r.action,
                        r.interface_id,
                    )
                    try:
                        pack_into, size, fixed, context, last = kinds[key]
                    except KeyError:
                        pack_into, size, fixed, context, last = new_kind(key, v4_set)
                    end = o + size
                    if end > top:
                        sequence = close(
                            messages, o, set_start, set_id, count, export_time, sequence
                        )
                        count, set_start = 0, HEADER.size
                        o = set_start + SET_HEADER.size
                        end = o + size
                    text = r.src_addr
                    if text is last.src_text:
                        src = last.src
                    else:
                        src = last.src = pton(family, text)
                        last.src_text = text
                    text = r.dst_addr
                    if text is last.dst_text:
                        dst = last.dst
                    else:
                        dst = last.dst = pton(family, text)
                        last.dst_text = text
                    pack_into(
                        buf,
                        o,
                        r.start_ms,
                        r.end_ms,
                        r.bytes,
                        r.packets,
                        r.src_port,
                        r.dst_port,
                        r.protocol,
                        r.tcp_flags,
                        fixed,
                        src,
                        dst,
                        context,
                    )
                    o = end
                    count += 1
        if o > HEADER.size:
            sequence = close(messages, o, set_start, set_id, count, export_time, sequence)
        self.sequence = sequence
        return messages

    def reference_data_record(self, r: FlowRecord) -> bytes:
        """One data record written field by field in template order: the readable definition
        of the records ``encode`` packs."""
        values: dict[Element, bytes] = {}
        put = values.__setitem__
        put(FLOW_START_MS, struct.pack(">Q", r.start_ms))
        put(FLOW_END_MS, struct.pack(">Q", r.end_ms))
        put(OCTETS, struct.pack(">Q", r.bytes))
        put(PACKETS, struct.pack(">Q", r.packets))
        put(SRC_PORT, struct.pack(">H", r.src_port))
        put(DST_PORT, struct.pack(">H", r.dst_port))
        put(PROTOCOL, struct.pack(">B", r.protocol))
        put(TCP_FLAGS, struct.pack(">H", r.tcp_flags))
        icmp = 0 if r.icmp_type is None else (r.icmp_type << 8) | (r.icmp_code or 0)
        put(ICMP_V4 if r.ip_version == 4 else ICMP_V6, struct.pack(">H", icmp))
        put(END_REASON, struct.pack(">B", END_REASONS[r.end_reason]))
        put(DIRECTION, struct.pack(">B", DIRECTIONS[r.direction]))
        put(SEGMENT, struct.pack(">Q", (SEGMENT_TYPE_VXLAN << 56) | r.vni))
        put(INGRESS_IF, struct.pack(">I", r.vni if r.direction == "egress" else 0))
        put(EGRESS_IF, struct.pack(">I", r.vni if r.direction == "ingress" else 0))
        put(FORWARDING_STATUS, struct.pack(">B", FORWARDING[r.action]))
        put(FILTER_RULE, struct.pack(">H", r.filter_rule or 0))
        put(EXPORTER_SEQUENCE, struct.pack(">Q", r.sequence))
        for v4_element, v6_element, text in (
            (SRC_V4, SRC_V6, r.src_addr),
            (DST_V4, DST_V6, r.dst_addr),
        ):
            packed = socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
            put(v4_element if r.ip_version == 4 else v6_element, packed)
        put(CONNECTION_ID, bytes.fromhex(r.flow_id))
        put(INTERFACE_NAME, _string(r.interface_id))
        put(SESSION_NAME, _string(r.session))
        put(INSTANCE_ID, _string(r.instance_id))
        put(SUBNET_ID, _string(r.subnet_id))
        put(VPC_ID, _string(r.vpc_id))
        put(AZ_ID, _string(r.az_id))
        put(ACCOUNT_ID, _string(r.account_id))
        put(REGION, _string(r.region))
        tid = TEMPLATE_V4 if r.ip_version == 4 else TEMPLATE_V6
        return b"".join(values[element] for element in self._templates[tid])

    def templates_due(self, now: float, refresh_s: float | None) -> bool:
        """True before the first data of a session and, with ``refresh_s``, every refresh_s."""
        sent = self.templates_sent_at
        return sent is None or (refresh_s is not None and now - sent >= refresh_s)

    def _header(self, length: int, export_time: int) -> bytes:
        return HEADER.pack(
            VERSION, length, export_time, self.sequence & 0xFFFFFFFF, self.observation_domain_id
        )

    def withdrawal(self, now: float) -> bytes:
        """A message withdrawing both templates (section 8.1: a template record with no fields)."""
        body = b"".join(struct.pack(">HH", tid, 0) for tid in self._templates)
        tset = _set(TEMPLATE_SET_ID, body)
        return self._header(HEADER.size + len(tset), int(now)) + tset


def max_message_bytes(mtu_bytes: int, ipv6: bool) -> int:
    """The largest IPFIX message one UDP datagram carries unfragmented on a path of ``mtu_bytes``."""
    return mtu_bytes - (40 if ipv6 else 20) - 8
