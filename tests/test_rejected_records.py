"""Filters with record_rejected: records of the flows they turn away, with the deciding rule."""

from __future__ import annotations

from typing import Any

from collector.encoders import encoder_for
from collector.records import FlowRecord
from tests.pipeline_support import T0, drops, make_pipeline, tcp, udp

ENI, PEER, OTHER = "10.0.1.10", "198.51.100.7", "203.0.113.9"


def rule(number: int, direction: str, action: str, **fields: Any) -> dict[str, Any]:
    return {
        "rule_number": number,
        "direction": direction,
        "action": action,
        "source_cidr": "0.0.0.0/0",
        "destination_cidr": "0.0.0.0/0",
        **fields,
    }


def config(record_rejected: bool = True, **flows: Any) -> dict[str, Any]:
    return {
        "sessions": [{"vni": 10, "name": "web", "addresses": [ENI], "filter": "f"}],
        "filters": {
            "f": {
                "record_rejected": record_rejected,
                "rules": [
                    # rule 10 turns away TCP to 23 from the ENI, rule 20 keeps the rest of its TCP
                    rule(10, "egress", "reject", protocol=6, destination_ports="23"),
                    rule(20, "egress", "accept", protocol=6),
                    rule(30, "ingress", "reject", source_cidr=f"{OTHER}/32"),
                    rule(40, "ingress", "accept"),
                ],
            }
        },
        "flows": flows,
    }


def feed(pipeline: Any, data: bytes, times: list[float]) -> None:
    for now in times:
        pipeline.feed(data, len(data), now, None)


def by_port(records: list[FlowRecord]) -> dict[tuple[str, int], FlowRecord]:
    return {(r.src_addr, r.dst_port): r for r in records}


def test_rejected_flows_are_recorded_with_their_rule_and_counted_as_drops() -> None:
    pipeline = make_pipeline(config())
    telnet = tcp(10, ENI, PEER, 40000, 23, payload=10)  # rule 10 rejects
    https = tcp(10, ENI, PEER, 40001, 443, payload=100)  # rule 20 accepts
    dns = udp(10, ENI, PEER, 40002, 53, payload=30)  # egress UDP: no rule matches
    scanner = udp(10, OTHER, ENI, 5000, 161, payload=5)  # rule 30 rejects
    feed(pipeline, telnet, [T0, T0 + 1, T0 + 2])
    feed(pipeline, https, [T0, T0 + 1])
    feed(pipeline, dns, [T0 + 3, T0 + 3.5])
    feed(pipeline, scanner, [T0 + 4])
    records = by_port(pipeline.flush())
    assert set(records) == {(ENI, 23), (ENI, 443), (ENI, 53), (OTHER, 161)}
    kept = records[ENI, 443]
    assert (kept.action, kept.filter_rule, kept.packets) == ("accept", None, 2)
    rejected = {port: r for port, r in records.items() if r.action == "reject"}
    assert {k: r.filter_rule for k, r in rejected.items()} == {
        (ENI, 23): 10,
        (ENI, 53): None,  # AWS keeps only what a rule accepts: no rule matched
        (OTHER, 161): 30,
    }
    telnet_record = records[ENI, 23]
    assert (telnet_record.packets, telnet_record.bytes) == (3, 3 * (40 + 10))
    assert (telnet_record.start_ms, telnet_record.end_ms) == (T0 * 1000, (T0 + 2) * 1000)
    assert telnet_record.direction == "egress" and telnet_record.session == "web"
    assert telnet_record.tcp_flags == 0x10 and telnet_record.end_reason == "shutdown"
    assert records[OTHER, 161].direction == "ingress"
    # the rejected packets are drops as before: counted once, as filter_reject
    assert drops(pipeline) == {"filter_reject": sum(r.packets for r in rejected.values())}
    assert pipeline.stats.kept == kept.packets
    # sequence numbers cover reject records too: no gap, no repeat
    assert sorted(r.sequence for r in records.values()) == [1, 2, 3, 4]


