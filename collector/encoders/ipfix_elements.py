"""IPFIX (RFC 7011/7012) information elements and the two data templates of flow records.

The element numbers are IANA's "IP Flow Information Export (IPFIX) Entities" registry (RFC 7012 and
later additions). What IANA has no element for (the mirror session's name, the AWS context of the
source ENI, the direction-free connection id, the record's exporter sequence) is exported as
enterprise-specific elements under a configurable Private Enterprise Number; docs/integrations.md
carries their registry. IPv4 and IPv6 records use separate templates (RFC 7011 section 3.4.1: a
field's length is fixed by its template, so the address families cannot share one).
collector.encoders.ipfix encodes records into messages with them.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
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


def string_field(value: str | None) -> bytes:
    """A variable-length string field (section 7): one length byte, UTF-8, cut to the bound."""
    if not value:
        return b"\x00"
    data = value.encode()
    if len(data) > MAX_STRING_BYTES:
        data = data[:MAX_STRING_BYTES].decode(errors="ignore").encode()
    return bytes((len(data),)) + data


def reference_data_record(r: FlowRecord, elements: Iterable[Element]) -> bytes:
    """One data record of ``r`` written field by field in the order of a template's
    ``elements``: the readable definition of the records collector.encoders.ipfix packs."""
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
    put(INTERFACE_NAME, string_field(r.interface_id))
    put(SESSION_NAME, string_field(r.session))
    put(INSTANCE_ID, string_field(r.instance_id))
    put(SUBNET_ID, string_field(r.subnet_id))
    put(VPC_ID, string_field(r.vpc_id))
    put(AZ_ID, string_field(r.az_id))
    put(ACCOUNT_ID, string_field(r.account_id))
    put(REGION, string_field(r.region))
    return b"".join(values[element] for element in elements)
