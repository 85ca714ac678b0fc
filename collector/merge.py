"""Merge the partial records of one connection into one view (for consumers of the topic).

One connection reaches the topic as many records: one per direction, per mirror session that saw it
(both endpoints may be mirror sources), per collector worker (the NLB hashes each direction on its
own, and re-hashes a flow that was idle for its fixed 120 s UDP timeout, possibly to another
collector), per active timeout, and now and then twice (a sink that re-sends after a timeout).

The rules:

* records belong together by ``flow_id`` (the Kafka key, so one partition holds them all);
* within a connection, a *leg* is one direction as one session saw it: ``(vni, direction, src,
  src_port, dst, dst_port, icmp_type, icmp_code)``; a leg sums packets and bytes, ORs TCP flags and
  spans from the earliest start to the latest end of its records;
* a record seen again with the same ``(exporter, sequence)`` is a duplicate and is not counted.

``Merger`` does this incrementally and hands out a connection once nothing was added to it for
``idle_s`` (in record time: the latest ``end_ms`` seen so far, or the caller's clock). It never reads
a clock itself, so replaying a topic from the beginning and following it live give the same views.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

from collector.records import CLOSING_END_REASONS, FlowRecord

# ICMP echo reply (RFC 792) and ICMPv6 echo reply (RFC 4443 section 4.2): answers, not initiators
_ICMP_REPLIES = {(1, 0), (58, 129)}

LegKey = tuple[int, str, str, int, str, int, int | None, int | None]
Endpoint = tuple[str, int]
ConnectionKey = tuple[str, int, Endpoint, Endpoint]


class Leg(msgspec.Struct, kw_only=True):
    """One direction of a connection as one mirror session (VNI) saw it, over all its records."""

    vni: int
    session: str | None
    interface_id: str | None
    direction: str
    src_addr: str
    src_port: int
    dst_addr: str
    dst_port: int
    icmp_type: int | None
    icmp_code: int | None
    packets: int
    bytes: int
    tcp_flags: int
    start_ms: int
    end_ms: int
    end_reason: str
    """End reason of the leg's latest record."""
    records: int
    """Partial records merged, duplicates not counted."""
    exporters: list[str]
    """Collector workers that contributed, sorted."""
    instance_id: str | None = None
    subnet_id: str | None = None
    vpc_id: str | None = None
    az_id: str | None = None
    account_id: str | None = None
    region: str | None = None
    tags: dict[str, str] = msgspec.field(default_factory=dict)


class Connection(msgspec.Struct, kw_only=True):
    """Both directions of one connection.

    The initiator is a guess from what records carry: the direction whose first packet came first
    (millisecond receive times; ties go to the side that sent to the lower port). A connection seen
    in one direction only is taken as initiator -> responder unless that direction comes from the
    lower port or is an ICMP echo reply.
    """

    flow_id: str
    protocol: int
    ip_version: int
    initiator_addr: str
    initiator_port: int
    responder_addr: str
    responder_port: int
    forward: list[Leg]
    """Initiator -> responder legs, one per session (and ICMP type) that saw them."""
    reverse: list[Leg]
    """Responder -> initiator legs."""
    forward_packets: int
    """Packets initiator -> responder as the session that saw most of them counted them (two
    mirrored endpoints see the same packets; adding them up would count each twice)."""
    forward_bytes: int
    reverse_packets: int
    reverse_bytes: int
    forward_tcp_flags: int
    reverse_tcp_flags: int
    start_ms: int
    end_ms: int
    records: int
    """Partial records merged, duplicates not counted."""
    duplicates: int
    """Records dropped as already seen (same exporter and sequence)."""
    exporters: list[str]
    closed: bool
    """A leg ended with a TCP FIN or RST."""


