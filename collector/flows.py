"""The flow table (sans-IO): unidirectional flows with active/inactive timeouts and a hard bound.

Time is always passed in (``now``, Unix seconds as float); nothing here reads a clock. Entries are
plain lists because the per-packet update in ``collector.pipeline`` indexes them directly; the slot
constants below name the positions.
"""

from __future__ import annotations

from typing import Any

from collector.sessions import Session
from collector.wire.decode import FlowKey
from collector.wire.l4 import TCP_FIN, TCP_RST

# entry slots of an accepted flow
PACKETS, BYTES, FLAGS, FIRST, LAST, SESSION, DIRECTION = range(7)
# entry slots of a cached not-kept flow
R_LAST, R_REASON = range(2)

ACTIVE_TIMEOUT = "active_timeout"
INACTIVE_TIMEOUT = "inactive_timeout"
TCP_FIN_END = "tcp_fin"
TCP_RST_END = "tcp_rst"
EVICTED = "evicted"
SHUTDOWN = "shutdown"

Ended = tuple[FlowKey, list[Any], str]


class FlowTable:
    """Accepted flows plus a cache of flows the filter did not keep (so the filter runs once)."""

    def __init__(
        self, *, active_timeout_s: float, inactive_timeout_s: float, max_flows: int
    ) -> None:
        self.active_timeout_s = active_timeout_s
        self.inactive_timeout_s = inactive_timeout_s
        self.max_flows = max_flows
        self.flows: dict[FlowKey, list[Any]] = {}
        self.rejected: dict[FlowKey, list[Any]] = {}
        self.ended: list[Ended] = []
        self.evictions = 0
        self.rejected_evictions = 0

    def __len__(self) -> int:
        return len(self.flows)

    def add(
        self,
        key: FlowKey,
        ip_len: int,
        tcp_flags: int,
        now: float,
        session: Session,
        direction: str,
    ) -> None:
        """Start a flow with its first packet, evicting the oldest flow when the table is full."""
        entry = [1, ip_len, tcp_flags, now, now, session, direction]
        if tcp_flags & (TCP_FIN | TCP_RST):  # ends with its first packet: takes no slot
            self.ended.append((key, entry, TCP_RST_END if tcp_flags & TCP_RST else TCP_FIN_END))
            return
        flows = self.flows
        if len(flows) >= self.max_flows:
            oldest = next(iter(flows))
            self.ended.append((oldest, flows.pop(oldest), EVICTED))
            self.evictions += 1
        flows[key] = entry

    def end(self, key: FlowKey, entry: list[Any], tcp_flags: int) -> None:
        """End a flow early on TCP FIN or RST."""
        del self.flows[key]
        self.ended.append((key, entry, TCP_RST_END if tcp_flags & TCP_RST else TCP_FIN_END))

    def add_rejected(self, key: FlowKey, now: float, reason: int) -> None:
        """Remember that this flow is not kept, and why (a Drop value)."""
        rejected = self.rejected
        if len(rejected) >= self.max_flows:
            del rejected[next(iter(rejected))]
            self.rejected_evictions += 1
        rejected[key] = [now, reason]

    def expire(self, now: float) -> None:
        """Move flows past their active or inactive timeout to ``ended``."""
        idle_before = now - self.inactive_timeout_s
        started_before = now - self.active_timeout_s
        expired = [
            (key, entry)
            for key, entry in self.flows.items()
            if entry[LAST] <= idle_before or entry[FIRST] <= started_before
        ]
        flows = self.flows
        ended = self.ended
        for key, entry in expired:
            del flows[key]
            ended.append(
                (key, entry, INACTIVE_TIMEOUT if entry[LAST] <= idle_before else ACTIVE_TIMEOUT)
            )
        # not-kept flows are forgotten after the inactive timeout, so new rules reach them too
        stale = [key for key, entry in self.rejected.items() if entry[R_LAST] <= idle_before]
        for key in stale:
            del self.rejected[key]

    def flush(self) -> None:
        """End every flow (shutdown, end of a capture)."""
        self.ended.extend((key, entry, SHUTDOWN) for key, entry in self.flows.items())
        self.flows.clear()
        self.rejected.clear()

    def take_ended(self) -> list[Ended]:
        """Hand over the ended flows (and forget them)."""
        ended, self.ended = self.ended, []
        return ended
