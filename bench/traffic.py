"""Traffic profiles shared by the benchmarks, the blaster and the Locust users.

Datagrams are built once with scapy (slow, exact) and then sent or parsed many times.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.vxlan import VXLAN


@dataclass(frozen=True)
class Profile:
    """A traffic mix."""

    name: str = "mixed"
    vnis: tuple[int, ...] = (101, 102, 103, 104)
    flows: int = 2000  # distinct inner 5-tuples
    ipv6_share: float = 0.2
    udp_share: float = 0.25
    icmp_share: float = 0.02
    vlan_share: float = 0.05
    truncate_share: float = 0.3  # sessions with a PacketLength that cuts payloads
    truncate_to: int = 96  # bytes after the VXLAN header for truncated sessions
    # inner IP packet sizes (bytes) and their weights: ACK-sized, small, MTU-sized
    sizes: tuple[tuple[int, float], ...] = ((64, 0.45), (300, 0.15), (576, 0.1), (1500, 0.3))
    seed: int = 1


PROFILES = {
    "mixed": Profile(),
    "small": Profile(name="small", sizes=((64, 1.0),), truncate_share=0.0),
    "large": Profile(name="large", sizes=((1500, 1.0),), truncate_share=0.0),
    "many-flows": Profile(name="many-flows", flows=50_000),
}


def build(profile: Profile, count: int) -> list[bytes]:
    """``count`` VXLAN payloads following ``profile``: packets cycle over the profile's flows."""
    rng = random.Random(profile.seed)
    sizes = [s for s, _ in profile.sizes]
    weights = [w for _, w in profile.sizes]
    templates = []
    for i in range(min(profile.flows, count)):
        vni = profile.vnis[i % len(profile.vnis)]
        v6 = rng.random() < profile.ipv6_share
        src = (
            f"2001:db8:{vni:x}::{i % 65535 + 1:x}"
            if v6
            else f"10.{vni % 256}.{i // 250 % 256}.{i % 250 + 1}"
        )
        dst = "2001:db8:ffff::1" if v6 else f"172.16.{i % 256}.{i // 256 % 256}"
        kind = rng.random()
        ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
        if kind < profile.icmp_share and not v6:
            l4 = ICMP(type=8)
        elif kind < profile.icmp_share + profile.udp_share:
            l4 = UDP(sport=1024 + i % 60000, dport=53)
        else:
            l4 = TCP(sport=1024 + i % 60000, dport=443, flags="A")
        eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        if rng.random() < profile.vlan_share:
            eth = eth / Dot1Q(vlan=10)
        truncated = rng.random() < profile.truncate_share
        templates.append((vni, eth, ip, l4, truncated))
    # scapy builds each flow's headers once; sizes are made by appending payload and patching the
    # length fields (checksums are left as scapy computed them for the header-only packet)
    heads = []
    for vni, eth, ip, l4, truncated in templates:
        raw = bytearray(bytes(VXLAN(vni=vni, flags=0x08) / eth / ip / l4))
        l3 = len(raw) - len(ip / l4)
        heads.append((raw, l3, isinstance(ip, IPv6), isinstance(l4, UDP), truncated))
    out = []
    cache: dict[tuple[int, int], bytes] = {}
    for n in range(count):
        index = n % len(heads)
        size = rng.choices(sizes, weights)[0]
        key = (index, size)
        data = cache.get(key)
        if data is None:
            raw, l3, v6, is_udp, truncated = heads[index]
            ip_len = max(size, len(raw) - l3)
            pkt = bytearray(raw) + bytes(ip_len - (len(raw) - l3))
            if v6:
                struct.pack_into("!H", pkt, l3 + 4, ip_len - 40)
                l4_off = l3 + 40
            else:
                struct.pack_into("!H", pkt, l3 + 2, ip_len)
                l4_off = l3 + 20
            if is_udp:
                struct.pack_into("!H", pkt, l4_off + 4, ip_len - (l4_off - l3))
            data = bytes(pkt[: 8 + profile.truncate_to] if truncated else pkt)
            cache[key] = data
        out.append(data)
    return out
