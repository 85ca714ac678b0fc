"""The one builder of test datagrams: VXLAN payloads as AWS Traffic Mirroring sends them, by scapy.

Every test that needs a mirrored packet (pipeline, service, receive paths, benchmarks' tests) builds
it here, so they all agree on the framing: RFC 7348 header with only the I flag, an Ethernet frame
from the source ENI's MAC to the subnet gateway's, then the inner IPv4 or IPv6 packet (the family
follows the source address).
"""

from __future__ import annotations

import ipaddress

from scapy.contrib.geneve import GENEVE, GeneveOptions
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


# ---- GENEVE from a Gateway Load Balancer ---------------------------------------------------------
# A GWLB endpoint as the mirror target: the source sends its VXLAN datagram (outer IPv4 from its
# primary address, UDP to 4789) to the endpoint, and the Gateway Load Balancer hands it to a target
# wrapped in GENEVE with AWS's options (docs/geneve.md): class 0x0108, type 1 the endpoint id (8
# octets), type 2 the attachment id (8 octets), type 3 the flow cookie (4 octets).
AWS_OPTION_CLASS = 0x0108
GWLB_IP, GWLB_ENDPOINT_IP = "10.0.200.7", "10.1.0.250"
ENDPOINT_ID = 0x0A1B2C3D4E5F60718  # vpce-0a1b2c3d4e5f60718 (17 hex digits)
ATTACHMENT_ID = 0x1122334455667788
FLOW_COOKIE = 0xC00C1E


def gwlb_options(
    endpoint_id: int = ENDPOINT_ID,
    attachment_id: int = ATTACHMENT_ID,
    flow_cookie: int = FLOW_COOKIE,
) -> list[Packet]:
    """The three options a GWLB puts on every datagram, in its order."""
    return [
        GeneveOptions(classid=AWS_OPTION_CLASS, type=1, data=endpoint_id.to_bytes(8, "big")),
        GeneveOptions(classid=AWS_OPTION_CLASS, type=2, data=attachment_id.to_bytes(8, "big")),
        GeneveOptions(classid=AWS_OPTION_CLASS, type=3, data=flow_cookie.to_bytes(4, "big")),
    ]


def mirror_datagram(vxlan_payload: bytes, mirror_source: str, sport: int = 49152) -> Packet:
    """The mirror source's datagram to the GWLB endpoint: IP (DF set) / UDP 4789 / the payload."""
    if ":" in mirror_source:
        outer: Packet = IPv6(src=mirror_source, dst="2001:db8:0:fe::250")
    else:
        outer = IP(src=mirror_source, dst=GWLB_ENDPOINT_IP, flags="DF")
    return outer / UDP(sport=sport, dport=4789) / Raw(vxlan_payload)


def geneve(
    vxlan_payload: bytes,
    mirror_source: str,
    *,
    endpoint_id: int = ENDPOINT_ID,
    sport: int = 49152,
    options: list[Packet] | None = None,
) -> bytes:
    """A GENEVE payload (what arrives on UDP 6081) as a GWLB sends it around a VXLAN datagram."""
    inner = mirror_datagram(vxlan_payload, mirror_source, sport)
    proto = 0x86DD if ":" in mirror_source else 0x0800
    opts = gwlb_options(endpoint_id) if options is None else options
    return bytes(GENEVE(proto=proto, vni=0, options=opts) / inner)
