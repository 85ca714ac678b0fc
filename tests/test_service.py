"""The live service end to end: real UDP sockets on loopback, scapy packets, the file sink."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import msgspec
import pytest

from collector import messages
from collector.config import build_config
from collector.messages import Fatal, Reload, Snapshot, Stop
from collector.metrics import WorkerSnapshot
from collector.wire.drops import DROP_COUNT
from tests.service_harness import Collector, clean_environ, icmp, tcp, udp, wait_for


def _assert_gap_free(records: list[dict[str, object]]) -> None:
    by_exporter: dict[str, list[int]] = defaultdict(list)
    for r in records:
        by_exporter[str(r["exporter"])].append(int(r["sequence"]))  # type: ignore[call-overload]
    for exporter, seqs in by_exporter.items():
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), exporter


def test_counts_end_to_end_through_file_sink(tmp_path: Path) -> None:
    sent: dict[tuple[str, int], tuple[int, int]] = {}
    datagrams = []
    for i in range(40):
        sport = 30000 + i
        for _ in range(25):
            size = random.randint(0, 1200)
            datagrams.append(tcp(7, "10.0.0.5", "10.0.1.9", sport, 443, "PA", size))
            packets, nbytes = sent.get(("tcp", sport), (0, 0))
            sent["tcp", sport] = (packets + 1, nbytes + 40 + size)
    for i in range(10):
        datagrams.append(udp(7, "2001:db8::5", "2001:db8::53", 5353 + i, 53, 30))
        sent["udp", 5353 + i] = (1, 40 + 8 + 30)
    datagrams.append(icmp(7, "10.0.0.5", "10.0.0.1"))
    with Collector(tmp_path, workers=2) as c:
        total = c.send(datagrams)
        c.wait_received(total)
        assert c.stop() == 0
        records = c.records()
        metrics_text = c.logs()
    assert "worker stopped" in metrics_text
    assert sum(r["packets"] for r in records) == total
    by_flow: dict[tuple[str, int], tuple[int, int]] = defaultdict(lambda: (0, 0))
    for r in records:
        if r["protocol"] in (6, 17):
            key = ("tcp" if r["protocol"] == 6 else "udp", r["src_port"])
            p, b = by_flow[key]
            by_flow[key] = (p + r["packets"], b + r["bytes"])
        else:
            assert (r["icmp_type"], r["icmp_code"]) == (8, 0)
    assert dict(by_flow) == sent
    assert {r["end_reason"] for r in records} == {"shutdown"}
    _assert_gap_free(records)


def test_sigterm_turns_health_503_at_once_keeps_ingesting_during_drain_and_loses_nothing(
    tmp_path: Path,
) -> None:
    # the drain window must outlast seeing the 503 and sending the second batch on a loaded
    # machine: datagrams sent after it ends would be refused by a closed socket
    with Collector(tmp_path, "--drain-s", "10") as c:
        first = c.send(tcp(1, "10.0.0.5", "10.0.0.6", 1000, 80, "S") for _ in range(50))
        c.wait_received(first)
        c.proc.send_signal(signal.SIGTERM)

        def draining() -> dict[str, object] | None:
            code, body = c.health()
            return body if code == 503 else None

        body = wait_for(draining, "503")
        assert body["status"] == "draining"
        assert c.metric("collector_draining") == 1
        more = c.send(tcp(1, "10.0.0.5", "10.0.0.6", 1001, 80, "A") for _ in range(30))
        c.wait_received(first + more)
        assert c.proc.wait(timeout=60) == 0
        records = c.records()
    assert sum(r["packets"] for r in records) == first + more
    _assert_gap_free(records)


def test_crashed_worker_is_restarted_and_health_reflects_it(tmp_path: Path) -> None:
    with Collector(tmp_path, workers=2) as c:
        _, body = c.health()
        victim = body["workers"][1]["pid"]
        os.kill(victim, signal.SIGKILL)
        seen_503 = wait_for(
            lambda: c.health()[0] == 503, "503 while a worker is down", every_s=0.01
        )
        assert seen_503
        body = c.wait_healthy()
        assert body["workers"][1]["restarts"] == 1
        assert body["workers"][1]["pid"] != victim
        assert c.metric("collector_worker_restarts_total") == 1
        sent = c.send(udp(3, "10.1.0.1", "10.1.0.2", 4000 + i, 53) for i in range(20))
        c.wait_received(sent)
        assert c.stop() == 0
        assert sum(r["packets"] for r in c.records()) == sent


CONFIG_V1 = """
[[sessions]]
vni = 100
name = "source-a"
interface_id = "eni-0aaaaaaaaaaaaaaaa"
addresses = ["10.0.0.5"]
"""

CONFIG_V2 = (
    CONFIG_V1
    + """
