"""Mirror-filter semantics as AWS documents them, rule loading from TOML and AWS JSON, load errors."""

from __future__ import annotations

import copy
import ipaddress
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.config import FilterConfig, build_config
from collector.errors import ConfigError
from collector.filter import MirrorFilter, load_filter

AWS_JSON = Path(__file__).parent / "data" / "aws" / "describe-traffic-mirror-filters.json"
TCP, UDP, ICMP, GRE, ICMPV6 = 6, 17, 1, 47, 58
ANY4, ANY6 = "0.0.0.0/0", "::/0"


def rule(
    direction: str,
    number: int,
    action: str,
    src: str = ANY4,
    dst: str = ANY4,
    **extra: Any,
) -> dict[str, Any]:
    """An inline rule as it would appear in TOML."""
    return {
        "direction": direction,
        "rule_number": number,
        "action": action,
        "source_cidr": src,
        "destination_cidr": dst,
        **extra,
    }


def make_filter(*rules: dict[str, Any]) -> MirrorFilter:
    """A filter through the same path as a config file: validated config, then load_filter."""
    config = build_config({"filters": {"f": {"rules": list(rules)}}})
    return load_filter("f", config.filters["f"], Path("."))


def kept(
    mirror_filter: MirrorFilter,
    direction: str,
    protocol: int,
    src: str,
    dst: str,
    sport: int = 0,
    dport: int = 0,
) -> bool:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    assert s.version == d.version
    return mirror_filter.decide(direction, protocol, int(s), int(d), sport, dport, s.version)


