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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from collector.config import FilterConfig, FilterRuleConfig
from collector.errors import ConfigError
from collector.wire.l4 import IPPROTO_TCP, IPPROTO_UDP

DIRECTIONS = ("ingress", "egress")
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


def _parse_ports(text: str | None, key: str) -> tuple[int, int] | None:
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


def compile_rule(rule: FilterRuleConfig, key: str) -> tuple[str, Rule]:
    """Validate one rule; ``key`` is its config path, used in every error message."""
    direction = rule.direction.lower()
    if direction not in DIRECTIONS:
        raise ConfigError(f"{key}.direction", f"{rule.direction!r} is not ingress or egress")
    action = rule.action.lower()
    if action not in ACTIONS:
        raise ConfigError(f"{key}.action", f"{rule.action!r} is not accept or reject")
    if not RULE_NUMBER_MIN <= rule.rule_number <= RULE_NUMBER_MAX:
        raise ConfigError(f"{key}.rule_number", f"{rule.rule_number} is not within 1-32766")
    protocol = -1 if rule.protocol is None else rule.protocol
    if not -1 <= protocol <= 255:
        raise ConfigError(f"{key}.protocol", f"{rule.protocol} is not an IANA protocol number")
    src = _parse_cidr(rule.source_cidr, f"{key}.source_cidr")
    dst = _parse_cidr(rule.destination_cidr, f"{key}.destination_cidr")
    if src.version != dst.version:
        raise ConfigError(
            f"{key}.destination_cidr", "source and destination CIDRs must be the same family"
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
        src_ports=_parse_ports(rule.source_ports, f"{key}.source_ports"),
        dst_ports=_parse_ports(rule.destination_ports, f"{key}.destination_ports"),
        label=label,
    )
    return direction, compiled


class MirrorFilter:
    """A compiled filter. ``decide`` answers accept (True) or not kept (False) for one flow."""

    def __init__(self, name: str, rules: Iterable[tuple[str, Rule]]) -> None:
        self.name = name
        by_direction: dict[str, list[Rule]] = {d: [] for d in DIRECTIONS}
        for direction, rule in rules:
            by_direction[direction].append(rule)
        self.rules = {d: sorted(r, key=lambda rule: rule.number) for d, r in by_direction.items()}
        # (direction, family, protocol) -> the rules that could match, in evaluation order
        self._index: dict[tuple[str, int, int], tuple[Rule, ...]] = {}

    def __len__(self) -> int:
        return sum(len(r) for r in self.rules.values())

    def _candidates(self, direction: str, family: int, protocol: int) -> tuple[Rule, ...]:
        key = (direction, family, protocol)
        found = self._index.get(key)
        if found is None:
            found = tuple(
                r
                for r in self.rules.get(direction, ())
                if r.family == family and (r.protocol < 0 or r.protocol == protocol)
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
        for rule in self._candidates(direction, family, protocol):
            if rule.matches(protocol, src, dst, src_port, dst_port):
                return rule
        return None

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


def _aws_ports(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or "FromPort" not in value:
        raise ConfigError(key, "expected {FromPort, ToPort}")
    return f"{value['FromPort']}-{value.get('ToPort', value['FromPort'])}"


def rules_from_aws(document: Any, filter_id: str | None, key: str) -> list[FilterRuleConfig]:
    """Rules from ``aws ec2 describe-traffic-mirror-filters`` output (or a single filter object)."""
    if isinstance(document, Mapping) and "TrafficMirrorFilters" in document:
        filters = document["TrafficMirrorFilters"]
    elif isinstance(document, Mapping):
        filters = [document]
    else:
        raise ConfigError(key, "expected a describe-traffic-mirror-filters JSON object")
    if not isinstance(filters, Sequence):
        raise ConfigError(key, "TrafficMirrorFilters is not a list")
    if filter_id is not None:
        filters = [f for f in filters if f.get("TrafficMirrorFilterId") == filter_id]
        if not filters:
            raise ConfigError(f"{key}.filter_id", f"{filter_id} is not in the file")
    if len(filters) != 1:
        raise ConfigError(
            f"{key}.filter_id",
            f"the file holds {len(filters)} filters: say which one with filter_id",
        )
    (found,) = filters
    rules = []
    for field in ("IngressFilterRules", "EgressFilterRules"):
        for index, raw in enumerate(found.get(field, [])):
            where = f"{key}.{field}[{index}]"
            try:
                rules.append(
                    FilterRuleConfig(
                        direction=str(raw["TrafficDirection"]),
                        rule_number=int(raw["RuleNumber"]),
                        action=str(raw["RuleAction"]),
                        protocol=None if raw.get("Protocol") is None else int(raw["Protocol"]),
                        source_cidr=str(raw["SourceCidrBlock"]),
                        destination_cidr=str(raw["DestinationCidrBlock"]),
                        source_ports=_aws_ports(raw.get("SourcePortRange"), where),
                        destination_ports=_aws_ports(raw.get("DestinationPortRange"), where),
                        description=str(raw.get("Description", "")),
                    )
                )
            except KeyError as exc:
                raise ConfigError(f"{where}.{exc.args[0]}", "missing") from exc
            except (TypeError, ValueError) as exc:
                raise ConfigError(where, f"malformed rule: {exc}") from exc
    return rules


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
        aws_rules = rules_from_aws(document, config.filter_id, key)
        rules.extend(
            (rule, f"{key}.aws_json[{rule.direction} rule {rule.rule_number}]")
            for rule in aws_rules
        )
    compiled: list[tuple[str, Rule]] = []
    seen: dict[tuple[str, int], str] = {}
    for rule, where in rules:
        direction, c = compile_rule(rule, where)
        if (direction, c.number) in seen:
            raise ConfigError(
                f"{where}.rule_number",
                f"{direction} rule {c.number} is also defined at {seen[direction, c.number]}",
            )
        seen[direction, c.number] = where
        compiled.append((direction, c))
    return MirrorFilter(name, compiled)