def test_without_record_rejected_nothing_changes() -> None:
    pipeline = make_pipeline(config(record_rejected=False))
    feed(pipeline, tcp(10, ENI, PEER, 40000, 23), [T0, T0 + 1])
    feed(pipeline, tcp(10, ENI, PEER, 40001, 443), [T0])
    (record,) = pipeline.flush()
    assert (record.dst_port, record.action) == (443, "accept")
    assert drops(pipeline) == {"filter_reject": 2}


def test_rejected_flows_end_on_the_timeouts_eviction_and_reload() -> None:
    pipeline = make_pipeline(config(active_timeout_s=30, inactive_timeout_s=5, max_flows=2))
    idle = tcp(10, ENI, PEER, 40000, 23)
    busy = tcp(10, ENI, PEER, 40001, 23)
    feed(pipeline, idle, [T0])
    feed(pipeline, busy, [T0 + i for i in range(0, 31, 2)])
    first = pipeline.expire(T0 + 6)
    assert [(r.src_port, r.end_reason, r.packets) for r in first] == [
        (40000, "inactive_timeout", 1)
    ]
    second = pipeline.expire(T0 + 31)  # the busy one outlived the active timeout
    assert [(r.src_port, r.end_reason, r.packets) for r in second] == [
        (40001, "active_timeout", 16)
    ]
    assert all(r.action == "reject" and r.filter_rule == 10 for r in first + second)
    assert pipeline.expire(T0 + 31) == []
    feed(pipeline, busy, [T0 + 32])
    for port in (2000, 2001, 2002):  # max_flows=2: the oldest not-kept flows are evicted
        feed(pipeline, tcp(10, ENI, PEER, port, 23), [T0 + 33])
    evicted = pipeline.collect()
    assert evicted and {r.end_reason for r in evicted} == {"evicted"}
    assert all(r.action == "reject" and r.filter_rule == 10 for r in evicted)
    # a reload decides not-kept flows again: the recorded ones end first
    pipeline.use_sessions(pipeline.sessions)
    reloaded = pipeline.collect()
    assert reloaded and {r.end_reason for r in reloaded} == {"evicted"}
    assert pipeline.table.not_kept == 0
    emitted = first + second + evicted + reloaded
    assert sum(r.packets for r in emitted) == drops(pipeline)["filter_reject"]


def test_every_rejected_packet_is_in_exactly_one_reject_record() -> None:
    """Over a run with timeouts, evictions, a reload and a shutdown, the reject records carry every
    filter_reject drop once (no packet counted twice, none left out)."""
    pipeline = make_pipeline(config(active_timeout_s=4, inactive_timeout_s=2, max_flows=8))
    records: list[FlowRecord] = []
    for step in range(200):
        now = T0 + step * 0.25
        port = 1000 + step % 23
        feed(pipeline, tcp(10, ENI, PEER, port, 23), [now])
        feed(pipeline, tcp(10, ENI, PEER, port, 443), [now])
        if step % 8 == 0:
            records += pipeline.expire(now)
        if step == 120:
            pipeline.use_sessions(pipeline.sessions)
            records += pipeline.collect()
    records += pipeline.flush()
    rejected = sum(r.packets for r in records if r.action == "reject")
    accepted = sum(r.packets for r in records if r.action == "accept")
    assert rejected == drops(pipeline)["filter_reject"] == 200
    assert accepted == pipeline.stats.kept == 200
    assert [r.sequence for r in records] == list(range(1, len(records) + 1))


def test_vpc_flow_log_lines_say_accept_or_reject() -> None:
    pipeline = make_pipeline(config())
    feed(pipeline, tcp(10, ENI, PEER, 40000, 23), [T0])
    feed(pipeline, tcp(10, ENI, PEER, 40001, 443), [T0])
    encode = encoder_for("vpc-flow-log")
    lines = {r.dst_port: encode(r).decode().split() for r in pipeline.flush()}
    # the default format: ... start end action log-status
    assert (lines[23][-2], lines[443][-2]) == ("REJECT", "ACCEPT")
