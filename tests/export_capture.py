"""A mirrored capture and its config for the export-format tests (IPFIX, goflow2, ClickHouse).

Two mirror sessions with AWS context (one IPv4, one dual-stack), a filter that rejects one UDP
port, and traffic of every kind the exports must carry: TCP connections in both directions, UDP
(DNS), ICMP echo and ICMPv6 echo, IPv4 and IPv6, several minutes long so per-minute queries have
more than one bucket. Built with scapy; the JSON records of its replay are the reference every
other format is compared with.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_764_100_000  # whole seconds: record milliseconds are exact
COLLECTOR_IP = "10.0.100.5"
WEB_ENI_IP, DB_ENI_IP = "10.0.1.25", "10.0.2.40"
WEB_V6 = "2600:1f18:abcd::25"
WEB_VNI, DB_VNI = 3_000_001, 4_123_456

CONFIG = f"""
[flows]
active_timeout_s = 60
inactive_timeout_s = 15

[[sessions]]
vni = {WEB_VNI}
name = "web-1"
interface_id = "eni-0a1b2c3d4e5f60718"
addresses = ["{WEB_ENI_IP}", "{WEB_V6}"]
instance_id = "i-0123456789abcdef0"
subnet_id = "subnet-0aa11bb22cc33dd44"
vpc_id = "vpc-0f0e0d0c0b0a09080"
az_id = "use1-az4"
account_id = "123456789012"
region = "us-east-1"
filter = "no-dns-over-5353"

[[sessions]]
vni = {DB_VNI}
name = "db-primary"
interface_id = "eni-0fedcba9876543210"
addresses = ["{DB_ENI_IP}"]
region = "us-east-1"

[filters.no-dns-over-5353]
[[filters.no-dns-over-5353.rules]]
direction = "egress"
rule_number = 100
action = "reject"
protocol = 17
source_cidr = "0.0.0.0/0"
destination_cidr = "0.0.0.0/0"
destination_ports = "5353"

[[filters.no-dns-over-5353.rules]]
direction = "egress"
rule_number = 200
action = "accept"
source_cidr = "0.0.0.0/0"
destination_cidr = "0.0.0.0/0"

[[filters.no-dns-over-5353.rules]]
direction = "egress"
rule_number = 210
action = "accept"
source_cidr = "::/0"
destination_cidr = "::/0"

[[filters.no-dns-over-5353.rules]]
direction = "ingress"
rule_number = 100
action = "accept"
source_cidr = "0.0.0.0/0"
destination_cidr = "0.0.0.0/0"

