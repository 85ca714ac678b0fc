"""Sessions: VNI lookup, direction relative to the source ENI, filters applied once per flow."""

from __future__ import annotations

from typing import Any

import pytest
from pipeline_support import T0, drops, make_pipeline, packed, tcp, udp

from collector.config import build_config
from collector.errors import ConfigError
from collector.filter import MirrorFilter
from collector.sessions import (
    EGRESS,
    INGRESS,
    MAX_ANONYMOUS_SESSIONS,
    UNKNOWN,
    Session,
    SessionMap,
    build_sessions,
    parse_networks,
)
from collector.wire.drops import Drop
from collector.wire.flowkey import unpack_key

ENI4, ENI6 = "10.0.1.10", "2600:1f18:1234:5601::10"
PEER4, PEER6 = "198.51.100.7", "2001:db8:ffff::7"


def session_with(*addresses: str) -> Session:
    return Session(vni=1, name="a", networks=parse_networks(addresses, "sessions[0].addresses"))


@pytest.mark.parametrize(
    ("addresses", "src", "dst", "expected"),
    [
        ([ENI4], ENI4, PEER4, EGRESS),
        ([ENI4], PEER4, ENI4, INGRESS),
        ([ENI4], PEER4, "10.0.1.11", UNKNOWN),
        (["10.0.1.0/24"], "10.0.1.200", PEER4, EGRESS),
        (["10.0.1.0/24"], PEER4, "10.0.1.0", INGRESS),
        (["10.0.1.0/24"], PEER4, "10.0.2.1", UNKNOWN),
        (["10.0.1.10/32"], PEER4, ENI4, INGRESS),
        ([ENI6], ENI6, PEER6, EGRESS),
        ([ENI6], PEER6, ENI6, INGRESS),
        ([ENI6], PEER6, "2600:1f18:1234:5601::11", UNKNOWN),
        (["2600:1f18:1234:5601::/64"], "2600:1f18:1234:5601::abcd", PEER6, EGRESS),
        (["2600:1f18:1234:5601::/64"], PEER6, "2600:1f18:1234:5601:ffff::1", INGRESS),
        (["2600:1f18:1234:5601::/64"], PEER6, "2600:1f18:1234:5602::1", UNKNOWN),
        # both families configured, each answers for its own
        ([ENI4, ENI6], ENI6, PEER6, EGRESS),
        ([ENI4, ENI6], PEER4, ENI4, INGRESS),
        # an IPv4 network never contains an IPv6 address with the same low bits, and back
        (["0.0.0.0/0"], PEER6, ENI6, UNKNOWN),
        (["::/0"], PEER4, ENI4, UNKNOWN),
        # traffic between two addresses of the ENI leaves it: the source decides
        (["10.0.1.0/24"], ENI4, "10.0.1.11", EGRESS),
    ],
)
def test_direction_from_addresses(addresses: list[str], src: str, dst: str, expected: str) -> None:
    assert session_with(*addresses).direction(packed(src), packed(dst), None) == expected


@pytest.mark.parametrize(
    ("src", "dst", "outer", "expected"),
    [
        (ENI4, PEER4, ENI4, EGRESS),
        (PEER4, ENI4, ENI4, INGRESS),
        (PEER4, "10.0.1.11", ENI4, UNKNOWN),
        (ENI4, PEER4, None, UNKNOWN),
        # the outer source is the ENI's primary IPv4: it says nothing about IPv6 inner packets
        (ENI6, PEER6, ENI4, UNKNOWN),
    ],
)
def test_direction_without_addresses_from_the_outer_source(
    src: str, dst: str, outer: str | None, expected: str
) -> None:
    session = Session(vni=1, name="a")
    outer_src = None if outer is None else packed(outer)
    assert session.direction(packed(src), packed(dst), outer_src) == expected


