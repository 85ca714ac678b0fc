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

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

NO_ICMP = -1  # flow-key slot value for packets that are not ICMP