# (case, rules, packet (direction, protocol, src, dst, sport, dport), kept)
SEMANTICS = [
    (
        "ascending number decides, not file order (reject first by number)",
        [rule("ingress", 200, "accept"), rule("ingress", 100, "reject")],
        ("ingress", TCP, "10.0.0.1", "10.0.0.2", 1234, 80),
        False,
    ),
    (
        "ascending number decides, not file order (accept first by number)",
        [rule("ingress", 200, "reject"), rule("ingress", 100, "accept")],
        ("ingress", TCP, "10.0.0.1", "10.0.0.2", 1234, 80),
        True,
    ),
    (
        "first match decides: the specific reject before a catch-all accept",
        [
            rule("ingress", 10, "reject", protocol=TCP, destination_ports="22"),
            rule("ingress", 20, "accept"),
        ],
        ("ingress", TCP, "10.0.0.1", "10.0.0.2", 40000, 22),
        False,
    ),
    (
        "first match decides: the catch-all accept takes what the reject does not match",
        [
            rule("ingress", 10, "reject", protocol=TCP, destination_ports="22"),
            rule("ingress", 20, "accept"),
        ],
        ("ingress", TCP, "10.0.0.1", "10.0.0.2", 40000, 80),
        True,
    ),
    (
        "first match decides: UDP to port 22 is not TCP",
        [
            rule("ingress", 10, "reject", protocol=TCP, destination_ports="22"),
            rule("ingress", 20, "accept"),
        ],
        ("ingress", UDP, "10.0.0.1", "10.0.0.2", 40000, 22),
        True,
    ),
    (
        "accept before reject by number",
        [
            rule("egress", 5, "reject", dst="10.0.0.0/8"),
            rule("egress", 1, "accept", dst="10.1.0.0/16"),
        ],
        ("egress", UDP, "192.168.0.1", "10.1.2.3", 5000, 53),
        True,
    ),
    (
        "a later reject still applies to what the earlier accept misses",
        [
            rule("egress", 5, "reject", dst="10.0.0.0/8"),
            rule("egress", 1, "accept", dst="10.1.0.0/16"),
        ],
        ("egress", UDP, "192.168.0.1", "10.2.0.1", 5000, 53),
        False,
    ),
    (
        "no match is not kept",
        [rule("ingress", 1, "accept", src="10.0.0.0/8")],
        ("ingress", TCP, "192.168.1.1", "10.0.0.1", 1, 2),
        False,
    ),
    (
        "rules are per direction: an ingress accept-all says nothing about egress",
        [rule("ingress", 1, "accept")],
        ("egress", TCP, "10.0.0.1", "10.0.0.2", 1, 2),
        False,
    ),
    (
        "rules are per direction: an egress reject does not reach ingress",
        [rule("egress", 1, "reject"), rule("ingress", 2, "accept")],
        ("ingress", TCP, "10.0.0.1", "10.0.0.2", 1, 2),
        True,
    ),
    (
        "both CIDRs must match: source outside",
        [rule("ingress", 1, "accept", src="10.0.0.0/24", dst="10.0.1.0/24")],
        ("ingress", TCP, "10.0.2.1", "10.0.1.1", 1, 2),
        False,
    ),
    (
        "both CIDRs must match: destination outside",
        [rule("ingress", 1, "accept", src="10.0.0.0/24", dst="10.0.1.0/24")],
        ("ingress", TCP, "10.0.0.1", "10.0.2.1", 1, 2),
        False,
    ),
    (
        "both CIDRs must match: both inside",
        [rule("ingress", 1, "accept", src="10.0.0.0/24", dst="10.0.1.0/24")],
        ("ingress", TCP, "10.0.0.255", "10.0.1.0", 1, 2),
        True,
    ),
    (
        "a protocol rule does not match another protocol",
        [rule("ingress", 1, "accept", protocol=TCP)],
        ("ingress", UDP, "10.0.0.1", "10.0.0.2", 1, 2),
        False,
    ),
    (
        "an IPv4 rule never matches an IPv6 flow, even 0.0.0.0/0",
        [rule("ingress", 1, "accept")],
        ("ingress", TCP, "2001:db8::1", "2001:db8::2", 1, 2),
        False,
    ),
    (
        "an IPv4 rule does not match an IPv4-mapped IPv6 address",
        [rule("ingress", 1, "accept", src="10.0.0.0/8", dst="10.0.0.0/8")],
        ("ingress", TCP, "::ffff:10.0.0.1", "::ffff:10.0.0.2", 1, 2),
        False,
    ),
    (
        "an IPv6 rule never matches an IPv4 flow, even ::/0",
        [rule("ingress", 1, "accept", src=ANY6, dst=ANY6)],
        ("ingress", TCP, "10.0.0.1", "10.0.0.2", 1, 2),
        False,
    ),
    (
        "an IPv6 rule matches an IPv6 flow",
        [rule("ingress", 1, "accept", src=ANY6, dst="2001:db8::/32")],
        ("ingress", ICMPV6, "fe80::1", "2001:db8:ffff::1", 0, 0),
        True,
    ),
    (
        "family mismatch falls through to the next rule of the right family",
        [rule("ingress", 1, "reject", src=ANY6, dst=ANY6), rule("ingress", 2, "accept")],
        ("ingress", TCP, "10.0.0.1", "10.0.0.2", 1, 2),
        True,
    ),
    (
        "a port rule never matches ICMP, even 0-65535",
        [rule("ingress", 1, "accept", destination_ports="0-65535")],
        ("ingress", ICMP, "10.0.0.1", "10.0.0.2", 0, 0),
        False,
    ),
    (
        "a port rule never matches ICMPv6",
        [rule("ingress", 1, "accept", src=ANY6, dst=ANY6, source_ports="0-65535")],
        ("ingress", ICMPV6, "2001:db8::1", "2001:db8::2", 0, 0),
        False,
    ),
    (
        "a port rule never matches GRE",
        [rule("ingress", 1, "accept", destination_ports="0-65535")],
        ("ingress", GRE, "10.0.0.1", "10.0.0.2", 0, 0),
        False,
    ),
    (
        "a port reject on ICMP falls through to the accept",
        [rule("ingress", 1, "reject", source_ports="0-65535"), rule("ingress", 2, "accept")],
        ("ingress", ICMP, "10.0.0.1", "10.0.0.2", 0, 0),
        True,
    ),
    (
        "a port rule matches TCP",
        [rule("ingress", 1, "accept", destination_ports="0-65535")],
        ("ingress", TCP, "10.0.0.1", "10.0.0.2", 1, 2),
        True,
    ),
    (
        "a port rule matches UDP",
        [rule("ingress", 1, "accept", destination_ports="0-65535")],
        ("ingress", UDP, "10.0.0.1", "10.0.0.2", 1, 2),
        True,
    ),
    (
        "source and destination port ranges must both match",
        [rule("ingress", 1, "accept", source_ports="1024-65535", destination_ports="53")],
        ("ingress", UDP, "10.0.0.1", "10.0.0.2", 1023, 53),
        False,
    ),
    (
        "a direction outside ingress/egress is never kept",
        [rule("ingress", 1, "accept"), rule("egress", 1, "accept")],
        ("unknown", TCP, "10.0.0.1", "10.0.0.2", 1, 2),
        False,
    ),
]