def test_configured_addresses_decide_before_the_outer_source() -> None:
    session = session_with(ENI4)
    # the inner destination is the ENI: ingress, whatever the outer source says
    assert session.direction(packed(PEER4), packed(ENI4), packed(PEER4)) == INGRESS


def test_parse_networks_names_the_bad_entry() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_networks(["10.0.0.1", "2001:db8::/129"], "sessions[3].addresses")
    assert caught.value.key == "sessions[3].addresses[1]"


def test_session_map_lookup() -> None:
    a = Session(vni=7, name="a")
    sessions = SessionMap([a], accept_unknown=False)
    assert sessions.get(7) is a
    assert sessions.get(8) is None


def test_session_map_accepting_unknown_vnis() -> None:
    a = Session(vni=7, name="a")
    sessions = SessionMap([a], accept_unknown=True)
    assert sessions.get(7) is a
    other = sessions.get(8)
    assert other is not None
    assert (other.vni, other.name, other.filter, other.networks) == (8, None, None, ())


def test_zero_config_accepts_every_vni_without_filter() -> None:
    sessions = SessionMap([], accept_unknown=False)
    for vni in (0, 1, 0xFFFFFF):
        found = sessions.get(vni)
        assert found is not None
        assert (found.vni, found.name, found.filter) == (vni, None, None)


def test_sessions_made_up_for_unknown_vnis_are_bounded() -> None:
    sessions = SessionMap([], accept_unknown=True)
    for vni in range(MAX_ANONYMOUS_SESSIONS * 3):
        found = sessions.get(vni)
        assert found is not None
        assert found.vni == vni
        assert len(sessions._anonymous) <= MAX_ANONYMOUS_SESSIONS


