"""Realistic flow records for the downstream tests (flow-log lines, schema, merge, tail)."""

from __future__ import annotations

import ipaddress
from typing import Any

from collector.records import FlowRecord, flow_id


def packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def make_record(**overrides: Any) -> FlowRecord:
    """A TCP record of an SSH connection seen on the source ENI's ingress, as the pipeline builds it."""
    fields: dict[str, Any] = {
        "exporter": "collector-a/w0/1418530000",
        "sequence": 1,
        "vni": 7001,
        "session": "web-1",
        "interface_id": "eni-1235b8ca123456789",
        "direction": "ingress",
        "ip_version": 4,
        "protocol": 6,
        "src_addr": "172.31.16.139",
        "dst_addr": "172.31.16.21",
        "src_port": 20641,
        "dst_port": 22,
        "packets": 20,
        "bytes": 4249,
        "tcp_flags": 0x18,
        "start_ms": 1418530010_000,
        "end_ms": 1418530070_000,
        "end_reason": "active_timeout",
        "account_id": "123456789010",
        "instance_id": "i-0a1b2c3d4e5f67890",
        "subnet_id": "subnet-0123456789abcdef0",
        "vpc_id": "vpc-0fedcba9876543210",
        "az_id": "use1-az4",
        "region": "us-east-1",
    }
    fields.update(overrides)
    if "flow_id" not in fields:
        fields["flow_id"] = flow_id(
            fields["protocol"],
            packed(fields["src_addr"]),
            fields["src_port"],
            packed(fields["dst_addr"]),
            fields["dst_port"],
        )
    return FlowRecord(**fields)


# the record contract of ARCHITECTURE.md ("at least" these fields)
CONTRACT_FIELDS = frozenset(
    {
        "vni",
        "session",
        "interface_id",
        "direction",
        "ip_version",
        "src_addr",
        "dst_addr",
        "src_port",
        "dst_port",
        "protocol",
        "packets",
        "bytes",
        "tcp_flags",
        "start_ms",
        "end_ms",
        "end_reason",
        "flow_id",
        "exporter",
        "sequence",
    }
)
