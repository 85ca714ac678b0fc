"""The flow table (sans-IO): unidirectional flows with active/inactive timeouts and a hard bound.

This module owns the flow entry: its layout (``Flow``), its per-packet update (``FlowTable.count``)
and the record built from it (``RecordMaker``). Time is always passed in (``now``, Unix seconds as
a float); nothing here reads a clock.

Memory and the garbage collector decide how many flows a worker can hold, so the table keeps no
object the cyclic garbage collector tracks: keys are ``bytes`` (see ``collector.wire.flowkey``)
and entries are ``msgspec`` structs declared ``gc=False`` (they reference only numbers, strings
and the session, never each other, so they cannot be part of a cycle). A flood of new flows then
neither grows the collector's generations nor makes a full collection walk the whole table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice
from typing import TYPE_CHECKING

import msgspec
from msgspec.structs import replace

if TYPE_CHECKING:
    from collector import nocython as cython  # what mypy checks the decorators against
else:
    try:
        import cython
    except ImportError:  # a deployed collector has no Cython: the same decorators, as no-ops
        from collector import nocython as cython

from collector.config import FlowsConfig
from collector.records import FlowRecord, address_text, endpoints_flow_id
from collector.sessions import Session
from collector.terms import (
    ACTIVE_TIMEOUT,
    DIRECTIONS,
    EVICTED,
    INACTIVE_TIMEOUT,
    REJECT,
    SHUTDOWN,
    TCP_FIN_END,
    TCP_RST_END,
    UNKNOWN,
    Direction,
    EndReason,
)
from collector.wire.decode import decode
from collector.wire.flowkey import PORTS_KEY_V4, PORTS_KEY_V6, FlowKey, unpack_key
from collector.wire.geneve import decode_gwlb
from collector.wire.l4 import NO_ICMP, TCP_FIN, TCP_RST

Source = bytes | str | memoryview | None
"""The outer source of a datagram as the receive path has it (packed, text, raw sockaddr)."""
Account = Callable[[bytes | bytearray | memoryview, int, float, Source], None]
NewFlow = Callable[[FlowKey, int, int, float, Source], None]
GeneveNewFlow = Callable[[FlowKey, int, int, float, bytes | bytearray | memoryview, int], None]
"""(key, ip_len, tcp_flags, now, the datagram's buffer and length)."""

_ENDS_FLOW = TCP_FIN | TCP_RST
# When the table is full, this share of max_flows is evicted at once (at least one flow): finding
# the oldest flow walks the slots deleted before it, so one eviction per new flow would cost a walk
# per packet under a flood; a batch pays that walk once.
EVICTION_BATCH_DIVISOR = 1024
# Flows looked at per step of a stepped expiry scan (the live worker yields between steps): small
# enough that one step, records included, takes a few milliseconds (1000 records: about 2-3 ms).
EXPIRY_STEP = 1000


class Flow(msgspec.Struct, gc=False):
    """One accepted flow: counters, first/last packet time, and the decision it was admitted with.

    This is the pure build's entry; the compiled build's is ``CompiledFlow`` (same fields, C
    numbers), which takes this name when the module runs compiled (see the end of the module).
    """

    packets: int
    bytes: int
    tcp_flags: int
    first: float
    last: float
    session: Session
    direction: Direction


_DIRECTION_CODES = {direction: code for code, direction in enumerate(DIRECTIONS)}


@cython.no_gc  # it holds a session and numbers, never a flow: it cannot be part of a cycle
@cython.cclass
class CompiledFlow:
    """``Flow`` for the compiled build: the same fields, constructor and behaviour, as C fields of
    an extension type (typed in flows.pxd) that the garbage collector does not track, like the
    ``gc=False`` struct. The counters and times are C numbers updated in place (no int or float
    object per packet, none kept per flow) and the direction is one octet: 64 bytes per flow
    against the struct's 80 plus the number objects it holds.
    """

    def __init__(
        self,
        packets: int,
        bytes: int,
        tcp_flags: int,
        first: float,
        last: float,
        session: Session,
        direction: Direction,
    ) -> None:
        self.packets = packets
        self.bytes = bytes
        self.tcp_flags = tcp_flags
        self.first = first
        self.last = last
        self.session = session
        self.direction_code = _DIRECTION_CODES[direction]

    @property
    def direction(self) -> Direction:
        return DIRECTIONS[self.direction_code]  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"Flow(packets={self.packets}, bytes={self.bytes}, tcp_flags={self.tcp_flags}, "
            f"first={self.first}, last={self.last}, session={self.session!r}, "
            f"direction={self.direction!r})"
        )


