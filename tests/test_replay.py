"""``python -m collector replay`` against tshark's decoding of the same capture.

A capture as taken on a collector host is built with scapy: three mirror sessions (random VNIs,
inner IPv4 and IPv6, two truncating with a PacketLength, one behind 802.1Q), TCP connections in both
directions, DNS over UDP, pings, long and idle flows that the timeouts split, timestamps out of
order within flows, VXLAN over an IPv6 outer header, a few datagrams the decoder must drop, and the
host's own traffic that is not VXLAN at all. The replay's per-flow packets and bytes must equal,
exactly, totals computed from tshark's fields alone; the same holds for the capture converted to
pcapng and to nanosecond formats, and for the bundled demo.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap

from tests.packets import ENI_MAC, GATEWAY_MAC

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "tests" / "data" / "demo.pcap"
T0 = 1_764_100_000  # capture start, whole seconds
COLLECTOR_IP, COLLECTOR_IP6 = "10.0.100.5", "2001:db8:100::5"
COLLECTOR_MAC, ROUTER_MAC = "02:00:00:00:c0:01", "02:00:00:00:0f:01"
KEY_FIELDS = ("vni", "src_addr", "dst_addr", "protocol", "src_port", "dst_port")
KEY_FIELDS += ("icmp_type", "icmp_code")
FlowKey = tuple[Any, ...]


# ---- the capture ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """A mirror session: source ENI (outer source = its primary IPv4), VNI, PacketLength."""

    vni: int
    eni_ip: str
    packet_length: int | None = None
    vlan: int | None = None  # an inner 802.1Q tag on every frame of this source
    outer_v6: str | None = None  # reach the collector over IPv6 (exercises the reader)


WEB = Session(vni=0x3A91C7, eni_ip="10.1.0.10")
DB = Session(vni=0x0F00D5, eni_ip="10.1.2.30", packet_length=128, vlan=42)
EDGE = Session(vni=0xC0FFEE, eni_ip="10.1.3.40", packet_length=40, outer_v6="2001:db8:1::40")


class Capture:
    """Frames in arrival order, each with the timestamp it is written with."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._frames: list[tuple[float, int, Decimal, Packet]] = []

    def add(self, t: float, frame: Packet, stamp: float | None = None) -> None:
        """A frame arriving at ``t``, stamped ``stamp`` (default ``t``; else out of order)."""
        when = t if stamp is None else stamp
        ts = Decimal(T0) + Decimal(round(when * 1_000_000)) / 1_000_000
        self._frames.append((t, len(self._frames), ts, frame))

    @property
    def frames(self) -> list[tuple[Decimal, Packet]]:
        return [(ts, frame) for _, _, ts, frame in sorted(self._frames, key=lambda f: f[:2])]

    def mirror(self, session: Session, t: float, inner: Packet, stamp: float | None = None) -> None:
        """One mirrored packet: VXLAN to the collector, the inner frame cut to the PacketLength."""
        if session.vlan is None:
            l2 = Ether(src=ENI_MAC, dst=GATEWAY_MAC) / inner
        else:
            l2 = Ether(src=ENI_MAC, dst=GATEWAY_MAC) / Dot1Q(vlan=session.vlan) / inner
        frame = bytes(l2)
        if session.packet_length is not None:
            frame = frame[: session.packet_length]
        vxlan = bytes([0x08, 0, 0, 0]) + (session.vni << 8).to_bytes(4, "big")
        sport = 49152 + zlib.crc32(bytes(inner)[:40]) % 16384  # AWS: a hash of the inner flow
        outer: Packet
        if session.outer_v6 is None:
            outer = IP(src=session.eni_ip, dst=COLLECTOR_IP, ttl=255)
        else:
            outer = IPv6(src=session.outer_v6, dst=COLLECTOR_IP6)
        self.add(
            t,
            Ether(src=ROUTER_MAC, dst=COLLECTOR_MAC)
            / outer
            / UDP(sport=sport, dport=4789)
            / Raw(vxlan + frame),
            stamp,
        )

    def host(self, t: float, frame: Packet) -> None:
        """The collector host's own traffic: not VXLAN."""
        self.add(t, frame)

    def write(self, path: Path) -> None:
        packets = []
        for ts, frame in self.frames:
            frame.time = ts
            packets.append(frame)
        wrpcap(str(path), packets)


