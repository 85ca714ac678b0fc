"""GENEVE (RFC 8926) as a Gateway Load Balancer sends it: the header, its options, the inner datagram.

A GWLB endpoint as a mirror target hands each VXLAN datagram of Traffic Mirroring (outer IPv4/UDP
4789/VXLAN/...) to the Gateway Load Balancer, which forwards it to a target wrapped in GENEVE on UDP
6081: a GENEVE header with AWS's options (see docs/geneve.md for the layout and its sources), then
the mirror datagram exactly as the source sent it, IP header first (protocol type 0x0800 or 0x86DD;
0x6558, an Ethernet frame, is accepted for other GENEVE senders).

``locate`` finds where the VXLAN header starts so that ``decode`` reads it in place, at an offset
into the same buffer (no slice, no copy). Its first try is one precompiled read covering the layout
the GWLB always sends (8 octets of header, 32 of options, an inner IPv4 header without options and
the UDP header) and one tuple comparison; anything else is walked field by field (``locate_walk``),
with the same result. Options are walked TLV by TLV, their lengths checked, when the header's C bit
says a critical one is present (RFC 8926 s3.4: then they must be parsed; without it a receiver may
skip them, which the per-packet path does); ``gwlb_options`` reads the AWS options once per new
flow. ``decode_geneve`` is the readable form for tools and tests.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, NamedTuple

from collector.errors import DecodeError
from collector.wire import ethernet, flowkey, ip, l4, vxlan
from collector.wire.decode import Decoded, Packet, decode, decode_packet
from collector.wire.drops import Drop

if TYPE_CHECKING:
    from collector import nocython as cython  # what mypy checks the names against
else:
    try:
        import cython
    except ImportError:  # a deployed collector has no Cython: the pure build needs none of it
        from collector import nocython as cython

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


# The layout every GWLB datagram has: version 0, 8 words of options (the three AWS options), no
# O or C flag, an IPv4 inner packet; the inner IPv4 header without options; UDP. One read takes
# the header word, the inner version/IHL, fragment field, protocol and UDP destination port; the
# options and the inner addresses stay in the buffer.
GWLB_OPTIONS_LEN = 32
GWLB_HEAD = (GWLB_OPTIONS_LEN // 4) << 24 | PROTOCOL_IPV4  # first 4 octets: 0x08 0x00 0x0800
GWLB_FAST = struct.Struct("!I36xB5xHxB12xH4x")
GWLB_FAST_LEN = GWLB_FAST.size  # 68: where VXLAN starts in the GWLB layout
IPV4_DONT_FRAGMENT = 0x4000  # RFC 791: DF, set or not: either way not a fragment
GWLB_INNER_IP = HEADER_LEN + GWLB_OPTIONS_LEN  # 40: the mirror datagram's IPv4 header
GWLB_INNER_SRC = GWLB_INNER_IP + 12  # its source address: the mirror source ENI's
IPV4_NO_OPTIONS = 0x45
UDP = l4.IPPROTO_UDP
VXLAN_PORT = vxlan.VXLAN_PORT
# what GWLB_FAST reads from a GWLB datagram, whole (DF set or clear): one tuple comparison
GWLB_EXPECTED = tuple(
    (GWLB_HEAD, IPV4_NO_OPTIONS, frag, UDP, VXLAN_PORT) for frag in (IPV4_DONT_FRAGMENT, 0)
)
GWLB_LOCATED = (GWLB_FAST_LEN, GWLB_INNER_SRC, 4)
IPV4_MF_OFFSET = 0x3FFF  # RFC 791: more-fragments bit and fragment offset: any fragment
IPV6_SRC_OFFSET = 8
IPV4_SRC_OFFSET = 12
UDP_HEADER_LEN = 8
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

Located = tuple[int, int, int]
"""(offset of the VXLAN header, offset and length of the mirror datagram's IP source address)."""


# decode_gwlb's one read: GWLB_FAST's fields, then decode's fast-path read of the VXLAN datagram
# (VXLAN flags and VNI word, inner ethertype, IPv4 fields, addresses and ports, TCP flags)
_GWLB_DECODE = struct.Struct(GWLB_FAST.format + "B3xI12xHBxH2xHxB2x12s9xB")
_GWLB_DECODE_LEN = _GWLB_DECODE.size  # 124
_FAST_V6 = struct.Struct("!B3xHBx36s9xB")  # decode's IPv6 fast-path read, at the inner IPv6 header
_GWLB_L3 = GWLB_FAST_LEN + vxlan.VXLAN_HEADER_LEN + ethernet.ETHERNET_HEADER_LEN
_GWLB_FAST_V6_LEN = _GWLB_L3 + _FAST_V6.size
_ALL_BUT_DF = 0xFFFF & ~IPV4_DONT_FRAGMENT  # any other bit: a fragment (or reserved): walked
_FLAG_I = vxlan.FLAG_I
_VNI_BITS = vxlan.VNI_BITS
_ETHERTYPE_IPV4 = ethernet.ETHERTYPE_IPV4
_ETHERTYPE_IPV6 = ethernet.ETHERTYPE_IPV6
_IPV4_MIN = ip.IPV4_MIN_HEADER_LEN
_IPV4_FRAGMENT = ip.IPV4_FRAGMENT_OFFSET_MASK
_IPV6_LEN = ip.IPV6_HEADER_LEN
_IPV6_EXT = ip.IPV6_EXTENSION_HEADERS
_TCP_PROTO = l4.IPPROTO_TCP
_ICMP_PROTOS = frozenset({l4.IPPROTO_ICMP, l4.IPPROTO_ICMPV6})
_KEY_V4 = flowkey.COPIED_PORTS_V4.pack
_ICMP_KEY_V4 = flowkey.COPIED_ICMP_V4.pack
_BARE_KEY_V4 = flowkey.COPIED_BARE_V4.pack
_NO_PORTS_KEY_V4 = flowkey.COPIED_NO_PORTS_V4.pack
_KEY_V6 = flowkey.COPIED_PORTS_V6.pack
_ICMP_KEY_V6 = flowkey.COPIED_ICMP_V6.pack
_NO_PORTS_KEY_V6 = flowkey.COPIED_NO_PORTS_V6.pack
# the public constants decode_gwlb compares with, as module-private names (the compiled build
# makes these C constants: geneve.pxd)
_GWLB_HEAD = GWLB_HEAD
_GWLB_FAST_LEN = GWLB_FAST_LEN
_VXLAN_PORT = VXLAN_PORT
_IPV4_NO_OPTIONS = IPV4_NO_OPTIONS
_UDP = UDP


def _gwlb_layout_octets(buf: bytes | bytearray | memoryview, n: int) -> bool:
    """The compiled build's check of the GWLB's layout (what ``GWLB_FAST`` reads: the GENEVE
    head, the mirror datagram's IPv4 header without options and not a fragment, UDP to 4789),
    octet by octet from the buffer's memory; the VXLAN datagram then starts at 68, where
    ``decode``'s octet read takes it. Never called in the pure build."""
    size = 0
    q = _buffer_octets(buf, cython.address(size))  # type: ignore[name-defined]  # noqa: F821
    if q == cython.NULL or n > size or n < _GWLB_FAST_LEN:
        return False
    return (
        (q[0] << 24 | q[1] << 16 | q[2] << 8 | q[3]) == _GWLB_HEAD
        and q[40] == _IPV4_NO_OPTIONS
        and not (q[46] << 8 | q[47]) & _ALL_BUT_DF
        and q[49] == _UDP
        and (q[62] << 8 | q[63]) == _VXLAN_PORT
    )


def decode_gwlb(buf: bytes | bytearray | memoryview, n: int) -> Decoded | int:
    """``decode`` of the VXLAN datagram inside a GENEVE datagram of ``n`` bytes, or a Drop value.

    The GWLB's layout around the common mirrored packet (what ``decode``'s fast path takes) is
    read in one ``unpack_from``: the GENEVE path then costs one read, as the VXLAN path does, plus
    the comparisons that check the GENEVE and inner IP/UDP headers. The branches below are
    ``decode``'s fast path at offset 68 (tests check both give the same result on every input);
    anything else is ``locate`` then ``decode`` at the offset it found.
    """
    if cython.compiled and _gwlb_layout_octets(buf, n):  # compiled: IPv4 TCP/UDP read in C
        found = _decode_v4_octets(buf, n, _GWLB_FAST_LEN)  # type: ignore[name-defined]  # noqa: F821
        if found is not None:
            return found  # type: ignore[no-any-return]
    if n >= _GWLB_DECODE_LEN:
        (
            head,
            outer_vihl,
            outer_frag,
            outer_proto,
            dport,
            flags,
            word,
            etype,
            vihl,
            ip_len,
            frag,
            proto,
            addrs,
            tflags,
        ) = _GWLB_DECODE.unpack_from(buf, 0)
        if (
            head == _GWLB_HEAD
            and dport == _VXLAN_PORT
            and outer_vihl == _IPV4_NO_OPTIONS
            and outer_proto == _UDP
            and not outer_frag & _ALL_BUT_DF
            and flags & _FLAG_I
        ):
            if etype == _ETHERTYPE_IPV4:
                if vihl == _IPV4_NO_OPTIONS and ip_len >= _IPV4_MIN:
                    head = word & _VNI_BITS | proto
                    if frag & _IPV4_FRAGMENT:
                        if proto in _ICMP_PROTOS:
                            return _BARE_KEY_V4(head, addrs), ip_len, 0
                        return _NO_PORTS_KEY_V4(head, addrs), ip_len, 0
                    if proto == _TCP_PROTO:
                        return _KEY_V4(head, addrs), ip_len, tflags
                    if proto == _UDP:
                        return _KEY_V4(head, addrs), ip_len, 0
                    if proto in _ICMP_PROTOS:
                        return _ICMP_KEY_V4(head, addrs), ip_len, 0
                    return _NO_PORTS_KEY_V4(head, addrs), ip_len, 0
            elif etype == _ETHERTYPE_IPV6 and n >= _GWLB_FAST_V6_LEN:
                vtc, plen, proto, addrs, tflags = _FAST_V6.unpack_from(buf, _GWLB_L3)
                if vtc >> 4 == 6 and proto not in _IPV6_EXT:
                    head = word & _VNI_BITS | proto
                    if proto == _TCP_PROTO:
                        return _KEY_V6(head, addrs), plen + _IPV6_LEN, tflags
                    if proto == _UDP:
                        return _KEY_V6(head, addrs), plen + _IPV6_LEN, 0
                    if proto in _ICMP_PROTOS:
                        return _ICMP_KEY_V6(head, addrs), plen + _IPV6_LEN, 0
                    return _NO_PORTS_KEY_V6(head, addrs), plen + _IPV6_LEN, 0
            return decode(buf, n, _GWLB_FAST_LEN)
    located = locate(buf, n)
    if located.__class__ is int:
        return located
    return decode(buf, n, located[0])  # type: ignore[index]


def locate(buf: bytes | bytearray | memoryview, n: int) -> Located | int:
    """Where the VXLAN header and the mirror source's address are in a GENEVE datagram of ``n``
    bytes, or a ``Drop`` value as a plain int. Never raises for any content of ``buf``."""
    if n >= GWLB_FAST_LEN:
        fields = GWLB_FAST.unpack_from(buf, 0)
        if fields == GWLB_EXPECTED[0] or fields == GWLB_EXPECTED[1]:
            return GWLB_LOCATED
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
    if flags & FLAG_C:
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
        # the datagram's own lengths (IP total length, UDP length) are not used: the GENEVE
        # payload's length bounds the VXLAN datagram, as a VXLAN datagram's bounds it on 4789
        vihl, _, frag, proto, _, _ = _IPV4.unpack_from(buf, off)
        ihl = (vihl & 15) << 2
        if vihl >> 4 != 4 or ihl < ip.IPV4_MIN_HEADER_LEN:
            return _INNER_HEADER
        if frag & IPV4_MF_OFFSET:
            return _INNER_FRAGMENT
        src, size = off + IPV4_SRC_OFFSET, 4
        off += ihl
    elif protocol == PROTOCOL_IPV6:
        if n < off + ip.IPV6_HEADER_LEN:
            return _INNER_SHORT
        vtc, _, proto, _, _ = _IPV6.unpack_from(buf, off)
        if vtc >> 4 != 6:
            return _INNER_HEADER
        if proto == ip.IPPROTO_FRAGMENT:
            return _INNER_FRAGMENT
        src, size = off + IPV6_SRC_OFFSET, 16
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
    return off + UDP_HEADER_LEN, src, size


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
        kind = option_type & ~OPTION_CRITICAL
        if option_type & OPTION_CRITICAL and not _understood(option_class, kind, length):
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
    start, src, size = located
    source = str(ipaddress.ip_address(bytes(data[src : src + size])))
    return GenevePacket(gwlb_options(data, n), source, decode_packet(memoryview(data)[start:]))
