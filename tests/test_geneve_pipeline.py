"""GENEVE datagrams through the pipeline: direction from the mirror source, the GWLB endpoint in the
records, per-encapsulation and per-session counts, and /metrics."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from collector.checks import validate
from collector.config import build_config
from collector.errors import ConfigError
from collector.metrics import Aggregate, WorkerSnapshot, WorkerView
from collector.pipeline import MAX_ANONYMOUS_SESSION_LABELS, OTHER_VNI, Pipeline
from collector.sessions import build_sessions
from collector.wire import Drop
from collector.wire.geneve import endpoint_text
from tests import packets

ENI, PEER, GWLB = "10.1.0.10", "10.2.0.20", "10.0.200.7"
VNI = 0x3A91C7
T0 = 1_764_100_000.0
FILTERED: dict[str, Any] = {
    "sessions": [{"vni": VNI, "name": "web", "filter": "egress-only"}],
    "filters": {
        "egress-only": {
            "rules": [
                {
                    "direction": "egress",
                    "rule_number": 10,
                    "action": "accept",
                    "source_cidr": "0.0.0.0/0",
                    "destination_cidr": "0.0.0.0/0",
                }
            ]
        }
    },
}


def pipeline(settings: dict[str, Any] | None = None) -> Pipeline:
    config = build_config(settings or {})
    return Pipeline(config, build_sessions(config), exporter="test")


def feed_geneve(p: Pipeline, payload: bytes, now: float = T0, outer: str = GWLB) -> None:
    p.feed_geneve(payload, len(payload), now, outer)


def test_direction_comes_from_the_mirror_source_never_from_the_gwlb() -> None:
    """The session names no addresses: direction falls back to the outer source, which for GENEVE
    is the mirror datagram's (the source ENI), not the GWLB's that sent the datagram."""
    p = pipeline(FILTERED)
    egress = packets.geneve(packets.tcp(VNI, ENI, PEER, 40000, 443, "S"), ENI)
    ingress = packets.geneve(packets.tcp(VNI, PEER, ENI, 443, 40000, "SA"), ENI)
    unrelated = packets.geneve(packets.tcp(VNI, PEER, "10.9.9.9", 1, 2, "S"), ENI)
    for payload in (egress, ingress, unrelated):
        feed_geneve(p, payload)
    records = p.flush()
    assert [(r.src_addr, r.direction) for r in records] == [(ENI, "egress")]
    drops = p.stats.drops
    assert drops[Drop.FILTER_REJECT] == 1  # ingress: the filter has egress rules only
    assert drops[Drop.UNKNOWN_DIRECTION] == 1  # neither address is the mirror source
    assert p.stats.geneve_drops == drops  # every datagram here was GENEVE


def test_the_gwlb_address_as_outer_source_would_have_judged_otherwise() -> None:
    """The same packet as VXLAN from the GWLB's address: unknown direction. The GENEVE path's
    correct answer above is thus the mirror source's doing."""
    p = pipeline(FILTERED)
    vxlan = packets.tcp(VNI, ENI, PEER, 40000, 443, "S")
    p.feed(vxlan, len(vxlan), T0, GWLB)
    assert p.stats.drops[Drop.UNKNOWN_DIRECTION] == 1


def test_records_name_the_gwlb_endpoint_and_vxlan_records_do_not() -> None:
    p = pipeline()
    a = packets.geneve(packets.udp(VNI, ENI, PEER, 5353, 53), ENI, endpoint_id=0xA)
    b = packets.geneve(packets.udp(VNI, ENI, PEER, 5354, 53), ENI, endpoint_id=0xB)
    v = packets.udp(VNI, ENI, PEER, 5355, 53)
    feed_geneve(p, a)
    feed_geneve(p, a, T0 + 1)
    feed_geneve(p, b)
    p.feed(v, len(v), T0, ENI)
    records = {r.src_port: r for r in p.flush()}
    assert records[5353].gwlb_endpoint_id == "vpce-0000000000000000a"
    assert records[5353].packets == 2
    assert records[5354].gwlb_endpoint_id == "vpce-0000000000000000b"
    assert records[5355].gwlb_endpoint_id is None
    assert p.stats.endpoint_records == {
        "vpce-0000000000000000a": 1,
        "vpce-0000000000000000b": 1,
        "": 1,
    }
    assert p.stats.session_datagrams == {VNI: 4}
    assert (p.stats.datagrams, p.stats.geneve_datagrams) == (4, 3)


def test_unknown_vnis_share_a_bounded_set_of_session_labels() -> None:
    p = pipeline()
    for vni in range(MAX_ANONYMOUS_SESSION_LABELS + 10):
        payload = packets.geneve(packets.udp(vni, ENI, PEER, 1000, 53), ENI)
        feed_geneve(p, payload)
    p.flush()
    counts = p.stats.session_datagrams
    assert len(counts) == MAX_ANONYMOUS_SESSION_LABELS + 1
    assert counts[OTHER_VNI] == 10
    assert sum(counts.values()) == MAX_ANONYMOUS_SESSION_LABELS + 10


