"""Write the golden VXLAN vectors under tests/data/golden/ (deterministic, safe to re-run).

Each case is one frame as captured on a collector host: outer Ethernet / IPv4 / UDP to 4789 / VXLAN /
inner frame, crafted with scapy. For each case NAME this writes:

- ``NAME.pcap``: the frame;
- ``NAME.json``: the line ``tshark -r NAME.pcap`` prints for it, what the decoder must return for the
  VXLAN payload (the Packet fields, or ``{"drop": LABEL}``), and where each layer starts in the
  payload (the truncation tests derive the outcome of every prefix from these boundaries).

Expected values come from scapy's own dissection of the inner frame, never from the collector.

    .venv/bin/python tests/data/make_golden.py [OUTDIR]
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_Timestamp
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
    RouterAlert,
)
from scapy.layers.ipsec import AH, ESP
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP, SCTPChunkInit
from scapy.layers.vxlan import VXLAN
from scapy.packet import NoPayload, Packet, Padding, Raw
from scapy.utils import wrpcap

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
TIMESTAMP = 1_764_100_000.0  # fixed capture time: the files must not change from run to run

# the collector host and a mirror source as AWS presents them (AWS-FACTS: outer source = the
# source ENI's primary private IPv4 address, outer UDP source port = a hash of the inner flow)
COLLECTOR_MAC, ROUTER_MAC = "02:00:00:00:c0:01", "02:00:00:00:0f:01"
COLLECTOR_IP, ENI_IP = "10.0.100.5", "10.1.0.10"
ENI_MAC, GATEWAY_MAC = "06:00:00:00:0a:0a", "06:00:00:00:01:01"
PEER_IP = "10.2.0.20"
ENI_IP6, PEER_IP6 = "2001:db8:1::10", "2001:db8:2::20"
VNI = 0x5A17C3  # a 24-bit VirtualNetworkId, as AWS picks them
PACKET_LENGTH = 8500  # session PacketLength: the NLB-target maximum
JUMBO_IP_LEN = 8947  # the largest packet AWS mirrors untruncated

EXT_HEADERS = (IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, AH)


@dataclass(frozen=True)
class Case:
    """One golden vector: the inner frame, how it is wrapped, and the decoder's expected verdict."""

    name: str
    description: str
    inner: Packet
    vxlan: bytes | None = None  # a raw VXLAN header instead of scapy's (odd flag bits)
    drop: str | None = None  # the Drop label the decoder must give, None when it decodes
    truncate_to: int | None = None  # session PacketLength: keep this many bytes of the inner frame
    cut: tuple[tuple[str, Any], ...] = ()  # fields the truncation takes away (stated, not derived)
    outer_sport: int = 49152


def eth(ethertype: int | None = None) -> Ether:
    """The inner Ethernet header of a mirrored frame (source ENI -> VPC router)."""
    if ethertype is None:
        return Ether(src=ENI_MAC, dst=GATEWAY_MAC)
    return Ether(src=ENI_MAC, dst=GATEWAY_MAC, type=ethertype)


def v4(**fields: Any) -> IP:
    return IP(src=ENI_IP, dst=PEER_IP, id=4242, **fields)


def v6(**fields: Any) -> IPv6:
    return IPv6(src=ENI_IP6, dst=PEER_IP6, **fields)


def tcp(flags: str, **fields: Any) -> TCP:
    return TCP(
        sport=40123, dport=443, seq=1000, ack=0 if flags == "S" else 2000, flags=flags, **fields
    )


def udp() -> UDP:
    return UDP(sport=53124, dport=53)


def dns() -> DNS:
    return DNS(id=0x1F2E, rd=1, qd=DNSQR(qname="example.com", qtype="AAAA"))


