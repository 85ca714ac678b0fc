"""AWS Traffic Mirror filter rules, applied locally with AWS's semantics and without its 10-rule quota.

Semantics (AWS Traffic Mirroring guide): rules are per direction (ingress/egress relative to the
source ENI) and evaluated in ascending rule number; the first rule that matches decides accept or
reject; a packet that matches no rule is not mirrored; a direction without rules mirrors nothing. An
absent protocol matches every protocol; both CIDRs must be of the packet's address family; a port
range can only match TCP and UDP packets. Decisions are made once per flow (the flow table caches
them), and rules are indexed by protocol so thousands of rules stay cheap per new flow.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from collector.config import FilterConfig, FilterRuleConfig
from collector.errors import ConfigError
from collector.terms import EGRESS, INGRESS, RULE_DIRECTIONS
from collector.wire.l4 import IPPROTO_TCP, IPPROTO_UDP

ACTIONS = ("accept", "reject")
RULE_NUMBER_MIN, RULE_NUMBER_MAX = 1, 32766  # EC2 API: RuleNumber range
_PORTED = (IPPROTO_TCP, IPPROTO_UDP)


class Rule(NamedTuple):
    """A compiled rule: networks as (int, mask) pairs, ports as inclusive ranges or None."""

    number: int
    accept: bool
    protocol: int  # -1 = every protocol
    family: int  # 4 or 6
    src_net: int
    src_mask: int
    dst_net: int
    dst_mask: int
    src_ports: tuple[int, int] | None
    dst_ports: tuple[int, int] | None
    label: str

    def matches(self, protocol: int, src: int, dst: int, src_port: int, dst_port: int) -> bool:
        """Whether this rule matches a packet of the rule's family."""
        if self.protocol >= 0 and protocol != self.protocol:
            return False
        if src & self.src_mask != self.src_net or dst & self.dst_mask != self.dst_net:
            return False
        if self.src_ports is None and self.dst_ports is None:
            return True
        if protocol not in _PORTED:
            return False
        if self.src_ports is not None and not self.src_ports[0] <= src_port <= self.src_ports[1]:
            return False
        return self.dst_ports is None or self.dst_ports[0] <= dst_port <= self.dst_ports[1]


def _parse_ports(text: str | int | None, key: str) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = str(text).split("-")
    try:
        low, high = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (-1, -1)
    except ValueError:
        low, high = -1, -1
    if not (0 <= low <= high <= 65535):
        raise ConfigError(key, f"{text!r} is not a port or range 'N' / 'N-M' within 0-65535")
    return low, high