[[filters.no-dns-over-5353.rules]]
direction = "ingress"
rule_number = 110
action = "accept"
source_cidr = "::/0"
destination_cidr = "::/0"
"""


def _ip(src: str, dst: str) -> Packet:
    return IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)


class _Capture:
    def __init__(self) -> None:
        self.frames: list[Packet] = []

    def mirror(self, t: float, vni: int, eni_ip: str, inner: Packet) -> None:
        sport = 49152 + (hash(bytes(inner)[:40]) & 0x3FFF)
        frame = (
            Ether(src="02:00:00:00:0f:01", dst="02:00:00:00:c0:01")
            / IP(src=eni_ip, dst=COLLECTOR_IP)
            / UDP(sport=sport, dport=4789)
            / VXLAN(flags=0x08, vni=vni)
            / Ether(src="06:00:00:00:0a:0a", dst="06:00:00:00:01:01")
            / inner
        )
        frame.time = T0 + t
        self.frames.append(frame)

    def tcp(
        self, t: float, vni: int, eni: str, client: str, server: str, cport: int, size: int
    ) -> None:
        """A TCP connection: handshake, some data each way, FIN both ways."""
        steps: list[tuple[bool, str, int]] = [(True, "S", 0), (False, "SA", 0), (True, "A", 0)]
        steps += [(True, "PA", size), (False, "A", 0), (False, "PA", size * 3)] * 3
        steps += [(True, "FA", 0), (False, "FA", 0), (True, "A", 0)]
        for i, (forward, flags, payload) in enumerate(steps):
            src, dst, sp, dp = (
                (client, server, cport, 443) if forward else (server, client, 443, cport)
            )
            inner = _ip(src, dst) / TCP(sport=sp, dport=dp, flags=flags) / Raw(b"x" * payload)
            self.mirror(t + i * 0.05, vni, eni, inner)


def build_capture(path: Path) -> Path:
    """Write the capture; returns its path."""
    cap = _Capture()
    web, db = WEB_ENI_IP, DB_ENI_IP
    for minute in range(3):
        base = minute * 60.0
        # egress TCP from the web server to a service, and ingress TCP from a client
        cap.tcp(base + 1, WEB_VNI, web, web, "10.0.9.10", 40000 + minute, 300 + minute)
        cap.tcp(base + 2, WEB_VNI, web, "198.51.100.7", web, 51000 + minute, 120)
        # IPv6 TCP
        cap.tcp(base + 3, WEB_VNI, web, WEB_V6, "2600:1f18:abcd::99", 42000 + minute, 700)
        # DNS over UDP, accepted, and mDNS-like UDP 5353 rejected by the filter
        for i in range(4):
            q = _ip(web, "10.0.0.2") / UDP(sport=33000 + minute, dport=53) / Raw(b"q" * (30 + i))
            a = _ip("10.0.0.2", web) / UDP(sport=53, dport=33000 + minute) / Raw(b"a" * (90 + i))
            cap.mirror(base + 5 + i, WEB_VNI, web, q)
            cap.mirror(base + 5.001 + i, WEB_VNI, web, a)
            m = _ip(web, "10.0.0.251") / UDP(sport=5353, dport=5353) / Raw(b"m" * 60)
            cap.mirror(base + 5.5 + i, WEB_VNI, web, m)
        # ICMP echo on the database, ICMPv6 echo on the web server
        for i in range(3):
            cap.mirror(base + 7 + i, DB_VNI, db, _ip("10.0.3.3", db) / ICMP(type=8, id=9, seq=i))
            cap.mirror(base + 7.01 + i, DB_VNI, db, _ip(db, "10.0.3.3") / ICMP(type=0, id=9, seq=i))
            echo = (
                _ip(WEB_V6, "2600:1f18:abcd::1") / ICMPv6EchoRequest(id=4, seq=i) / Raw(b"p" * 56)
            )
            reply = _ip("2600:1f18:abcd::1", WEB_V6) / ICMPv6EchoReply(id=4, seq=i) / Raw(b"p" * 56)
            cap.mirror(base + 8 + i, WEB_VNI, web, echo)
            cap.mirror(base + 8.01 + i, WEB_VNI, web, reply)
        # the database talks to the web server over a long-lived TCP connection (no FIN)
        for i in range(6):
            inner = (
                _ip(db, "10.0.1.77") / TCP(sport=5432, dport=50500, flags="PA") / Raw(b"r" * 200)
            )
            cap.mirror(base + 10 + i * 5, DB_VNI, db, inner)
    cap.frames.sort(key=lambda f: float(f.time))
    wrpcap(str(path), cap.frames)
    return path


def write_config(path: Path, extra: str = "", *, record_rejected: bool = False) -> Path:
    """The capture's config (plus ``extra``); ``record_rejected``: its filter records what it
    turns away (UDP to 5353, rule 100) as "reject" records."""
    config = CONFIG
    if record_rejected:
        header = "[filters.no-dns-over-5353]\n"
        config = config.replace(header, header + "record_rejected = true\n")
    path.write_text(config + extra)
    return path


def replay(
    capture: Path, config: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    """``python -m collector replay CAPTURE --config CONFIG ARGS...``."""
    return subprocess.run(
        [sys.executable, "-m", "collector", "replay", str(capture), "--config", str(config), *args],
        cwd=ROOT,
        capture_output=True,
        check=check,
        timeout=120,
    )


def json_records(capture: Path, config: Path) -> list[dict[str, Any]]:
    """The reference: the JSON records of a replay."""
    out = replay(capture, config).stdout
    return [json.loads(line) for line in out.splitlines()]