@pytest.mark.parametrize(
    ("rules", "packet", "expected"),
    [pytest.param(rules, packet, expected, id=case) for case, rules, packet, expected in SEMANTICS],
)
def test_semantics(rules: list[dict[str, Any]], packet: tuple[Any, ...], expected: bool) -> None:
    assert kept(make_filter(*rules), *packet) is expected


@pytest.mark.parametrize(
    "protocol", [0, ICMP, 2, TCP, UDP, GRE, 50, 51, ICMPV6, 132, 255], ids=lambda p: f"proto{p}"
)
def test_absent_protocol_matches_every_protocol(protocol: int) -> None:
    mirror_filter = make_filter(rule("ingress", 1, "accept"))
    assert kept(mirror_filter, "ingress", protocol, "10.0.0.1", "10.0.0.2")


def test_a_filter_without_rules_keeps_nothing() -> None:
    mirror_filter = make_filter()
    assert len(mirror_filter) == 0
    for direction in ("ingress", "egress"):
        assert not kept(mirror_filter, direction, TCP, "10.0.0.1", "10.0.0.2", 1, 2)


@pytest.mark.parametrize(
    ("ports", "port", "expected"),
    [
        ("443", 442, False),
        ("443", 443, True),
        ("443", 444, False),
        ("1000-2000", 999, False),
        ("1000-2000", 1000, True),
        ("1000-2000", 1500, True),
        ("1000-2000", 2000, True),
        ("1000-2000", 2001, False),
        ("0-65535", 0, True),
        ("0-65535", 65535, True),
        ("0", 0, True),
        ("0", 1, False),
        ("65535", 65535, True),
        ("65535", 65534, False),
        ("7-7", 7, True),
        ("7-7", 8, False),
    ],
)
@pytest.mark.parametrize("side", ["source_ports", "destination_ports"])
@pytest.mark.parametrize("protocol", [TCP, UDP])
def test_port_ranges(ports: str, port: int, expected: bool, side: str, protocol: int) -> None:
    mirror_filter = make_filter(rule("egress", 1, "accept", **{side: ports}))
    sport, dport = (port, 9) if side == "source_ports" else (9, port)
    assert kept(mirror_filter, "egress", protocol, "10.0.0.1", "10.0.0.2", sport, dport) is expected


@pytest.mark.parametrize(
    ("cidr", "address", "expected"),
    [
        ("0.0.0.0/0", "0.0.0.0", True),
        ("0.0.0.0/0", "255.255.255.255", True),
        ("10.0.0.7/32", "10.0.0.7", True),
        ("10.0.0.7/32", "10.0.0.6", False),
        ("10.0.0.7/32", "10.0.0.8", False),
        ("10.0.0.7", "10.0.0.7", True),
        ("10.0.0.0/31", "10.0.0.1", True),
        ("10.0.0.0/31", "10.0.0.2", False),
        ("172.16.0.0/12", "172.31.255.255", True),
        ("172.16.0.0/12", "172.32.0.0", False),
        ("::/0", "::", True),
        ("::/0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", True),
        ("2001:db8::7/128", "2001:db8::7", True),
        ("2001:db8::7/128", "2001:db8::6", False),
        ("2001:db8::7/128", "2001:db8::8", False),
        ("2001:db8::/64", "2001:db8::ffff:ffff:ffff:ffff", True),
        ("2001:db8::/64", "2001:db8:0:1::", False),
    ],
)
@pytest.mark.parametrize("side", ["src", "dst"])
def test_cidr_prefixes(cidr: str, address: str, expected: bool, side: str) -> None:
    any_net = ANY4 if ":" not in cidr else ANY6
    other = "10.9.9.9" if ":" not in cidr else "2001:db8:9::9"
    src, dst = (cidr, any_net) if side == "src" else (any_net, cidr)
    mirror_filter = make_filter(rule("ingress", 1, "accept", src=src, dst=dst))
    packet = (address, other) if side == "src" else (other, address)
    assert kept(mirror_filter, "ingress", UDP, *packet, 1, 2) is expected


def test_inline_rule_fields_are_case_insensitive_like_the_aws_cli() -> None:
    mirror_filter = make_filter(rule("INGRESS", 1, "Accept"))
    assert kept(mirror_filter, "ingress", TCP, "10.0.0.1", "10.0.0.2", 1, 2)


def test_same_rule_number_in_both_directions_is_allowed() -> None:
    mirror_filter = make_filter(rule("ingress", 100, "accept"), rule("egress", 100, "reject"))
    assert kept(mirror_filter, "ingress", TCP, "10.0.0.1", "10.0.0.2", 1, 2)
    assert not kept(mirror_filter, "egress", TCP, "10.0.0.1", "10.0.0.2", 1, 2)