@dataclass
class _LegState:
    first: FlowRecord
    packets: int = 0
    bytes: int = 0
    tcp_flags: int = 0
    start_ms: int = 0
    end_ms: int = -1
    end_reason: str = ""
    records: int = 0
    exporters: set[str] = field(default_factory=set)
    context: dict[str, str | None] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def add(self, r: FlowRecord) -> None:
        self.start_ms = r.start_ms if self.records == 0 else min(self.start_ms, r.start_ms)
        self.records += 1
        self.packets += r.packets
        self.bytes += r.bytes
        self.tcp_flags |= r.tcp_flags
        if r.end_ms >= self.end_ms:
            self.end_ms = r.end_ms
            self.end_reason = r.end_reason
        self.exporters.add(r.exporter)
        for name in _CONTEXT:
            value = getattr(r, name)
            if value is not None and self.context.get(name) is None:
                self.context[name] = value
        for k, v in r.tags.items():
            self.tags.setdefault(k, v)

    def leg(self) -> Leg:
        r = self.first
        ctx = self.context
        return Leg(
            vni=r.vni,
            session=ctx.get("session"),
            interface_id=ctx.get("interface_id"),
            direction=r.direction,
            src_addr=r.src_addr,
            src_port=r.src_port,
            dst_addr=r.dst_addr,
            dst_port=r.dst_port,
            icmp_type=r.icmp_type,
            icmp_code=r.icmp_code,
            packets=self.packets,
            bytes=self.bytes,
            tcp_flags=self.tcp_flags,
            start_ms=self.start_ms,
            end_ms=self.end_ms,
            end_reason=self.end_reason,
            records=self.records,
            exporters=sorted(self.exporters),
            instance_id=ctx.get("instance_id"),
            subnet_id=ctx.get("subnet_id"),
            vpc_id=ctx.get("vpc_id"),
            az_id=ctx.get("az_id"),
            account_id=ctx.get("account_id"),
            region=ctx.get("region"),
            tags=dict(self.tags),
        )


_CONTEXT = (
    "session",
    "interface_id",
    "instance_id",
    "subnet_id",
    "vpc_id",
    "az_id",
    "account_id",
    "region",
)


@dataclass
class _ConnectionState:
    flow_id: str
    protocol: int
    ip_version: int
    legs: dict[LegKey, _LegState] = field(default_factory=dict)
    seen: set[tuple[str, int]] = field(default_factory=set)
    duplicates: int = 0
    last_ms: int = 0

    def connection(self) -> Connection:
        legs = [s.leg() for s in self.legs.values()]
        by_orientation: dict[tuple[Endpoint, Endpoint], list[Leg]] = {}
        for leg in legs:
            by_orientation.setdefault(
                ((leg.src_addr, leg.src_port), (leg.dst_addr, leg.dst_port)), []
            ).append(leg)
        forward_key = _initiator_orientation(by_orientation, self.protocol)
        src, dst = forward_key
        forward = sorted(by_orientation.get((src, dst), []), key=_leg_order)
        reverse = sorted(by_orientation.get((dst, src), []), key=_leg_order)
        fwd_packets, fwd_bytes = _seen_most(forward)
        rev_packets, rev_bytes = _seen_most(reverse)
        exporters: set[str] = set()
        for leg in legs:
            exporters.update(leg.exporters)
        return Connection(
            flow_id=self.flow_id,
            protocol=self.protocol,
            ip_version=self.ip_version,
            initiator_addr=src[0],
            initiator_port=src[1],
            responder_addr=dst[0],
            responder_port=dst[1],
            forward=forward,
            reverse=reverse,
            forward_packets=fwd_packets,
            forward_bytes=fwd_bytes,
            reverse_packets=rev_packets,
            reverse_bytes=rev_bytes,
            forward_tcp_flags=_or_flags(forward),
            reverse_tcp_flags=_or_flags(reverse),
            start_ms=min(leg.start_ms for leg in legs),
            end_ms=max(leg.end_ms for leg in legs),
            records=sum(leg.records for leg in legs),
            duplicates=self.duplicates,
            exporters=sorted(exporters),
            closed=any(leg.end_reason in CLOSING_END_REASONS for leg in legs),
        )


def _leg_order(leg: Leg) -> tuple[int, int, int]:
    return (leg.vni, leg.icmp_type or 0, leg.icmp_code or 0)


def _or_flags(legs: list[Leg]) -> int:
    flags = 0
    for leg in legs:
        flags |= leg.tcp_flags
    return flags


def _seen_most(legs: list[Leg]) -> tuple[int, int]:
    per_vni: dict[int, list[int]] = {}
    for leg in legs:
        counts = per_vni.setdefault(leg.vni, [0, 0])
        counts[0] += leg.packets
        counts[1] += leg.bytes
    if not per_vni:
        return 0, 0
    packets, byte_count = max(per_vni.values())
    return packets, byte_count


