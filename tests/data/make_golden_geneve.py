"""Write the golden GENEVE vectors under tests/data/golden/geneve/ (deterministic, safe to re-run).

Each case is one frame as a Gateway Load Balancer's target captures it: outer Ethernet / IPv4 from
the GWLB / UDP to 6081 / GENEVE (AWS's options) / the mirror datagram (IPv4 from the source ENI,
UDP to 4789) / VXLAN / inner frame, crafted with scapy (scapy.contrib.geneve). The decoding cases
wrap the frame of a VXLAN golden case (tests/data/make_golden.py), so their expected packet is the
one scapy's dissection stated there. For each case NAME this writes:

- ``NAME.pcap``: the frame;
- ``NAME.json``: the line ``tshark -r NAME.pcap`` prints for it, what ``decode_geneve`` must return
  (mirror source, GWLB endpoint id and the packet, or ``{"drop": LABEL}``), where each layer of the
  GENEVE payload starts and at which layer a drop is decided (the truncation tests derive the
  outcome of every prefix from these).

    .venv/bin/python tests/data/make_golden_geneve.py [OUTDIR]
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap

DATA = Path(__file__).resolve().parent
GOLDEN_DIR = DATA / "golden" / "geneve"
TIMESTAMP = 1_764_100_000.0

COLLECTOR_MAC, ROUTER_MAC = "02:00:00:00:c0:01", "02:00:00:00:0f:01"
COLLECTOR_IP, GWLB_IP = "10.0.100.5", "10.0.200.7"  # a GWLB target sees the GWLB as the sender
ENI_IP, GWLB_ENDPOINT_IP = "10.1.0.10", "10.1.0.250"  # the mirror datagram: source ENI -> GWLBE
ENI_IP6, GWLB_ENDPOINT_IP6 = "2001:db8:1::10", "2001:db8:1::250"
AWS_CLASS = 0x0108
ENDPOINT_ID, ATTACHMENT_ID, FLOW_COOKIE = 0x0D15EA5E0B1E5C0DE, 0x0123456789ABCDEF, 0x5EED1E55
GENEVE_SPORT = 51234  # the GWLB's UDP source port (a flow hash)
MIRROR_SPORT = 49152


def _vxlan_golden() -> Any:
    spec = importlib.util.spec_from_file_location("make_golden", DATA / "make_golden.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


VXLAN_GOLDEN = _vxlan_golden()
VXLAN_CASES = {case.name: case for case in VXLAN_GOLDEN.cases()}


def aws_options(critical_bit: int = 0) -> list[Packet]:
    """The GWLB's three options (type 1 endpoint id, 2 attachment id, 3 flow cookie)."""
    return [
        GeneveOptions(
            classid=AWS_CLASS, type=1 | critical_bit, data=ENDPOINT_ID.to_bytes(8, "big")
        ),
        GeneveOptions(classid=AWS_CLASS, type=2, data=ATTACHMENT_ID.to_bytes(8, "big")),
        GeneveOptions(classid=AWS_CLASS, type=3, data=FLOW_COOKIE.to_bytes(4, "big")),
    ]


@dataclass(frozen=True)
class Case:
    """One GENEVE vector and what it must give (``drop`` decided at layer ``stage``)."""

    name: str
    description: str
    vxlan_case: str = "ipv4_tcp_syn"  # the VXLAN golden case inside
    options: tuple[Packet, ...] | None = None  # None: the GWLB's three
    raw_options: bytes | None = None  # option octets as they are (malformed ones)
    version: int = 0
    oam: int = 0
    critical: int = 0
    proto: int | None = None  # GENEVE protocol type; None: from the mirror datagram
    ethernet: bool = False  # an Ethernet frame around the mirror datagram (protocol 0x6558)
    mirror_v6: bool = False
    mirror_ip: dict[str, Any] = field(default_factory=dict)  # IP header fields of the datagram
    mirror_l4: Packet | None = None  # instead of UDP to 4789
    drop: str | None = None
    stage: str | None = None  # header | options | ip | udp | vxlan: where the drop is decided