def test_rule_numbers_1_and_32766_are_valid() -> None:
    mirror_filter = make_filter(
        rule("ingress", 32766, "accept"), rule("ingress", 1, "reject", protocol=UDP)
    )
    assert len(mirror_filter) == 2
    assert not kept(mirror_filter, "ingress", UDP, "10.0.0.1", "10.0.0.2", 1, 2)
    assert kept(mirror_filter, "ingress", TCP, "10.0.0.1", "10.0.0.2", 1, 2)


def test_decisions_do_not_depend_on_the_order_of_questions() -> None:
    """The filter indexes rules per (direction, family, protocol): asking in any order is the same."""
    rules = [
        rule("ingress", 1, "reject", protocol=TCP, destination_ports="22"),
        rule("ingress", 2, "accept", src=ANY6, dst=ANY6, protocol=UDP),
        rule("ingress", 3, "accept"),
    ]
    questions = [
        ("ingress", TCP, "10.0.0.1", "10.0.0.2", 1, 22),
        ("ingress", UDP, "2001:db8::1", "2001:db8::2", 1, 22),
        ("ingress", TCP, "2001:db8::1", "2001:db8::2", 1, 80),
        ("ingress", ICMP, "10.0.0.1", "10.0.0.2", 0, 0),
        ("egress", TCP, "10.0.0.1", "10.0.0.2", 1, 80),
    ]
    fresh = [kept(make_filter(*rules), *q) for q in questions]
    shared = make_filter(*rules)
    assert [kept(shared, *q) for q in reversed(questions)] == list(reversed(fresh))
    assert fresh == [False, True, False, True, False]


def test_five_thousand_rules_decide_like_the_first_matching_one() -> None:
    """No 10-rule quota: 5,000 rules, listed out of order, still decide by the lowest number."""
    rng = random.Random(5000)

    def protocol_of(n: int) -> int:
        return TCP if n % 2 else UDP

    rules = [
        rule(
            "ingress",
            n,
            "accept" if n % 3 else "reject",
            dst=f"10.{n >> 8}.{n & 0xFF}.0/24",
            protocol=protocol_of(n),
        )
        for n in range(2, 5000)
    ]
    rules.append(rule("ingress", 1, "reject", dst="10.0.0.0/16", protocol=UDP))  # overlaps 2-255
    rules.append(rule("ingress", 5000, "accept"))  # catch-all, evaluated last
    rng.shuffle(rules)
    mirror_filter = make_filter(*rules)
    assert len(mirror_filter) == 5000

    for n in [*range(2, 5000, 97), 3, 255, 256, 257, 4998, 4999]:
        dst = f"10.{n >> 8}.{n & 0xFF}.9"
        for protocol in (TCP, UDP):
            if protocol == UDP and n < 256:
                expected = False  # rule 1
            elif protocol == protocol_of(n):
                expected = bool(n % 3)  # rule n
            else:
                expected = True  # rule 5000
            got = kept(mirror_filter, "ingress", protocol, "192.0.2.1", dst, 1, 2)
            assert got is expected, (n, protocol)
    assert kept(mirror_filter, "ingress", ICMP, "192.0.2.1", "172.16.0.1")
    assert not kept(mirror_filter, "ingress", TCP, "2001:db8::1", "2001:db8::2", 1, 2)
    assert not kept(mirror_filter, "egress", TCP, "192.0.2.1", "10.0.1.1", 1, 2)


# An independent, deliberately naive reading of the AWS rules, to compare the compiled filter with.
def reference_decision(rules: list[dict[str, Any]], packet: tuple[Any, ...]) -> bool:
    direction, protocol, src, dst, sport, dport = packet
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    for r in sorted(rules, key=lambda r: r["rule_number"]):
        if r["direction"] != direction:
            continue
        src_net = ipaddress.ip_network(r["source_cidr"])
        dst_net = ipaddress.ip_network(r["destination_cidr"])
        if src_net.version != s.version or s not in src_net or d not in dst_net:
            continue
        if "protocol" in r and r["protocol"] != protocol:
            continue
        has_ports = "source_ports" in r or "destination_ports" in r
        if has_ports and protocol not in (TCP, UDP):
            continue
        if "source_ports" in r and sport not in range(*_bounds(r["source_ports"])):
            continue
        if "destination_ports" in r and dport not in range(*_bounds(r["destination_ports"])):
            continue
        return r["action"] == "accept"
    return False


def _bounds(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high or low) + 1


