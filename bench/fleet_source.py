"""A mirror source as AWS behaves: VXLAN to the NLB, one VNI per session, outer source address =
the source ENI's address, outer source port = a hash of the inner flow (5-tuple; ICMP: protocol,
source, destination), so one inner flow always has one outer 5-tuple and the NLB keeps it on one
target. Inner packets follow a bench.traffic ``Profile``: IPv4 and IPv6, TCP, UDP and ICMP, sizes
drawn per packet from the profile's weights, 802.1Q tags on the flows that have one, and a session
with a PacketLength truncates every mirrored frame to that many bytes after the VXLAN header
(the inner IP header still says the packet's full length).

Runs inside a source namespace, driven over stdin/stdout with one JSON object per line:

    {"op": "flows", "flows": [{"id": "..", "proto": 6, "src": "..", "sport": 1, "dst": "..",
                               "dport": 443, "vlan": 0}, ...]}
                                                        replace the flows being mirrored
                                                        (proto 1/58: ICMP echo, ports 0)
    {"op": "rate", "pps": 400}                          datagrams per second over all flows
    {"op": "resume"} / {"op": "pause"}                  start / stop sending
    {"op": "report"}                                    no change
    {"op": "exit"}

Each command is answered, after it took effect (a pause only once the last datagram left), with
``{"sent": {flow id: datagrams}, "bytes": {flow id: inner IP bytes}}``: cumulative counts of the
datagrams the kernel accepted and of the inner IP lengths they carried (what a collector counts,
truncated or not).
"""

from __future__ import annotations

import argparse
import json
import random
import select
import socket
import struct
import sys
import time
import zlib
from typing import Any

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

from bench.fleet_gwlb import wrap
from bench.fleet_net import GENEVE_PORT, NLB_ADDRESS, VXLAN_PORT
from bench.traffic import PROFILES

TICK_S = 0.005
# AWS does not document the range of its outer source ports; the IANA dynamic range is used
PORT_BASE, PORT_SPAN = 49152, 16384
ICMP_PROTOCOLS = (1, 58)


