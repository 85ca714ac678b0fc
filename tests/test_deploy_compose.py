"""`docker compose up` gives a newcomer records: the compose file's traffic source
(deploy/traffic/replay-capture) replays a capture to the collector over VXLAN and over GENEVE.

No Docker daemon here: the compose file is checked as data (the source shares the collector's
network namespace and waits for its health check, its files exist), and the replay itself runs
against a real collector on loopback, whose records must be the capture's flows twice, once per
encapsulation, with the same counts.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from collector.io.pcap import CaptureStats, read_vxlan
from tests.cfn_template import ROOT
from tests.service_harness import Collector, free_port

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
REPLAY = DEPLOY / "traffic" / "replay-capture"
CAPTURE = ROOT / "tests" / "data" / "demo.pcap"
ENDPOINT = "vpce-0123456789abcdef0"


def test_compose_runs_a_traffic_source_next_to_the_collector() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    traffic = services["traffic"]
    assert traffic["network_mode"] == "service:kafka"  # 127.0.0.1 is the collector's
    assert traffic["depends_on"] == {"collector": {"condition": "service_healthy"}}
    assert traffic["entrypoint"] == ["python", "/opt/traffic/replay-capture"]
    args = traffic["command"]
    assert args[args.index("--target") + 1] == "127.0.0.1"
    assert args[args.index("--encapsulation") + 1] == "both"
    assert "--loop" in args
    mounts = {m.split(":")[1]: m.split(":")[0] for m in traffic["volumes"]}
    assert (DEPLOY / mounts["/opt/traffic/replay-capture"]).resolve() == REPLAY
    capture = args[args.index("--capture") + 1]
    assert (DEPLOY / mounts[capture]).resolve() == CAPTURE
    # the collector receives both (VXLAN on 4789, GENEVE on its default 6081), published to the host
    collector = services["collector"]["command"]
    assert collector[collector.index("--listen") + 1] == "0.0.0.0:4789"
    assert "--geneve-listen" not in collector
    ports = services["kafka"]["ports"]
    assert "127.0.0.1:4789:4789/udp" in ports
    assert "127.0.0.1:6081:6081/udp" in ports
    # `make tail` reads the topic the collector writes
    sink = collector[collector.index("--sink") + 1]
    makefile = (ROOT / "Makefile").read_text()
    assert sink == "kafka://127.0.0.1:9092/flows"
    assert "TOPIC ?= flows" in makefile


def test_replay_gives_the_captures_flows_over_vxlan_and_over_geneve(tmp_path: Path) -> None:
    geneve_port = free_port(socket.SOCK_DGRAM)
    with Collector(tmp_path, "--geneve-listen", f"127.0.0.1:{geneve_port}") as c:
        sent = subprocess.run(
            [
                sys.executable,
                str(REPLAY),
                "--capture",
                str(CAPTURE),
                "--target",
                "127.0.0.1",
                "--vxlan-port",
                str(c.udp_port),
                "--geneve-port",
                str(geneve_port),
                "--rate",
                "0",
                "--endpoint-id",
                ENDPOINT,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        frames = sum(1 for _ in read_vxlan(CAPTURE, 4789, CaptureStats()))
        assert json.loads(sent.stdout) == {"vxlan": frames, "geneve": frames, "errors": 0}
        c.wait_received(2 * frames)
        assert c.stop() == 0
    records = c.records()
    vxlan = {r["flow_id"]: r for r in records if r["gwlb_endpoint_id"] is None}
    geneve = [r for r in records if r["gwlb_endpoint_id"] is not None]
    assert vxlan and len(geneve) == len(vxlan)
    assert {r["vni"] for r in vxlan.values()} == {7}
    assert {(r["vni"], r["gwlb_endpoint_id"]) for r in geneve} == {(1007, ENDPOINT)}
    key = ("src_addr", "dst_addr", "src_port", "dst_port", "protocol", "packets", "bytes")
    assert sorted(tuple(r[k] for k in key) for r in geneve) == sorted(
        tuple(r[k] for k in key) for r in vxlan.values()
    )
    assert sum(r["packets"] for r in geneve) == frames