_nets4 = st.sampled_from(
    ["0.0.0.0/0", "10.0.0.0/8", "10.0.0.0/24", "10.0.0.1/32", "192.168.0.0/16"]
)
_nets6 = st.sampled_from(["::/0", "2001:db8::/32", "2001:db8::1/128", "fd00::/8"])
_addr4 = st.sampled_from(["10.0.0.1", "10.0.0.2", "10.1.0.1", "192.168.3.4", "8.8.8.8"])
_addr6 = st.sampled_from(["2001:db8::1", "2001:db8::2", "fd00::5", "2600::1"])
_ports = st.sampled_from(["0", "22", "53", "80-443", "1024-65535", "443", "0-65535"])
_protocols = st.sampled_from([TCP, UDP, ICMP, ICMPV6, GRE])


@st.composite
def _rules(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(0, 12))
    numbers = draw(st.lists(st.integers(1, 32766), min_size=count, max_size=count, unique=True))
    out = []
    for number in numbers:
        v6 = draw(st.booleans())
        nets = _nets6 if v6 else _nets4
        extra: dict[str, Any] = {}
        if draw(st.booleans()):
            extra["protocol"] = draw(_protocols)
        if draw(st.booleans()):
            extra["source_ports"] = draw(_ports)
        if draw(st.booleans()):
            extra["destination_ports"] = draw(_ports)
        out.append(
            rule(
                draw(st.sampled_from(["ingress", "egress"])),
                number,
                draw(st.sampled_from(["accept", "reject"])),
                draw(nets),
                draw(nets),
                **extra,
            )
        )
    return out


@st.composite
def _packets(draw: st.DrawFn) -> tuple[Any, ...]:
    v6 = draw(st.booleans())
    addresses = _addr6 if v6 else _addr4
    return (
        draw(st.sampled_from(["ingress", "egress"])),
        draw(_protocols),
        draw(addresses),
        draw(addresses),
        draw(st.sampled_from([0, 22, 53, 80, 443, 1023, 1024, 65535])),
        draw(st.sampled_from([0, 22, 53, 80, 443, 1023, 1024, 65535])),
    )


@settings(max_examples=300, deadline=None)
@given(_rules(), st.lists(_packets(), min_size=1, max_size=8))
def test_compiled_filter_agrees_with_a_naive_reading_of_the_rules(
    rules: list[dict[str, Any]], packets: list[tuple[Any, ...]]
) -> None:
    mirror_filter = make_filter(*rules)
    for packet in packets:
        assert kept(mirror_filter, *packet) is reference_decision(rules, packet), packet


# ---- loading from `aws ec2 describe-traffic-mirror-filters` output --------------------------------


def aws_filter(tmp_path: Path, document: Any, filter_id: str | None = None) -> MirrorFilter:
    path = tmp_path / "filters.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return load_filter("f", FilterConfig(aws_json=path.name, filter_id=filter_id), tmp_path)


def load_fixture() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(AWS_JSON.read_text(encoding="utf-8"))
    return document


def test_aws_json_selects_a_filter_by_id() -> None:
    web = load_filter(
        "web",
        FilterConfig(aws_json=AWS_JSON.name, filter_id="tmf-0a1b2c3d4e5f60001"),
        AWS_JSON.parent,
    )
    assert len(web) == 5
    assert [r.number for r in web.rules["ingress"]] == [100, 200, 300, 400]
    # 100: HTTPS to the web tier is kept; 200: other TCP to it is not; 300: the rest of the VPC is
    assert kept(web, "ingress", TCP, "198.51.100.7", "10.0.1.10", 50000, 443)
    assert not kept(web, "ingress", TCP, "198.51.100.7", "10.0.1.10", 50000, 22)
    assert kept(web, "ingress", UDP, "198.51.100.7", "10.0.1.10", 50000, 22)
    assert kept(web, "ingress", TCP, "198.51.100.7", "10.0.2.10", 50000, 22)
    assert not kept(web, "ingress", TCP, "198.51.100.7", "10.1.0.1", 50000, 443)
    # 400: IPv6 app ports
    assert kept(web, "ingress", TCP, "2001:db8::1", "2600:1f18:1234:5601::10", 40000, 8000)
    assert kept(web, "ingress", TCP, "2001:db8::1", "2600:1f18:1234:5601::10", 40000, 8999)
    assert not kept(web, "ingress", TCP, "2001:db8::1", "2600:1f18:1234:5601::10", 40000, 9000)
    assert not kept(web, "ingress", UDP, "2001:db8::1", "2600:1f18:1234:5601::10", 40000, 8000)
    # egress 100: DNS queries from high ports to the resolver
    assert kept(web, "egress", UDP, "10.0.1.10", "10.0.0.2", 40000, 53)
    assert not kept(web, "egress", UDP, "10.0.1.10", "10.0.0.2", 1023, 53)
    assert not kept(web, "egress", TCP, "10.0.1.10", "10.0.0.2", 40000, 53)
    assert not kept(web, "egress", UDP, "10.0.1.10", "10.0.0.3", 40000, 53)


