"""IPFIX export read back by readers nobody here wrote: nfdump's nfcapd and tshark.

The reference is the JSON replay of the same capture (tests/export_capture.py): every flow nfcapd
stores must carry exactly the packets and bytes of its JSON record, for IPv4 and IPv6, TCP, UDP,
ICMP and ICMPv6. tshark decodes the messages themselves (sequence numbers, templates, MTU,
withdrawal, reconnects over TCP). Only loopback is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from export_capture import build_capture, json_records, replay, write_config
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from collector.config import IpfixConfig
from collector.encoders.ipfix import TEMPLATE_V4, TEMPLATE_V6, MessageEncoder, max_message_bytes
from collector.io.ipfix import IpfixSink, parse_ipfix_spec
from collector.records import FlowRecord, decode
from tests.packets import icmp, tcp, udp
from tests.service_harness import Collector, free_port

pytestmark = pytest.mark.skipif(
    not (shutil.which("nfcapd") and shutil.which("tshark")),
    reason="nfdump (nfcapd) and tshark come from make system-deps",
)
PROTOCOLS = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMP6": 58}
IPFIX_PORT = 4739  # IANA's IPFIX port: tshark decodes it without being told


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("ipfix")
    return build_capture(base / "mirror.pcap"), write_config(base / "collector.toml")


@pytest.fixture(scope="module")
def reference(capture: tuple[Path, Path]) -> list[dict[str, Any]]:
    records = json_records(*capture)
    kinds = {(r["ip_version"], r["protocol"]) for r in records}
    assert kinds == {(4, 6), (4, 17), (4, 1), (6, 6), (6, 58)}
    return records


def udp_port_bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
        return False


class Nfcapd:
    """A real nfcapd on a loopback UDP port, writing into its own directory."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "nfcapd"
        self.dir.mkdir()
        self.port = free_port(socket.SOCK_DGRAM)
        self.log = base / "nfcapd.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    "nfcapd",
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-w",
                    str(self.dir),
                    "-t",
                    "3600",
                    # a socket buffer for its own scheduling stalls on a busy 2-core machine
                    # (the kernel caps it at net.core.rmem_max), as a production nfcapd has
                    "-B",
                    str(4 << 20),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while not udp_port_bound(self.port):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "nfcapd did not bind its port"
            time.sleep(0.05)

    def queued_bytes(self) -> int | None:
        """Bytes waiting in nfcapd's socket (/proc/net/udp rx_queue); None if not found."""
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == f"0100007F:{self.port:04X}":
                return int(fields[4].split(":")[1], 16)
        return None

    def stop(self) -> str:
        """Stop it once it has read what the kernel holds for it (SIGTERM does not drain the
        socket; it writes its file out) and return its log."""
        if self.proc.poll() is None:
            deadline = time.monotonic() + 30
            while self.queued_bytes() and time.monotonic() < deadline:
                time.sleep(0.02)
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        return self.log.read_text()

    def flows(self) -> list[dict[str, str]]:
        """Every stored flow, as nfdump -o csv prints it."""
        self.stop()
        out = subprocess.run(
            ["nfdump", "-R", str(self.dir), "-o", "csv", "-q"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "TZ": "UTC"},
        ).stdout
        header = "ts,te,td,sa,da,sp,dp,pr,flg,fwd,stos,ipkt,ibyt,opkt,obyt,in,out,sas,das,smk,dmk,"
        header += "dtos,dir,nh,nhb,svln,dvln,ismc,odmc,idmc,osmc"
        rows = [line for line in out.splitlines() if line and not line.startswith("ts,")]
        fields = header.split(",")
        return [dict(zip(fields, row, strict=False)) for row in csv.reader(rows)]


@pytest.fixture
def nfcapd(tmp_path: Path) -> Iterator[Nfcapd]:
    daemon = Nfcapd(tmp_path)
    try:
        yield daemon
    finally:
        daemon.stop()


