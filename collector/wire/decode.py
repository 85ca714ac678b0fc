"""One-pass decoder from a VXLAN datagram to a flow key.

The layers live in their own modules (vxlan, ethernet, ip, l4) as layouts and constants; the walk over
them is one function on purpose: it runs once per datagram, and a Python call per layer would cost
more than the parsing itself. An offset moves over the buffer, fields are read in place with
precompiled ``Struct.unpack_from``, every read is preceded by a length check, and only the flow key
(one small ``bytes`` object, laid out by ``flowkey``) outlives the datagram.

``decode`` first tries one precompiled read that covers the whole common case (VXLAN, an untagged
Ethernet header, IPv4 without options or IPv6 without extension headers, and 14 octets of the
transport header): the cost of a call is the number of ``unpack_from`` calls, and this turns four
into one or two. Anything else goes to ``decode_walk``, the general layer-by-layer walk, which gives
the same result for every input (tests check both on every golden prefix and on fuzzed datagrams).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import TYPE_CHECKING, NamedTuple

from collector.errors import DecodeError
from collector.wire import ethernet, flowkey, ip, l4, vxlan
from collector.wire.drops import Drop
from collector.wire.flowkey import FlowKey, pack_key, unpack_key

if TYPE_CHECKING:
    from collector import nocython as cython  # what mypy checks the names against
else:
    try:
        import cython
    except ImportError:  # a deployed collector has no Cython: the pure build needs none of it
        from collector import nocython as cython

# What decode() returns for a packet it can account: (key, bytes per the inner IP header, TCP flags)
Decoded = tuple[FlowKey, int, int]

_VXLAN = vxlan.HEADER
_U16 = ethernet.U16
_IPV4 = ip.IPV4
_IPV6 = ip.IPV6
_EXT = ip.EXT_HEADER
_FRAG6 = ip.FRAGMENT_HEADER
_TCP = l4.TCP_PORTS_FLAGS
_PORTS = l4.PORTS
_ICMP = l4.ICMP_TYPE_CODE
_VLAN_TPIDS = ethernet.VLAN_TPIDS
_IPV6_EXT = ip.IPV6_EXTENSION_HEADERS
_FLAG_I = vxlan.FLAG_I
_VNI_BITS = vxlan.VNI_BITS
_MAX_VLAN = ethernet.MAX_VLAN_TAGS
_MAX_EXT = ip.MAX_IPV6_EXT_HEADERS
_ETHERTYPE_IPV4 = ethernet.ETHERTYPE_IPV4
_ETHERTYPE_IPV6 = ethernet.ETHERTYPE_IPV6
_IPV4_MIN = ip.IPV4_MIN_HEADER_LEN
_IPV4_FRAGMENT = ip.IPV4_FRAGMENT_OFFSET_MASK
_IPV6_LEN = ip.IPV6_HEADER_LEN
_IPV6_FRAGMENT = ip.IPV6_FRAGMENT_OFFSET_MASK
_EXT_MIN = ip.IPV6_EXT_MIN_LEN
_FRAGMENT = ip.IPPROTO_FRAGMENT
_AH = ip.IPPROTO_AH
_TCP_PROTO = l4.IPPROTO_TCP
_UDP_PROTO = l4.IPPROTO_UDP
_ICMP_PROTOS = frozenset({l4.IPPROTO_ICMP, l4.IPPROTO_ICMPV6})
_TCP_HEADER = l4.TCP_FLAGS_END
_PORTS_LEN = _PORTS.size
_ICMP_LEN = _ICMP.size
_VLAN_TAG = ethernet.VLAN_TAG_LEN
_IHL_V4_NO_OPTIONS = 0x45  # version 4, IHL 5 words: the fast path's IPv4 header
_KEY_V4 = flowkey.COPIED_PORTS_V4.pack
_ICMP_KEY_V4 = flowkey.COPIED_ICMP_V4.pack
_BARE_KEY_V4 = flowkey.COPIED_BARE_V4.pack
_NO_PORTS_KEY_V4 = flowkey.COPIED_NO_PORTS_V4.pack
_KEY_V6 = flowkey.COPIED_PORTS_V6.pack
_ICMP_KEY_V6 = flowkey.COPIED_ICMP_V6.pack
_NO_PORTS_KEY_V6 = flowkey.COPIED_NO_PORTS_V6.pack
# the walk's keys of the common layouts, without pack_key's branches (it has the rare ones)
_WALK_PORTS_V4 = flowkey.PORTS_KEY_V4.pack
_WALK_ICMP_V4 = flowkey.ICMP_KEY_V4.pack
_WALK_PORTS_V6 = flowkey.PORTS_KEY_V6.pack
_WALK_ICMP_V6 = flowkey.ICMP_KEY_V6.pack

# offsets relative to the start of the datagram
_ETH = vxlan.VXLAN_HEADER_LEN
_ETHERTYPE = _ETH + ethernet.ETHERTYPE_OFFSET
_L3 = _ETH + ethernet.ETHERNET_HEADER_LEN

# The fast path's reads: VXLAN (flags, VNI word), the inner ethertype, then IPv4 (as ip.IPV4) or
# IPv6 (as ip.IPV6) with the addresses and the first 4 transport octets as one bytes object (the
# key's layout, see flowkey), and the TCP flags (octet 13 of the transport header).
_FAST_V4 = struct.Struct("!B3xI12xHBxH2xHxB2x12s9xB")
_FAST_V4_LEN = _FAST_V4.size  # 56
_FAST_V6 = struct.Struct("!B3xHBx36s9xB")  # at _L3
_FAST_V6_LEN = _L3 + _FAST_V6.size  # 76

_VXLAN_SHORT = int(Drop.VXLAN_SHORT)
_VXLAN_FLAGS = int(Drop.VXLAN_FLAGS)
_ETHERNET_SHORT = int(Drop.ETHERNET_SHORT)
_VLAN_SHORT = int(Drop.VLAN_SHORT)
_VLAN_DEPTH = int(Drop.VLAN_DEPTH)
_NON_IP = int(Drop.NON_IP)
_IP_VERSION = int(Drop.IP_VERSION)
_IPV4_SHORT = int(Drop.IPV4_SHORT)
_IPV4_HEADER = int(Drop.IPV4_HEADER)
_IPV4_LENGTH = int(Drop.IPV4_LENGTH)
_IPV6_SHORT = int(Drop.IPV6_SHORT)
_IPV6_EXT_SHORT = int(Drop.IPV6_EXT_SHORT)
_IPV6_EXT_CHAIN = int(Drop.IPV6_EXT_CHAIN)


def decode(buf: bytes | bytearray | memoryview, n: int, start: int = 0) -> Decoded | int:
    """Decode the first ``n`` bytes of ``buf``: a VXLAN payload from ``start`` on (0 for a VXLAN
    datagram; past the GENEVE and inner IP/UDP headers for a Gateway Load Balancer's, which is read
    in place rather than sliced).

    Returns ``(key, ip_len, tcp_flags)`` or, for a datagram that cannot be accounted, a ``Drop``
    value as a plain int. Never raises for any content of ``buf``.
    """
    if cython.compiled:  # IPv4 TCP and UDP read octet by octet, in C (see _decode_v4_octets)
        found = _decode_v4_octets(buf, n, start)
        if found is not None:
            return found
    if n - start >= _FAST_V4_LEN:
        flags, word, etype, vihl, ip_len, frag, proto, addrs, tflags = _FAST_V4.unpack_from(
            buf, start
        )
        if flags & _FLAG_I:
            head = word & _VNI_BITS | proto
            if etype == _ETHERTYPE_IPV4:
                if vihl == _IHL_V4_NO_OPTIONS and ip_len >= _IPV4_MIN:  # a consistent length
                    if frag & _IPV4_FRAGMENT:
                        if proto in _ICMP_PROTOS:
                            return _BARE_KEY_V4(head, addrs), ip_len, 0
                        return _NO_PORTS_KEY_V4(head, addrs), ip_len, 0
                    if proto == _TCP_PROTO:
                        return _KEY_V4(head, addrs), ip_len, tflags
                    if proto == _UDP_PROTO:
                        return _KEY_V4(head, addrs), ip_len, 0
                    if proto in _ICMP_PROTOS:
                        return _ICMP_KEY_V4(head, addrs), ip_len, 0
                    return _NO_PORTS_KEY_V4(head, addrs), ip_len, 0
            elif etype == _ETHERTYPE_IPV6 and n - start >= _FAST_V6_LEN:
                vtc, plen, proto, addrs, tflags = _FAST_V6.unpack_from(buf, start + _L3)
                if vtc >> 4 == 6 and proto not in _IPV6_EXT:
                    head = word & _VNI_BITS | proto
                    if proto == _TCP_PROTO:
                        return _KEY_V6(head, addrs), plen + _IPV6_LEN, tflags
                    if proto == _UDP_PROTO:
                        return _KEY_V6(head, addrs), plen + _IPV6_LEN, 0
                    if proto in _ICMP_PROTOS:
                        return _ICMP_KEY_V6(head, addrs), plen + _IPV6_LEN, 0
                    return _NO_PORTS_KEY_V6(head, addrs), plen + _IPV6_LEN, 0
    return decode_walk(buf, n, start)


def _decode_v4_octets(buf: bytes | bytearray | memoryview, n: int, start: int) -> Decoded | None:
    """The compiled build's read of the commonest datagram (VXLAN, untagged Ethernet, IPv4
    without options and not a later fragment, TCP or UDP): the fields ``_FAST_V4`` reads, at the
    same offsets, straight from the buffer's memory, and the key written octet by octet; None for
    anything else (``decode`` goes on as in the pure build). Never called in the pure build,
    where an octet read costs more than the one ``unpack_from`` it replaces.
    """
    size = 0
    q = _buffer_octets(buf, cython.address(size))  # type: ignore[name-defined]  # noqa: F821
    if q == cython.NULL or n > size or n - start < _FAST_V4_LEN:
        return None  # not a plain buffer of octets, or too short: decode's general path
    q += start
    if not q[0] & _FLAG_I or q[20] != 0x08 or q[21] != 0x00 or q[22] != _IHL_V4_NO_OPTIONS:
        return None
    proto = q[31]
    ip_len = q[24] << 8 | q[25]
    if (
        proto not in (_TCP_PROTO, _UDP_PROTO)
        or ip_len < _IPV4_MIN
        or (q[28] << 8 | q[29]) & _IPV4_FRAGMENT
    ):
        return None
    # the key (flowkey.PORTS_KEY_V4): VNI (3 octets), protocol, addresses and ports as they are
    key = _new_bytes(cython.NULL, 16)  # type: ignore[name-defined]  # noqa: F821
    d = _bytes_octets(key)  # type: ignore[name-defined]  # noqa: F821
    d[0] = q[4]
    d[1] = q[5]
    d[2] = q[6]
    d[3] = proto
    for i in range(12):
        d[4 + i] = q[34 + i]
    return key, ip_len, q[55] if proto == _TCP_PROTO else 0


def decode_walk(buf: bytes | bytearray | memoryview, n: int, start: int = 0) -> Decoded | int:
    """``decode`` layer by layer: VLAN tags, IPv4 options, IPv6 extension headers, short captures.

    Gives the same result as ``decode`` for every input; ``decode`` only adds a fast path.
    """
    if n < start + _ETH:
        return _VXLAN_SHORT
    flags, word = _VXLAN.unpack_from(buf, start)
    if not flags & _FLAG_I:
        return _VXLAN_FLAGS
    vni = word >> 8
    if n < start + _L3:
        return _ETHERNET_SHORT
    (etype,) = _U16.unpack_from(buf, start + _ETHERTYPE)
    off = start + _L3
    if etype in _VLAN_TPIDS:
        tags = 0
        while etype in _VLAN_TPIDS:
            tags += 1
            if tags > _MAX_VLAN:
                return _VLAN_DEPTH
            if n < off + _VLAN_TAG:
                return _VLAN_SHORT
            (etype,) = _U16.unpack_from(buf, off + 2)
            off += _VLAN_TAG
    if etype == _ETHERTYPE_IPV4:
        if n < off + _IPV4_MIN:
            return _IPV4_SHORT
        vihl, ip_len, frag, proto, src, dst = _IPV4.unpack_from(buf, off)
        if vihl >> 4 != 4:
            return _IP_VERSION
        ihl = (vihl & 15) << 2
        if ihl < _IPV4_MIN:
            return _IPV4_HEADER
        if ip_len < ihl:
            return _IPV4_LENGTH
        if frag & _IPV4_FRAGMENT:  # not the first fragment: no transport header here
            return pack_key(vni, src, dst, proto, 0, 0, -1), ip_len, 0
        off += ihl
        ports_key, icmp_key = _WALK_PORTS_V4, _WALK_ICMP_V4
    elif etype == _ETHERTYPE_IPV6:
        if n < off + _IPV6_LEN:
            return _IPV6_SHORT
        vtc, plen, proto, src, dst = _IPV6.unpack_from(buf, off)
        if vtc >> 4 != 6:
            return _IP_VERSION
        ip_len = plen + _IPV6_LEN
        off += _IPV6_LEN
        ports_key, icmp_key = _WALK_PORTS_V6, _WALK_ICMP_V6
        if proto in _IPV6_EXT:
            hops = 0
            while proto in _IPV6_EXT:
                hops += 1
                if hops > _MAX_EXT:
                    return _IPV6_EXT_CHAIN
                if n < off + _EXT_MIN:
                    return _IPV6_EXT_SHORT
                if proto == _FRAGMENT:  # fixed 8 octets
                    proto, fo = _FRAG6.unpack_from(buf, off)
                    off += _EXT_MIN
                    if fo & _IPV6_FRAGMENT:  # not the first fragment
                        return pack_key(vni, src, dst, proto, 0, 0, -1), ip_len, 0
                elif proto == _AH:  # RFC 4302 s2.2: length in 4-octet units minus 2
                    proto, hlen = _EXT.unpack_from(buf, off)
                    off += (hlen + 2) << 2
                else:  # RFC 8200 s4: length in 8-octet units, not counting the first 8
                    proto, hlen = _EXT.unpack_from(buf, off)
                    off += (hlen + 1) << 3
    else:
        return _NON_IP
    if proto == _TCP_PROTO:
        if n >= off + _TCP_HEADER:
            sport, dport, tflags = _TCP.unpack_from(buf, off)
            return ports_key(vni << 8 | proto, src, dst, sport, dport), ip_len, tflags
        if n >= off + _PORTS_LEN:  # truncated after the ports: count them, flags unknown
            sport, dport = _PORTS.unpack_from(buf, off)
            return ports_key(vni << 8 | proto, src, dst, sport, dport), ip_len, 0
    elif proto == _UDP_PROTO:
        if n >= off + _PORTS_LEN:
            sport, dport = _PORTS.unpack_from(buf, off)
            return ports_key(vni << 8 | proto, src, dst, sport, dport), ip_len, 0
    elif proto in _ICMP_PROTOS and n >= off + _ICMP_LEN:
        itype, icode = _ICMP.unpack_from(buf, off)
        return icmp_key(vni << 8 | proto, src, dst, itype << 8 | icode), ip_len, 0
    return pack_key(vni, src, dst, proto, 0, 0, -1), ip_len, 0


class Packet(NamedTuple):
    """A readable view of one decoded packet, for tools and tests (the hot path uses ``decode``)."""

    vni: int
    ip_version: int
    src_addr: str
    dst_addr: str
    protocol: int
    src_port: int
    dst_port: int
    ip_len: int
    tcp_flags: int
    icmp_type: int | None
    icmp_code: int | None


def decode_packet(data: bytes | bytearray | memoryview) -> Packet:
    """Decode one VXLAN payload; raise ``DecodeError`` (and nothing else) when it is malformed."""
    result = decode(data, len(data))
    if isinstance(result, int):
        raise DecodeError(Drop(result))
    key, ip_len, tflags = result
    vni, src, dst, proto, sport, dport, icmp = unpack_key(key)
    return Packet(
        vni=vni,
        ip_version=4 if len(src) == 4 else 6,
        src_addr=str(ipaddress.ip_address(src)),
        dst_addr=str(ipaddress.ip_address(dst)),
        protocol=proto,
        src_port=sport,
        dst_port=dport,
        ip_len=ip_len,
        tcp_flags=tflags,
        icmp_type=None if icmp < 0 else icmp >> 8,
        icmp_code=None if icmp < 0 else icmp & 0xFF,
    )
