"""GENEVE (RFC 8926) as a Gateway Load Balancer sends it: the header, its options, the inner datagram.

A GWLB endpoint as a mirror target hands each VXLAN datagram of Traffic Mirroring (outer IPv4/UDP
4789/VXLAN/...) to the Gateway Load Balancer, which forwards it to a target wrapped in GENEVE on UDP
6081: a GENEVE header with AWS's options (see docs/geneve.md for the layout and its sources), then
the mirror datagram exactly as the source sent it, IP header first (protocol type 0x0800 or 0x86DD;
0x6558, an Ethernet frame, is accepted for other GENEVE senders).

``locate`` finds where the VXLAN header starts so that ``decode`` reads it in place, at an offset
into the same buffer (no slice, no copy). Its first try is one precompiled read covering the layout
the GWLB always sends (8 octets of header, its three options, an inner IPv4 header without options
and the UDP header); anything else is walked field by field (``locate_walk``), with the same result.
``gwlb_options`` reads the AWS options once per new flow. ``decode_geneve`` is the readable form for
tools and tests.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from collector.errors import DecodeError
from collector.wire import ethernet, ip, l4, vxlan
from collector.wire.decode import Packet, decode_packet
from collector.wire.drops import Drop

GENEVE_PORT = 6081  # RFC 8926 s3.3: IANA-assigned destination port
HEADER_LEN = 8  # RFC 8926 s3.4: the fixed part, before the options
VERSION_SHIFT = 6  # RFC 8926 s3.4: Ver is the top 2 bits of the first octet; only 0 is defined
OPT_LEN_MASK = 0x3F  # RFC 8926 s3.4: the options' length in 4-octet multiples (low 6 bits)
FLAG_O = 0x80  # RFC 8926 s3.4: a control packet; its payload must not be forwarded as data
FLAG_C = 0x40  # RFC 8926 s3.4: critical options present: the options must be parsed
PROTOCOL_IPV4 = 0x0800  # RFC 8926 s3.4: Protocol Type is an Ethertype
PROTOCOL_IPV6 = 0x86DD
PROTOCOL_ETHERNET = 0x6558  # Transparent Ethernet Bridging
# flags/version octet, flags octet, protocol type, VNI (24 bits) + reserved octet
HEADER = struct.Struct("!BBHI")

# RFC 8926 s3.5: option class (16), type (8, the top bit is the critical bit), 3 reserved bits and
# the option data's length in 4-octet multiples (5 bits), then the data
OPTION_HEADER = struct.Struct("!HBB")
OPTION_HEADER_LEN = 4
OPTION_CRITICAL = 0x80
OPTION_LEN_MASK = 0x1F

# AWS Gateway Load Balancer options (docs/geneve.md): class 0x0108
AWS_OPTION_CLASS = 0x0108
GWLB_ENDPOINT_ID = 1  # 8 octets: the GWLB endpoint (vpce-...) the traffic came through
GWLB_ATTACHMENT_ID = 2  # 8 octets
GWLB_FLOW_COOKIE = 3  # 4 octets
GWLB_OPTION_LENGTHS = {GWLB_ENDPOINT_ID: 8, GWLB_ATTACHMENT_ID: 8, GWLB_FLOW_COOKIE: 4}
U64 = struct.Struct("!Q")
U32 = struct.Struct("!I")
ENDPOINT_ID_DIGITS = 17  # how AWS writes an endpoint id: vpce- and 17 hex digits


def _option_word(option_type: int) -> int:
    """The first 4 octets of a GWLB option as the GWLB writes it (not critical)."""
    return AWS_OPTION_CLASS << 16 | option_type << 8 | GWLB_OPTION_LENGTHS[option_type] // 4


# The layout every GWLB datagram has: version 0, 8 words of options (the three AWS options in
# order), no flags, an IPv4 inner packet; the inner IPv4 header without options; UDP. One read
# takes the header word, the three option words, the inner version/IHL, fragment field, protocol
# and the UDP destination port; the options' data and the inner addresses stay in the buffer.
GWLB_OPTIONS_LEN = 32
GWLB_HEAD = (GWLB_OPTIONS_LEN // 4) << 24 | PROTOCOL_IPV4  # first 4 octets: 0x08 0x00 0x0800
GWLB_OPTION_WORDS = (
    _option_word(GWLB_ENDPOINT_ID),
    _option_word(GWLB_ATTACHMENT_ID),
    _option_word(GWLB_FLOW_COOKIE),
)
GWLB_FAST = struct.Struct("!I4xI8xI8xI4xB5xHxB10x2xH4x")
GWLB_FAST_LEN = GWLB_FAST.size  # 68: where VXLAN starts in the GWLB layout
GWLB_INNER_IP = HEADER_LEN + GWLB_OPTIONS_LEN  # 40: the mirror datagram's IPv4 header
GWLB_INNER_SRC = GWLB_INNER_IP + 12  # its source address: the mirror source ENI's
IPV4_NO_OPTIONS = 0x45
IPV4_MF_OFFSET = 0x3FFF  # RFC 791: more-fragments bit and fragment offset: any fragment
IPV6_SRC_OFFSET = 8
IPV4_SRC_OFFSET = 12
UDP_HEADER_LEN = 8
VXLAN_PORT = vxlan.VXLAN_PORT
MAX_OPTIONS = 63  # 252 octets of options hold at most 63 option headers: the walk is bounded

_B = struct.Struct("!B")
_PORTS = l4.PORTS
_IPV4 = ip.IPV4
_IPV6 = ip.IPV6
_U16 = ethernet.U16

_SHORT = int(Drop.GENEVE_SHORT)
_VERSION = int(Drop.GENEVE_VERSION)
_CONTROL = int(Drop.GENEVE_CONTROL)
_OPTION_OVERRUN = int(Drop.GENEVE_OPTION_OVERRUN)
_CRITICAL = int(Drop.GENEVE_CRITICAL_OPTION)
_PROTOCOL = int(Drop.GENEVE_PROTOCOL)
_INNER_SHORT = int(Drop.GENEVE_INNER_SHORT)
_INNER_HEADER = int(Drop.GENEVE_INNER_HEADER)
_INNER_FRAGMENT = int(Drop.GENEVE_INNER_FRAGMENT)
_NOT_VXLAN = int(Drop.GENEVE_INNER_NOT_VXLAN)

Located = tuple[int, int]
"""(offset of the VXLAN header, offset of the inner source address) in the datagram."""


def locate(buf: bytes | bytearray | memoryview, n: int) -> Located | int:
    """Where the VXLAN header and the mirror source's address are in a GENEVE datagram of ``n``
    bytes, or a ``Drop`` value as a plain int. Never raises for any content of ``buf``."""
    if n >= GWLB_FAST_LEN:
        head, o1, o2, o3, vihl, frag, proto, dport = GWLB_FAST.unpack_from(buf, 0)
        if (
            head == GWLB_HEAD
            and o1 == GWLB_OPTION_WORDS[0]
            and o2 == GWLB_OPTION_WORDS[1]
            and o3 == GWLB_OPTION_WORDS[2]
            and vihl == IPV4_NO_OPTIONS
            and not frag & IPV4_MF_OFFSET
            and proto == l4.IPPROTO_UDP
            and dport == VXLAN_PORT
        ):
            return GWLB_FAST_LEN, GWLB_INNER_SRC
    return locate_walk(buf, n)


def locate_walk(buf: bytes | bytearray | memoryview, n: int) -> Located | int:
    """``locate`` field by field: any option list, IPv6 or Ethernet inside, IPv4 options."""
    if n < HEADER_LEN:
        return _SHORT
    first, flags, protocol, _ = HEADER.unpack_from(buf, 0)
    if first >> VERSION_SHIFT:
        return _VERSION
    if flags & FLAG_O:
        return _CONTROL
    off = HEADER_LEN + ((first & OPT_LEN_MASK) << 2)
    if n < off:
        return _OPTION_OVERRUN
    checked = check_options(buf, off)
    if checked:
        return checked
    if protocol == PROTOCOL_ETHERNET:  # an Ethernet frame around the mirror datagram
        if n < off + ethernet.ETHERNET_HEADER_LEN:
            return _INNER_SHORT
        (protocol,) = _U16.unpack_from(buf, off + ethernet.ETHERTYPE_OFFSET)
        off += ethernet.ETHERNET_HEADER_LEN
        if protocol not in (PROTOCOL_IPV4, PROTOCOL_IPV6):
            return _NOT_VXLAN
    if protocol == PROTOCOL_IPV4:
        if n < off + ip.IPV4_MIN_HEADER_LEN:
            return _INNER_SHORT
        vihl, ip_len, frag, proto, _, _ = _IPV4.unpack_from(buf, off)
        ihl = (vihl & 15) << 2
        if vihl >> 4 != 4 or ihl < ip.IPV4_MIN_HEADER_LEN or ip_len < ihl:
            return _INNER_HEADER
        if frag & IPV4_MF_OFFSET:
            return _INNER_FRAGMENT
        src = off + IPV4_SRC_OFFSET
        off += ihl
    elif protocol == PROTOCOL_IPV6:
        if n < off + ip.IPV6_HEADER_LEN:
            return _INNER_SHORT
        vtc, _, proto, _, _ = _IPV6.unpack_from(buf, off)
        if vtc >> 4 != 6:
            return _INNER_HEADER
        if proto == ip.IPPROTO_FRAGMENT:
            return _INNER_FRAGMENT
        src = off + IPV6_SRC_OFFSET
        off += ip.IPV6_HEADER_LEN
    else:
        return _PROTOCOL
    if proto != l4.IPPROTO_UDP:  # AWS sends the mirror datagram without IPv6 extension headers
        return _NOT_VXLAN
    if n < off + UDP_HEADER_LEN:
        return _INNER_SHORT
    _, dport = _PORTS.unpack_from(buf, off)
    if dport != VXLAN_PORT:
        return _NOT_VXLAN
    return off + UDP_HEADER_LEN, src


def check_options(buf: bytes | bytearray | memoryview, end: int) -> int:
    """Walk the options up to ``end`` (the header's option length, already within the datagram):
    0 when every option fits and none is a critical one we do not understand, else the Drop."""
    off = HEADER_LEN
    count = 0
    while off < end:
        count += 1
        if count > MAX_OPTIONS or off + OPTION_HEADER_LEN > end:
            return _OPTION_OVERRUN
        option_class, option_type, length = OPTION_HEADER.unpack_from(buf, off)
        off += OPTION_HEADER_LEN + ((length & OPTION_LEN_MASK) << 2)
        if off > end:
            return _OPTION_OVERRUN
        if option_type & OPTION_CRITICAL and not _understood(option_class, option_type, length):
            return _CRITICAL  # RFC 8926 s3.5: a critical option we cannot process: drop
    return 0


def _understood(option_class: int, option_type: int, length: int) -> bool:
    """Whether this collector processes the option (the GWLB's, in their own layout)."""
    return (
        option_class == AWS_OPTION_CLASS
        and GWLB_OPTION_LENGTHS.get(option_type, -1) == (length & OPTION_LEN_MASK) << 2
    )


class GwlbOptions(NamedTuple):
    """The AWS options of one GENEVE datagram; None where the datagram does not carry one."""

    endpoint_id: int | None
    attachment_id: int | None
    flow_cookie: int | None


def gwlb_options(buf: bytes | bytearray | memoryview, n: int) -> GwlbOptions:
    """The GWLB options of a datagram ``locate`` accepted (its option list is known to fit)."""
    found: dict[int, int] = {}
    if n >= HEADER_LEN:
        (first,) = _B.unpack_from(buf, 0)
        end = min(n, HEADER_LEN + ((first & OPT_LEN_MASK) << 2))
        off = HEADER_LEN
        for _ in range(MAX_OPTIONS):
            if off + OPTION_HEADER_LEN > end:
                break
            option_class, option_type, length = OPTION_HEADER.unpack_from(buf, off)
            data = off + OPTION_HEADER_LEN
            off = data + ((length & OPTION_LEN_MASK) << 2)
            if off > end:
                break
            if _understood(option_class, option_type & ~OPTION_CRITICAL, length):
                kind = option_type & ~OPTION_CRITICAL
                layout = U32 if kind == GWLB_FLOW_COOKIE else U64
                found.setdefault(kind, layout.unpack_from(buf, data)[0])
    return GwlbOptions(
        found.get(GWLB_ENDPOINT_ID), found.get(GWLB_ATTACHMENT_ID), found.get(GWLB_FLOW_COOKIE)
    )


def endpoint_text(endpoint_id: int) -> str:
    """An endpoint id as AWS writes it: ``vpce-`` and 17 hex digits."""
    return f"vpce-{endpoint_id:0{ENDPOINT_ID_DIGITS}x}"


class GenevePacket(NamedTuple):
    """A readable view of one GENEVE datagram: the GWLB options, the mirror source, the packet."""

    options: GwlbOptions
    mirror_source: str
    packet: Packet


def decode_geneve(data: bytes | bytearray | memoryview) -> GenevePacket:
    """Decode one GENEVE payload; raise ``DecodeError`` (and nothing else) when it is malformed."""
    import ipaddress  # noqa: PLC0415 - tools and tests only

    n = len(data)
    located = locate(data, n)
    if isinstance(located, int):
        raise DecodeError(Drop(located))
    start, src = located
    size = 16 if _inner_protocol(data) == PROTOCOL_IPV6 else 4
    source = str(ipaddress.ip_address(bytes(data[src : src + size])))
    return GenevePacket(gwlb_options(data, n), source, decode_packet(memoryview(data)[start:]))


def _inner_protocol(data: bytes | bytearray | memoryview) -> int:
    """The inner packet's ethertype of a datagram ``locate`` accepted (through Ethernet)."""
    first, _, protocol, _ = HEADER.unpack_from(data, 0)
    if protocol == PROTOCOL_ETHERNET:
        off = HEADER_LEN + ((first & OPT_LEN_MASK) << 2) + ethernet.ETHERTYPE_OFFSET
        (protocol,) = _U16.unpack_from(data, off)
    return int(protocol)