def test_unknown_vni_of_a_geneve_datagram_is_a_geneve_drop() -> None:
    p = pipeline(FILTERED)
    payload = packets.geneve(packets.udp(VNI + 1, ENI, PEER, 1000, 53), ENI)
    feed_geneve(p, payload)
    assert p.stats.drops[Drop.UNKNOWN_VNI] == p.stats.geneve_drops[Drop.UNKNOWN_VNI] == 1


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_per_encapsulation_session_and_endpoint() -> None:
    p = pipeline(FILTERED)
    good = packets.geneve(packets.tcp(VNI, ENI, PEER, 40000, 443, "S"), ENI)
    bad = b"\x40" + good[1:]  # version 1
    vxlan = packets.tcp(VNI, ENI, PEER, 40001, 443, "S")
    feed_geneve(p, good)
    feed_geneve(p, bad)
    p.feed(vxlan, len(vxlan), T0, ENI)
    p.flush()
    stats = p.stats
    aggregate = Aggregate(read_process=lambda _pid: None)
    aggregate.session_names = {VNI: "web", 7: "silent"}
    snapshot = WorkerSnapshot(
        index=0,
        pid=1,
        started=T0,
        datagrams=stats.datagrams,
        drops=list(stats.drops),
        geneve_datagrams=stats.geneve_datagrams,
        geneve_drops=list(stats.geneve_drops),
        session_datagrams=dict(stats.session_datagrams),
        session_names=dict(stats.session_names),
        endpoint_records=dict(stats.endpoint_records),
    )
    aggregate.workers[0] = WorkerView(index=0, alive=True, responsive=True, snapshot=snapshot)
    got = samples(aggregate.render().decode())
    received = "collector_encapsulation_datagrams_received_total"
    dropped = "collector_encapsulation_packets_dropped_total"
    assert got[(received, (("encapsulation", "geneve"),))] == 2
    assert got[(received, (("encapsulation", "vxlan"),))] == 1
    assert got[(dropped, (("encapsulation", "geneve"), ("reason", "geneve_version")))] == 1
    assert got[(dropped, (("encapsulation", "vxlan"), ("reason", "vxlan_flags")))] == 0
    assert ("collector_packets_dropped_total", (("reason", "geneve_version"),)) in got
    session = "collector_session_datagrams_total"
    assert got[(session, (("session", "web"), ("vni", str(VNI))))] == 2
    # a configured session that sent nothing has its series, at 0: an alert can tell it apart
    assert got[(session, (("session", "silent"), ("vni", "7")))] == 0
    endpoint = "collector_endpoint_records_total"
    assert got[(endpoint, (("gwlb_endpoint_id", endpoint_text(packets.ENDPOINT_ID)),))] == 1
    # a worker that exits hands its counts to the totals: nothing goes backwards
    aggregate.retired.add(snapshot)
    aggregate.workers.clear()
    again = samples(aggregate.render().decode())
    assert again[(session, (("session", "web"), ("vni", str(VNI))))] == 2
    assert again[(received, (("encapsulation", "geneve"),))] == 2


def test_one_port_for_both_listeners_is_refused_naming_geneve_listen() -> None:
    same = build_config({"listen": "0.0.0.0:6081", "geneve_listen": "0.0.0.0:6081"})
    with pytest.raises(ConfigError, match="geneve_listen"):
        validate(same)
    validate(build_config({"listen": "0.0.0.0:4789", "geneve_listen": "off"}))
    validate(build_config({"listen": "", "geneve_listen": "0.0.0.0:6081"}))


def test_a_session_only_the_workers_know_is_named_by_them() -> None:
    """A session learned from the EC2 API is in no config file: its name comes from the worker
    that counted it."""
    p = pipeline(FILTERED)
    payload = packets.geneve(packets.tcp(VNI, ENI, PEER, 40000, 443, "S"), ENI)
    feed_geneve(p, payload)
    p.flush()
    assert p.stats.session_names == {VNI: "web"}
    aggregate = Aggregate(read_process=lambda _pid: None)  # no configured sessions
    snapshot = WorkerSnapshot(
        index=0,
        pid=1,
        started=T0,
        session_datagrams=dict(p.stats.session_datagrams),
        session_names=dict(p.stats.session_names),
    )
    aggregate.workers[0] = WorkerView(index=0, alive=True, responsive=True, snapshot=snapshot)
    got = samples(aggregate.render().decode())
    session = "collector_session_datagrams_total"
    assert got[(session, (("session", "web"), ("vni", str(VNI))))] == 1
    aggregate.retired.add(snapshot)
    aggregate.workers.clear()
    got = samples(aggregate.render().decode())
    assert got[(session, (("session", "web"), ("vni", str(VNI))))] == 1