def utc_seconds(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms // 1000))


def json_key(r: dict[str, Any]) -> tuple[Any, ...]:
    dport = r["dst_port"] if r["icmp_type"] is None else r["icmp_type"] * 256 + r["icmp_code"]
    direction = {"ingress": 0, "egress": 1, "unknown": 255}[r["direction"]]
    key = (r["src_addr"], r["dst_addr"], r["src_port"], dport, r["protocol"], r["packets"])
    interfaces = (r["vni"] if direction == 1 else 0, r["vni"] if direction == 0 else 0)
    times = (utc_seconds(r["start_ms"]), utc_seconds(r["end_ms"]))
    return (*key, r["bytes"], *times, direction, *interfaces)


def nfdump_key(f: dict[str, str]) -> tuple[Any, ...]:
    key = (f["sa"], f["da"], int(f["sp"]), int(f["dp"]), PROTOCOLS[f["pr"]], int(f["ipkt"]))
    return (*key, int(f["ibyt"]), f["ts"], f["te"], int(f["dir"]), int(f["in"]), int(f["out"]))


# ---- nfcapd -------------------------------------------------------------------------------------


def test_replay_into_nfcapd_over_udp_gives_every_flow_with_exact_counts(
    capture: tuple[Path, Path], reference: list[dict[str, Any]], nfcapd: Nfcapd
) -> None:
    done = replay(*capture, "--sink", f"ipfix://127.0.0.1:{nfcapd.port}")
    assert b"delivered=48 lost=0" in done.stderr
    flows = nfcapd.flows()
    log = nfcapd.stop()
    assert Counter(nfdump_key(f) for f in flows) == Counter(json_key(r) for r in reference)
    assert "Sequence Errors: 0, Bad Packets: 0" in log
    assert sum(int(f["ipkt"]) for f in flows) == sum(r["packets"] for r in reference)


def test_small_mtu_and_iana_only_elements_reach_nfcapd_too(
    capture: tuple[Path, Path], reference: list[dict[str, Any]], nfcapd: Nfcapd, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "small.toml", "\n[ipfix]\nmtu_bytes = 1280\nenterprise_number = 0\n"
    )
    replay(capture[0], config, "--sink", f"ipfix://127.0.0.1:{nfcapd.port}")
    flows = nfcapd.flows()
    assert Counter(nfdump_key(f) for f in flows) == Counter(json_key(r) for r in reference)


# ---- message framing, decoded by tshark ---------------------------------------------------------


def tshark_ipfix(pcap: Path) -> list[dict[str, list[str]]]:
    """Per frame carrying IPFIX: tshark's fields, occurrences in order (over UDP a frame is one
    message; over TCP a frame holds the messages its reassembly completed)."""
    fields = ["cflow.version", "cflow.len", "cflow.sequence", "cflow.od_id", "cflow.flowset_id"]
    fields += ["cflow.template_id", "cflow.template_field_count", "cflow.template_ipfix_field_type"]
    fields += ["cflow.template_ipfix_field_pen"]
    fields += ["cflow.octets", "cflow.packets", "cflow.srcaddr", "cflow.srcaddrv6"]
    fields += ["cflow.layer2_segment_id", "cflow.if_name", "_ws.expert.message"]
    cmd = ["tshark", "-r", str(pcap), "-Y", "cflow", "-T", "fields", "-E", "occurrence=a"]
    cmd += ["-E", "aggregator=|"]
    cmd += ["-o", "tcp.desegment_tcp_streams:TRUE"]
    for field in fields:
        cmd += ["-e", field]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    messages = []
    for line in out.splitlines():
        values = line.split("\t")
        messages.append(
            {f: (v.split("|") if v else []) for f, v in zip(fields, values, strict=True)}
        )
    return messages


def udp_pcap(datagrams: list[bytes], path: Path) -> Path:
    frames = [
        Ether() / IP(src="127.0.0.1", dst="127.0.0.1") / UDP(sport=40000, dport=IPFIX_PORT) / Raw(d)
        for d in datagrams
    ]
    wrpcap(str(path), frames)
    return path


def tcp_pcap(streams: list[bytes], path: Path) -> Path:
    """Each stream as one TCP connection (handshake, segments of 1400 bytes)."""
    frames = []
    for n, data in enumerate(streams):
        sport, seq = 41000 + n, 1000
        ip = IP(src="127.0.0.1", dst="127.0.0.1")
        frames.append(Ether() / ip / TCP(sport=sport, dport=IPFIX_PORT, flags="S", seq=seq - 1))
        frames.append(Ether() / ip / TCP(sport=IPFIX_PORT, dport=sport, flags="SA", seq=0, ack=seq))
        for i in range(0, len(data), 1400):
            chunk = data[i : i + 1400]
            tcp = TCP(sport=sport, dport=IPFIX_PORT, flags="PA", seq=seq, ack=1)
            frames.append(Ether() / ip / tcp / Raw(chunk))
            seq += len(chunk)
    wrpcap(str(path), frames)
    return path


def loaded(reference: list[dict[str, Any]]) -> list[FlowRecord]:
    return [decode(msgspec.json.encode(r)) for r in reference]


@pytest.mark.parametrize("pen", [32473, 0], ids=["enterprise", "iana-only"])
def test_reject_records_reach_nfcapd_and_say_dropped_acl_deny(
    capture: tuple[Path, Path], nfcapd: Nfcapd, tmp_path: Path, pen: int
) -> None:
    """A filter with record_rejected: nfcapd gets its reject records with their exact counts,
    and their forwardingStatus says "Dropped: ACL deny" (129), accepted flows "Forwarded" (64).
    nfdump 1.7.1 keeps no forwarding status from IPFIX (it prints 0), so tshark reads those."""
    config = write_config(
        tmp_path / "rejected.toml", f"\n[ipfix]\nenterprise_number = {pen}\n", record_rejected=True
    )
    records = json_records(capture[0], config)
    assert {r["action"] for r in records} == {"accept", "reject"}
    replay(capture[0], config, "--sink", f"ipfix://127.0.0.1:{nfcapd.port}")
    flows = nfcapd.flows()
    assert Counter(nfdump_key(f) for f in flows) == Counter(json_key(r) for r in records)

    encoder = MessageEncoder(1, max_message_bytes(1500, ipv6=False), pen)
    datagrams = [m for m, _ in encoder.encode(loaded(records), now=time.time())]
    fields = ["cflow.dstport", "cflow.forwarding_status", "cflow.forwarding_status_drop_code"]
    fields += ["cflow.forwarding_status_forward_code"]
    cmd = ["tshark", "-r", str(udp_pcap(datagrams, tmp_path / "r.pcap")), "-Y", "cflow"]
    cmd += ["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=|"]
    for field in fields:
        cmd += ["-e", field]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    seen = []
    for line in out.splitlines():
        ports, status, drop, forward = (v.split("|") if v else [] for v in line.split("\t"))
        drop_codes, forward_codes = iter(drop), iter(forward)
        for port, state in zip(ports, status, strict=True):
            code = next(drop_codes) if state == "2" else next(forward_codes)
            seen.append((int(port), int(state) << 6 | int(code)))
    # ICMP's type and code go in their own element: its port field is 0
    expected = [(r["dst_port"], 129 if r["action"] == "reject" else 64) for r in records]
    assert Counter(seen) == Counter(expected)
    assert {state for _, state in seen} == {64, 129}


class Receiver:
    """A UDP socket standing in for a collector, keeping every datagram."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.port = self.sock.getsockname()[1]
        self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()

    def drain(self) -> list[bytes]:
        """Every datagram waiting (loopback delivers a send before send() returns)."""
        datagrams = []
        with contextlib.suppress(BlockingIOError):
            while True:
                datagrams.append(self.sock.recv(65535))
        return datagrams


async def test_udp_messages_sequence_templates_and_mtu_as_tshark_reads_them(
    reference: list[dict[str, Any]], tmp_path: Path
) -> None:
    receiver = Receiver()
    config = IpfixConfig(mtu_bytes=1280, observation_domain_id=41)
    sink = IpfixSink("udp", "127.0.0.1", receiver.port, config, worker=2)
    await sink.start()
    records = loaded(reference)
    sink.submit(records[:30])
    sink.submit(records[30:])
    status = sink.status()
    await sink.close()
    assert (status.delivered, status.dropped, status.failures) == (48, 0, 0)
    datagrams = receiver.drain()
    receiver.close()
    messages = tshark_ipfix(udp_pcap(datagrams, tmp_path / "udp.pcap"))
    assert all(len(d) <= 1280 - 28 for d in datagrams)
    assert len(messages) > 2  # 48 records do not fit one 1252-byte message
    expected_sequence = 0
    for message in messages:
        assert message["cflow.version"] == ["10"]
        assert message["cflow.od_id"] == ["43"]  # domain 41 + worker 2
        assert message["cflow.sequence"] == [str(expected_sequence)]
        expected_sequence += len(message["cflow.octets"])
        assert not [m for m in message["_ws.expert.message"] if "equence" in m]
    assert expected_sequence == 48
    # the templates lead the first message, IPv4 and IPv6 apart, with the VNI as IE 351
    first = messages[0]
    assert first["cflow.template_id"] == [str(TEMPLATE_V4), str(TEMPLATE_V6)]
    assert first["cflow.template_ipfix_field_type"].count("351") == 2
    assert first["cflow.template_ipfix_field_pen"] == ["32473"] * 20  # 10 enterprise IEs each
    assert first["cflow.template_ipfix_field_type"].count("89") == 2  # forwardingStatus
    assert not any(m["cflow.template_id"] for m in messages[1:])
    octets = [int(v) for m in messages for v in m["cflow.octets"]]
    assert sorted(octets) == sorted(r["bytes"] for r in reference)
    vni_segments = {int(v, 0) for m in messages for v in m["cflow.layer2_segment_id"]}
    assert vni_segments == {(1 << 56) | r["vni"] for r in reference}
    assert {v for m in messages for v in m["cflow.if_name"]} == {
        r["interface_id"] for r in reference
    }


def test_templates_are_resent_after_the_refresh_interval(reference: list[dict[str, Any]]) -> None:
    encoder = MessageEncoder(1, max_message_bytes(1500, ipv6=False), 32473)
    records = loaded(reference)[:3]

    def has_templates(now: float) -> bool:
        (message, count), *_ = encoder.encode(records, now, refresh_s=60)
        assert count == 3
        return message[16:18] == b"\x00\x02"  # set id 2 right after the header

    assert [has_templates(t) for t in (1000.0, 1030.0, 1059.9, 1060.0, 1100.0, 1121.0)] == [
        True,
        False,
        False,
        True,
        False,
        True,
    ]
    assert encoder.sequence == 18


# ---- TCP ----------------------------------------------------------------------------------------


class TcpCollector:
    """An asyncio TCP server standing in for an IPFIX collector; keeps each connection's bytes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams: list[bytearray] = []
        self.server: asyncio.Server | None = None
        self.close_after: int | None = None  # bytes after which the first connection is closed

    async def start(self) -> None:
        """Listen on ``port``; with 0 the kernel picks a free one and ``port`` tells which."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = bytearray()
        self.streams.append(stream)
        while data := await reader.read(65536):
            stream += data
            first = len(self.streams) == 1
            if first and self.close_after is not None and len(stream) >= self.close_after:
                break
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def wait_until(condition: Any, what: str, limit_s: float = 30) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_tcp_records_wait_while_the_collector_is_down_then_arrive_and_templates_are_withdrawn(
    reference: list[dict[str, Any]], tmp_path: Path
) -> None:
    port = free_port(socket.SOCK_STREAM)
    config = IpfixConfig(connect_timeout_s=0.2, reconnect_max_s=0.2)
    sink = IpfixSink("tcp", "127.0.0.1", port, config)
    await sink.start()  # nobody listens: start does not fail, records wait
    records = loaded(reference)
    sink.submit(records)
    down = sink.status()
    assert (down.state, down.queue_records, down.delivered) == ("degraded", 48, 0)
    assert down.failures >= 1 and "econnrefused" in down.detail
    collector = TcpCollector(port)
    await collector.start()
    try:
        await wait_until(lambda: sink.status().delivered == 48, "records sent after reconnect")
        await sink.flush(5)
        await sink.close()
        await wait_until(lambda: collector.streams and collector.streams[-1][-8:], "withdrawal")
    finally:
        await collector.stop()
    status = sink.status()
    assert (status.state, status.queue_records, status.dropped) == ("ok", 0, 0)
    frames = tshark_ipfix(tcp_pcap([bytes(s) for s in collector.streams], tmp_path / "tcp.pcap"))
    seen = flatten(frames)
    assert sorted(int(v) for v in seen["cflow.octets"]) == sorted(r["bytes"] for r in reference)
    # templates first, then both withdrawn at the end: template records without fields
    templates = [str(TEMPLATE_V4), str(TEMPLATE_V6)]
    assert seen["cflow.template_id"] == templates * 2
    assert seen["cflow.template_field_count"][2:] == ["0", "0"]
    assert seen["cflow.sequence"][0] == "0"
    assert seen["cflow.sequence"][-1] == "48"


def flatten(frames: list[dict[str, list[str]]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for frame in frames:
        for field, values in frame.items():
            out.setdefault(field, []).extend(values)
    return out


async def test_tcp_reconnect_after_the_collector_drops_the_connection_resends_templates(
    reference: list[dict[str, Any]], tmp_path: Path
) -> None:
    collector = TcpCollector(0)
    collector.close_after = 1  # the first connection is closed after its first bytes
    await collector.start()
    port = collector.port
    config = IpfixConfig(connect_timeout_s=1, reconnect_max_s=0.2)
    sink = IpfixSink("tcp", "127.0.0.1", port, config)
    records = loaded(reference)
    try:
        await sink.start()
        sink.submit(records[:10])
        await wait_until(lambda: len(collector.streams) == 1 and collector.streams[0], "first")
        await wait_until(lambda: sink.status().delivered >= 10, "first batch written")
        await wait_until(lambda: sink._writer is None, "the sink notices the closed connection")
        sink.submit(records[10:])
        await wait_until(lambda: len(collector.streams) == 2, "reconnected")
        await wait_until(lambda: sink.status().delivered >= 48, "the rest sent")
        await sink.close()
    finally:
        await collector.stop()
    status = sink.status()
    assert status.failures >= 1 and status.dropped == 0
    second = flatten(tshark_ipfix(tcp_pcap([bytes(collector.streams[1])], tmp_path / "2.pcap")))
    assert second["cflow.template_id"][:2] == [str(TEMPLATE_V4), str(TEMPLATE_V6)]
    assert second["cflow.sequence"][0] == "0"  # a new transport session starts from 0
    octets = sorted(int(v) for v in second["cflow.octets"])
    assert octets == sorted(r["bytes"] for r in reference[10:])


async def test_tcp_queue_is_bounded_drops_are_counted_and_logged_once(
    reference: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port(socket.SOCK_STREAM)
    config = IpfixConfig(queue_records=20, connect_timeout_s=0.1, reconnect_max_s=0.1)
    sink = IpfixSink("tcp", "127.0.0.1", port, config)
    records = loaded(reference)
    with caplog.at_level(logging.WARNING, logger="collector.ipfix"):
        await sink.start()
        sink.submit(records[:15])
        sink.submit(records[15:30])
        sink.submit(records[30:])
        status = sink.status()
        await sink.close()
    assert (status.queue_records, status.dropped, status.state) == (20, 28, "failed")
    full = [r for r in caplog.records if getattr(r, "reason", "") == "queue_full"]
    assert len(full) == 1
    assert sink.status().dropped == 48  # what still waited at close is lost, and counted


async def test_udp_to_a_closed_port_counts_refused_datagrams_and_never_raises(
    reference: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port(socket.SOCK_DGRAM)
    sink = IpfixSink("udp", "127.0.0.1", port, IpfixConfig())
    records = loaded(reference)
    with caplog.at_level(logging.WARNING, logger="collector.ipfix"):
        await sink.start()
        for i in range(8):
            sink.submit(records[i * 6 : (i + 1) * 6])
            await asyncio.sleep(0.01)  # lets the ICMP port-unreachable come back
        status = sink.status()
        await sink.close()
    assert status.dropped > 0 and status.failures > 0
    assert status.delivered + status.dropped == 48
    assert status.state == "degraded" and "econnrefused" in status.detail
    refused = [r for r in caplog.records if getattr(r, "reason", "") == "econnrefused"]
    assert len(refused) == 1


# ---- specs and settings -------------------------------------------------------------------------


def test_spec_parsing() -> None:
    assert parse_ipfix_spec("ipfix://collector.example:4739") == ("udp", "collector.example", 4739)
    assert parse_ipfix_spec("ipfix+tcp://[::1]:4739") == ("tcp", "::1", 4739)


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--sink", "ipfix://127.0.0.1"], "sink"),
        (["--sink", "ipfix+tcp://127.0.0.1:99999"], "sink"),
        (["--sink", "ipfix://:4739"], "sink"),
    ],
)
def test_bad_specs_exit_2_naming_the_key(
    capture: tuple[Path, Path], args: list[str], key: str
) -> None:
    done = replay(*capture, *args, check=False)
    assert done.returncode == 2
    assert done.stderr.decode().startswith(f"collector: config error: {key}:")


def test_bad_ipfix_setting_exits_2_naming_it(capture: tuple[Path, Path], tmp_path: Path) -> None:
    config = write_config(tmp_path / "bad.toml", "\n[ipfix]\nmtu_bytes = 576\n")
    done = replay(capture[0], config, "--sink", "ipfix://127.0.0.1:4739", check=False)
    assert done.returncode == 2
    assert "ipfix.mtu_bytes" in done.stderr.decode()


def test_unreachable_tcp_collector_makes_replay_exit_1_with_the_loss_counted(
    capture: tuple[Path, Path], tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "fast.toml",
        "\n[ipfix]\nconnect_timeout_s = 0.2\nflush_timeout_s = 0.5\n",
    )
    port = free_port(socket.SOCK_STREAM)
    done = replay(capture[0], config, "--sink", f"ipfix+tcp://127.0.0.1:{port}", check=False)
    assert done.returncode == 1
    assert b"delivered=0 lost=48" in done.stderr


# ---- the live service ---------------------------------------------------------------------------


def test_run_with_two_workers_exports_every_packet_to_nfcapd(
    tmp_path: Path, nfcapd: Nfcapd
) -> None:
    sent: Counter[tuple[str, str, int, int, int]] = Counter()
    sent_bytes: Counter[tuple[str, str, int, int, int]] = Counter()
    datagrams = []
    for i in range(30):
        for n in range(4):
            datagrams.append(tcp(7, "10.0.0.5", "10.0.1.9", 30000 + i, 443, "PA", 100 * n))
            sent["10.0.0.5", "10.0.1.9", 30000 + i, 443, 6] += 1
            sent_bytes["10.0.0.5", "10.0.1.9", 30000 + i, 443, 6] += 40 + 100 * n
    for i in range(10):
        datagrams.append(udp(7, "2001:db8::5", "2001:db8::53", 5353 + i, 53, 30))
        sent["2001:db8::5", "2001:db8::53", 5353 + i, 53, 17] += 1
        sent_bytes["2001:db8::5", "2001:db8::53", 5353 + i, 53, 17] += 40 + 8 + 30
    datagrams.append(icmp(7, "10.0.0.5", "10.0.0.1"))
    sent["10.0.0.5", "10.0.0.1", 0, 8 * 256, 1] += 1
    with Collector(tmp_path, workers=2, sink=f"ipfix://127.0.0.1:{nfcapd.port}") as collector:
        total = collector.send(datagrams)
        collector.wait_received(total)
        assert collector.stop() == 0
    flows = nfcapd.flows()
    log = nfcapd.stop()
    got: Counter[tuple[str, str, int, int, int]] = Counter()
    got_bytes: Counter[tuple[str, str, int, int, int]] = Counter()
    for f in flows:
        key = (f["sa"], f["da"], int(f["sp"]), int(f["dp"]), PROTOCOLS[f["pr"]])
        got[key] += int(f["ipkt"])
        got_bytes[key] += int(f["ibyt"])
    assert got == sent
    assert sum(got.values()) == total
    del got_bytes[("10.0.0.5", "10.0.0.1", 0, 8 * 256, 1)]
    assert got_bytes == sent_bytes
    assert "Sequence Errors: 0, Bad Packets: 0" in log
    assert "Observation domain 1 " in log or "Observation domain 2 " in log


async def test_a_tcp_collector_that_stops_reading_never_blocks_the_loop(
    reference: list[dict[str, Any]],
) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def never_read(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(never_read, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = IpfixConfig(connect_timeout_s=0.5, queue_records=200_000)
    sink = IpfixSink("tcp", "127.0.0.1", port, config)
    records = loaded(reference) * 2500  # 120,000 records, far more than the socket buffers hold
    try:
        await sink.start()
        for i in range(0, len(records), 5000):
            sink.submit(records[i : i + 5000])  # returns at once: records only join the queue
        ticks = 0
        for _ in range(200):  # the loop keeps running other work while the writer is stuck
            await asyncio.sleep(0)
            ticks += 1
        await wait_until(lambda: sink._inflight > 0 and sink.status().delivered > 0, "stuck")
        stuck = sink.status()
        await sink.close()  # gives up on the stuck connection after connect_timeout_s
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    assert ticks == 200
    assert stuck.queue_records > 0 and stuck.delivered < len(records)
    final = sink.status()
    assert final.delivered + final.dropped == len(records)  # every record is accounted for


async def test_an_ipv6_collector_gets_datagrams_within_the_ipv6_mtu(
    reference: list[dict[str, Any]], tmp_path: Path
) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("::1", 0))
        receiver.setblocking(False)
        port = receiver.getsockname()[1]
        transport, host, port = parse_ipfix_spec(f"ipfix://[::1]:{port}")
        sink = IpfixSink(transport, host, port, IpfixConfig(mtu_bytes=1280))
        await sink.start()
        sink.submit(loaded(reference))
        await sink.close()
        datagrams = []
        with contextlib.suppress(BlockingIOError):
            while True:
                datagrams.append(receiver.recv(65535))
    assert sink.status().delivered == 48
    assert max(len(d) for d in datagrams) <= 1280 - 40 - 8
    messages = tshark_ipfix(udp_pcap(datagrams, tmp_path / "v6.pcap"))
    assert sum(len(m["cflow.octets"]) for m in messages) == 48


async def test_udp_pacing_lets_a_20000_record_burst_reach_nfcapd_whole(
    reference: list[dict[str, Any]], nfcapd: Nfcapd
) -> None:
    base = loaded(reference)
    records = [
        msgspec.structs.replace(base[i % len(base)], sequence=i + 1, src_port=1024 + i % 60000)
        for i in range(20_000)
    ]
    sink = IpfixSink("udp", "127.0.0.1", nfcapd.port, IpfixConfig())
    await sink.start()
    sink.submit(records)  # one expiry pass's worth: ~2,400 datagrams at once
    waiting = sink.status().queue_records
    await sink.flush(30)
    await sink.close()
    status = sink.status()
    assert waiting > 0  # paced: most of the burst waited in the queue
    assert (status.delivered, status.dropped, status.queue_records) == (20_000, 0, 0)
    flows = nfcapd.flows()
    assert len(flows) == 20_000
    assert "Sequence Errors: 0, Bad Packets: 0" in nfcapd.stop()
