"""The flow key: one small ``bytes`` object per flow, the layout decode writes and records read.

A key is ``(VNI << 8 | protocol)`` as 4 octets, then the inner source and destination addresses
(4 or 16 octets each), then, by protocol:

- ICMP and ICMPv6 (1, 58): type and code (2 octets), or nothing when the header was cut off;
- every other protocol: source and destination port (2 octets each; 0 when the packet has none:
  later fragments, truncated headers, protocols without ports).

So the length alone tells the family and the ICMP case apart (v4: 12, 14, 16; v6: 36, 38, 40).
IPv4 TCP/UDP keys are 16 octets, the same bytes in the same order as the datagram's addresses and
ports, which lets the decoder's fast path copy them in one read. Why bytes and not a tuple: a
``bytes`` key is one object the cyclic garbage collector never tracks (a 7-tuple of ints and
addresses is seven to ten objects and tracked), it hashes once, and it keeps a flow table of
hundreds of thousands of flows within a few hundred bytes per flow.
"""

from __future__ import annotations

import struct

from collector.wire.l4 import IPPROTO_ICMP, IPPROTO_ICMPV6, NO_ICMP

FlowKey = bytes

PORTS_KEY_V4 = struct.Struct("!I4s4sHH")
ICMP_KEY_V4 = struct.Struct("!I4s4sH")
BARE_KEY_V4 = struct.Struct("!I4s4s")
PORTS_KEY_V6 = struct.Struct("!I16s16sHH")
ICMP_KEY_V6 = struct.Struct("!I16s16sH")
BARE_KEY_V6 = struct.Struct("!I16s16s")
# the decoder's fast path: the addresses and ports (or type/code) as the datagram holds them
# the decoder's fast path: addresses and ports (or ICMP type/code) copied as the datagram holds
# them ("s" keeps the first octets of a longer bytes object; "x" writes the zero ports)
COPIED_PORTS_V4 = struct.Struct("!I12s")
COPIED_ICMP_V4 = struct.Struct("!I10s")
COPIED_BARE_V4 = struct.Struct("!I8s")
COPIED_NO_PORTS_V4 = struct.Struct("!I8s4x")
COPIED_PORTS_V6 = struct.Struct("!I36s")
COPIED_ICMP_V6 = struct.Struct("!I34s")
COPIED_NO_PORTS_V6 = struct.Struct("!I32s4x")

_ICMP_PROTOCOLS = (IPPROTO_ICMP, IPPROTO_ICMPV6)
# key length -> (address length, layout): "ports", "icmp" or "bare" (ICMP without type/code)
_LAYOUTS = {
    PORTS_KEY_V4.size: (4, PORTS_KEY_V4),
    ICMP_KEY_V4.size: (4, ICMP_KEY_V4),
    BARE_KEY_V4.size: (4, BARE_KEY_V4),
    PORTS_KEY_V6.size: (16, PORTS_KEY_V6),
    ICMP_KEY_V6.size: (16, ICMP_KEY_V6),
    BARE_KEY_V6.size: (16, BARE_KEY_V6),
}

Fields = tuple[int, bytes, bytes, int, int, int, int]
"""(vni, src, dst, protocol, src_port, dst_port, icmp) with icmp = type << 8 | code, else -1."""


def pack_key(
    vni: int, src: bytes, dst: bytes, protocol: int, sport: int, dport: int, icmp: int
) -> FlowKey:
    """The key of these fields (ICMP protocols carry ``icmp``, the others their ports)."""
    head = vni << 8 | protocol
    v4 = len(src) == 4
    if protocol in _ICMP_PROTOCOLS:
        if icmp == NO_ICMP:
            return (BARE_KEY_V4 if v4 else BARE_KEY_V6).pack(head, src, dst)
        return (ICMP_KEY_V4 if v4 else ICMP_KEY_V6).pack(head, src, dst, icmp)
    return (PORTS_KEY_V4 if v4 else PORTS_KEY_V6).pack(head, src, dst, sport, dport)


def unpack_key(key: FlowKey) -> Fields:
    """The fields of a key (once per flow: records, filter decisions, tools)."""
    _, layout = _LAYOUTS[len(key)]
    values = layout.unpack(key)
    head, src, dst = values[0], values[1], values[2]
    vni, protocol = head >> 8, head & 0xFF
    if layout is PORTS_KEY_V4 or layout is PORTS_KEY_V6:
        return vni, src, dst, protocol, values[3], values[4], NO_ICMP
    if layout is ICMP_KEY_V4 or layout is ICMP_KEY_V6:
        return vni, src, dst, protocol, 0, 0, values[3]
    return vni, src, dst, protocol, 0, 0, NO_ICMP


def key_vni(key: FlowKey) -> int:
    """The VNI of a key without unpacking the rest."""
    return int.from_bytes(key[:3], "big")