def cases() -> list[Case]:
    """Every GENEVE golden case, in a stable order."""
    unknown = GeneveOptions(classid=0xFFF0, type=0x05, data=b"\x00" * 4)
    unknown_critical = GeneveOptions(classid=0x0101, type=0x85, data=b"\x00" * 4)
    # an option whose length (31 words) runs past the 32 octets of options the header declares
    overrun = struct.pack("!HBB", AWS_CLASS, 1, 31) + b"\x00" * 28
    return [
        Case("gwlb_ipv4_tcp_syn", "GWLB: IPv4 TCP SYN mirrored, DF set", mirror_ip={"flags": "DF"}),
        Case("gwlb_ipv6_udp", "GWLB: IPv6 UDP mirrored", vxlan_case="ipv6_udp"),
        Case("gwlb_vlan_8021q", "GWLB: an 802.1Q-tagged inner frame", vxlan_case="vlan_8021q"),
        Case("gwlb_df_clear", "GWLB: mirror datagram without DF", vxlan_case="ipv4_udp"),
        Case(
            "gwlb_ipv4_options",
            "GWLB: inner IPv4 options (the transport header starts later)",
            vxlan_case="ipv4_options",
        ),
        Case(
            "gwlb_inner_vxlan_flags",
            "GWLB around a VXLAN header without the I flag: the VXLAN drop",
            vxlan_case="vxlan_flag_i_unset",
            drop="vxlan_flags",
            stage="vxlan",
        ),
        Case(
            "geneve_mirror_ipv6",
            "GENEVE 0x86DD: the mirror datagram over IPv6",
            vxlan_case="ipv4_tcp_fin",
            mirror_v6=True,
        ),
        Case(
            "geneve_ethernet",
            "GENEVE 0x6558 (not AWS): an Ethernet frame around the mirror datagram",
            vxlan_case="ipv4_icmp_echo",
            ethernet=True,
        ),
        Case(
            "geneve_no_options",
            "GENEVE without options (not AWS): decoded, no endpoint id",
            options=(),
        ),
        Case(
            "geneve_unknown_option",
            "an unknown option that is not critical (C clear): skipped",
            options=(unknown, *aws_options()),
        ),
        Case(
            "geneve_critical_understood",
            "C set, the critical option is the GWLB's endpoint id in its own layout: understood",
            options=tuple(aws_options(critical_bit=0x80)),
            critical=1,
        ),
        Case(
            "geneve_version", "GENEVE version 1", version=1, drop="geneve_version", stage="header"
        ),
        Case(
            "geneve_control",
            "the O bit: a control message",
            oam=1,
            drop="geneve_control",
            stage="header",
        ),
        Case(
            "geneve_critical_unknown",
            "C set and a critical option of an unknown class (RFC 8926 s3.5: drop)",
            options=(unknown_critical, *aws_options()),
            critical=1,
            drop="geneve_critical_option",
            stage="options",
        ),
        Case(
            "geneve_option_overrun",
            "C set and an option whose length runs past the options",
            raw_options=overrun,
            critical=1,
            drop="geneve_option_overrun",
            stage="options",
        ),
        Case(
            "geneve_protocol",
            "protocol type 0x88cc (LLDP): not what a GWLB carries",
            proto=0x88CC,
            drop="geneve_protocol",
            stage="options",
        ),
        Case(
            "geneve_inner_header",
            "the mirror datagram's IPv4 header claims IHL 4",
            mirror_ip={"ihl": 4},
            drop="geneve_inner_header",
            stage="ip",
        ),
        Case(
            "geneve_inner_first_fragment",
            "the mirror datagram is a first fragment (MF set)",
            mirror_ip={"flags": "MF"},
            drop="geneve_inner_fragment",
            stage="ip",
        ),
        Case(
            "geneve_inner_later_fragment",
            "the mirror datagram is a later fragment (offset 185)",
            mirror_ip={"frag": 185, "proto": 17},
            drop="geneve_inner_fragment",
            stage="ip",
        ),
        Case(
            "geneve_inner_tcp",
            "the mirror datagram is TCP to 4789, not UDP",
            mirror_l4=TCP(sport=MIRROR_SPORT, dport=4789, flags="S"),
            drop="geneve_inner_not_vxlan",
            stage="ip",
        ),
        Case(
            "geneve_inner_wrong_port",
            "the mirror datagram is UDP to 4790, not to the VXLAN port",
            mirror_l4=UDP(sport=MIRROR_SPORT, dport=4790),
            drop="geneve_inner_not_vxlan",
            stage="udp",
        ),
    ]