def _parse_cidr(text: str, key: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ConfigError(key, f"{text!r} is not a CIDR block") from exc


# How errors name the fields of a rule that came from describe-traffic-mirror-filters JSON: the
# operator looks at that file, so they see its field names rather than the TOML ones.
AWS_FIELD_NAMES: Mapping[str, str] = {
    "direction": "TrafficDirection",
    "rule_number": "RuleNumber",
    "action": "RuleAction",
    "protocol": "Protocol",
    "source_cidr": "SourceCidrBlock",
    "destination_cidr": "DestinationCidrBlock",
    "source_ports": "SourcePortRange",
    "destination_ports": "DestinationPortRange",
}


def compile_rule(
    rule: FilterRuleConfig, key: str, field_names: Mapping[str, str] | None = None
) -> tuple[str, Rule]:
    """Validate one rule; ``key`` is its config path, used in every error message.

    ``field_names`` renames fields in error keys (``AWS_FIELD_NAMES`` for rules loaded from JSON).
    """
    names = field_names or {}

    def where(field: str) -> str:
        return f"{key}.{names.get(field, field)}"

    direction = rule.direction.lower()
    if direction not in RULE_DIRECTIONS:
        raise ConfigError(where("direction"), f"{rule.direction!r} is not ingress or egress")
    action = rule.action.lower()
    if action not in ACTIONS:
        raise ConfigError(where("action"), f"{rule.action!r} is not accept or reject")
    if not RULE_NUMBER_MIN <= rule.rule_number <= RULE_NUMBER_MAX:
        raise ConfigError(where("rule_number"), f"{rule.rule_number} is not within 1-32766")
    protocol = -1 if rule.protocol is None else rule.protocol
    if rule.protocol is not None and not 0 <= protocol <= 255:
        raise ConfigError(where("protocol"), f"{rule.protocol} is not an IANA protocol number")
    src = _parse_cidr(rule.source_cidr, where("source_cidr"))
    dst = _parse_cidr(rule.destination_cidr, where("destination_cidr"))
    if src.version != dst.version:
        raise ConfigError(
            where("destination_cidr"),
            f"{rule.source_cidr} and {rule.destination_cidr} are not the same address family",
        )
    label = f"{direction} rule {rule.rule_number}" + (
        f" ({rule.description})" if rule.description else ""
    )
    compiled = Rule(
        number=rule.rule_number,
        accept=action == "accept",
        protocol=protocol,
        family=src.version,
        src_net=int(src.network_address),
        src_mask=int(src.netmask),
        dst_net=int(dst.network_address),
        dst_mask=int(dst.netmask),
        src_ports=_parse_ports(rule.source_ports, where("source_ports")),
        dst_ports=_parse_ports(rule.destination_ports, where("destination_ports")),
        label=label,
    )
    return direction, compiled


# a candidate rule flattened for the match loop: networks, masks, port bounds (0-65535 when the
# rule has no range), then the rule itself
_Row = tuple[int, int, int, int, int, int, int, int, Rule]
_ANY_PORT = (0, 65535)
DECISION_CACHE_SIZE = 65_536  # remembered decisions per filter; bounds memory under a flow flood


class _Candidates(NamedTuple):
    rows: tuple[_Row, ...]
    uses_src_port: bool
    uses_dst_port: bool


class MirrorFilter:
    """A compiled filter. ``decide`` answers accept (True) or not kept (False) for one flow.

    Rules are pre-selected per (direction, family, protocol) in evaluation order, with rules that
    can never match dropped (port ranges for protocols other than TCP/UDP), and flattened to plain
    tuples for the match loop. Decisions are also remembered under a key that leaves out the ports
    no candidate rule looks at, so the many flows of ephemeral client ports between the same two
    hosts cost one rule walk.
    """

    def __init__(
        self, name: str, rules: Iterable[tuple[str, Rule]], *, record_rejected: bool = False
    ) -> None:
        self.name = name
        self.record_rejected = record_rejected
        """Whether the flows this filter does not keep are recorded (``action`` "reject")."""
        by_direction: dict[str, list[Rule]] = {d: [] for d in RULE_DIRECTIONS}
        for direction, rule in rules:
            by_direction[direction].append(rule)
        self.rules = {d: sorted(r, key=lambda rule: rule.number) for d, r in by_direction.items()}
        self._index: dict[tuple[str, int, int], _Candidates] = {}
        self._decisions: dict[tuple[str, int, int, int, int, int, int], Rule | None] = {}

    def __len__(self) -> int:
        return sum(len(r) for r in self.rules.values())

    def _candidates(self, direction: str, family: int, protocol: int) -> _Candidates:
        key = (direction, family, protocol)
        found = self._index.get(key)
        if found is None:
            ported = protocol in _PORTED
            rows = [
                (
                    r.src_net,
                    r.src_mask,
                    r.dst_net,
                    r.dst_mask,
                    *(r.src_ports or _ANY_PORT),
                    *(r.dst_ports or _ANY_PORT),
                    r,
                )
                for r in self.rules.get(direction, ())
                if r.family == family
                and (r.protocol < 0 or r.protocol == protocol)
                and (ported or (r.src_ports is None and r.dst_ports is None))
            ]
            found = _Candidates(
                rows=tuple(rows),
                uses_src_port=any(row[8].src_ports is not None for row in rows),
                uses_dst_port=any(row[8].dst_ports is not None for row in rows),
            )
            self._index[key] = found
        return found

    def match(
        self,
        direction: str,
        protocol: int,
        src: int,
        dst: int,
        src_port: int,
        dst_port: int,
        family: int,
    ) -> Rule | None:
        """The first rule that matches, or None."""
        candidates = self._candidates(direction, family, protocol)
        key = (
            direction,
            family,
            protocol,
            src,
            dst,
            src_port if candidates.uses_src_port else -1,
            dst_port if candidates.uses_dst_port else -1,
        )
        decisions = self._decisions
        if key in decisions:
            return decisions[key]
        found = None
        for (
            src_net,
            src_mask,
            dst_net,
            dst_mask,
            sp_lo,
            sp_hi,
            dp_lo,
            dp_hi,
            rule,
        ) in candidates.rows:
            if (
                src & src_mask == src_net
                and dst & dst_mask == dst_net
                and sp_lo <= src_port <= sp_hi
                and dp_lo <= dst_port <= dp_hi
            ):
                found = rule
                break
        if len(decisions) >= DECISION_CACHE_SIZE:
            decisions.clear()
        decisions[key] = found
        return found

    def decide(
        self,
        direction: str,
        protocol: int,
        src: int,
        dst: int,
        src_port: int,
        dst_port: int,
        family: int,
    ) -> bool:
        """AWS semantics: first matching rule decides; no match (or unknown direction) = not kept."""
        rule = self.match(direction, protocol, src, dst, src_port, dst_port, family)
        return rule is not None and rule.accept


def _aws_int(raw: Mapping[str, Any], field: str, where: str) -> int:
    value = raw[field]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{where}.{field}", f"{value!r} is not an integer")
    return value


def _aws_str(raw: Mapping[str, Any], field: str, where: str) -> str:
    value = raw[field]
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{field}", f"{value!r} is not a string")
    return value


def _aws_ports(raw: Mapping[str, Any], field: str, where: str) -> str | None:
    value = raw.get(field)
    if value is None:
        return None
    if not isinstance(value, Mapping) or "FromPort" not in value:
        raise ConfigError(f"{where}.{field}", "expected {FromPort, ToPort}")
    low = _aws_int(value, "FromPort", f"{where}.{field}")
    high = _aws_int(value, "ToPort", f"{where}.{field}") if "ToPort" in value else low
    return f"{low}-{high}"


def _aws_rule(raw: Any, list_field: str, where: str) -> FilterRuleConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(where, "a rule must be a JSON object")
    listed = INGRESS if list_field == "IngressFilterRules" else EGRESS
    direction = listed
    if raw.get("TrafficDirection") is not None:
        direction = _aws_str(raw, "TrafficDirection", where)
        if direction.lower() != listed:
            raise ConfigError(
                f"{where}.TrafficDirection", f"{direction!r} rule listed in {list_field}"
            )
    try:
        return FilterRuleConfig(
            direction=direction,
            rule_number=_aws_int(raw, "RuleNumber", where),
            action=_aws_str(raw, "RuleAction", where),
            protocol=None if raw.get("Protocol") is None else _aws_int(raw, "Protocol", where),
            source_cidr=_aws_str(raw, "SourceCidrBlock", where),
            destination_cidr=_aws_str(raw, "DestinationCidrBlock", where),
            source_ports=_aws_ports(raw, "SourcePortRange", where),
            destination_ports=_aws_ports(raw, "DestinationPortRange", where),
            description=str(raw.get("Description") or ""),
        )
    except KeyError as exc:
        raise ConfigError(f"{where}.{exc.args[0]}", "missing") from exc


def aws_rules(document: Any, filter_id: str | None, key: str) -> list[tuple[FilterRuleConfig, str]]:
    """Rules from ``aws ec2 describe-traffic-mirror-filters`` output (or a single filter object).

    Each rule comes with the key that names it in errors: ``KEY.aws_json[RULE-ID]`` when the rule
    has a TrafficMirrorFilterRuleId, else its position (``KEY.aws_json.IngressFilterRules[0]``).
    """
    where_file = f"{key}.aws_json"
    if isinstance(document, Mapping) and "TrafficMirrorFilters" in document:
        filters = document["TrafficMirrorFilters"]
    elif isinstance(document, Mapping):
        filters = [document]
    else:
        raise ConfigError(where_file, "expected a describe-traffic-mirror-filters JSON object")
    if not isinstance(filters, list) or not all(isinstance(f, Mapping) for f in filters):
        raise ConfigError(where_file, "TrafficMirrorFilters is not a list of objects")
    if filter_id is not None:
        filters = [f for f in filters if f.get("TrafficMirrorFilterId") == filter_id]
        if not filters:
            raise ConfigError(f"{key}.filter_id", f"{filter_id} is not in the file")
    if not filters:
        raise ConfigError(where_file, "the file holds no traffic mirror filter")
    if len(filters) != 1:
        ids = ", ".join(str(f.get("TrafficMirrorFilterId")) for f in filters)
        raise ConfigError(
            f"{key}.filter_id",
            f"the file holds {len(filters)} filters ({ids}): say which one with filter_id",
        )
    (found,) = filters
    rules = []
    for list_field in ("IngressFilterRules", "EgressFilterRules"):
        listed = found.get(list_field)
        if listed is None:  # absent keys are unset
            continue
        if not isinstance(listed, list):
            raise ConfigError(f"{where_file}.{list_field}", "is not a list")
        for index, raw in enumerate(listed):
            rule_id = raw.get("TrafficMirrorFilterRuleId") if isinstance(raw, Mapping) else None
            where = (
                f"{where_file}[{rule_id}]"
                if isinstance(rule_id, str) and rule_id
                else f"{where_file}.{list_field}[{index}]"
            )
            rules.append((_aws_rule(raw, list_field, where), where))
    return rules


def rules_from_aws(document: Any, filter_id: str | None, key: str) -> list[FilterRuleConfig]:
    """The rules of ``aws_rules`` without their error keys."""
    return [rule for rule, _ in aws_rules(document, filter_id, key)]


def load_filter(name: str, config: FilterConfig, base_dir: Path) -> MirrorFilter:
    """Compile a ``[filters.NAME]`` table; every error names the rule and field."""
    key = f"filters.{name}"
    rules: list[tuple[FilterRuleConfig, str]] = [
        (rule, f"{key}.rules[{i}]") for i, rule in enumerate(config.rules)
    ]
    if config.aws_json is not None:
        path = Path(config.aws_json)
        path = path if path.is_absolute() else base_dir / path
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{key}.aws_json", f"cannot read {path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise ConfigError(f"{key}.aws_json", f"{path} is not JSON: {exc}") from exc
        from_json = aws_rules(document, config.filter_id, key)
        rules.extend(from_json)
        aws_wheres = {where for _, where in from_json}
    elif config.filter_id is not None:
        raise ConfigError(f"{key}.filter_id", "filter_id needs aws_json")
    else:
        aws_wheres = set()
    compiled: list[tuple[str, Rule]] = []
    seen: dict[tuple[str, int], str] = {}
    for rule, where in rules:
        names = AWS_FIELD_NAMES if where in aws_wheres else None
        direction, c = compile_rule(rule, where, names)
        if (direction, c.number) in seen:
            raise ConfigError(
                f"{where}.{(names or {}).get('rule_number', 'rule_number')}",
                f"{direction} rule {c.number} is also defined at {seen[direction, c.number]}",
            )
        seen[direction, c.number] = where
        compiled.append((direction, c))
    return MirrorFilter(name, compiled, record_rejected=config.record_rejected)
