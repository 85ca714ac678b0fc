# cython: boundscheck=False, wraparound=False
"""IPv4 address texts read without a call into the C library, for the compiled encoders.

``socket.inet_pton`` costs a C call with argument parsing and a bytes object per address; the
compiled goflow2 and IPFIX paths read a dotted quad here (a loop over its characters once compiled:
ipv4.pxd) and write its octets straight into their buffers. Only what inet_pton(AF_INET) itself
accepts is read here; any other text is left to inet_pton, to read or to refuse.
"""

from __future__ import annotations


def ipv4_value(text: str) -> int:
    """A dotted quad (four decimal octets, no leading zeros, nothing else: what inet_pton reads)
    as a 32-bit number; -1 for any other text."""
    value = 0
    octet = 0
    digits = 0
    dots = 0
    for ch in text:
        c = ord(ch)
        if 48 <= c <= 57:  # 0-9
            if digits and not octet:  # a leading zero
                return -1
            octet = octet * 10 + (c - 48)
            if octet > 255:
                return -1
            digits += 1
        elif c == 46 and digits and dots < 3:  # a dot after an octet
            value = (value << 8) | octet
            octet = 0
            digits = 0
            dots += 1
        else:
            return -1
    if dots != 3 or not digits:
        return -1
    return (value << 8) | octet
