"""The real service on a GENEVE listener: ``collector run`` with ``--geneve-listen``, GENEVE datagrams
sent over UDP as a Gateway Load Balancer sends them, records and /metrics read back."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests import packets
from tests.service_harness import Collector, clean_environ, free_port, wait_for

ENI, PEER = "10.1.0.10", "10.2.0.20"
VNI = 0x3A91C7
CONFIG = f"""
[flows]
inactive_timeout_s = 1
expire_interval_s = 0.2

[[sessions]]
vni = {VNI}
name = "web"
filter = "egress"

[[sessions]]
vni = 7
name = "plain"

[[filters.egress.rules]]
direction = "egress"
rule_number = 10
action = "accept"
source_cidr = "0.0.0.0/0"
destination_cidr = "0.0.0.0/0"
"""


def test_a_worker_receives_geneve_and_vxlan_side_by_side(tmp_path: Path) -> None:
    geneve_port = free_port(socket.SOCK_DGRAM)
    with Collector(
        tmp_path, "--geneve-listen", f"127.0.0.1:{geneve_port}", config=CONFIG
    ) as collector:
        gwlb = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            egress = [
                packets.geneve(packets.tcp(VNI, ENI, PEER, 40000, 443, "A", payload=100), ENI)
                for _ in range(5)
            ]
            ingress = packets.geneve(packets.tcp(VNI, PEER, ENI, 443, 40000, "A"), ENI)
            broken = b"\x48" + egress[0][1:]  # version 1
            for datagram in [*egress, ingress, broken]:
                gwlb.sendto(datagram, ("127.0.0.1", geneve_port))
        finally:
            gwlb.close()
        vxlan = packets.tcp(7, ENI, PEER, 40001, 443, "A")  # unfiltered: from loopback is fine
        collector.send([vxlan])
        collector.wait_received(8)

        def recorded() -> list[dict[str, object]]:
            return [r for r in collector.records() if r["src_port"] in (40000, 40001)]

        wait_for(lambda: len(recorded()) == 2, "the two flows' records")
        records = {r["src_port"]: r for r in recorded()}
        assert records[40000]["packets"] == 5
        assert records[40000]["bytes"] == 5 * 140
        assert records[40000]["direction"] == "egress"
        assert records[40000]["gwlb_endpoint_id"] == "vpce-0a1b2c3d4e5f60718"
        assert records[40001]["gwlb_endpoint_id"] is None
        metrics = collector.metrics()
        received = "collector_encapsulation_datagrams_received_total"
        assert metrics[f'{received}{{encapsulation="geneve"}}'] == 7
        assert metrics[f'{received}{{encapsulation="vxlan"}}'] == 1
        dropped = "collector_encapsulation_packets_dropped_total"
        assert metrics[f'{dropped}{{encapsulation="geneve",reason="geneve_version"}}'] == 1
        assert metrics[f'{dropped}{{encapsulation="geneve",reason="filter_reject"}}'] == 1
        # the packets of the session's records: the rejected ingress packet is not one of them
        session = f'collector_session_datagrams_total{{session="web",vni="{VNI}"}}'
        assert metrics[session] == 5
        assert metrics['collector_session_datagrams_total{session="plain",vni="7"}'] == 1
        endpoint = 'collector_endpoint_records_total{gwlb_endpoint_id="vpce-0a1b2c3d4e5f60718"}'
        assert metrics[endpoint] == 1
        assert collector.stop() == 0


def test_the_vxlan_listener_can_be_turned_off(tmp_path: Path) -> None:
    """``--listen off``: the workers hold the GENEVE socket only, and receive on it."""
    geneve_port, health_port = free_port(socket.SOCK_DGRAM), free_port()
    out = tmp_path / "records.jsonl"
    log = (tmp_path / "collector.log").open("wb")
    command = [sys.executable, "-m", "collector", "run", "--listen", "off"]
    command += ["--geneve-listen", f"127.0.0.1:{geneve_port}", "--health"]
    command += [f"127.0.0.1:{health_port}", "--workers", "1", "--sink", f"file:{out}"]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=clean_environ())
    try:

        def metrics() -> str:
            url = f"http://127.0.0.1:{health_port}/metrics"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return str(response.read().decode())
            except OSError:
                assert proc.poll() is None, (tmp_path / "collector.log").read_text()
                return ""

        wait_for(lambda: "collector_healthy 1.0" in metrics(), "a healthy collector")
        payload = packets.geneve(packets.udp(VNI, ENI, PEER, 5353, 53), ENI)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gwlb:
            gwlb.sendto(payload, ("127.0.0.1", geneve_port))
        want = 'collector_encapsulation_datagrams_received_total{encapsulation="geneve"} 1.0'
        wait_for(lambda: want in metrics(), "the GENEVE datagram counted")
        assert 'collector_encapsulation_datagrams_received_total{encapsulation="vxlan"} 0.0' in (
            metrics()
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        [record] = [json.loads(line) for line in out.read_text().splitlines()]
        assert record["dst_port"] == 53 and record["gwlb_endpoint_id"] is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_both_listeners_off_is_a_config_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "collector", "run", "--listen", "off", "--geneve-listen", ""],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=clean_environ(),
    )
    assert result.returncode == 2
    assert "listen" in result.stderr and "Traceback" not in result.stderr


def test_a_taken_geneve_port_names_geneve_listen() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:  # no SO_REUSEPORT: exclusive
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                *(sys.executable, "-m", "collector", "run", "--listen", "127.0.0.1:0"),
                *("--geneve-listen", f"127.0.0.1:{port}", "--health", "127.0.0.1:0"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=clean_environ(),
        )
    assert result.returncode == 2
    assert "geneve_listen" in result.stderr and "Traceback" not in result.stderr