def test_aws_json_rule_without_protocol_or_ports_matches_everything_of_its_family() -> None:
    other = load_filter(
        "other",
        FilterConfig(aws_json=str(AWS_JSON), filter_id="tmf-0a1b2c3d4e5f60002"),
        Path("/nonexistent"),  # an absolute aws_json path ignores base_dir
    )
    assert not kept(other, "ingress", ICMP, "10.0.0.1", "10.0.0.2")
    for protocol in (TCP, UDP, GRE):
        assert kept(other, "ingress", protocol, "10.0.0.1", "10.0.0.2", 1, 2)
    assert kept(other, "ingress", ICMPV6, "2001:db8::1", "2001:db8::2")
    # an empty EgressFilterRules list mirrors nothing out
    assert not kept(other, "egress", TCP, "10.0.0.1", "10.0.0.2", 1, 2)


def test_aws_json_filter_without_rules_keeps_nothing() -> None:
    empty = load_filter(
        "empty",
        FilterConfig(aws_json=AWS_JSON.name, filter_id="tmf-0a1b2c3d4e5f60003"),
        AWS_JSON.parent,
    )
    assert len(empty) == 0
    assert not kept(empty, "ingress", TCP, "10.0.0.1", "10.0.0.2", 1, 2)


def test_aws_json_with_one_filter_needs_no_filter_id(tmp_path: Path) -> None:
    document = load_fixture()
    document["TrafficMirrorFilters"] = document["TrafficMirrorFilters"][1:2]
    assert len(aws_filter(tmp_path, document)) == 3


def test_aws_json_single_filter_object_is_accepted(tmp_path: Path) -> None:
    """What `--query 'TrafficMirrorFilters[0]'` prints: one filter object, not the wrapper."""
    single = load_fixture()["TrafficMirrorFilters"][0]
    assert len(aws_filter(tmp_path, single)) == 5
    assert len(aws_filter(tmp_path, single, "tmf-0a1b2c3d4e5f60001")) == 5


def test_aws_json_absent_rule_lists_are_no_rules(tmp_path: Path) -> None:
    document = {"TrafficMirrorFilters": [{"TrafficMirrorFilterId": "tmf-1"}]}
    assert len(aws_filter(tmp_path, document)) == 0


def test_aws_json_combines_with_inline_rules() -> None:
    config = build_config(
        {
            "base_dir": str(AWS_JSON.parent),
            "filters": {
                "f": {
                    "aws_json": AWS_JSON.name,
                    "filter_id": "tmf-0a1b2c3d4e5f60003",
                    "rules": [rule("egress", 7, "accept")],
                }
            },
        }
    )
    combined = load_filter("f", config.filters["f"], Path(config.base_dir))
    assert kept(combined, "egress", TCP, "10.0.0.1", "10.0.0.2", 1, 2)
    assert not kept(combined, "ingress", TCP, "10.0.0.1", "10.0.0.2", 1, 2)


def test_aws_json_and_inline_rule_numbers_must_not_collide() -> None:
    config = FilterConfig(
        aws_json=AWS_JSON.name,
        filter_id="tmf-0a1b2c3d4e5f60001",
        rules=build_config({"filters": {"f": {"rules": [rule("egress", 100, "reject")]}}})
        .filters["f"]
        .rules,
    )
    with pytest.raises(ConfigError) as caught:
        load_filter("f", config, AWS_JSON.parent)
    assert caught.value.key == "filters.f.aws_json[tmfr-0a1b2c3d4e5f62001].RuleNumber"
    assert "filters.f.rules[0]" in caught.value.message


