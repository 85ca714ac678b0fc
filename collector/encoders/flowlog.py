"""VPC Flow Logs compatible lines: AWS's custom-format syntax (``${field} ${field} ...``).

A line is what AWS would write to S3 or CloudWatch Logs in plain-text format: space-separated
values in the order of the format string, ``-`` where a field does not apply or is unknown, times in
Unix seconds. Where our record and AWS's differ (receive time vs. capture window, mirrored packets
vs. packets after security groups) is written down in docs/downstream.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from collector.errors import ConfigError
from collector.terms import DEFAULT_FLOW_LOG_FORMAT, UNKNOWN
from collector.wire.l4 import IPPROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN

if TYPE_CHECKING:  # the getters only read attributes
    from collector.records import FlowRecord

CONFIG_KEY = "records.vpc_flow_log_format"
CONTENT_TYPE = "text/plain; format=vpc-flow-log"

DEFAULT_FORMAT = DEFAULT_FLOW_LOG_FORMAT

# TCP flags as VPC Flow Logs reports them: FIN, SYN and RST, plus ACK only next to SYN (SYN-ACK = 18)
_REPORTED = TCP_FIN | TCP_SYN | TCP_RST

NONE = "-"


def aws_tcp_flags(flags: int) -> int:
    """Our OR of TCP flag bytes reduced to what VPC Flow Logs reports (FIN=1 SYN=2 RST=4 SYN-ACK=18)."""
    out = flags & _REPORTED
    if flags & TCP_SYN and flags & TCP_ACK:
        out |= TCP_ACK
    return out


def _text(value: str | None) -> str:
    if not value:
        return NONE
    if value.isprintable() and " " not in value:
        return value
    # whitespace would shift every later column for readers that split on it
    cleaned = "".join(c if c.isprintable() and not c.isspace() else "_" for c in value)
    return cleaned or NONE


def _start(r: FlowRecord) -> str:
    return str(r.start_ms // 1000)


def _end(r: FlowRecord) -> str:
    return str(-(-r.end_ms // 1000))  # ceiling: the window ends after the last packet


def _tcp_flags(r: FlowRecord) -> str:
    return str(aws_tcp_flags(r.tcp_flags)) if r.protocol == IPPROTO_TCP else "0"


def _flow_direction(r: FlowRecord) -> str:
    return NONE if r.direction == UNKNOWN else r.direction


def _none(_: FlowRecord) -> str:
    return NONE


Getter = Callable[["FlowRecord"], str]

# field -> (version that introduced it, value); "version" is filled in by FlowLogFormat
FIELDS: dict[str, tuple[int, Getter]] = {
    "version": (2, _none),
    "account-id": (2, lambda r: _text(r.account_id)),
    "interface-id": (2, lambda r: _text(r.interface_id)),
    "srcaddr": (2, lambda r: r.src_addr),
    "dstaddr": (2, lambda r: r.dst_addr),
    "srcport": (2, lambda r: str(r.src_port)),
    "dstport": (2, lambda r: str(r.dst_port)),
    "protocol": (2, lambda r: str(r.protocol)),
    "packets": (2, lambda r: str(r.packets)),
    "bytes": (2, lambda r: str(r.bytes)),
    "start": (2, _start),
    "end": (2, _end),
    "action": (2, lambda r: r.action.upper()),  # ACCEPT, or REJECT for record_rejected filters
    "log-status": (2, lambda _: "OK"),
    "vpc-id": (3, lambda r: _text(r.vpc_id)),
    "subnet-id": (3, lambda r: _text(r.subnet_id)),
    "instance-id": (3, lambda r: _text(r.instance_id)),
    "tcp-flags": (3, _tcp_flags),
    "type": (3, lambda r: "IPv6" if r.ip_version == 6 else "IPv4"),
    "pkt-srcaddr": (3, lambda r: r.src_addr),
    "pkt-dstaddr": (3, lambda r: r.dst_addr),
    "region": (4, lambda r: _text(r.region)),
    "az-id": (4, lambda r: _text(r.az_id)),
    "sublocation-type": (4, _none),
    "sublocation-id": (4, _none),
    "pkt-src-aws-service": (5, _none),
    "pkt-dst-aws-service": (5, _none),
    "flow-direction": (5, _flow_direction),
    "traffic-path": (5, _none),
    "ecs-cluster-arn": (7, _none),
    "ecs-cluster-name": (7, _none),
    "ecs-container-instance-arn": (7, _none),
    "ecs-container-instance-id": (7, _none),
    "ecs-container-id": (7, _none),
    "ecs-second-container-id": (7, _none),
    "ecs-service-name": (7, _none),
    "ecs-task-definition-arn": (7, _none),
    "ecs-task-arn": (7, _none),
    "ecs-task-id": (7, _none),
    "reject-reason": (8, _none),
}

_TOKEN = re.compile(r"\$\{([^}]*)\}")


@dataclass(frozen=True)
class FlowLogFormat:
    """A validated custom format: its field names, the version they need, and the encoder."""

    fields: tuple[str, ...]
    version: int
    _getters: tuple[Getter, ...] = field(compare=False, repr=False)

    @classmethod
    def parse(cls, fmt: str | None = None) -> FlowLogFormat:
        """Validate ``${field} ...`` (None or blank: AWS's default format); errors name the key."""
        text = DEFAULT_FORMAT if fmt is None or not fmt.strip() else fmt
        names: list[str] = []
        for token in text.split():
            match = _TOKEN.fullmatch(token)
            if match is None:
                raise ConfigError(
                    CONFIG_KEY,
                    f"{token!r} is not a ${{field}} reference (fields: ${{srcaddr}} ...)",
                )
            name = match.group(1)
            if name not in FIELDS:
                raise ConfigError(CONFIG_KEY, f"unknown field ${{{name}}}")
            names.append(name)
        version = max(FIELDS[n][0] for n in names)
        version_text = str(version)
        getters = tuple((lambda _: version_text) if n == "version" else FIELDS[n][1] for n in names)
        return cls(tuple(names), version, getters)

    @property
    def header(self) -> str:
        """The field names as AWS writes them in the first line of an S3 log file."""
        return " ".join(self.fields)

    def values(self, record: FlowRecord) -> list[str]:
        """The line's values, in format order."""
        return [get(record) for get in self._getters]

    def encode(self, record: FlowRecord) -> bytes:
        """One line, no trailing newline."""
        return " ".join([get(record) for get in self._getters]).encode()


def encoder(vpc_flow_log_format: str | None = None) -> Callable[[FlowRecord], bytes]:
    """The value encoder of a configured format (None: AWS's default); ConfigError names the key."""
    return FlowLogFormat.parse(vpc_flow_log_format).encode