def payload(size: int) -> Raw:
    return Raw(bytes(range(256)) * (size // 256) + bytes(range(size % 256)))


def cases() -> list[Case]:
    """Every golden case, in a stable order."""
    ah = AH(nh=6, payloadlen=4, spi=0x1001, seq=7, icv=b"\x00" * 12)  # 24 octets: 6 words - 2
    return [
        Case(
            "vxlan_flag_i_unset",
            "VXLAN flags 0x00: RFC 7348 s5 says the VNI is not valid without the I bit",
            eth() / v4() / tcp("S"),
            vxlan=struct.pack("!B3sI", 0x00, b"\x00\x00\x00", VNI << 8),
            drop="vxlan_flags",
        ),
        Case(
            "vxlan_other_flags",
            "VXLAN flags 0xff and non-zero reserved fields: only the I bit counts, the rest is ignored",
            eth() / v4() / tcp("S"),
            vxlan=struct.pack("!B3sI", 0xFF, b"\xa5\x5a\xa5", VNI << 8 | 0x3C),
        ),
        Case("ipv4_tcp_syn", "IPv4 TCP SYN", eth() / v4() / tcp("S", window=64240)),
        Case("ipv4_tcp_fin", "IPv4 TCP FIN+ACK", eth() / v4() / tcp("FA")),
        Case("ipv4_tcp_rst", "IPv4 TCP RST", eth() / v4() / tcp("R")),
        Case(
            "ipv4_tcp_ack_psh",
            "IPv4 TCP ACK+PSH with 300 bytes of data",
            eth() / v4() / tcp("PA") / payload(300),
        ),
        Case("ipv4_udp", "IPv4 UDP (a DNS query's size)", eth() / v4() / udp() / dns()),
        Case(
            "ipv4_icmp_echo",
            "IPv4 ICMP echo request: type 8 code 0, ports 0",
            eth() / v4() / ICMP(type=8, code=0, id=77, seq=1) / payload(56),
        ),
        Case(
            "ipv4_options",
            "IPv4 with options (NOP + timestamp, IHL 8): the transport header starts later",
            eth()
            / v4(options=[IPOption_NOP(), IPOption_Timestamp(length=8, pointer=5, flg=0)])
            / tcp("S"),
        ),
        Case(
            "ipv4_first_fragment",
            "IPv4 first fragment (MF set, offset 0): it carries the UDP header, ports count",
            eth() / v4(flags="MF", frag=0, proto=17) / udp() / payload(1472),
        ),
        Case(
            "ipv4_later_fragment",
            "IPv4 later fragment (offset 185): no transport header, ports 0",
            eth() / v4(flags=0, frag=185, proto=17) / payload(600),
        ),
        Case(
            "vlan_8021q",
            "one 802.1Q tag (VLAN 100)",
            eth(0x8100) / Dot1Q(vlan=100, prio=3) / v4() / tcp("S"),
        ),
        Case(
            "vlan_qinq",
            "QinQ: an 802.1ad S-tag (VLAN 300) over an 802.1Q C-tag (VLAN 100)",
            eth(0x88A8) / Dot1AD(vlan=300) / Dot1Q(vlan=100) / v4() / udp() / dns(),
        ),
        Case(
            "vlan_too_many_tags",
            "five stacked VLAN tags: more than the decoder walks",
            eth(0x88A8)
            / Dot1AD(vlan=1)
            / Dot1Q(vlan=2)
            / Dot1Q(vlan=3)
            / Dot1Q(vlan=4)
            / Dot1Q(vlan=5)
            / v4()
            / tcp("S"),
            drop="vlan_depth",
        ),
        Case(
            "arp",
            "an ARP request: not IP (AWS never mirrors ARP, a crafted sender could)",
            eth(0x0806) / ARP(op=1, hwsrc=ENI_MAC, psrc=ENI_IP, pdst=PEER_IP),
            drop="non_ip",
        ),
        Case("ipv6_tcp", "IPv6 TCP SYN", eth() / v6() / tcp("S")),
        Case("ipv6_udp", "IPv6 UDP", eth() / v6() / udp() / dns()),
        Case(
            "ipv6_icmpv6_echo",
            "ICMPv6 echo request: type 128 code 0, ports 0",
            eth() / v6() / ICMPv6EchoRequest(id=9, seq=3) / payload(32),
        ),
        Case(
            "ipv6_icmpv6_unreachable",
            "ICMPv6 destination unreachable, code 4 (port unreachable), quoting the offending packet",
            eth()
            / v6()
            / ICMPv6DestUnreach(code=4)
            / IPv6(src=PEER_IP6, dst=ENI_IP6)
            / UDP(sport=53, dport=53124),
        ),
        Case(
            "ipv6_hop_by_hop",
            "IPv6 hop-by-hop options (router alert) before TCP",
            eth() / v6() / IPv6ExtHdrHopByHop(options=[RouterAlert()]) / tcp("S"),
        ),
        Case(
            "ipv6_routing",
            "IPv6 routing header (type 0, one address, 24 octets) before UDP",
            eth() / v6() / IPv6ExtHdrRouting(addresses=["2001:db8:3::1"]) / udp() / dns(),
        ),
        Case(
            "ipv6_destination_options",
            "IPv6 destination options (PadN to 16 octets) before TCP",
            eth() / v6() / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00" * 12)]) / tcp("PA"),
        ),
        Case(
            "ipv6_ah",
            "IPv6 authentication header (RFC 4302: length in 4-octet units minus 2) before TCP",
            eth() / v6() / ah / tcp("S"),
        ),
        Case(
            "ipv6_first_fragment",
            "IPv6 first fragment (offset 0, M set): the UDP header is there, ports count",
            eth()
            / v6()
            / IPv6ExtHdrFragment(nh=17, offset=0, m=1, id=0xBEEF)
            / udp()
            / payload(1200),
        ),
        Case(
            "ipv6_later_fragment",
            "IPv6 later fragment (offset 151 units): upper protocol from the fragment header, ports 0",
            eth() / v6() / IPv6ExtHdrFragment(nh=17, offset=151, m=0, id=0xBEEF) / payload(400),
        ),
        Case(
            "ipv6_ext_chain_all",
            "hop-by-hop, destination options, routing, fragment (first), AH, destination options, TCP",
            eth()
            / v6()
            / IPv6ExtHdrHopByHop()
            / IPv6ExtHdrDestOpt()
            / IPv6ExtHdrRouting(addresses=["2001:db8:3::1"])
            / IPv6ExtHdrFragment(nh=51, offset=0, m=1, id=7)
            / AH(nh=60, payloadlen=4, spi=0x2002, seq=1, icv=b"\x00" * 12)
            / IPv6ExtHdrDestOpt(nh=6)
            / tcp("S"),
        ),
        Case(
            "ipv6_ext_chain_too_long",
            "nine destination-options headers: a longer chain than the decoder walks",
            eth() / v6() / _chain(9) / udp(),
            drop="ipv6_ext_chain",
        ),
        Case(
            "ipv4_gre",
            "IPv4 GRE (protocol 47): no ports",
            eth() / v4() / GRE(proto=0x0800) / IP(src="192.168.0.1", dst="192.168.0.2") / ICMP(),
        ),
        Case(
            "ipv4_esp",
            "IPv4 ESP (protocol 50): no ports",
            eth() / v4() / ESP(spi=0x1234, seq=9, data=payload(48).load),
        ),
        Case(
            "ipv6_other_protocol",
            "IPv6 SCTP INIT (protocol 132): not TCP/UDP/ICMP, so ports 0 by design",
            eth() / v6() / SCTP(sport=3868, dport=3868, tag=0) / SCTPChunkInit(init_tag=0x1234),
        ),
        Case(
            "ipv4_jumbo_truncated",
            f"an {JUMBO_IP_LEN}-byte IPv4 TCP packet cut by the session to PacketLength "
            f"{PACKET_LENGTH}: bytes come from the IP header",
            eth() / v4() / tcp("A") / payload(JUMBO_IP_LEN - 40),
            truncate_to=PACKET_LENGTH,
        ),
        Case(
            "ipv6_truncated_in_tcp",
            "IPv6 TCP cut by a PacketLength of 60: ports survive, flags are cut",
            eth() / v6() / tcp("PA") / payload(1000),
            truncate_to=60,
            cut=(("tcp_flags", 0),),
        ),
    ]


def _chain(count: int) -> Packet:
    chain: Packet = IPv6ExtHdrDestOpt()
    for _ in range(count - 1):
        chain = chain / IPv6ExtHdrDestOpt()
    return chain


def _vxlan_header(case: Case) -> bytes:
    if case.vxlan is not None:
        return case.vxlan
    return bytes(VXLAN(flags="Instance", vni=VNI))


def frame(case: Case) -> Ether:
    """The captured frame of a case: outer Ethernet/IPv4/UDP to 4789 + VXLAN + inner frame."""
    inner = bytes(case.inner)
    if case.truncate_to is not None:
        inner = inner[: case.truncate_to]
    packet = (
        Ether(src=ROUTER_MAC, dst=COLLECTOR_MAC)
        / IP(src=ENI_IP, dst=COLLECTOR_IP, id=1, ttl=255)
        / UDP(sport=case.outer_sport, dport=4789)
        / Raw(_vxlan_header(case) + inner)
    )
    packet.time = TIMESTAMP
    return packet


def _icmp_fields(layer: Packet) -> tuple[int, int]:
    return int(layer.type), int(layer.code)


def describe(case: Case) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(expected decode result, layer boundaries in the VXLAN payload), from scapy's dissection."""
    vxlan = _vxlan_header(case)
    flags = vxlan[0]
    full = Ether(bytes(case.inner))  # dissect the untruncated frame: boundaries, header fields
    total = len(bytes(full))
    layers: list[dict[str, Any]] = [{"layer": "vxlan", "offset": 0, "flags": flags}]
    result: dict[str, Any] = {
        "vni": struct.unpack("!I", vxlan[4:8])[0] >> 8,
        "src_port": 0,
        "dst_port": 0,
        "tcp_flags": 0,
        "icmp_type": None,
        "icmp_code": None,
    }
    vlan_depth = 0
    ext_depth = 0
    layer: Packet = full
    while not isinstance(layer, NoPayload | Raw | Padding):
        offset = 8 + total - len(bytes(layer))
        entry: dict[str, Any] = {"offset": offset}
        stop = False
        if isinstance(layer, Ether):
            entry["layer"] = "ethernet"
        elif isinstance(layer, Dot1Q | Dot1AD):
            vlan_depth += 1
            entry.update(layer="vlan", depth=vlan_depth)
        elif isinstance(layer, ARP):
            entry["layer"] = "not_ip"
            stop = True
        elif isinstance(layer, IP):
            entry.update(layer="ipv4", header_len=layer.ihl * 4, later_fragment=layer.frag > 0)
            result.update(
                ip_version=4, src_addr=layer.src, dst_addr=layer.dst, protocol=layer.proto
            )
            result["ip_len"] = layer.len
            stop = layer.frag > 0
        elif isinstance(layer, IPv6):
            entry["layer"] = "ipv6"
            result.update(ip_version=6, src_addr=layer.src, dst_addr=layer.dst, protocol=layer.nh)
            result["ip_len"] = layer.plen + 40
        elif isinstance(layer, EXT_HEADERS):
            ext_depth += 1
            later = isinstance(layer, IPv6ExtHdrFragment) and layer.offset > 0
            entry.update(layer="ipv6_ext", depth=ext_depth, later_fragment=later)
            result["protocol"] = layer.nh
            stop = later
            if isinstance(layer, AH):  # scapy cannot size the ICV: cut at the AH length instead
                layers.append(entry)
                layer = _after_ah(layer)
                continue
        elif isinstance(layer, TCP):
            entry["layer"] = "tcp"
            result.update(
                src_port=layer.sport, dst_port=layer.dport, tcp_flags=int(layer.flags) & 0xFF
            )
            stop = True
        elif isinstance(layer, UDP):
            entry["layer"] = "udp"
            result.update(src_port=layer.sport, dst_port=layer.dport)
            stop = True
        elif isinstance(layer, ICMP) or type(layer).__name__.startswith("ICMPv6"):
            entry["layer"] = "icmp"
            result["icmp_type"], result["icmp_code"] = _icmp_fields(layer)
            stop = True
        else:  # GRE, ESP, ...: the decoder stops at the IP layer's protocol number
            entry["layer"] = "other"
            stop = True
        layers.append(entry)
        if stop:
            break
        layer = layer.payload
    result.update(case.cut)
    expect = {"drop": case.drop} if case.drop is not None else _packet_fields(result)
    return expect, layers


def _after_ah(ah: AH) -> Packet:
    """The layer after an AH header, dissected the way IPv6 dissects its payload."""
    rest = bytes(ah)[(ah.payloadlen + 2) * 4 :]
    carrier = IPv6(bytes(IPv6(nh=ah.nh, plen=len(rest))) + rest)
    return carrier.payload


PACKET_FIELDS = (
    "vni",
    "ip_version",
    "src_addr",
    "dst_addr",
    "protocol",
    "src_port",
    "dst_port",
    "ip_len",
    "tcp_flags",
    "icmp_type",
    "icmp_code",
)


def _packet_fields(result: dict[str, Any]) -> dict[str, Any]:
    return {name: result[name] for name in PACKET_FIELDS}


def tshark_summary(pcap: Path) -> str:
    """The one line ``tshark -r FILE`` prints for a one-frame capture."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap)], capture_output=True, text=True, check=True
    ).stdout
    return " ".join(out.split())


def write(outdir: Path) -> list[str]:
    """Write every case to ``outdir``; returns the case names."""
    if shutil.which("tshark") is None:
        raise SystemExit("tshark is needed to record each vector's summary line")
    outdir.mkdir(parents=True, exist_ok=True)
    names = []
    for case in cases():
        packet = frame(case)
        pcap = outdir / f"{case.name}.pcap"
        wrpcap(str(pcap), [packet])
        expect, layers = describe(case)
        doc = {
            "case": case.name,
            "description": case.description,
            "tshark": tshark_summary(pcap),
            "expect": expect,
            "layers": layers,
        }
        (outdir / f"{case.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
        names.append(case.name)
    return names


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else GOLDEN_DIR
    written = write(target)
    print(f"{len(written)} golden vectors in {target}")