def vxlan_payload(case: Case) -> bytes:
    """The VXLAN datagram inside: the payload of the VXLAN golden case's frame."""
    return bytes(VXLAN_GOLDEN.frame(VXLAN_CASES[case.vxlan_case]))[14 + 20 + 8 :]


def mirror_datagram(case: Case) -> Packet:
    """The source's datagram as the GWLB received it: IP / UDP 4789 / VXLAN payload."""
    l4 = case.mirror_l4 if case.mirror_l4 is not None else UDP(sport=MIRROR_SPORT, dport=4789)
    ip: Packet
    if case.mirror_v6:
        ip = IPv6(src=ENI_IP6, dst=GWLB_ENDPOINT_IP6, hlim=64)
    else:
        ip = IP(src=ENI_IP, dst=GWLB_ENDPOINT_IP, id=7, ttl=64, **case.mirror_ip)
    datagram = ip / l4 / Raw(vxlan_payload(case))
    if case.ethernet:
        return Ether(src="02:00:00:00:0e:01", dst="02:00:00:00:0e:02") / datagram
    return datagram


def geneve_payload(case: Case) -> bytes:
    """The UDP payload the GWLB sends to its target."""
    inner = bytes(mirror_datagram(case))
    proto = case.proto
    if proto is None:
        proto = 0x6558 if case.ethernet else (0x86DD if case.mirror_v6 else 0x0800)
    if case.raw_options is not None:
        options = case.raw_options
    else:
        chosen = aws_options() if case.options is None else list(case.options)
        options = b"".join(bytes(option) for option in chosen)
    header = GENEVE(
        version=case.version,
        optionlen=len(options) // 4,
        oam=case.oam,
        critical=case.critical,
        proto=proto,
        vni=0,
    )
    return bytes(header)[:8] + options + inner


def frame(case: Case) -> Ether:
    """The captured frame: outer Ethernet / IPv4 from the GWLB / UDP to 6081 / GENEVE payload."""
    packet = (
        Ether(src=ROUTER_MAC, dst=COLLECTOR_MAC)
        / IP(src=GWLB_IP, dst=COLLECTOR_IP, id=1, ttl=255)
        / UDP(sport=GENEVE_SPORT, dport=6081)
        / Raw(geneve_payload(case))
    )
    packet.time = TIMESTAMP
    return packet


def describe(case: Case) -> tuple[dict[str, Any], dict[str, Any]]:
    """(expected result, layer offsets in the GENEVE payload), from the construction."""
    payload = geneve_payload(case)
    options_end = 8 + (payload[0] & 0x3F) * 4
    ip = options_end + (14 if case.ethernet else 0)
    ip_min = 40 if case.mirror_v6 else 20
    ihl = 40 if case.mirror_v6 else max(int(case.mirror_ip.get("ihl", 5)), 5) * 4
    udp = ip + ihl
    vxlan = udp + 8
    layers = {
        "options_end": options_end,
        "ip": ip,
        "ip_min_end": ip + ip_min,
        "udp": udp,
        "vxlan": vxlan,
    }
    if case.drop is not None and case.stage != "vxlan":
        return {"drop": case.drop}, {**layers, "stage": case.stage}
    expect_vxlan, _ = VXLAN_GOLDEN.describe(VXLAN_CASES[case.vxlan_case])
    if "drop" in expect_vxlan:
        return dict(expect_vxlan), {**layers, "stage": "vxlan"}
    endpoint = None
    if case.options is None or any(
        o.classid == AWS_CLASS and o.type & 0x7F == 1 for o in case.options
    ):
        endpoint = f"vpce-{ENDPOINT_ID:017x}"
    expect = {
        "mirror_source": ENI_IP6 if case.mirror_v6 else ENI_IP,
        "gwlb_endpoint_id": endpoint,
        "packet": expect_vxlan,
    }
    return expect, {**layers, "stage": None}


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
        pcap = outdir / f"{case.name}.pcap"
        wrpcap(str(pcap), [frame(case)])
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
    print(f"{len(written)} golden GENEVE vectors in {target}")
