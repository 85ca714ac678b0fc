"""The words the record schema, the flow table, sessions, filters and encoders share.

A leaf module (it imports nothing of the package), so every layer can use the one spelling of an end
reason or a direction; ``collector.records`` re-exports them as part of the record contract.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

# Why a record was emitted (the flow table decides, metrics label records by it).
EndReason = Literal[
    "active_timeout", "inactive_timeout", "tcp_fin", "tcp_rst", "evicted", "shutdown"
]
ACTIVE_TIMEOUT: Final = "active_timeout"
INACTIVE_TIMEOUT: Final = "inactive_timeout"
TCP_FIN_END: Final = "tcp_fin"
TCP_RST_END: Final = "tcp_rst"
EVICTED: Final = "evicted"
SHUTDOWN: Final = "shutdown"
END_REASONS: tuple[str, ...] = get_args(EndReason)
CLOSING_END_REASONS: frozenset[EndReason] = frozenset({TCP_FIN_END, TCP_RST_END})
"""End reasons that mean the connection itself ended (TCP FIN or RST seen)."""

# What the session's filter decided for a flow: records of flows not kept ("reject") are emitted
# only for filters with record_rejected.
Action = Literal["accept", "reject"]
ACCEPT: Final = "accept"
REJECT: Final = "reject"
ACTIONS: tuple[str, ...] = get_args(Action)

# Direction of a flow relative to the mirror-source ENI (sessions tell it, filter rules match it).
Direction = Literal["ingress", "egress", "unknown"]
INGRESS: Final = "ingress"
EGRESS: Final = "egress"
UNKNOWN: Final = "unknown"
DIRECTIONS: tuple[str, ...] = get_args(Direction)
RULE_DIRECTIONS: tuple[str, ...] = (INGRESS, EGRESS)
"""The directions a mirror-filter rule can name (``unknown`` is never a rule's)."""

DEFAULT_FLOW_LOG_FORMAT: Final = (
    "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} "
    "${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status}"
)
"""AWS's default VPC Flow Logs format: the version 2 fields in their documented order."""
