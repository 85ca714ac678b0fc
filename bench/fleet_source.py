"""A mirror source as AWS behaves: VXLAN to the NLB, one VNI per session, outer source address =
the source ENI's address, outer source port = a hash of the inner 5-tuple (so one inner flow always
has one outer 5-tuple and the NLB keeps it on one target).

Runs inside a source namespace, driven over stdin/stdout with one JSON object per line:

    {"op": "flows", "flows": [{"id": "..", "proto": 6, "src": "..", "sport": 1, "dst": "..",
                               "dport": 443}, ...]}   replace the flows being mirrored
    {"op": "rate", "pps": 400}                          datagrams per second over all flows
    {"op": "resume"} / {"op": "pause"}                  start / stop sending
    {"op": "report"}                                    no change
    {"op": "exit"}

Each command is answered, after it took effect (a pause only once the last datagram left), with
``{"sent": {flow id: datagrams}}``: cumulative counts of datagrams the kernel accepted.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import time
import zlib
from typing import Any

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from bench.fleet_net import NLB_ADDRESS, VXLAN_PORT

PAYLOAD = 80  # bytes of inner L4 payload: small packets, the common case in mirrored traffic
TICK_S = 0.005
# AWS does not document the range of its outer source ports; the IANA dynamic range is used
PORT_BASE, PORT_SPAN = 49152, 16384


def outer_port(proto: int, src: str, sport: int, dst: str, dport: int) -> int:
    """The outer UDP source port of an inner flow: a hash of its 5-tuple."""
    key = struct.pack("!B4sH4sH", proto, socket.inet_aton(src), sport, socket.inet_aton(dst), dport)
    return PORT_BASE + zlib.crc32(key) % PORT_SPAN


def datagram(vni: int, flow: dict[str, Any]) -> bytes:
    l4: TCP | UDP = TCP(sport=flow["sport"], dport=flow["dport"], flags="A")
    if flow["proto"] == 17:
        l4 = UDP(sport=flow["sport"], dport=flow["dport"])
    inner = IP(src=flow["src"], dst=flow["dst"]) / l4 / Raw(bytes(PAYLOAD))
    eth = Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b")
    return bytes(VXLAN(vni=vni, flags=0x08) / eth / inner)


class Source:
    def __init__(self, address: str, vni: int) -> None:
        self.address = address
        self.vni = vni
        self.sockets: dict[int, socket.socket] = {}
        self.flows: list[tuple[str, bytes, socket.socket]] = []
        self.sent: dict[str, int] = {}
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

    def set_flows(self, flows: list[dict[str, Any]]) -> None:
        self.flows = []
        for flow in flows:
            port = outer_port(flow["proto"], flow["src"], flow["sport"], flow["dst"], flow["dport"])
            self.flows.append((flow["id"], datagram(self.vni, flow), self.socket_for(port)))
            self.sent.setdefault(flow["id"], 0)
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
        print(json.dumps({"sent": self.sent}), flush=True)
        return op != "exit"

    def send_due(self) -> None:
        due = int((time.monotonic() - self.base_time) * self.pps) - (self.total - self.base_count)
        target = (NLB_ADDRESS, VXLAN_PORT)
        while due > 0 and self.flows:
            flow_id, data, sock = self.flows[self.next]
            try:
                sock.sendto(data, target)
            except OSError:  # ENOBUFS and the like: not sent, tried again on the next tick
                return
            self.sent[flow_id] += 1
            self.total += 1
            due -= 1
            self.next = (self.next + 1) % len(self.flows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="the source ENI's address (outer source)")
    parser.add_argument("--vni", type=int, required=True, help="the session's VNI")
    args = parser.parse_args(argv)
    source = Source(args.address, args.vni)
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
