"""IPv4 (RFC 791) and IPv6 (RFC 8200) header layouts."""

from __future__ import annotations

import struct

# IPv4 fixed header: version/IHL, (TOS), total length, (id), flags+fragment offset, (TTL), protocol,
# (checksum), source, destination. Skipped fields are pad bytes so unpack creates no objects for them.
IPV4 = struct.Struct("!BxH2xHxB2x4s4s")
IPV4_MIN_HEADER_LEN = 20
IPV4_FRAGMENT_OFFSET_MASK = 0x1FFF  # RFC 791: the low 13 bits; non-zero = not the first fragment

# IPv6 fixed header: version/traffic class (first byte), (rest of TC + flow label), payload length,
# next header, (hop limit), source, destination.
IPV6 = struct.Struct("!B3xHBx16s16s")
IPV6_HEADER_LEN = 40

# RFC 8200 s4 extension headers we walk past to reach the upper-layer protocol
IPPROTO_HOPOPTS = 0
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_AH = 51  # RFC 4302 s2.2: length in 4-octet units minus 2
IPPROTO_DSTOPTS = 60
IPPROTO_MOBILITY = 135  # RFC 6275
IPPROTO_HIP = 139  # RFC 7401
IPPROTO_SHIM6 = 140  # RFC 5533
IPV6_EXTENSION_HEADERS = frozenset(
    {
        IPPROTO_HOPOPTS,
        IPPROTO_ROUTING,
        IPPROTO_FRAGMENT,
        IPPROTO_AH,
        IPPROTO_DSTOPTS,
        IPPROTO_MOBILITY,
        IPPROTO_HIP,
        IPPROTO_SHIM6,
    }
)
IPV6_EXT_MIN_LEN = 8  # RFC 8200 s4: every extension header is a multiple of 8 octets
EXT_HEADER = struct.Struct("!BB")  # next header, header extension length
FRAGMENT_HEADER = struct.Struct("!BxH")  # next header, (reserved), offset(13) + res(2) + M(1)
IPV6_FRAGMENT_OFFSET_MASK = 0xFFF8

MAX_IPV6_EXT_HEADERS = 8  # RFC 8200 allows each once (dst opts twice); a longer chain is crafted
