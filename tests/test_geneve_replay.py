"""A GENEVE capture of the same mirror traffic replays to the same records, and tshark agrees.

tests/test_replay.py's capture (three mirror sessions, TCP/UDP/ICMP over IPv4 and IPv6, truncating
sessions, a VXLAN header without the I flag, the host's own traffic) is converted frame by frame
into what a Gateway Load Balancer's target captures when the same sources mirror to a GWLB
endpoint: every VXLAN datagram, outer IP header included, wrapped in GENEVE with AWS's options by
a GWLB at another address, sent to UDP 6081 (the mirror datagram over IPv6 becomes protocol type
0x86DD). Replayed, both captures must give the very same records (the GENEVE ones also name the
GWLB endpoint), including direction, which the replay takes from the outer source: for GENEVE that
must be the mirror datagram's, never the GWLB's. tshark decodes the GENEVE capture on its own
(GENEVE -> IP -> UDP 4789 -> VXLAN -> inner) and its per-flow totals must equal the records'.
"""

from __future__ import annotations

import shutil
import subprocess
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from scapy.utils import rdpcap, wrpcap

from collector.wire.geneve import endpoint_text
from tests.packets import gwlb_options
from tests.test_replay import (
    COLLECTOR_IP,
    COLLECTOR_MAC,
    DB,
    EDGE,
    FIELDS,
    ROUTER_MAC,
    WEB,
    FlowKey,
    Replay,
    build_capture,
    per_flow,
    run_replay,
    tshark_totals,
)

GWLB_IP = "10.0.200.7"
# each source comes through the GWLB endpoint of its own VPC
ENDPOINTS = {WEB.vni: 0x0A1B2C3D4E5F6071, DB.vni: 0x0B2C3D4E5F607182, EDGE.vni: 0x0C3D4E5F60718293}
OTHER_ENDPOINT = 0x0D4E5F6071829304  # the crafted datagram from an address no session has