def _address(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def outer_port(proto: int, src: str, sport: int, dst: str, dport: int) -> int:
    """The outer UDP source port of an inner flow: a hash of its 5-tuple, or for ICMP (no ports)
    of its 3-tuple (protocol, source, destination), as AWS documents for mirrored traffic."""
    if proto in ICMP_PROTOCOLS:
        key = struct.pack("!B", proto) + _address(src) + _address(dst)
    else:
        key = (
            struct.pack("!B", proto)
            + _address(src)
            + struct.pack("!H", sport)
            + _address(dst)
            + struct.pack("!H", dport)
        )
    return PORT_BASE + zlib.crc32(key) % PORT_SPAN


def datagram(vni: int, flow: dict[str, Any], size: int) -> tuple[bytes, int]:
    """The VXLAN payload of one packet of ``flow`` with an inner IP packet of ``size`` bytes (at
    least its headers), untruncated, and that inner IP length."""
    v6 = ":" in flow["src"]
    ip: Packet = (
        IPv6(src=flow["src"], dst=flow["dst"]) if v6 else IP(src=flow["src"], dst=flow["dst"])
    )
    proto = flow["proto"]
    if proto == 6:
        l4: Packet = TCP(sport=flow["sport"], dport=flow["dport"], flags="A")
    elif proto == 17:
        l4 = UDP(sport=flow["sport"], dport=flow["dport"])
    elif proto in ICMP_PROTOCOLS:
        l4 = ICMPv6EchoRequest(id=1, seq=1) if v6 else ICMP(type=8, id=1, seq=1)
    else:
        raise ValueError(f"protocol {proto} is not mirrored by this source")
    head = ip / l4
    inner = head / Raw(bytes(max(0, size - len(head))))
    eth: Packet = Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b")
    if flow.get("vlan"):
        eth = eth / Dot1Q(vlan=flow["vlan"])
    return bytes(VXLAN(vni=vni, flags=0x08) / eth / inner), len(inner)


class Source:
    def __init__(
        self,
        address: str,
        vni: int,
        sizes: tuple[tuple[int, float], ...] = PROFILES["mixed"].sizes,
        truncate_to: int = 0,
        seed: int = 1,
        gwlb_endpoint: int = 0,
    ) -> None:
        self.address = address
        # a GWLB endpoint as the mirror target (the fleet's gwlb mode): each mirror datagram goes
        # to the load balancer in the GWLB's GENEVE, sent from the mirror datagram's own address
        # and port (a GWLB hashes its 5-tuple), to be masqueraded there as the GWLB's
        self.gwlb_endpoint = gwlb_endpoint
        self.vni = vni
        self.sizes = [s for s, _ in sizes]
        self.weights = [w for _, w in sizes]
        self.truncate_to = truncate_to  # the session's PacketLength; 0: whole packets
        self.rng = random.Random(seed * 1_000_003 + vni)
        self.sockets: dict[int, socket.socket] = {}
        # per flow: its id, (datagram, inner IP length) per size, its socket
        self.flows: list[tuple[str, list[tuple[bytes, int]], socket.socket]] = []
        self.sent: dict[str, int] = {}
        self.bytes: dict[str, int] = {}
        self.pps = 0.0
        self.running = False
        self.base_time = 0.0
        self.base_count = 0
        self.total = 0
        self.next = 0

    def socket_for(self, port: int) -> socket.socket:
        sock = self.sockets.get(port)
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((self.address, port))
            self.sockets[port] = sock
        return sock

    def packets(self, flow: dict[str, Any]) -> list[tuple[bytes, int]]:
        """One datagram per size of the profile, truncated to the session's PacketLength."""
        out = []
        for size in self.sizes:
            data, ip_len = datagram(self.vni, flow, size)
            if self.truncate_to:
                data = data[: 8 + self.truncate_to]  # bytes after the VXLAN header
            if self.gwlb_endpoint:
                port = outer_port(
                    flow["proto"], flow["src"], flow["sport"], flow["dst"], flow["dport"]
                )
                data = wrap(data, self.address, endpoint_id=self.gwlb_endpoint, sport=port)
            out.append((data, ip_len))
        return out

    def set_flows(self, flows: list[dict[str, Any]]) -> None:
        self.flows = []
        for flow in flows:
            port = outer_port(flow["proto"], flow["src"], flow["sport"], flow["dst"], flow["dport"])
            self.flows.append((flow["id"], self.packets(flow), self.socket_for(port)))
            self.sent.setdefault(flow["id"], 0)
            self.bytes.setdefault(flow["id"], 0)
        self.next = 0
        self._rebase()

    def _rebase(self) -> None:
        self.base_time, self.base_count = time.monotonic(), self.total

    def command(self, message: dict[str, Any]) -> bool:
        op = str(message["op"])
        if op == "flows":
            self.set_flows(message["flows"])
        elif op == "rate":
            self.pps = float(message["pps"])
            self._rebase()
        elif op == "resume":
            self.running = True
            self._rebase()
        elif op == "pause":
            self.running = False
        print(json.dumps({"sent": self.sent, "bytes": self.bytes}), flush=True)
        return op != "exit"

    def send_due(self) -> None:
        due = int((time.monotonic() - self.base_time) * self.pps) - (self.total - self.base_count)
        target = (NLB_ADDRESS, GENEVE_PORT if self.gwlb_endpoint else VXLAN_PORT)
        choices, sizes, weights = self.rng.choices, range(len(self.sizes)), self.weights
        while due > 0 and self.flows:
            flow_id, packets, sock = self.flows[self.next]
            data, ip_len = packets[choices(sizes, weights)[0]]
            try:
                sock.sendto(data, target)
            except OSError:  # ENOBUFS and the like: not sent, tried again on the next tick
                return
            self.sent[flow_id] += 1
            self.bytes[flow_id] += ip_len
            self.total += 1
            due -= 1
            self.next = (self.next + 1) % len(self.flows)


def _sizes(text: str) -> tuple[tuple[int, float], ...]:
    """``SIZE:WEIGHT,...`` (inner IP bytes and their weights)."""
    pairs = (item.split(":") for item in text.split(","))
    return tuple((int(size), float(weight)) for size, weight in pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="the source ENI's address (outer source)")
    parser.add_argument("--vni", type=int, required=True, help="the session's VNI")
    parser.add_argument(
        "--sizes", type=_sizes, default=PROFILES["mixed"].sizes, help="SIZE:WEIGHT,... inner IP"
    )
    parser.add_argument("--truncate-to", type=int, default=0, help="the session's PacketLength")
    parser.add_argument("--seed", type=int, default=1, help="seed of the per-packet size draws")
    parser.add_argument(
        "--gwlb-endpoint",
        type=lambda text: int(text, 0),
        default=0,
        help="mirror to this GWLB endpoint id (GENEVE on 6081) instead of to the NLB (VXLAN)",
    )
    args = parser.parse_args(argv)
    source = Source(
        args.address, args.vni, args.sizes, args.truncate_to, args.seed, args.gwlb_endpoint
    )
    stdin = sys.stdin
    while True:
        wait = TICK_S if source.running and source.flows else None
        readable, _, _ = select.select([stdin], [], [], wait)
        if readable:
            line = stdin.readline()
            if not line or not source.command(json.loads(line)):
                return 0
        if source.running:
            source.send_due()


if __name__ == "__main__":
    raise SystemExit(main())