def ip(src: str, dst: str) -> Packet:
    return IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)


def tcp_connection(
    cap: Capture,
    session: Session,
    t: float,
    client: tuple[str, int],
    server: tuple[str, int],
    sizes: list[int],
    *,
    reorder: bool = False,
) -> None:
    """Handshake, data from the server with client ACKs, FIN both ways; both directions mirrored."""
    (c, cport), (s, sport) = client, server
    up, down = ip(c, s), ip(s, c)
    packets: list[tuple[float, Packet]] = [
        (t, up / TCP(sport=cport, dport=sport, flags="S", seq=100)),
        (t + 0.0004, down / TCP(sport=sport, dport=cport, flags="SA", seq=900, ack=101)),
        (t + 0.0008, up / TCP(sport=cport, dport=sport, flags="A", seq=101, ack=901)),
        (t + 0.0010, up / TCP(sport=cport, dport=sport, flags="PA", seq=101) / Raw(b"G" * 180)),
    ]
    now, seq = t + 0.002, 901
    for size in sizes:
        packets.append(
            (now, down / TCP(sport=sport, dport=cport, flags="A", seq=seq) / Raw(b"d" * size))
        )
        packets.append((now + 0.0002, up / TCP(sport=cport, dport=sport, flags="A", seq=281)))
        now, seq = now + cap.rng.uniform(0.0005, 0.003), seq + size
    packets.append((now, down / TCP(sport=sport, dport=cport, flags="FA", seq=seq)))
    packets.append((now + 0.0003, up / TCP(sport=cport, dport=sport, flags="FA", seq=281)))
    packets.append((now + 0.0006, down / TCP(sport=sport, dport=cport, flags="A", seq=seq + 1)))
    stamps = [when for when, _ in packets]
    if reorder:  # out-of-order stamps within a flow: two ACKs of the client swap their times
        for i in range(5, len(packets) - 4, 4):
            stamps[i], stamps[i + 2] = stamps[i + 2], stamps[i]
    for (when, inner), stamp in zip(packets, stamps, strict=True):
        cap.mirror(session, when, inner, stamp)