class NotKept(msgspec.Struct, gc=False):
    """A flow the filter (or the direction check) did not keep: why (a Drop value) and its counts.

    ``session`` is set only when the flow is to be recorded (its filter has record_rejected):
    its record then says ``action`` "reject" and ``rule`` (the rule that rejected it, -1: none).
    """

    packets: int
    bytes: int
    tcp_flags: int
    first: float
    last: float
    reason: int
    session: Session | None = None
    direction: Direction = UNKNOWN
    rule: int = -1


Ended = tuple[FlowKey, Flow | NotKept, EndReason]


class FlowTable:
    """Accepted flows plus a cache of flows the filter did not keep (so the filter runs once).

    An extension type in the compiled build (flows.pxd): its dicts are C fields, and ``add`` and
    ``reject`` are C calls from the new-flow decision.
    """

    __slots__ = (
        "_ended",
        "_flows",
        "_not_kept",
        "active_timeout_s",
        "evictions",
        "inactive_timeout_s",
        "max_flows",
        "rejected_evictions",
    )

    def __init__(
        self, *, active_timeout_s: float, inactive_timeout_s: float, max_flows: int
    ) -> None:
        self.active_timeout_s = active_timeout_s
        self.inactive_timeout_s = inactive_timeout_s
        self.max_flows = max_flows
        self._flows: dict[FlowKey, Flow] = {}
        self._not_kept: dict[FlowKey, NotKept] = {}
        self._ended: list[Ended] = []
        self.evictions = 0
        self.rejected_evictions = 0

    @classmethod
    def from_config(cls, flows: FlowsConfig) -> FlowTable:
        return cls(
            active_timeout_s=flows.active_timeout_s,
            inactive_timeout_s=flows.inactive_timeout_s,
            max_flows=flows.max_flows,
        )

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, key: object) -> bool:
        return key in self._flows

    @property
    def not_kept(self) -> int:
        """Flows whose not-kept decision is cached."""
        return len(self._not_kept)

    def get(self, key: FlowKey) -> Flow | None:
        """The accepted flow of ``key`` (tools and tests; packets go through ``packet_path``)."""
        return self._flows.get(key)

    def not_kept_keys(self) -> list[FlowKey]:
        """Keys of the cached not-kept flows, oldest first."""
        return list(self._not_kept)

    def not_kept_reason(self, key: FlowKey) -> int | None:
        """The cached Drop value of a not-kept flow, or None."""
        cached = self._not_kept.get(key)
        return None if cached is None else cached.reason

    def packet_path(self, drops: list[int], new_flow: NewFlow) -> Account:
        """The per-datagram hot path over this table: ``account(buf, n, now, outer_src)``.

        It decodes the datagram, then either counts the packet into its flow (one dict lookup and
        a few integer updates; a TCP FIN or RST ends the flow with it), or counts a drop (an
        undecodable datagram, a flow whose not-kept decision is cached), or hands a new flow to
        ``new_flow``, which decides it and calls ``add`` or ``reject``. A closure over the dicts,
        so a packet costs one Python call and no attribute lookups.
        """
        get = self._flows.get
        get_not_kept = self._not_kept.get
        flows = self._flows
        ended = self._ended

        @cython.locals(
            flow=CompiledFlow, now=cython.double, ip_len=cython.long, tcp_flags=cython.long
        )
        def account(
            buf: bytes | bytearray | memoryview,
            n: int,
            now: float,
            outer_src: bytes | str | memoryview | None,
        ) -> None:
            result = decode(buf, n)
            if result.__class__ is int:
                drops[result] += 1
                return
            key, ip_len, tcp_flags = result  # type: ignore[misc]
            flow = get(key)
            if flow is not None:
                flow.packets += 1
                flow.bytes += ip_len
                # mirrored packets can arrive out of order (NLB): first/last are a min and a max
                if now > flow.last:
                    flow.last = now
                elif now < flow.first:
                    flow.first = now
                if tcp_flags:
                    flow.tcp_flags |= tcp_flags
                    if tcp_flags & _ENDS_FLOW:
                        del flows[key]
                        ended.append((key, flow, _tcp_end(tcp_flags)))
                return
            cached = get_not_kept(key)
            if cached is not None:
                cached.packets += 1
                cached.bytes += ip_len
                cached.tcp_flags |= tcp_flags
                if now > cached.last:
                    cached.last = now
                elif now < cached.first:
                    cached.first = now
                drops[cached.reason] += 1
                return
            new_flow(key, ip_len, tcp_flags, now, outer_src)

        return account

    def geneve_packet_path(
        self, drops: list[int], geneve_drops: list[int], new_flow: GeneveNewFlow
    ) -> Account:
        """``packet_path`` for a Gateway Load Balancer's GENEVE datagrams: the same accounting
        after ``wire.geneve.decode_gwlb``, which reads the VXLAN datagram in place (for the
        GWLB's layout, in the same read as the GENEVE header). A new flow is handed the buffer:
        the mirror source's address (direction is judged from it, never from the GWLB's) and the
        GWLB endpoint are read from it once per flow. Drops count in ``drops`` (every
        encapsulation) and in ``geneve_drops`` too. The flow update is ``packet_path``'s,
        written out again: a shared helper would cost a Python call per packet.
        """
        get = self._flows.get
        get_not_kept = self._not_kept.get
        flows = self._flows
        ended = self._ended

        @cython.locals(
            flow=CompiledFlow, now=cython.double, ip_len=cython.long, tcp_flags=cython.long
        )
        def account(
            buf: bytes | bytearray | memoryview,
            n: int,
            now: float,
            outer_src: bytes | str | memoryview | None,
        ) -> None:
            result = decode_gwlb(buf, n)
            if result.__class__ is int:
                drops[result] += 1
                geneve_drops[result] += 1
                return
            key, ip_len, tcp_flags = result  # type: ignore[misc]
            flow = get(key)
            if flow is not None:
                flow.packets += 1
                flow.bytes += ip_len
                if now > flow.last:
                    flow.last = now
                elif now < flow.first:
                    flow.first = now
                if tcp_flags:
                    flow.tcp_flags |= tcp_flags
                    if tcp_flags & _ENDS_FLOW:
                        del flows[key]
                        ended.append((key, flow, _tcp_end(tcp_flags)))
                return
            cached = get_not_kept(key)
            if cached is not None:
                cached.packets += 1
                cached.bytes += ip_len
                cached.tcp_flags |= tcp_flags
                if now > cached.last:
                    cached.last = now
                elif now < cached.first:
                    cached.first = now
                drops[cached.reason] += 1
                geneve_drops[cached.reason] += 1
                return
            new_flow(key, ip_len, tcp_flags, now, buf, n)

        return account

    def add(
        self,
        key: FlowKey,
        ip_len: int,
        tcp_flags: int,
        now: float,
        session: Session,
        direction: Direction,
    ) -> None:
        """Start a flow with its first packet, evicting the oldest flows when the table is full."""
        flow = _new_flow_entry(ip_len, tcp_flags, now, session, direction)
        if tcp_flags & _ENDS_FLOW:  # ends with its first packet: takes no slot
            self._ended.append((key, flow, _tcp_end(tcp_flags)))
            return
        flows = self._flows
        if len(flows) >= self.max_flows:
            self._evict(len(flows) - self.max_flows + self._batch())
        flows[key] = flow

    def reject(
        self,
        key: FlowKey,
        ip_len: int,
        tcp_flags: int,
        now: float,
        reason: int,
        recorded: tuple[Session, Direction, int] | None = None,
    ) -> None:
        """Remember that this flow is not kept, and why (a Drop value), counting its first packet.
        ``recorded`` (session, direction, rule number or -1) makes it end in a "reject" record."""
        not_kept = self._not_kept
        if len(not_kept) >= self.max_flows:
            self._forget(len(not_kept) - self.max_flows + self._batch())
        if recorded is None:
            not_kept[key] = NotKept(1, ip_len, tcp_flags, now, now, reason)
        else:
            session, direction, rule = recorded
            not_kept[key] = NotKept(
                1, ip_len, tcp_flags, now, now, reason, session, direction, rule
            )

    def _forget(self, count: int) -> None:
        """Forget the ``count`` oldest not-kept flows (the recorded ones end as ``evicted``)."""
        not_kept = self._not_kept
        ended = self._ended
        victims = list(islice(not_kept.items(), count))
        for key, cached in victims:
            del not_kept[key]
            if cached.session is not None:
                ended.append((key, cached, EVICTED))
        self.rejected_evictions += len(victims)

    def forget_decisions(self) -> None:
        """Drop every cached not-kept decision: new sessions or rules decide those flows again
        (the recorded ones end now, as ``evicted``: their next packets start new flows)."""
        self._end_not_kept(EVICTED)

    def _end_not_kept(self, reason: EndReason) -> None:
        """Forget every not-kept flow; the recorded ones end with ``reason``."""
        self._ended.extend(
            (key, cached, reason)
            for key, cached in self._not_kept.items()
            if cached.session is not None
        )
        self._not_kept.clear()

    def configure(self, flows: FlowsConfig) -> None:
        """Apply new timeouts and bound (SIGHUP); a smaller bound evicts the excess now."""
        self.active_timeout_s = flows.active_timeout_s
        self.inactive_timeout_s = flows.inactive_timeout_s
        self.max_flows = flows.max_flows
        if len(self._flows) > self.max_flows:
            self._evict(len(self._flows) - self.max_flows)
        excess = len(self._not_kept) - self.max_flows
        if excess > 0:
            self._forget(excess)

    def _batch(self) -> int:
        return max(1, self.max_flows // EVICTION_BATCH_DIVISOR)

    def _evict(self, count: int) -> None:
        """End the ``count`` oldest flows (dicts keep insertion order: oldest first)."""
        flows = self._flows
        ended = self._ended
        victims = list(islice(flows.items(), count))
        for key, flow in victims:
            del flows[key]
            ended.append((key, flow, EVICTED))
        self.evictions += len(victims)

    def expire(self, now: float) -> None:
        """Move flows past their active or inactive timeout to the ended flows."""
        for _ in self.expire_steps(now, step=max(1, len(self._flows) + len(self._not_kept))):
            pass

    @cython.locals(flow=CompiledFlow, idle_before=cython.double, started_before=cython.double)
    def expire_steps(self, now: float, step: int = EXPIRY_STEP) -> Iterator[None]:
        """``expire(now)`` in steps of at most ``step`` flows, yielding after each.

        The live worker lets its event loop run between steps, so a scan of a large table (and
        the records of a mass expiry after a flood) never stalls the receive path. The keys are
        taken at the start; a flow that ended or restarted in between is judged as it is then.
        """
        idle_before = now - self.inactive_timeout_s
        started_before = now - self.active_timeout_s
        flows = self._flows
        ended = self._ended
        get = flows.get
        keys = list(flows)
        for first in range(0, len(keys), step):
            for key in keys[first : first + step]:
                flow = get(key)
                if flow is None:
                    continue
                if flow.last <= idle_before:
                    del flows[key]
                    ended.append((key, flow, INACTIVE_TIMEOUT))
                elif flow.first <= started_before:
                    del flows[key]
                    ended.append((key, flow, ACTIVE_TIMEOUT))
            yield
        # not-kept flows are forgotten after the inactive timeout, so new rules reach them too;
        # the recorded ones end like accepted flows, on either timeout
        not_kept = self._not_kept
        get_not_kept = not_kept.get
        keys = list(not_kept)
        for first in range(0, len(keys), step):
            for key in keys[first : first + step]:
                cached = get_not_kept(key)
                if cached is None:
                    continue
                if cached.last <= idle_before:
                    del not_kept[key]
                    if cached.session is not None:
                        ended.append((key, cached, INACTIVE_TIMEOUT))
                elif cached.session is not None and cached.first <= started_before:
                    del not_kept[key]
                    ended.append((key, cached, ACTIVE_TIMEOUT))
            yield

    def flush(self) -> None:
        """End every flow (shutdown, end of a capture)."""
        self._ended.extend((key, flow, SHUTDOWN) for key, flow in self._flows.items())
        self._flows.clear()
        self._end_not_kept(SHUTDOWN)

    def take_ended(self) -> list[Ended]:
        """Hand over the ended flows (and forget them)."""
        ended = self._ended[:]
        self._ended.clear()  # the same list: ``count`` holds it
        return ended


if cython.compiled:  # the compiled build's entry takes the name (see CompiledFlow)
    Flow = CompiledFlow  # type: ignore[assignment,misc]


def _new_flow_entry(
    ip_len: int, tcp_flags: int, now: float, session: Session, direction: Direction
) -> Flow:
    """A flow's entry at its first packet (compiled: the C fields set without ``__init__``'s
    argument parsing, once per new flow)."""
    if cython.compiled:
        entry = CompiledFlow.__new__(CompiledFlow)
        entry.packets = 1
        entry.bytes = ip_len
        entry.tcp_flags = tcp_flags
        entry.first = now
        entry.last = now
        entry.session = session
        entry.direction_code = _DIRECTION_CODES[direction]
        return entry  # type: ignore[return-value]
    return Flow(1, ip_len, tcp_flags, now, now, session, direction)


def _tcp_end(tcp_flags: int) -> EndReason:
    return TCP_RST_END if tcp_flags & TCP_RST else TCP_FIN_END


MAX_ADDRESS_TEXTS = 65536  # packed address -> text cache of a RecordMaker; cleared when full
_PORTS_KEY_V4_SIZE = PORTS_KEY_V4.size
_PORTS_KEY_SIZES = (PORTS_KEY_V4.size, PORTS_KEY_V6.size)
MAX_TEMPLATES = 4096  # session -> template record cache (anonymous sessions come and go)


class RecordMaker:
    """Builds the records of ended flows for one exporter.

    A record is made once per flow, and under a flood of new flows once per packet, so this is on
    the receive path's budget too. What a session's records share (exporter, VNI, session, ENI,
    AWS context) is set once in a template record per session, and each record is that template
    with the flow's own fields replaced (``msgspec.structs.replace``: a copy and a few slots,
    several times cheaper than building a 20-field struct from keywords). Address texts are
    cached: a scan or a busy NAT gateway makes many flows between few addresses.
    """

    def __init__(self, exporter: str) -> None:
        self.exporter = exporter
        self._templates: dict[int, tuple[Session, FlowRecord]] = {}
        self._texts: dict[bytes, str] = {}

    def forget_sessions(self) -> None:
        """Drop the templates (the sessions were replaced: reload, enrichment)."""
        self._templates.clear()

    def _template(self, session: Session) -> FlowRecord:
        templates = self._templates
        if len(templates) >= MAX_TEMPLATES:
            templates.clear()
        template = FlowRecord(
            flow_id="",
            exporter=self.exporter,
            sequence=0,
            vni=session.vni,
            session=session.name,
            interface_id=session.interface_id,
            direction=UNKNOWN,
            ip_version=4,
            protocol=0,
            src_addr="",
            dst_addr="",
            src_port=0,
            dst_port=0,
            packets=0,
            bytes=0,
            tcp_flags=0,
            start_ms=0,
            end_ms=0,
            end_reason=SHUTDOWN,
            **session.record_context,
        )
        templates[id(session)] = (session, template)  # the session kept: its id stays its own
        return template

    def text(self, packed: bytes) -> str:
        """The text form of a packed address, cached."""
        texts = self._texts
        text = texts.get(packed)
        if text is None:
            if len(texts) >= MAX_ADDRESS_TEXTS:
                texts.clear()
            text = texts[packed] = address_text(packed)
        return text

    def make(
        self, key: FlowKey, flow: Flow | NotKept, reason: EndReason, sequence: int
    ) -> FlowRecord:
        """The record of an ended flow (a recorded not-kept flow: action "reject")."""
        session = flow.session
        assert session is not None  # only recorded not-kept flows end
        cached = self._templates.get(id(session))
        template = (
            cached[1] if cached is not None and cached[0] is session else self._template(session)
        )
        size = len(key)
        if size in _PORTS_KEY_SIZES:  # TCP, UDP, ... with ports
            head, src, dst, sport, dport = (
                PORTS_KEY_V4 if size == _PORTS_KEY_V4_SIZE else PORTS_KEY_V6
            ).unpack(key)
            protocol = head & 0xFF
            ports = key[-4:]
            a, b = src + ports[:2], dst + ports[2:]
            icmp = NO_ICMP
        else:  # ICMP with or without type/code, or no ports: flow ids hash ports 0
            _, src, dst, protocol, sport, dport, icmp = unpack_key(key)
            a, b = src + b"\0\0", dst + b"\0\0"
        texts = self._texts
        src_text = texts.get(src) or self.text(src)
        dst_text = texts.get(dst) or self.text(dst)
        # at most 14 keywords: a call with more is compiled to one through a dict, 4x slower here
        record = replace(
            template,
            flow_id=endpoints_flow_id(protocol, a, b),
            sequence=sequence,
            direction=flow.direction,
            protocol=protocol,
            src_addr=src_text,
            dst_addr=dst_text,
            src_port=sport,
            dst_port=dport,
            packets=flow.packets,
            bytes=flow.bytes,
            tcp_flags=flow.tcp_flags,
            start_ms=int(flow.first * 1000),
            end_ms=int(flow.last * 1000),
            end_reason=reason,
        )
        if len(src) == 16:
            record.ip_version = 6
        if session.tags:
            record.tags = dict(session.tags)
        else:
            record.tags = {}  # never one dict shared by records
        if icmp != NO_ICMP:
            record.icmp_type = icmp >> 8
            record.icmp_code = icmp & 0xFF
        if flow.__class__ is NotKept:
            record.action = REJECT
            record.filter_rule = None if flow.rule < 0 else flow.rule
        return record
