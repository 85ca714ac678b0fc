"""SIGHUP on the live service: what a reload changes, in every worker, and what survives it.

Each test runs the real collector (tests/service_harness.py) with JSON logs, so the workers' own
"sessions reloaded" lines say when the new config reached them; no test sleeps for it.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from tests.service_harness import Collector, tcp, udp, wait_for

LONG_FLOWS = """
[flows]
active_timeout_s = 600
inactive_timeout_s = 600
"""

SESSION = """
[[sessions]]
vni = 100
name = "source-a"
interface_id = "eni-0aaaaaaaaaaaaaaaa"
addresses = ["10.0.0.5"]
filter = "f"
"""


def keep_egress(protocol: int) -> str:
    """A filter that keeps egress packets of one protocol and nothing else."""
    return f"""
[[filters.f.rules]]
direction = "egress"
rule_number = 100
action = "accept"
protocol = {protocol}
source_cidr = "0.0.0.0/0"
destination_cidr = "0.0.0.0/0"
"""


def log_lines(c: Collector) -> list[dict[str, Any]]:
    return [json.loads(line) for line in c.logs().splitlines() if line.startswith("{")]


def reloaded_workers(c: Collector) -> set[int]:
    return {e["worker"] for e in log_lines(c) if e["msg"] == "sessions reloaded"}


def reload(c: Collector, config: str) -> None:
    """Write the new config and send SIGHUP; returns once every worker said it applied it."""
    assert c.config_path is not None
    before = sum(e["msg"] == "sessions reloaded" for e in log_lines(c))
    c.config_path.write_text(config)
    c.proc.send_signal(signal.SIGHUP)
    wait_for(
        lambda: sum(e["msg"] == "sessions reloaded" for e in log_lines(c)) >= before + c.workers,
        "every worker reloaded",
    )


def counted(c: Collector, accepted: int, rejected: int) -> None:
    def done() -> bool:
        m = c.metrics()
        return (
            m.get('collector_filter_packets_total{action="accept"}', 0) == accepted
            and m.get('collector_packets_dropped_total{reason="filter_reject"}', 0) == rejected
        )

    wait_for(done, f"{accepted} accepted and {rejected} rejected")


def test_filter_change_reaches_every_worker_admitted_flows_keep_their_decision(
    tmp_path: Path,
) -> None:
    config = SESSION + keep_egress(6) + LONG_FLOWS
    with Collector(tmp_path, "--log-format", "json", config=config, workers=2) as c:
        # one sender socket per worker; the probes are TCP flows the first rules keep
        probes = (tcp(100, "10.0.0.5", "10.9.0.1", 30000 + k, 443) for k in range(64))
        senders, landed = c.senders_by_worker(probes)
        accepted, rejected = len(landed), 0
        for index, sender in senders.items():
            sender.sendto(tcp(100, "10.0.0.5", "10.9.9.9", 40000 + index, 443), c.address)
            sender.sendto(udp(100, "10.0.0.5", "10.9.9.9", 40000 + index, 53), c.address)
        accepted, rejected = accepted + 2, rejected + 2
        counted(c, accepted, rejected)

        # the new rules keep UDP and nothing else: the reverse of the old ones
        reload(c, SESSION + keep_egress(17) + LONG_FLOWS)
        assert reloaded_workers(c) == {0, 1}
        for index, sender in senders.items():
            for _ in range(3):
                sender.sendto(tcp(100, "10.0.0.5", "10.9.9.9", 40000 + index, 443), c.address)
                sender.sendto(udp(100, "10.0.0.5", "10.9.9.9", 40000 + index, 53), c.address)
                sender.sendto(tcp(100, "10.0.0.5", "10.9.9.9", 41000 + index, 443), c.address)
            sender.sendto(udp(100, "10.0.0.5", "10.9.9.9", 41000 + index, 53), c.address)
        accepted, rejected = accepted + 2 * (3 + 3 + 1), rejected + 2 * 3
        counted(c, accepted, rejected)
        for sender in senders.values():
            sender.close()
        assert c.stop() == 0
    packets = {(r["protocol"], r["src_port"]): r["packets"] for r in c.records()}
    for index in (0, 1):
        assert packets.pop((6, 40000 + index)) == 1 + 3  # admitted before: kept after
        assert packets.pop((17, 40000 + index)) == 3  # rejected before, decided again: kept
        assert packets.pop((17, 41000 + index)) == 1  # new, kept by the new rules
        assert (6, 41000 + index) not in packets  # new, rejected by the new rules
    assert packets == {(6, 30000 + k): 1 for k in range(len(landed))}  # the probes


def test_flow_timeouts_change_on_reload(tmp_path: Path) -> None:
    config = SESSION + keep_egress(17) + LONG_FLOWS
    with Collector(tmp_path, "--log-format", "json", config=config) as c:
        sent = c.send([udp(100, "10.0.0.5", "10.9.9.9", 5000, 53)] * 3)
        c.wait_received(sent)
        counted(c, accepted=3, rejected=0)
        assert c.records() == []  # held: 600 s timeouts
        reload(c, SESSION + keep_egress(17) + "[flows]\ninactive_timeout_s = 1\n")
        (record,) = wait_for(c.records, "the flow emitted by the new inactive timeout")
        assert (record["packets"], record["end_reason"]) == (3, "inactive_timeout")
        assert c.stop() == 0
    assert len(c.records()) == 1


SOURCE_B = """
[[sessions]]
vni = 200
name = "source-b"
interface_id = "eni-0bbbbbbbbbbbbbbbb"
addresses = ["10.0.0.6"]
"""


def test_a_worker_restarted_after_a_reload_runs_the_new_config(tmp_path: Path) -> None:
    config = SESSION + keep_egress(17)
    with Collector(tmp_path, "--log-format", "json", config=config) as c:
        reload(c, config + SOURCE_B)
        (victim,) = c.worker_pids().values()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: c.metric("collector_worker_restarts_total") == 1, "a restart")
        c.wait_healthy()
        assert list(c.worker_pids().values()) != [victim]
        sent = c.send([udp(200, "10.0.0.6", "10.9.9.9", 5000, 53)] * 4)
        c.wait_received(sent)
        assert c.metric('collector_filter_packets_total{action="accept"}') == sent
        assert c.metric('collector_packets_dropped_total{reason="unknown_vni"}') == 0
        assert c.stop() == 0
    (record,) = c.records()
    assert (record["session"], record["interface_id"]) == ("source-b", "eni-0bbbbbbbbbbbbbbbb")
    assert (record["direction"], record["packets"]) == ("egress", 4)


def test_sighup_without_config_is_logged_and_changes_nothing(tmp_path: Path) -> None:
    with Collector(tmp_path, "--log-format", "json", workers=2) as c:
        pids = c.worker_pids()
        first = c.send(udp(7, "10.0.0.5", "10.9.9.9", 6000 + i, 53) for i in range(10))
        c.wait_received(first)
        c.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: any(e["msg"].startswith("SIGHUP ignored") for e in log_lines(c)),
            "the ignored SIGHUP logged",
        )
        assert c.proc.poll() is None
        assert c.health()[0] == 200
        assert c.worker_pids() == pids
        assert reloaded_workers(c) == set()
        more = c.send(udp(7, "10.0.0.5", "10.9.9.9", 6000 + i, 53) for i in range(10))
        c.wait_received(first + more)
        assert c.stop() == 0
    records = c.records()
    assert sorted(r["src_port"] for r in records) == list(range(6000, 6010))
    assert {r["packets"] for r in records} == {2}  # the flows went on across the signal
