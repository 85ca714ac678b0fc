"""The one builder of test datagrams: VXLAN payloads as AWS Traffic Mirroring sends them, by scapy.

Every test that needs a mirrored packet (pipeline, service, receive paths, benchmarks' tests) builds
it here, so they all agree on the framing: RFC 7348 header with only the I flag, an Ethernet frame
from the source ENI's MAC to the subnet gateway's, then the inner IPv4 or IPv6 packet (the family
follows the source address).
"""

from __future__ import annotations

import ipaddress

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

ENI_MAC, GATEWAY_MAC = "06:00:00:00:0a:0a", "06:00:00:00:01:01"


def packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def ip_header(src: str, dst: str) -> Packet:
    return IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)


def vxlan(vni: int, inner: Packet) -> bytes:
    """A VXLAN payload (what arrives on UDP 4789) around an inner IP packet."""
    return bytes(VXLAN(flags=0x08, vni=vni) / Ether(src=ENI_MAC, dst=GATEWAY_MAC) / inner)


def tcp(
    vni: int, src: str, dst: str, sport: int, dport: int, flags: str = "A", payload: int = 0
) -> bytes:
    """A TCP segment with ``payload`` bytes of data (IP length = 40 + payload for IPv4)."""
    inner = ip_header(src, dst) / TCP(sport=sport, dport=dport, flags=flags)
    return vxlan(vni, inner / Raw(b"x" * payload) if payload else inner)


def udp(vni: int, src: str, dst: str, sport: int, dport: int, payload: int = 0) -> bytes:
    """A UDP datagram with ``payload`` bytes of data."""
    return vxlan(vni, ip_header(src, dst) / UDP(sport=sport, dport=dport) / Raw(b"u" * payload))


def icmp(vni: int, src: str, dst: str, icmp_type: int = 8, code: int = 0) -> bytes:
    """An echo request (ICMPv6 for an IPv6 source), or any ICMP type and code for IPv4."""
    if ":" in src:
        return vxlan(vni, IPv6(src=src, dst=dst) / ICMPv6EchoRequest())
    return vxlan(vni, IP(src=src, dst=dst) / ICMP(type=icmp_type, code=code))
