"""Transport headers: IANA protocol numbers and the few fields a flow needs."""

from __future__ import annotations

import struct

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58

PORTS = struct.Struct("!HH")  # TCP and UDP both start with source port, destination port
TCP_PORTS_FLAGS = struct.Struct("!HH9xB")  # RFC 9293 s3.1: flags are octet 13
TCP_FLAGS_END = 14
ICMP_TYPE_CODE = struct.Struct("!BB")

# RFC 9293 s3.1 control bits (octet 13), RFC 3168 s6.1 ECE and CWR
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80
# display order of tools (the handshake first)
TCP_FLAG_NAMES = (
    (TCP_SYN, "SYN"),
    (TCP_ACK, "ACK"),
    (TCP_PSH, "PSH"),
    (TCP_FIN, "FIN"),
    (TCP_RST, "RST"),
    (TCP_URG, "URG"),
    (TCP_ECE, "ECE"),
    (TCP_CWR, "CWR"),
)

NO_ICMP = -1  # flow-key slot value for packets that are not ICMP