def test_build_sessions_from_config(tmp_path: Any) -> None:
    config = build_config(
        {
            "sessions": [
                {
                    "vni": 10,
                    "name": "A",
                    "interface_id": "eni-a",
                    "addresses": [ENI4],
                    "filter": "f",
                },
                {"vni": 11, "addresses": [ENI6], "tags": {"team": "web"}},
            ],
            "filters": {
                "f": {
                    "rules": [
                        {
                            "direction": "egress",
                            "rule_number": 1,
                            "action": "accept",
                            "source_cidr": "0.0.0.0/0",
                            "destination_cidr": "0.0.0.0/0",
                        }
                    ]
                }
            },
        }
    )
    sessions = build_sessions(config)
    a, b = sessions.get(10), sessions.get(11)
    assert a is not None
    assert b is not None
    assert (a.name, a.interface_id) == ("A", "eni-a")
    assert isinstance(a.filter, MirrorFilter)
    assert len(a.filter) == 1
    assert (b.name, b.filter, dict(b.tags)) == ("vni-11", None, {"team": "web"})
    assert sessions.get(12) is None


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"sessions": [{"vni": 1}, {"vni": 2}, {"vni": 1}]}, "sessions[2].vni"),
        ({"sessions": [{"vni": 1, "filter": "nope"}]}, "sessions[0].filter"),
        (
            {"sessions": [{"vni": 1}, {"vni": 2, "addresses": ["10.0.0.1", "eni"]}]},
            "sessions[1].addresses[1]",
        ),
    ],
)
def test_build_sessions_errors_name_the_key(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_sessions(build_config(settings))
    assert caught.value.key == key


# ---- through the pipeline -------------------------------------------------------------------------

ACCEPT_EGRESS_TCP = {
    "rules": [
        {
            "direction": "egress",
            "rule_number": 100,
            "action": "accept",
            "protocol": 6,
            "source_cidr": "0.0.0.0/0",
            "destination_cidr": "0.0.0.0/0",
        }
    ]
}


def two_sessions(**flows: Any) -> dict[str, Any]:
    return {
        "sessions": [
            {"vni": 10, "name": "A", "addresses": [ENI4], "filter": "f"},
            {"vni": 11, "name": "B"},
        ],
        "filters": {"f": ACCEPT_EGRESS_TCP},
        "flows": flows,
    }


def test_unknown_vni_is_dropped_and_counted_when_sessions_are_configured() -> None:
    pipeline = make_pipeline(two_sessions())
    data = tcp(99, ENI4, PEER4, 40000, 443)
    for i in range(3):
        pipeline.feed(data, len(data), T0 + i, None)
    assert drops(pipeline) == {"unknown_vni": 3}
    assert pipeline.stats.kept == 0
    assert pipeline.flush() == []


def test_unknown_vni_is_kept_with_accept_unknown_vni() -> None:
    pipeline = make_pipeline(two_sessions(accept_unknown_vni=True))
    data = tcp(99, ENI4, PEER4, 40000, 443)
    pipeline.feed(data, len(data), T0, None)
    (record,) = pipeline.flush()
    assert drops(pipeline) == {}
    assert (record.vni, record.session, record.direction) == (99, None, "unknown")


def test_zero_config_keeps_everything() -> None:
    pipeline = make_pipeline()
    datagrams = [tcp(vni, PEER4, ENI4, 1000 + vni % 1000, 80) for vni in (0, 1, 4242, 0xFFFFFF)]
    for data in datagrams:
        pipeline.feed(data, len(data), T0, None)
    records = pipeline.flush()
    assert drops(pipeline) == {}
    assert sorted(r.vni for r in records) == [0, 1, 4242, 0xFFFFFF]
    assert {r.session for r in records} == {None}


def test_outer_source_tells_direction_in_the_pipeline() -> None:
    pipeline = make_pipeline()
    out = tcp(5, ENI4, PEER4, 40000, 443)
    back = tcp(5, PEER4, ENI4, 443, 40000)
    other = tcp(5, PEER4, "10.0.1.11", 443, 40000)
    for data in (out, back, other):
        pipeline.feed(data, len(data), T0, packed(ENI4))
    directions = {(r.src_addr, r.dst_addr): r.direction for r in pipeline.flush()}
    assert directions == {
        (ENI4, PEER4): "egress",
        (PEER4, ENI4): "ingress",
        (PEER4, "10.0.1.11"): "unknown",
    }


def test_outer_source_as_text_from_the_socket() -> None:
    pipeline = make_pipeline()
    data = tcp(5, ENI4, PEER4, 40000, 443)
    pipeline.feed(data, len(data), T0, ENI4)
    (record,) = pipeline.flush()
    assert record.direction == "egress"


def test_session_with_filter_drops_unknown_direction() -> None:
    pipeline = make_pipeline(two_sessions())
    stranger = tcp(10, PEER4, "10.0.1.99", 40000, 443)
    for i in range(4):
        pipeline.feed(stranger, len(stranger), T0 + i, None)
    assert drops(pipeline) == {"unknown_direction": 4}
    assert pipeline.flush() == []


def test_session_without_filter_keeps_unknown_direction() -> None:
    pipeline = make_pipeline(two_sessions())
    stranger = tcp(11, PEER4, "10.0.1.99", 40000, 443)
    pipeline.feed(stranger, len(stranger), T0, None)
    (record,) = pipeline.flush()
    assert (record.session, record.direction) == ("B", "unknown")


def test_filter_decides_per_direction_and_protocol() -> None:
    pipeline = make_pipeline(two_sessions())
    kept_out = tcp(10, ENI4, PEER4, 40000, 443)
    rejected_in = tcp(10, PEER4, ENI4, 443, 40000)  # no ingress rules: not mirrored
    rejected_udp = udp(10, ENI4, PEER4, 40000, 53)  # egress rule is TCP only
    for data in (kept_out, rejected_in, rejected_udp):
        pipeline.feed(data, len(data), T0, None)
    (record,) = pipeline.flush()
    assert (record.session, record.direction, record.dst_port) == ("A", "egress", 443)
    assert drops(pipeline) == {"filter_reject": 2}


def test_rejected_flow_is_cached_and_counted_per_packet() -> None:
    pipeline = make_pipeline(two_sessions())
    rejected = udp(10, ENI4, PEER4, 40000, 53)
    for i in range(5):
        pipeline.feed(rejected, len(rejected), T0 + i, None)
        assert pipeline.stats.drops[Drop.FILTER_REJECT] == i + 1
        assert pipeline.table.not_kept == 1
    (key,) = pipeline.table.not_kept_keys()
    assert unpack_key(key) == (10, packed(ENI4), packed(PEER4), 17, 40000, 53, -1)
    assert pipeline.table.not_kept_reason(key) == Drop.FILTER_REJECT
    assert len(pipeline.table) == 0


def test_unknown_direction_is_cached_like_a_reject() -> None:
    pipeline = make_pipeline(two_sessions())
    stranger = tcp(10, PEER4, "10.0.1.99", 40000, 443)
    for _ in range(3):
        pipeline.feed(stranger, len(stranger), T0, None)
    (key,) = pipeline.table.not_kept_keys()
    assert pipeline.table.not_kept_reason(key) == Drop.UNKNOWN_DIRECTION
    assert drops(pipeline) == {"unknown_direction": 3}


ACCEPT_EGRESS_UDP = {"rules": [{**ACCEPT_EGRESS_TCP["rules"][0], "protocol": 17}]}


def test_a_reload_keeps_admitted_flows_and_decides_the_others_again() -> None:
    """The reload a worker runs on SIGHUP (``Pipeline.reconfigure``): a flow in the table keeps
    the decision it was admitted with; a flow the old rules did not keep is decided again under
    the new rules, and so is every new flow."""
    pipeline = make_pipeline(two_sessions())
    kept_flow = tcp(10, ENI4, PEER4, 40000, 443)
    rejected_flow = udp(10, ENI4, PEER4, 40000, 53)
    pipeline.feed(kept_flow, len(kept_flow), T0, None)
    pipeline.feed(rejected_flow, len(rejected_flow), T0, None)
    assert drops(pipeline) == {"filter_reject": 1}

    # the new rules keep UDP and nothing else: the reverse of the old ones
    config = build_config({**two_sessions(), "filters": {"f": ACCEPT_EGRESS_UDP}})
    pipeline.reconfigure(config, build_sessions(config))
    new_flow = tcp(10, ENI4, PEER4, 40001, 443)
    for i in range(1, 4):
        pipeline.feed(kept_flow, len(kept_flow), T0 + i, None)
        pipeline.feed(rejected_flow, len(rejected_flow), T0 + i, None)
        pipeline.feed(new_flow, len(new_flow), T0 + i, None)

    records = {(r.protocol, r.src_port): r.packets for r in pipeline.flush()}
    assert records == {(6, 40000): 4, (17, 40000): 3}  # admitted TCP kept; UDP now accepted
    assert drops(pipeline) == {"filter_reject": 1 + 3}  # UDP before the reload, new TCP after


def test_a_cached_reject_is_forgotten_after_the_inactive_timeout_then_decided_anew() -> None:
    pipeline = make_pipeline(two_sessions())
    flow = udp(10, ENI4, PEER4, 40000, 53)
    pipeline.feed(flow, len(flow), T0, None)
    assert pipeline.table.not_kept == 1
    assert pipeline.expire(T0 + 14.5) == []
    pipeline.feed(flow, len(flow), T0 + 14.5, None)  # still cached, and refreshed
    assert pipeline.expire(T0 + 29) == []
    assert pipeline.table.not_kept == 1
    assert pipeline.expire(T0 + 29.5) == []  # idle for the inactive timeout: forgotten
    assert pipeline.table.not_kept == 0
    pipeline.feed(flow, len(flow), T0 + 30, None)  # decided again (same rules: rejected again)
    assert pipeline.table.not_kept == 1
    assert pipeline.flush() == []
    assert drops(pipeline) == {"filter_reject": 3}