def to_geneve(frame: Packet) -> Packet:
    """The frame a GWLB target captures for a VXLAN frame (other frames stay as they are)."""
    if UDP not in frame or frame[UDP].dport != 4789:
        return frame
    mirror = frame[Ether].payload  # the outer IP header: IPv4, or IPv6 for the EDGE source
    datagram = bytes(mirror)
    vni = int.from_bytes(bytes(frame[UDP].payload)[4:7], "big")
    endpoint = ENDPOINTS.get(vni, OTHER_ENDPOINT)
    proto = 0x86DD if isinstance(mirror, IPv6) else 0x0800
    sport = 49152 + zlib.crc32(datagram[:40]) % 16384  # the GWLB's flow hash
    wrapped = (
        Ether(src=ROUTER_MAC, dst=COLLECTOR_MAC)
        / IP(src=GWLB_IP, dst=COLLECTOR_IP, ttl=255)
        / UDP(sport=sport, dport=6081)
        / GENEVE(proto=proto, vni=0, options=gwlb_options(endpoint))
        / Raw(datagram)
    )
    wrapped.time = frame.time
    return wrapped


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(VXLAN capture, GENEVE capture), both named mirror.pcap: the exporter is named after it."""
    vxlan = tmp_path_factory.mktemp("vxlan") / "mirror.pcap"
    build_capture().write(vxlan)
    geneve = tmp_path_factory.mktemp("geneve") / "mirror.pcap"
    wrpcap(str(geneve), [to_geneve(f) for f in rdpcap(str(vxlan))])
    return vxlan, geneve


@pytest.fixture(scope="module")
def replays(captures: tuple[Path, Path]) -> tuple[Replay, Replay]:
    return run_replay(captures[0]), run_replay(captures[1])


def test_the_geneve_capture_holds_the_same_mirror_traffic(captures: tuple[Path, Path]) -> None:
    vxlan, geneve = (rdpcap(str(p)) for p in captures)
    assert len(vxlan) == len(geneve)
    wrapped = 0
    for a, b in zip(vxlan, geneve, strict=True):
        assert a.time == b.time
        if UDP in a and a[UDP].dport == 4789:
            wrapped += 1
            assert b[IP].src == GWLB_IP and b[UDP].dport == 6081
            assert bytes(b[GENEVE].payload) == bytes(a[Ether].payload)
        else:
            assert bytes(a) == bytes(b)
    assert wrapped > 300


def test_replay_gives_identical_records(replays: tuple[Replay, Replay]) -> None:
    vxlan, geneve = replays
    assert geneve.summary == vxlan.summary
    assert len(geneve.records) == len(vxlan.records) > 50
    endpoints = Counter()
    for record in geneve.records:
        endpoint = record.pop("gwlb_endpoint_id")
        assert endpoint == endpoint_text(ENDPOINTS.get(record["vni"], OTHER_ENDPOINT))
        endpoints[endpoint] += 1
    for record in vxlan.records:
        assert record.pop("gwlb_endpoint_id") is None
    assert geneve.records == vxlan.records  # direction included: from the mirror source
    assert len(endpoints) == 3
    assert {r["direction"] for r in geneve.records} >= {"ingress", "egress"}


def tshark_geneve_flows(pcap: Path) -> tuple[int, dict[FlowKey, tuple[int, int]]]:
    """(GENEVE frames, per-flow packets and bytes) from tshark's fields alone."""
    tshark = shutil.which("tshark")
    assert tshark, "tshark is required"
    command = [tshark, "-n", "-r", str(pcap), "-o", "ip.defragment:FALSE"]
    command += ["-o", "ipv6.defragment:FALSE"]
    command += ["-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,"]
    for name in FIELDS:
        command += ["-e", name]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    frames = 0
    packets: Counter[FlowKey] = Counter()
    octets: Counter[FlowKey] = Counter()
    for line in out.splitlines():
        f = {n: v.split(",") if v else [] for n, v in zip(FIELDS, line.split("\t"), strict=True)}
        layers = f["frame.protocols"][0].split(":")
        if "geneve" not in layers or f["udp.dstport"][0] != "6081":
            continue
        frames += 1
        if "vxlan" not in layers:
            continue
        at = layers.index("vxlan")
        outer, inner = layers[:at], layers[at + 1 :]
        nets = [p for p in inner if p in ("ip", "ipv6")]
        if not int(f["vxlan.flags"][0], 16) & 0x0800 or not nets:
            continue
        version = nets[0]
        i = outer.count(version)  # the inner header's occurrence among its protocol's
        if version == "ip":
            src, dst = f["ip.src"][i], f["ip.dst"][i]
            proto, length = int(f["ip.proto"][i]), int(f["ip.len"][i])
        else:
            src, dst = f["ipv6.src"][i], f["ipv6.dst"][i]
            proto, length = int(f["ipv6.nxt"][i]), int(f["ipv6.plen"][i]) + 40
        sport = dport = 0
        itype = icode = None
        u = outer.count("udp")  # the GENEVE datagram's and the mirror datagram's come first
        if proto == 6 and f["tcp.srcport"] and f["tcp.dstport"]:
            sport, dport = int(f["tcp.srcport"][0]), int(f["tcp.dstport"][0])
        elif proto == 17 and len(f["udp.srcport"]) > u and len(f["udp.dstport"]) > u:
            sport, dport = int(f["udp.srcport"][u]), int(f["udp.dstport"][u])
        elif proto in (1, 58):
            kind = "icmp" if proto == 1 else "icmpv6"
            itype, icode = int(f[f"{kind}.type"][0]), int(f[f"{kind}.code"][0])
        key = (int(f["vxlan.vni"][0]), src, dst, proto, sport, dport, itype, icode)
        packets[key] += 1
        octets[key] += length
    return frames, {key: (packets[key], octets[key]) for key in packets}


def test_tshark_agrees_on_every_flow(
    captures: tuple[Path, Path], replays: tuple[Replay, Replay]
) -> None:
    frames, flows = tshark_geneve_flows(captures[1])
    records: list[dict[str, Any]] = replays[1].records
    assert per_flow(records) == flows
    assert flows == tshark_totals(captures[0]).flows  # the same flows tshark sees in VXLAN
    vxlan_frames = tshark_totals(captures[0])
    assert frames == vxlan_frames.frames - vxlan_frames.not_vxlan
