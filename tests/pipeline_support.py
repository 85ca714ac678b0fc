"""A pipeline factory for the sessions and flows tests (datagrams come from tests/packets.py)."""

from __future__ import annotations

from typing import Any

from collector.config import build_config
from collector.pipeline import Pipeline
from collector.sessions import build_sessions
from collector.wire.drops import Drop
from tests.packets import ENI_MAC, GATEWAY_MAC, icmp, ip_header, packed, tcp, udp, vxlan

T0 = 1_764_100_000.0  # a whole second, so record milliseconds are exact

__all__ = [
    "ENI_MAC",
    "GATEWAY_MAC",
    "T0",
    "drops",
    "icmp",
    "ip_header",
    "make_pipeline",
    "packed",
    "tcp",
    "udp",
    "vxlan",
]


def make_pipeline(settings: dict[str, Any] | None = None, exporter: str = "test/w0/1") -> Pipeline:
    """A pipeline built from a config mapping, through the same code as a config file."""
    config = build_config(settings or {})
    return Pipeline(config, build_sessions(config), exporter=exporter)


def drops(pipeline: Pipeline) -> dict[str, int]:
    """Non-zero drop counters by label."""
    return {Drop(i).label: n for i, n in enumerate(pipeline.stats.drops) if n}