def _initiator_orientation(
    by_orientation: dict[tuple[Endpoint, Endpoint], list[Leg]], protocol: int
) -> tuple[Endpoint, Endpoint]:
    def rank(item: tuple[tuple[Endpoint, Endpoint], list[Leg]]) -> tuple[int, int, int, str]:
        (src, dst), legs = item
        first = min(leg.start_ms for leg in legs)
        replies = all((protocol, leg.icmp_type) in _ICMP_REPLIES for leg in legs)
        # earlier first packet; then: sent to the lower port; then: not an echo reply; then stable
        return (first, 0 if dst[1] <= src[1] else 1, 1 if replies else 0, src[0])

    items = list(by_orientation.items())
    if len(items) == 1:
        (src, dst), legs = items[0]
        replies = all((protocol, leg.icmp_type) in _ICMP_REPLIES for leg in legs)
        if src[1] < dst[1] or replies:
            return dst, src
        return src, dst
    return min(items, key=rank)[0]


def _connection_key(r: FlowRecord) -> ConnectionKey:
    a = (r.src_addr, r.src_port)
    b = (r.dst_addr, r.dst_port)
    low, high = (a, b) if a <= b else (b, a)
    # the flow_id is a 64-bit hash: the endpoints keep a collision from mixing two connections
    return (r.flow_id, r.protocol, low, high)


class Merger:
    """Incremental merging for a consumer: ``feed`` records, ``expire`` returns idle connections.

    Bounded: at most ``max_connections`` are kept (beyond it the least recently fed one is handed out
    early, counted in ``evicted``), and the ids of the last ``max_remembered`` records of handed-out
    connections are kept so a late duplicate of them is still recognised.
    """

    def __init__(
        self,
        *,
        idle_s: float = 300.0,
        max_connections: int = 100_000,
        max_remembered: int = 100_000,
    ) -> None:
        self.idle_ms = int(idle_s * 1000)
        self.max_connections = max_connections
        self.max_remembered = max_remembered
        self._open: OrderedDict[ConnectionKey, _ConnectionState] = OrderedDict()
        self._ready: list[Connection] = []
        self._remembered: OrderedDict[tuple[str, int], None] = OrderedDict()
        self.watermark_ms = 0
        """The latest ``end_ms`` fed so far: record time, usable as ``now_ms`` for ``expire``."""
        self.records = 0
        self.duplicates = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._open)

    def feed(self, record: FlowRecord) -> bool:
        """Add one record; False when it was a duplicate and did not count."""
        record_id = (record.exporter, record.sequence)
        if record_id in self._remembered:
            self.duplicates += 1
            return False
        key = _connection_key(record)
        state = self._open.get(key)
        if state is None:
            if len(self._open) >= self.max_connections:
                _, oldest = self._open.popitem(last=False)
                self._hand_out(oldest)
                self.evicted += 1
            state = self._open[key] = _ConnectionState(
                record.flow_id, record.protocol, record.ip_version
            )
        else:
            self._open.move_to_end(key)
        if record_id in state.seen:
            state.duplicates += 1
            self.duplicates += 1
            return False
        state.seen.add(record_id)
        leg_key: LegKey = (
            record.vni,
            record.direction,
            record.src_addr,
            record.src_port,
            record.dst_addr,
            record.dst_port,
            record.icmp_type,
            record.icmp_code,
        )
        leg = state.legs.get(leg_key)
        if leg is None:
            leg = state.legs[leg_key] = _LegState(record)
        leg.add(record)
        state.last_ms = max(state.last_ms, record.end_ms)
        self.watermark_ms = max(self.watermark_ms, record.end_ms)
        self.records += 1
        return True

    def expire(self, now_ms: int | None = None) -> list[Connection]:
        """Connections with no packet for ``idle_s`` before ``now_ms`` (default: the watermark),
        plus any handed out early; each connection is returned once."""
        now = self.watermark_ms if now_ms is None else now_ms
        idle = [key for key, s in self._open.items() if s.last_ms + self.idle_ms <= now]
        for key in idle:
            self._hand_out(self._open.pop(key))
        out, self._ready = self._ready, []
        return out

    def flush(self) -> list[Connection]:
        """Every connection still open (at the end of a replay or at shutdown)."""
        while self._open:
            _, state = self._open.popitem(last=False)
            self._hand_out(state)
        out, self._ready = self._ready, []
        return out

    def _hand_out(self, state: _ConnectionState) -> None:
        self._ready.append(state.connection())
        remembered = self._remembered
        for record_id in state.seen:
            remembered[record_id] = None
        while len(remembered) > self.max_remembered:
            remembered.popitem(last=False)


def merge(records: Iterable[FlowRecord]) -> list[Connection]:
    """Every connection in ``records`` (any order), oldest first."""
    merger = Merger(max_connections=2**62)
    for record in records:
        merger.feed(record)
    return sorted(merger.flush(), key=lambda c: (c.start_ms, c.flow_id))