@pytest.mark.parametrize(
    ("filter_id", "message"),
    [
        (None, "holds 3 filters"),
        ("tmf-00000000000000000", "is not in the file"),
    ],
)
def test_aws_json_filter_id_missing_or_unknown(filter_id: str | None, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_filter(
            "web", FilterConfig(aws_json=AWS_JSON.name, filter_id=filter_id), AWS_JSON.parent
        )
    assert caught.value.key == "filters.web.filter_id"
    assert message in caught.value.message


def test_filter_id_without_aws_json_is_an_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load_filter("web", FilterConfig(filter_id="tmf-0a1b2c3d4e5f60001"), AWS_JSON.parent)
    assert caught.value.key == "filters.web.filter_id"


def test_aws_json_unreadable_or_not_json(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_filter("f", FilterConfig(aws_json="missing.json"), tmp_path)
    assert caught.value.key == "filters.f.aws_json"
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_filter("f", FilterConfig(aws_json="bad.json"), tmp_path)
    assert caught.value.key == "filters.f.aws_json"


@pytest.mark.parametrize(
    "document",
    [
        [],
        "tmf-1",
        {"TrafficMirrorFilters": "tmf-1"},
        {"TrafficMirrorFilters": ["tmf-1"]},
        {"TrafficMirrorFilters": []},
        {"TrafficMirrorFilters": None},
    ],
    ids=["list", "string", "filters-string", "filters-of-strings", "no-filters", "filters-null"],
)
def test_aws_json_of_the_wrong_shape(tmp_path: Path, document: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        aws_filter(tmp_path, document)
    assert caught.value.key == "filters.f.aws_json"


def test_aws_json_rule_list_of_the_wrong_shape(tmp_path: Path) -> None:
    document = {
        "TrafficMirrorFilters": [{"TrafficMirrorFilterId": "tmf-1", "EgressFilterRules": {}}]
    }
    with pytest.raises(ConfigError) as caught:
        aws_filter(tmp_path, document)
    assert caught.value.key == "filters.f.aws_json.EgressFilterRules"


RULE_ID = "tmfr-0a1b2c3d4e5f61002"  # ingress rule 100 of the web filter


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"TrafficDirection": "egress"}, "TrafficDirection"),
        ({"TrafficDirection": "sideways"}, "TrafficDirection"),
        ({"RuleAction": "drop"}, "RuleAction"),
        ({"RuleAction": None}, "RuleAction"),
        ({"RuleNumber": 0}, "RuleNumber"),
        ({"RuleNumber": 32767}, "RuleNumber"),
        ({"RuleNumber": 300}, "RuleNumber"),  # duplicate of ingress rule 300, listed before it
        ({"RuleNumber": "100"}, "RuleNumber"),
        ({"RuleNumber": True}, "RuleNumber"),
        ({"Protocol": 300}, "Protocol"),
        ({"Protocol": -1}, "Protocol"),
        ({"Protocol": "tcp"}, "Protocol"),
        ({"SourceCidrBlock": "10.0.0.300/24"}, "SourceCidrBlock"),
        ({"SourceCidrBlock": 10}, "SourceCidrBlock"),
        ({"DestinationCidrBlock": "web-tier"}, "DestinationCidrBlock"),
        ({"DestinationCidrBlock": "2001:db8::/32"}, "DestinationCidrBlock"),
        ({"DestinationPortRange": {"FromPort": 5, "ToPort": 3}}, "DestinationPortRange"),
        ({"DestinationPortRange": {"FromPort": 70000, "ToPort": 70000}}, "DestinationPortRange"),
        ({"DestinationPortRange": {"FromPort": -1, "ToPort": 80}}, "DestinationPortRange"),
        (
            {"DestinationPortRange": {"FromPort": "x", "ToPort": 80}},
            "DestinationPortRange.FromPort",
        ),
        ({"DestinationPortRange": {"ToPort": 80}}, "DestinationPortRange"),
        ({"SourcePortRange": [1, 2]}, "SourcePortRange"),
        ({"SourcePortRange": {"FromPort": 1, "ToPort": 65536}}, "SourcePortRange"),
    ],
)
def test_invalid_aws_rule_names_rule_and_field(
    tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    document = load_fixture()
    (target,) = [
        r
        for r in document["TrafficMirrorFilters"][0]["IngressFilterRules"]
        if r["TrafficMirrorFilterRuleId"] == RULE_ID
    ]
    target.update(change)
    with pytest.raises(ConfigError) as caught:
        aws_filter(tmp_path, document, "tmf-0a1b2c3d4e5f60001")
    assert caught.value.key == f"filters.f.aws_json[{RULE_ID}].{field}"
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "field", ["RuleNumber", "RuleAction", "SourceCidrBlock", "DestinationCidrBlock"]
)
def test_missing_required_aws_rule_field(tmp_path: Path, field: str) -> None:
    document = load_fixture()
    del document["TrafficMirrorFilters"][0]["EgressFilterRules"][0][field]
    with pytest.raises(ConfigError) as caught:
        aws_filter(tmp_path, document, "tmf-0a1b2c3d4e5f60001")
    assert caught.value.key == f"filters.f.aws_json[tmfr-0a1b2c3d4e5f62001].{field}"
    assert caught.value.message == "missing"