[[sessions]]
vni = 200
name = "source-b"
interface_id = "eni-0bbbbbbbbbbbbbbbb"
addresses = ["10.0.0.6"]
"""
)


def test_sighup_reloads_sessions_and_refuses_a_bad_config(tmp_path: Path) -> None:
    with Collector(tmp_path, config=CONFIG_V1) as c:
        assert c.config_path is not None
        sent = c.send([udp(200, "10.0.0.6", "10.0.9.9", 5000, 53)])
        wait_for(
            lambda: c.metric('collector_packets_dropped_total{reason="unknown_vni"}') == 1,
            "unknown VNI drop",
        )
        c.config_path.write_text(CONFIG_V2)
        c.proc.send_signal(signal.SIGHUP)

        def accepted() -> bool:
            nonlocal sent
            sent += c.send([udp(200, "10.0.0.6", "10.0.9.9", 5001, 53)])
            return c.metric('collector_filter_packets_total{action="accept"}') >= 1

        wait_for(accepted, "VNI 200 accepted after SIGHUP", every_s=0.2)
        c.config_path.write_text(CONFIG_V2 + "\n[flows]\nactive_timeout_s = -5\n")
        c.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in c.logs(), "refusal logged")
        assert "flows.active_timeout_s" in c.logs()
        assert c.health()[0] == 200
        before = c.metric('collector_filter_packets_total{action="accept"}')
        sent += c.send([udp(200, "10.0.0.6", "10.0.9.9", 5002, 53)])
        wait_for(
            lambda: c.metric('collector_filter_packets_total{action="accept"}') > before,
            "old config still in force",
        )
        c.wait_received(sent)
        kept = int(c.metric('collector_filter_packets_total{action="accept"}'))
        assert c.stop() == 0
        records = c.records()
    assert sum(r["packets"] for r in records) == kept
    assert {r["session"] for r in records} == {"source-b"}
    assert {r["direction"] for r in records} == {"egress"}
    assert {r["interface_id"] for r in records} == {"eni-0bbbbbbbbbbbbbbbb"}


def test_malformed_datagrams_are_counted_drops_and_leave_it_healthy(tmp_path: Path) -> None:
    rng = random.Random(7)
    good = [
        tcp(9, "10.2.0.1", "10.2.0.2", 7000, 22, "PA", 64),
        udp(9, "2001:db8::1", "2001:db8::2", 7001, 123, 48),
    ]
    junk = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200))) for _ in range(300)]
    truncations = [d[:k] for d in good for k in range(len(d))]
    flips = []
    for _ in range(300):
        d = bytearray(rng.choice(good))
        d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
        flips.append(bytes(d))
    with Collector(tmp_path) as c:
        sent = c.send(junk + truncations + flips + good)
        c.wait_received(sent)
        assert c.health()[0] == 200
        m = c.metrics()
        dropped = sum(v for k, v in m.items() if k.startswith("collector_packets_dropped_total"))
        kept = m['collector_filter_packets_total{action="accept"}']
        assert dropped + kept == sent
        assert m['collector_packets_dropped_total{reason="vxlan_short"}'] >= 8
        assert m['collector_packets_dropped_total{reason="ethernet_short"}'] > 0
        assert c.stop() == 0
        assert "Traceback" not in c.logs()
        assert sum(r["packets"] for r in c.records()) == kept


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=clean_environ(),
    )


def test_config_errors_exit_2_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    cases = {
        ("run", "--listen", "nowhere"): "listen",
        ("run", "--workers", "-1", "--listen", "127.0.0.1:0"): "workers",
        ("run", "--sink", "ftp://x", "--listen", "127.0.0.1:0"): "sink",
        ("run", "--sink", "kafka://nohost/", "--listen", "127.0.0.1:0"): "sink",
        ("run", "--config", str(bad), "--listen", "127.0.0.1:0"): "flows.inactive_timeout_s",
        ("check-config", str(bad)): "flows.inactive_timeout_s",
    }
    bad.write_text('[flows]\ninactive_timeout_s = "soon"\n')
    for args, key in cases.items():
        result = _run(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert key in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_health_port_in_use_is_a_config_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run("run", "--listen", "127.0.0.1:0", "--health", f"127.0.0.1:{port}")
    assert result.returncode == 2
    assert "health" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("mode", ["mmsg", "reader", "protocol"])
def test_every_receive_path_counts_alike_and_infers_direction_from_the_outer_source(
    tmp_path: Path, mode: str
) -> None:
    # zero-config: no addresses, so the outer source (127.0.0.1 here, the ENI's primary IPv4 on
    # AWS) tells egress (inner source = ENI) from ingress (inner destination = ENI)
    out = [udp(11, "127.0.0.1", "10.9.9.9", 2000, 53, 10) for _ in range(30)]
    back = [udp(11, "10.9.9.9", "127.0.0.1", 53, 2000, 90) for _ in range(20)]
    other = [udp(11, "10.8.8.8", "10.9.9.9", 53, 2000) for _ in range(5)]
    with Collector(tmp_path, env={"COLLECTOR_RECV_MODE": mode}) as c:
        sent = c.send(out + back + other)
        c.wait_received(sent)
        assert c.metric("collector_received_bytes_total") == sum(map(len, out + back + other))
        assert c.stop() == 0
        records = {r["src_addr"]: r for r in c.records()}
    assert records["127.0.0.1"]["direction"] == "egress"
    assert records["127.0.0.1"]["packets"] == 30
    assert records["127.0.0.1"]["bytes"] == 30 * (20 + 8 + 10)
    assert records["10.9.9.9"]["direction"] == "ingress"
    assert records["10.9.9.9"]["bytes"] == 20 * (20 + 8 + 90)
    assert records["10.8.8.8"]["direction"] == "unknown"


def test_stdout_sink_with_two_workers_on_one_pipe_never_interleaves_lines(tmp_path: Path) -> None:
    import json

    # no flow ends before the stop: nothing is written while nobody reads the pipe
    env = {"COLLECTOR_FLOWS_INACTIVE_TIMEOUT_S": "600", "COLLECTOR_FLOWS_ACTIVE_TIMEOUT_S": "600"}
    c = Collector(tmp_path, workers=2, sink="-", env=env, stdout=subprocess.PIPE)
    with c:
        # 3000 flows from sender sockets that reach both workers
        sent = c.send_spread([udp(4, "10.3.0.1", "10.3.0.2", 1024 + i, 53) for i in range(3000)])
        c.wait_received(sent)
        c.proc.send_signal(signal.SIGTERM)
        out, _ = c.proc.communicate(timeout=60)
    assert c.proc.returncode == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 3000
    assert len({r["exporter"] for r in records}) == 2
    assert sum(r["packets"] for r in records) == sent


def test_kernel_drops_are_counted_so_every_datagram_sent_is_accounted_for(tmp_path: Path) -> None:
    env = {"COLLECTOR_RECV_BUFFER_BYTES": "65536"}
    with Collector(tmp_path, env=env) as c:
        _, body = c.health()
        worker = body["workers"][0]["pid"]
        os.kill(worker, signal.SIGSTOP)  # the socket buffer fills while the worker cannot read
        try:
            sent = c.send(
                udp(6, "10.4.0.1", "10.4.0.2", 1000 + i % 50, 53, 200) for i in range(3000)
            )
        finally:
            os.kill(worker, signal.SIGCONT)

        def accounted() -> bool:
            m = c.metrics()
            received = m.get("collector_datagrams_received_total", 0)
            return received + m.get("collector_kernel_drops_total", 0) == sent and received > 0

        wait_for(accounted, "received + kernel drops == sent")
        assert c.metric("collector_kernel_drops_total") > 0
        assert c.stop() == 0


def test_supervisor_and_worker_messages_round_trip_and_refuse_the_other_side() -> None:
    """One decoder per side: each side decodes what the other sends, and nothing else."""
    config = build_config(
        {"sessions": [{"vni": 7, "name": "a", "tags": {"team": "net"}}], "flows": {"max_flows": 9}}
    )
    snapshot = WorkerSnapshot(index=1, pid=4242, started=1.5, datagrams=10, drops=[1] * DROP_COUNT)
    for message in (Snapshot(snapshot), Fatal("config error: listen: bad", 2)):
        assert messages.decode_from_worker(messages.encode(message)) == message
        with pytest.raises(messages.MessageError):
            messages.decode_from_supervisor(messages.encode(message))
    for order in (Stop(), Reload(config)):
        assert messages.decode_from_supervisor(messages.encode(order)) == order
        with pytest.raises(messages.MessageError):
            messages.decode_from_worker(messages.encode(order))
    with pytest.raises(messages.MessageError):  # what the bare tuples of old looked like
        messages.decode_from_worker(msgspec.msgpack.encode(("snap", {"index": 1})))
