"""A Gateway Load Balancer as the benchmarks see it: GENEVE framing of mirror datagrams.

A GWLB hands each mirror datagram (IPv4 from the source ENI / UDP 4789 / VXLAN ...) to a target
wrapped in GENEVE (RFC 8926) on UDP 6081, with AWS's three options (docs/geneve.md): class 0x0108,
type 1 the endpoint id (8 octets), type 2 the attachment id (8), type 3 the flow cookie (4). Built
with ``struct`` rather than scapy: the benchmarks wrap tens of thousands of datagrams.
"""

from __future__ import annotations

import socket
import struct
import zlib

GENEVE_PORT = 6081
VXLAN_PORT = 4789
AWS_OPTION_CLASS = 0x0108
ENDPOINT_ID = 0x0A1B2C3D4E5F6071
ATTACHMENT_ID = 0x1122334455667788
_HEADER = struct.Struct("!BBHI")  # version/option length, flags, protocol type, VNI + reserved
_OPTION_8 = struct.Struct("!HBBQ")
_OPTION_4 = struct.Struct("!HBBI")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_DONT_FRAGMENT = 0x4000


def _checksum(header: bytes) -> int:
    """RFC 1071 one's-complement sum of an IPv4 header (checksum field zero)."""
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def options(endpoint_id: int = ENDPOINT_ID, flow_cookie: int = 0) -> bytes:
    """The GWLB's three options, in its order (32 octets)."""
    return (
        _OPTION_8.pack(AWS_OPTION_CLASS, 1, 2, endpoint_id)
        + _OPTION_8.pack(AWS_OPTION_CLASS, 2, 2, ATTACHMENT_ID)
        + _OPTION_4.pack(AWS_OPTION_CLASS, 3, 1, flow_cookie)
    )


def wrap(
    vxlan_payload: bytes,
    mirror_source: str,
    *,
    endpoint_ip: str = "10.1.0.250",
    endpoint_id: int = ENDPOINT_ID,
    sport: int = 0,
) -> bytes:
    """The GENEVE payload a GWLB sends its target for one VXLAN datagram of ``mirror_source``
    (its UDP source port ``sport``, as AWS's a hash of the inner flow, made up here when 0; the
    flow cookie, one per flow)."""
    flow = zlib.crc32(vxlan_payload[8:60])
    port = sport or 49152 + flow % 16384
    udp = _UDP.pack(port, VXLAN_PORT, 8 + len(vxlan_payload), 0)
    src, dst = socket.inet_aton(mirror_source), socket.inet_aton(endpoint_ip)
    length = 20 + len(udp) + len(vxlan_payload)
    header = _IPV4.pack(0x45, 0, length, 0, _DONT_FRAGMENT, 64, 17, 0, src, dst)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    opts = options(endpoint_id, flow)
    return _HEADER.pack(len(opts) // 4, 0, 0x0800, 0) + opts + header + udp + vxlan_payload


def mirror_source_of(vxlan_payload: bytes) -> str:
    """A source ENI address per VNI (the benchmarks' profiles carry no outer header)."""
    vni = int.from_bytes(vxlan_payload[4:7], "big")
    return f"10.0.{vni % 256}.10"


def wrap_all(datagrams: list[bytes]) -> list[bytes]:
    """Every VXLAN datagram of a profile as the GWLB sends it."""
    return [wrap(d, mirror_source_of(d)) for d in datagrams]