def build_capture(seed: int = 7) -> Capture:
    cap = Capture(seed)
    rng = cap.rng
    web6 = "2001:db8:1::10"
    # web: HTTPS clients, both directions of each connection mirrored, full packets
    for i in range(6):
        client = (f"198.51.100.{10 + i}", 50000 + i)
        sizes = [rng.choice([1448, 1448, 600, 90]) for _ in range(rng.randint(3, 12))]
        tcp_connection(
            cap, WEB, 0.5 + i * 7.3, client, (WEB.eni_ip, 443), sizes, reorder=i % 2 == 0
        )
    for i in range(3):
        sizes = [rng.choice([1428, 300]) for _ in range(4)]
        tcp_connection(
            cap, WEB, 3.1 + i * 11, (f"2001:db8:9::{i + 1}", 41000 + i), (web6, 443), sizes
        )
    # web: DNS lookups (v4 and v6) and pings, one ping reply set stamped out of order
    for i in range(8):
        t = 1.0 + i * 9.0
        q = DNS(id=0x100 + i, rd=1, qd=DNSQR(qname=f"svc{i}.example.com"))
        a = DNS(
            id=0x100 + i, qr=1, qd=q.qd, an=DNSRR(rrname=f"svc{i}.example.com", rdata="192.0.2.1")
        )
        resolver = "10.1.0.2" if i % 2 else "2001:db8:1::2"
        me = WEB.eni_ip if i % 2 else web6
        cap.mirror(WEB, t, ip(me, resolver) / UDP(sport=33000 + i, dport=53) / q)
        cap.mirror(WEB, t + 0.0007, ip(resolver, me) / UDP(sport=53, dport=33000 + i) / a)
    for i in range(5):
        t = 2.0 + i
        request = ICMP(type=8, id=0x77, seq=i) / Raw(b"p" * 56)
        reply = ICMP(type=0, id=0x77, seq=i) / Raw(b"p" * 56)
        cap.mirror(WEB, t, ip(WEB.eni_ip, "10.2.0.20") / request)
        stamp = t - 1.5 if i == 3 else None  # one reply stamped before the one ahead of it
        cap.mirror(WEB, t + 0.001, ip("10.2.0.20", WEB.eni_ip) / reply, stamp)
        cap.mirror(WEB, t + 0.2, ip(web6, "2001:db8:2::20") / ICMPv6EchoRequest(id=5, seq=i))
        cap.mirror(WEB, t + 0.2005, ip("2001:db8:2::20", web6) / ICMPv6EchoReply(id=5, seq=i))
    # web: a metrics stream every 5 s for 150 s (the active timeout splits it) and a flow idle
    # for 20 s in the middle (the inactive timeout splits it)
    for i in range(31):
        payload = Raw(b"m" * rng.randint(40, 400))
        cap.mirror(
            WEB, 0.25 + i * 5, ip(WEB.eni_ip, "10.2.0.50") / UDP(sport=8125, dport=8125) / payload
        )
    for t, stamp in ((4.0, 4.0), (4.5, 4.5), (25.0, 25.5), (25.5, 25.0)):  # the last two swapped
        syslog = ip(WEB.eni_ip, "10.2.0.60") / UDP(sport=5140, dport=514) / Raw(b"s" * 90)
        cap.mirror(WEB, t, syslog, stamp)
    # db: PacketLength 128 on a tagged frame: bulk transfers whose bytes only the IP header knows
    for i in range(4):
        sizes = [1448] * rng.randint(4, 15)
        tcp_connection(
            cap,
            DB,
            1.5 + i * 13,
            (f"10.1.0.{20 + i}", 45000 + i),
            (DB.eni_ip, 5432),
            sizes,
            reorder=True,
        )
    # edge: PacketLength 40 over an IPv6 outer header; UDP keeps 6 octets, TCP loses its flags
    for i in range(6):
        cap.mirror(
            EDGE,
            6.0 + i * 0.5,
            ip(EDGE.eni_ip, "203.0.113.9") / UDP(sport=4500, dport=4500) / Raw(b"e" * 1200),
        )
    tcp_connection(cap, EDGE, 9.0, ("203.0.113.77", 61000), (EDGE.eni_ip, 22), [900, 900, 64])
    # datagrams the decoder drops: a crafted inner ARP, and a VXLAN header without the I flag
    cap.mirror(WEB, 12.0, ARP(op=1, hwsrc=ENI_MAC, psrc=WEB.eni_ip, pdst="10.1.0.1"))
    bad = Raw(
        bytes([0x00, 0, 0, 0])
        + (WEB.vni << 8).to_bytes(4, "big")
        + bytes(Ether(src=ENI_MAC, dst=GATEWAY_MAC) / IP(src=WEB.eni_ip, dst="10.2.0.20") / TCP())
    )
    cap.add(
        12.5,
        Ether(src=ROUTER_MAC, dst=COLLECTOR_MAC)
        / IP(src="10.9.9.9", dst=COLLECTOR_IP)
        / UDP(sport=40000, dport=4789)
        / bad,
    )
    # the collector host's own traffic
    host = Ether(src=ROUTER_MAC, dst=COLLECTOR_MAC)
    cap.host(
        0.1,
        Ether(src=ROUTER_MAC, dst="ff:ff:ff:ff:ff:ff")
        / ARP(op=1, psrc="10.0.100.1", pdst=COLLECTOR_IP),
    )
    for i in range(4):  # NLB health checks on the health port
        cap.host(
            5.0 + i * 30,
            host
            / IP(src="10.0.100.200", dst=COLLECTOR_IP)
            / TCP(sport=20000 + i, dport=8080, flags="S"),
        )
    cap.host(
        7.7,
        host
        / IP(src=COLLECTOR_IP, dst="10.0.0.2")
        / UDP(sport=41234, dport=53)
        / DNS(qd=DNSQR(qname="kafka.internal")),
    )
    cap.host(
        8.8,
        host
        / IP(src="10.0.100.9", dst=COLLECTOR_IP)
        / UDP(sport=4789, dport=4790)
        / Raw(b"\x0c" + bytes(15)),
    )
    cap.host(9.9, host / IPv6(src="2001:db8:100::1", dst=COLLECTOR_IP6) / ICMPv6EchoRequest())
    return cap


