"""VXLAN header, RFC 7348 section 5."""

from __future__ import annotations

import struct

VXLAN_PORT = 4789  # RFC 7348 s5: IANA-assigned destination port
VXLAN_HEADER_LEN = 8
FLAG_I = 0x08  # RFC 7348 s5: must be 1 for a valid VNI; the other flag bits are ignored on receipt

# flags (1 byte), 3 reserved bytes, then VNI (24 bits) + 1 reserved byte read as one word: vni = w >> 8
HEADER = struct.Struct("!B3xI")
VNI_BITS = 0xFFFFFF00  # the VNI in that word; the low byte is reserved, ignored on receipt
