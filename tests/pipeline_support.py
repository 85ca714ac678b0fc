"""Scapy-built VXLAN datagrams and a pipeline factory for the sessions and flows tests."""

from __future__ import annotations

import ipaddress
from typing import Any

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

from collector.config import build_config
from collector.pipeline import Pipeline
from collector.sessions import build_sessions
from collector.wire.drops import Drop

T0 = 1_764_100_000.0  # a whole second, so record milliseconds are exact
ENI_MAC, GATEWAY_MAC = "06:00:00:00:0a:0a", "06:00:00:00:01:01"


def packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def ip_header(src: str, dst: str) -> Packet:
    return IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)


def vxlan(vni: int, inner: Packet) -> bytes:
    """A VXLAN payload as AWS sends it: RFC 7348 header with only the I flag, then the frame."""
    return bytes(VXLAN(flags=0x08, vni=vni) / Ether(src=ENI_MAC, dst=GATEWAY_MAC) / inner)


def tcp(
    vni: int,
    src: str,
    dst: str,
    sport: int,
    dport: int,
    flags: str = "A",
    payload: int = 0,
) -> bytes:
    inner = ip_header(src, dst) / TCP(sport=sport, dport=dport, flags=flags)
    return vxlan(vni, inner / Raw(b"x" * payload) if payload else inner)


def udp(vni: int, src: str, dst: str, sport: int, dport: int, payload: int = 0) -> bytes:
    return vxlan(vni, ip_header(src, dst) / UDP(sport=sport, dport=dport) / Raw(b"u" * payload))


def icmp(vni: int, src: str, dst: str, icmp_type: int = 8, code: int = 0) -> bytes:
    if ":" in src:
        return vxlan(vni, IPv6(src=src, dst=dst) / ICMPv6EchoRequest())
    return vxlan(vni, IP(src=src, dst=dst) / ICMP(type=icmp_type, code=code))


def make_pipeline(settings: dict[str, Any] | None = None, exporter: str = "test/w0/1") -> Pipeline:
    """A pipeline built from a config mapping, through the same code as a config file."""
    config = build_config(settings or {})
    return Pipeline(config, build_sessions(config), exporter=exporter)


def drops(pipeline: Pipeline) -> dict[str, int]:
    """Non-zero drop counters by label."""
    return {Drop(i).label: n for i, n in enumerate(pipeline.stats.drops) if n}