# ---- tshark's side ----------------------------------------------------------------------------------

FIELDS = (
    "frame.protocols",
    "udp.dstport",
    "vxlan.flags",
    "vxlan.vni",
    "ip.src",
    "ip.dst",
    "ip.proto",
    "ip.len",
    "ipv6.src",
    "ipv6.dst",
    "ipv6.nxt",
    "ipv6.plen",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "icmp.type",
    "icmp.code",
    "icmpv6.type",
    "icmpv6.code",
)


@dataclass
class TsharkTotals:
    frames: int
    not_vxlan: int
    undecodable: (
        int  # VXLAN datagrams tshark shows without the I flag or without an inner IP packet
    )
    flows: dict[FlowKey, tuple[int, int]]  # key -> (packets, bytes)


def tshark_totals(pcap: Path) -> TsharkTotals:
    """Per-flow packets and bytes from tshark's fields alone (no collector code involved)."""
    tshark = shutil.which("tshark")
    assert tshark, "tshark is required by the replay tests (make system-deps installs it)"
    command = [tshark, "-n", "-r", str(pcap), "-d", "udp.port==4789,vxlan"]
    command += ["-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE"]
    command += ["-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,"]
    for name in FIELDS:
        command += ["-e", name]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    frames = not_vxlan = undecodable = 0
    packets: Counter[FlowKey] = Counter()
    octets: Counter[FlowKey] = Counter()
    for line in out.splitlines():
        frames += 1
        f = {n: v.split(",") if v else [] for n, v in zip(FIELDS, line.split("\t"), strict=True)}
        layers = f["frame.protocols"][0].split(":")
        if "vxlan" not in layers or f["udp.dstport"][0] != "4789":
            not_vxlan += 1
            continue
        at = layers.index("vxlan")
        outer, inner = layers[:at], layers[at + 1 :]
        nets = [p for p in inner if p in ("ip", "ipv6")]
        if not int(f["vxlan.flags"][0], 16) & 0x0800 or not nets:
            undecodable += 1
            continue
        version = nets[0]
        i = outer.count(version)  # occurrence index of the inner header among this protocol's
        if version == "ip":
            src, dst = f["ip.src"][i], f["ip.dst"][i]
            proto, length = int(f["ip.proto"][i]), int(f["ip.len"][i])
        else:
            src, dst = f["ipv6.src"][i], f["ipv6.dst"][i]
            proto, length = int(f["ipv6.nxt"][i]), int(f["ipv6.plen"][i]) + 40
        sport = dport = 0
        itype = icode = None
        if proto == 6 and f["tcp.srcport"] and f["tcp.dstport"]:
            sport, dport = int(f["tcp.srcport"][0]), int(f["tcp.dstport"][0])
        elif proto == 17 and len(f["udp.srcport"]) > 1 and len(f["udp.dstport"]) > 1:
            sport, dport = int(f["udp.srcport"][1]), int(f["udp.dstport"][1])
        elif proto in (1, 58):
            kind = "icmp" if proto == 1 else "icmpv6"
            itype, icode = int(f[f"{kind}.type"][0]), int(f[f"{kind}.code"][0])
        key = (int(f["vxlan.vni"][0]), src, dst, proto, sport, dport, itype, icode)
        packets[key] += 1
        octets[key] += length
    flows = {key: (packets[key], octets[key]) for key in packets}
    return TsharkTotals(frames, not_vxlan, undecodable, flows)