def test_aws_rule_without_id_is_named_by_position(tmp_path: Path) -> None:
    document = load_fixture()
    egress = document["TrafficMirrorFilters"][0]["EgressFilterRules"]
    del egress[0]["TrafficMirrorFilterRuleId"]
    egress[0]["RuleAction"] = "drop"
    with pytest.raises(ConfigError) as caught:
        aws_filter(tmp_path, document, "tmf-0a1b2c3d4e5f60001")
    assert caught.value.key == "filters.f.aws_json.EgressFilterRules[0].RuleAction"


def test_aws_rule_that_is_not_an_object(tmp_path: Path) -> None:
    document = {"TrafficMirrorFilters": [{"IngressFilterRules": [{}, "tmfr-1"]}]}
    with pytest.raises(ConfigError) as caught:
        aws_filter(tmp_path, document)
    # the first (empty) rule already lacks its fields
    assert caught.value.key == "filters.f.aws_json.IngressFilterRules[0].RuleNumber"
    document = {"TrafficMirrorFilters": [{"IngressFilterRules": ["tmfr-1"]}]}
    with pytest.raises(ConfigError) as caught:
        aws_filter(tmp_path, document)
    assert caught.value.key == "filters.f.aws_json.IngressFilterRules[0]"


def test_aws_rule_direction_may_be_absent_and_comes_from_its_list(tmp_path: Path) -> None:
    document = load_fixture()
    for listed in ("IngressFilterRules", "EgressFilterRules"):
        for raw in document["TrafficMirrorFilters"][0][listed]:
            del raw["TrafficDirection"]
    web = aws_filter(tmp_path, copy.deepcopy(document), "tmf-0a1b2c3d4e5f60001")
    assert [r.number for r in web.rules["ingress"]] == [100, 200, 300, 400]
    assert [r.number for r in web.rules["egress"]] == [100]


# ---- invalid inline (TOML) rules ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"direction": "sideways"}, "direction"),
        ({"direction": ""}, "direction"),
        ({"action": "drop"}, "action"),
        ({"rule_number": 0}, "rule_number"),
        ({"rule_number": 32767}, "rule_number"),
        ({"rule_number": -5}, "rule_number"),
        ({"protocol": 300}, "protocol"),
        ({"protocol": 256}, "protocol"),
        ({"protocol": -1}, "protocol"),
        ({"source_cidr": "10.0.0.300/24"}, "source_cidr"),
        ({"source_cidr": "10.0.0.0/33"}, "source_cidr"),
        ({"destination_cidr": "web-tier"}, "destination_cidr"),
        ({"destination_cidr": "2001:db8::/32"}, "destination_cidr"),
        ({"source_cidr": "::/0"}, "destination_cidr"),
        ({"destination_ports": "5-3"}, "destination_ports"),
        ({"destination_ports": "x"}, "destination_ports"),
        ({"destination_ports": "70000"}, "destination_ports"),
        ({"destination_ports": "1-70000"}, "destination_ports"),
        ({"destination_ports": "1-2-3"}, "destination_ports"),
        ({"destination_ports": "-5"}, "destination_ports"),
        ({"destination_ports": "80-"}, "destination_ports"),
        ({"destination_ports": ""}, "destination_ports"),
        ({"source_ports": "5-3"}, "source_ports"),
        ({"source_ports": "x"}, "source_ports"),
        ({"source_ports": "70000"}, "source_ports"),
    ],
)
def test_invalid_inline_rule_names_rule_and_field(change: dict[str, Any], field: str) -> None:
    good = rule("ingress", 10, "accept", protocol=TCP, destination_ports="443")
    with pytest.raises(ConfigError) as caught:
        make_filter(good, {**good, "rule_number": 20, **change})
    assert caught.value.key == f"filters.f.rules[1].{field}"
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"filters.f.rules[1].{field}: ")


def test_duplicate_rule_number_in_a_direction_names_both_rules() -> None:
    with pytest.raises(ConfigError) as caught:
        make_filter(
            rule("egress", 5, "accept"), rule("ingress", 5, "accept"), rule("egress", 5, "reject")
        )
    assert caught.value.key == "filters.f.rules[2].rule_number"
    assert "filters.f.rules[0]" in caught.value.message