# ---- the collector's side ---------------------------------------------------------------------------


@dataclass
class Replay:
    records: list[dict[str, Any]]
    stdout: str
    summary: dict[str, Any]


def run_replay(capture: Path) -> Replay:
    result = subprocess.run(
        [sys.executable, "-m", "collector", "replay", str(capture)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stderr.splitlines() if x.startswith("replay "))
    found = re.search(r"datagrams=(\d+) kept=(\d+) records=(\d+) drops=(\{.*?\}|none)", line)
    assert found, line
    drops = {} if found[4] == "none" else json.loads(found[4].replace("'", '"'))
    summary = {"datagrams": int(found[1]), "kept": int(found[2]), "records": int(found[3])}
    summary["drops"] = drops
    records = [json.loads(x) for x in result.stdout.splitlines()]
    return Replay(records, result.stdout, summary)


def per_flow(records: list[dict[str, Any]]) -> dict[FlowKey, tuple[int, int]]:
    """Records summed per flow key: timeouts and FIN/RST may split one flow into several."""
    packets: Counter[FlowKey] = Counter()
    octets: Counter[FlowKey] = Counter()
    for r in records:
        key = tuple(r[k] for k in KEY_FIELDS)
        packets[key] += r["packets"]
        octets[key] += r["bytes"]
    return {key: (packets[key], octets[key]) for key in packets}


# ---- tests ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built() -> Capture:
    return build_capture()


@pytest.fixture(scope="module")
def capture(built: Capture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "mirror.pcap"
    built.write(path)
    return path


@pytest.fixture(scope="module")
def tshark(capture: Path) -> TsharkTotals:
    return tshark_totals(capture)


@pytest.fixture(scope="module")
def replayed(capture: Path) -> Replay:
    return run_replay(capture)


CONVERSIONS = {
    "pcapng": ["pcapng"],
    "nanosecond-pcap": ["nsecpcap"],
    "nanosecond-pcapng": ["nsecpcap", "pcapng"],
}


@pytest.fixture(scope="module", params=sorted(CONVERSIONS))
def converted(
    request: pytest.FixtureRequest, capture: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The same capture in another file format, converted by editcap, under the same file name."""
    editcap = shutil.which("editcap")
    assert editcap, "editcap (shipped with tshark) is required"
    source = capture
    for step in CONVERSIONS[request.param]:
        target = tmp_path_factory.mktemp(step) / capture.name
        subprocess.run([editcap, "-F", step, str(source), str(target)], check=True)
        source = target
    magic = source.read_bytes()[:4]
    assert magic == (
        b"\x0a\x0d\x0d\x0a" if request.param.endswith("pcapng") else b"\x4d\x3c\xb2\xa1"
    )
    return source


def test_capture_is_what_the_test_says(built: Capture, tshark: TsharkTotals) -> None:
    """The capture really has what the replay must cope with (guards the builder, not the code)."""
    totals = tshark
    assert totals.not_vxlan >= 7 and totals.undecodable == 2
    vnis = {key[0] for key in totals.flows}
    assert vnis == {WEB.vni, DB.vni, EDGE.vni}
    assert {key[3] for key in totals.flows} == {1, 6, 17, 58}
    assert {":" in key[1] for key in totals.flows} == {True, False}
    times = [float(ts) for ts, _ in built.frames]
    assert any(b < a for a, b in itertools.pairwise(times))  # not in time order
    assert max(times) - min(times) > 120  # longer than the active timeout


def test_replay_matches_tshark_per_flow(tshark: TsharkTotals, replayed: Replay) -> None:
    totals, replay = tshark, replayed
    assert per_flow(replay.records) == totals.flows
    kept = sum(packets for packets, _ in totals.flows.values())
    assert replay.summary["datagrams"] == totals.frames
    assert replay.summary["kept"] == kept
    assert replay.summary["records"] == len(replay.records)
    assert replay.summary["drops"] == {
        "not_vxlan": totals.not_vxlan,
        "non_ip": 1,
        "vxlan_flags": 1,
    }
    assert sum(replay.summary["drops"].values()) == totals.not_vxlan + totals.undecodable


def test_replay_splits_flows_on_timeouts_and_fin(replayed: Replay) -> None:
    records = replayed.records
    reasons = Counter(r["end_reason"] for r in records)
    assert {"active_timeout", "inactive_timeout", "tcp_fin", "shutdown"} <= set(reasons)
    assert [r["sequence"] for r in records] == list(range(1, len(records) + 1))
    stream = [r for r in records if r["dst_port"] == 8125]
    assert len(stream) >= 3 and sum(r["packets"] for r in stream) == 31


def test_truncated_sessions_count_bytes_from_the_ip_header(replayed: Replay) -> None:
    records = replayed.records
    db = [r for r in records if r["vni"] == DB.vni and r["src_port"] == 5432]
    captured = sum(r["packets"] for r in db) * (DB.packet_length or 0)
    assert sum(r["bytes"] for r in db) > 5 * captured  # 1448-byte segments cut to 128 octets
    edge_udp = [r for r in records if r["vni"] == EDGE.vni and r["protocol"] == 17]
    assert [(r["src_port"], r["dst_port"], r["packets"], r["bytes"]) for r in edge_udp] == [
        (4500, 4500, 6, 6 * 1228)
    ]
    edge_tcp = [r for r in records if r["vni"] == EDGE.vni and r["protocol"] == 6]
    assert edge_tcp and all(r["tcp_flags"] == 0 for r in edge_tcp)  # cut at 40 octets: flags gone


def test_other_capture_formats_replay_exactly_like_pcap(
    converted: Path, replayed: Replay, tshark: TsharkTotals
) -> None:
    """Same records, byte for byte (times included), from pcapng and nanosecond captures."""
    again = run_replay(converted)
    assert again.stdout == replayed.stdout
    assert again.summary == replayed.summary
    assert tshark_totals(converted) == tshark


def test_bundled_demo_matches_tshark() -> None:
    totals = tshark_totals(DEMO)
    replay = run_replay(DEMO)
    assert per_flow(replay.records) == totals.flows
    assert replay.summary["datagrams"] == totals.frames


def test_a_capture_cut_short_is_replayed_up_to_the_cut_and_says_so(tmp_path: Path) -> None:
    data = DEMO.read_bytes()
    assert struct.unpack_from("<I", data, 0)[0] == 0xA1B2C3D4  # classic pcap, little endian
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:3000])
    # the frames wholly before the cut, found by walking the record headers, as a capture of
    # their own: what the cut capture must give, no more, no less
    end, frames = 24, 0
    while end + 16 <= 3000 and end + 16 + struct.unpack_from("<I", data, end + 8)[0] <= 3000:
        end += 16 + struct.unpack_from("<I", data, end + 8)[0]
        frames += 1
    assert end < 3000 and frames >= 2, "the cut falls inside a record, after a few whole ones"
    whole = tmp_path / "whole" / "cut.pcap"  # same name: the exporter is named after the file
    whole.parent.mkdir()
    whole.write_bytes(data[:end])
    result = subprocess.run(
        [sys.executable, "-m", "collector", "replay", str(cut)],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0
    assert b"ends inside a record" in result.stderr
    assert b"Traceback" not in result.stderr
    expected = run_replay(whole)
    assert expected.summary["datagrams"] == frames
    assert result.stdout.decode() == expected.stdout
    assert per_flow([json.loads(x) for x in result.stdout.splitlines()]) == (
        tshark_totals(whole).flows
    )
