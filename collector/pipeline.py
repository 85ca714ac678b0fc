"""Datagram -> flow counts -> records: the glue shared by the live service and pcap replay.

``feed``/``account`` is the per-datagram hot path: the flow table's packet path (decode, one dict
lookup, a few integer updates). What happens once per flow lives here: the decision on a new flow
(session, direction, filter) and numbering the records of ended flows. Encoding is the sink's.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from collector.config import Config
from collector.flows import Account, FlowTable, RecordMaker
from collector.records import FlowRecord
from collector.sessions import Session, SessionMap
from collector.terms import UNKNOWN
from collector.wire.drops import DROP_COUNT, Drop
from collector.wire.flowkey import PORTS_KEY_V4, FlowKey, key_vni, unpack_key
from collector.wire.geneve import endpoint_text, gwlb_options, locate

if TYPE_CHECKING:
    from collector import nocython as cython  # what mypy checks the names against
else:
    try:
        import cython
    except ImportError:  # a deployed collector has no Cython: the pure build needs none of it
        from collector import nocython as cython

MAX_OUTER_SOURCES = (
    4096  # outer source (text, sockaddr) -> packed caches; spoofed sources cannot grow them
)
MAX_CACHED_SESSIONS = 4096  # anonymous sessions come and go (SessionMap bounds them alike)
# Labels of the per-session and per-endpoint counters: a sender chooses VNIs (2**24) and, on the
# GENEVE port, endpoint ids; past these bounds the rest is counted under OTHER.
MAX_ANONYMOUS_SESSION_LABELS = 256
MAX_ENDPOINT_LABELS = 1024
OTHER_VNI = -1
OTHER_ENDPOINT = "other"
NO_ENDPOINT = ""  # records of VXLAN datagrams (no GWLB endpoint)
_LONGEST_V4_KEY = PORTS_KEY_V4.size
_MISSING = object()
_UNKNOWN_VNI = int(Drop.UNKNOWN_VNI)
_FILTER_REJECT = int(Drop.FILTER_REJECT)
_UNKNOWN_DIRECTION = int(Drop.UNKNOWN_DIRECTION)


class Stats:
    """Plain integer counters of one pipeline; exported to metrics in batches, never per packet."""

    __slots__ = (
        "datagrams",
        "drops",
        "endpoint_records",
        "geneve_datagrams",
        "geneve_drops",
        "records",
        "rx_bytes",
        "session_datagrams",
        "session_names",
    )

    def __init__(self) -> None:
        self.datagrams = 0  # every encapsulation
        self.rx_bytes = 0
        self.drops = [0] * DROP_COUNT  # every encapsulation
        self.records: dict[str, int] = {}
        self.geneve_datagrams = 0  # of ``datagrams``: those of the GENEVE listener
        self.geneve_drops = [0] * DROP_COUNT  # of ``drops``: those of GENEVE datagrams
        self.session_datagrams: dict[int, int] = {}
        """Per VNI (OTHER_VNI: anonymous VNIs past the label bound): the packets of the session's
        flows, counted when their record is made (the flow ended: timeouts, FIN/RST, eviction)."""
        self.session_names: dict[int, str] = {}
        """The name of each named session in ``session_datagrams`` (configured or learned from
        the EC2 API), as its records carry it."""
        self.endpoint_records: dict[str, int] = {}
        """Records per GWLB endpoint id (NO_ENDPOINT: VXLAN; OTHER_ENDPOINT past the bound)."""

    @property
    def kept(self) -> int:
        """Packets counted into flows."""
        return self.datagrams - sum(self.drops)


class Pipeline:
    """One worker's sans-IO pipeline.

    An extension type in the compiled build (pipeline.pxd): the new-flow decision reads its
    caches and the flow table from C fields and calls ``_decide`` and the table as C functions.
    """

    __slots__ = (
        "_drops",
        "_endpoint_sessions",
        "_geneve_drops",
        "_last_outer",
        "_last_outer_word",
        "_last_session",
        "_last_vni",
        "_outer_cache",
        "_records",
        "_session_cache",
        "account",
        "account_geneve",
        "exporter",
        "sequence",
        "sessions",
        "stats",
        "table",
    )

    def __init__(self, config: Config, sessions: SessionMap, exporter: str) -> None:
        self.sessions = sessions
        self.exporter = exporter
        self.sequence = 0
        self.stats = Stats()
        self.table = FlowTable.from_config(config.flows)
        self.account: Account = self.table.packet_path(self.stats.drops, self._new_flow)
        """``feed`` without the datagram and byte counters: receive loops that read in batches
        add those once per batch (``stats.datagrams``, ``stats.rx_bytes``)."""
        self.account_geneve: Account = self.table.geneve_packet_path(
            self.stats.drops, self.stats.geneve_drops, self._new_geneve_flow
        )
        """``account`` for a GENEVE datagram (``stats.geneve_datagrams`` counted by the loop)."""
        self._geneve_drops = self.stats.geneve_drops
        self._endpoint_sessions: dict[tuple[int, int], Session] = {}
        self._drops = self.stats.drops
        self._records = RecordMaker(exporter)
        self._outer_cache: dict[str | bytes, bytes | None] = {}
        self._session_cache: dict[bytes, Session] = {}  # VNI octets of a key -> its session
        # the compiled build's one-entry caches (no slice, no dict): the last new flow's VNI and
        # session, the last IPv4 sender read from a raw sockaddr and its packed address
        self._last_vni = -1
        self._last_session: Session | None = None
        self._last_outer_word = -1
        self._last_outer: bytes | None = None

    def feed(
        self,
        buf: bytes | bytearray | memoryview,
        n: int,
        now: float,
        outer_src: bytes | str | memoryview | None,
    ) -> None:
        """Account one VXLAN datagram (its first ``n`` bytes) received at ``now``."""
        stats = self.stats
        stats.datagrams += 1
        stats.rx_bytes += n
        self.account(buf, n, now, outer_src)

    def feed_geneve(
        self,
        buf: bytes | bytearray | memoryview,
        n: int,
        now: float,
        outer_src: bytes | str | memoryview | None,
    ) -> None:
        """Account one GENEVE datagram of a Gateway Load Balancer (``outer_src`` is the GWLB's
        address: never used for direction)."""
        stats = self.stats
        stats.datagrams += 1
        stats.geneve_datagrams += 1
        stats.rx_bytes += n
        self.account_geneve(buf, n, now, outer_src)

    def _new_geneve_flow(
        self,
        key: FlowKey,
        ip_len: int,
        tcp_flags: int,
        now: float,
        buf: bytes | bytearray | memoryview,
        n: int,
    ) -> None:
        """A new flow in a GENEVE datagram: its session carries the GWLB endpoint, and direction
        is judged from the mirror datagram's source (the source ENI), as for VXLAN."""
        session = self._session_cache.get(key[:3])
        if session is None:
            session = self._session_of(key)
            if session is None:
                self._drops[_UNKNOWN_VNI] += 1
                self._geneve_drops[_UNKNOWN_VNI] += 1
                return
        endpoint = gwlb_options(buf, n).endpoint_id
        if endpoint is not None:
            session = self._with_endpoint(session, endpoint)
        located = locate(buf, n)
        if located.__class__ is int:  # the packet path located it already: never, but counted
            self._drops[located] += 1
            self._geneve_drops[located] += 1
            return
        _, src_at, src_len = located  # type: ignore[misc]
        mirror_source = bytes(buf[src_at : src_at + src_len])
        reason = self._decide(key, ip_len, tcp_flags, now, session, mirror_source)
        if reason:
            self._geneve_drops[reason] += 1

    def _with_endpoint(self, session: Session, endpoint: int) -> Session:
        """The session as seen through one GWLB endpoint (its records name the endpoint), cached
        so that the records of its flows share one template."""
        cache = self._endpoint_sessions
        found = cache.get((id(session), endpoint))
        if found is None or found.vni != session.vni or found.name != session.name:
            if len(cache) >= MAX_CACHED_SESSIONS:
                cache.clear()
            found = cache[(id(session), endpoint)] = replace(
                session, gwlb_endpoint_id=endpoint_text(endpoint)
            )
        return found

    def _new_flow(
        self,
        key: FlowKey,
        ip_len: int,
        tcp_flags: int,
        now: float,
        outer_src: bytes | str | memoryview | None,
    ) -> None:
        # once per flow, and under a flood of new flows once per packet: lookups are cached
        session = None
        if cython.compiled and key[0] << 16 | key[1] << 8 | key[2] == self._last_vni:
            session = self._last_session
        if session is None:
            session = self._session_cache.get(key[:3])
            if session is None:
                session = self._session_of(key)
                if session is None:
                    self._drops[_UNKNOWN_VNI] += 1
                    return
            if cython.compiled:
                self._last_vni = key[0] << 16 | key[1] << 8 | key[2]
                self._last_session = session
        if outer_src is not None and outer_src.__class__ is not bytes:
            outer_src = self._outer_address(outer_src)  # type: ignore[arg-type]
        self._decide(key, ip_len, tcp_flags, now, session, outer_src)

    def _decide(
        self,
        key: FlowKey,
        ip_len: int,
        tcp_flags: int,
        now: float,
        session: Session,
        outer_src: bytes | None,
    ) -> int:
        """Direction and filter decide a new flow: added, or rejected (the Drop value, else 0)."""
        if len(key) <= _LONGEST_V4_KEY:
            src, dst = key[4:8], key[8:12]
        else:
            src, dst = key[4:20], key[20:36]
        direction = session.direction(src, dst, outer_src)
        mirror_filter = session.filter
        if mirror_filter is not None:
            if direction == UNKNOWN:
                self.table.reject(key, ip_len, tcp_flags, now, _UNKNOWN_DIRECTION)
                self._drops[_UNKNOWN_DIRECTION] += 1
                return _UNKNOWN_DIRECTION
            _, _, _, proto, sport, dport, _ = unpack_key(key)
            rule = mirror_filter.match(
                direction,
                proto,
                int.from_bytes(src, "big"),
                int.from_bytes(dst, "big"),
                sport,
                dport,
                4 if len(src) == 4 else 6,
            )
            if rule is None or not rule.accept:  # AWS: the first matching rule decides
                recorded = None
                if mirror_filter.record_rejected:
                    recorded = (session, direction, -1 if rule is None else rule.number)
                self.table.reject(key, ip_len, tcp_flags, now, _FILTER_REJECT, recorded)
                self._drops[_FILTER_REJECT] += 1
                return _FILTER_REJECT
        self.table.add(key, ip_len, tcp_flags, now, session, direction)
        return 0

    def _session_of(self, key: FlowKey) -> Session | None:
        """The session of a key's VNI (None: unknown, dropped), cached by the key's VNI octets."""
        session = self.sessions.get(key_vni(key))
        if session is not None:
            cache = self._session_cache
            if len(cache) >= MAX_CACHED_SESSIONS:
                cache.clear()
            cache[key[:3]] = session
        return session

    def _outer_address(self, outer: str | memoryview) -> bytes | None:
        """The packed outer source of a text address or a raw sockaddr (None: not an address),
        cached: one cache for both, a text and a sockaddr's bytes never being equal keys."""
        if cython.compiled and outer.__class__ is memoryview:
            last = self._last_ipv4_sender(outer)
            if last is not None:
                return last
        cache = self._outer_cache
        key = outer.tobytes() if isinstance(outer, memoryview) else outer
        packed = cache.get(key, _MISSING)
        if packed is _MISSING:
            if len(cache) >= MAX_OUTER_SOURCES:
                cache.clear()
            packed = cache[key] = (
                sockaddr_address(outer) if isinstance(outer, memoryview) else packed_address(outer)
            )
        return packed  # type: ignore[return-value]

    def _last_ipv4_sender(self, raw: memoryview) -> bytes | None:
        """The compiled build's read of an IPv4 ``struct sockaddr_in`` (recvmmsg's), octet by
        octet: its packed address, the same bytes object while the sender stays the same (an
        NLB's few addresses); None for anything else (``_outer_address`` goes on as the pure build
        does). Never called in the pure build."""
        size = 0
        q = _buffer_octets(raw, cython.address(size))  # type: ignore[name-defined]  # noqa: F821
        if q == cython.NULL or size < _SOCKADDR_IN_LEN:
            return None
        family = q[0] | q[1] << 8 if _LITTLE_ENDIAN else q[0] << 8 | q[1]
        if family != _AF_INET:
            return None
        word = q[4] << 24 | q[5] << 16 | q[6] << 8 | q[7]
        if word != self._last_outer_word or self._last_outer is None:
            self._last_outer = bytes(raw[4:8])
            self._last_outer_word = word
        return self._last_outer

    def expire(self, now: float) -> list[FlowRecord]:
        """Records of the flows that ended by ``now``."""
        self.table.expire(now)
        return self.collect()

    def expire_steps(self, now: float) -> Iterator[list[FlowRecord]]:
        """``expire(now)`` in steps (see ``FlowTable.expire_steps``): the records of each step."""
        for _ in self.table.expire_steps(now):
            yield self.collect()

    def flush(self) -> list[FlowRecord]:
        """Records of every flow, ended now with end_reason ``shutdown``."""
        self.table.flush()
        return self.collect()

    def collect(self) -> list[FlowRecord]:
        """Turn ended flows into numbered records."""
        ended = self.table.take_ended()
        if not ended:
            return []
        records = []
        stats = self.stats
        counts = stats.records
        per_session = stats.session_datagrams
        session_names = stats.session_names
        per_endpoint = stats.endpoint_records
        sequence = self.sequence
        make = self._records.make
        for key, flow, reason in ended:
            sequence += 1
            counts[reason] = counts.get(reason, 0) + 1
            session = flow.session
            assert session is not None  # only recorded not-kept flows end
            vni = session.vni
            if (
                session.name is None
                and vni not in per_session
                and len(per_session) >= MAX_ANONYMOUS_SESSION_LABELS
            ):
                vni = OTHER_VNI  # configured sessions always have their own count
            per_session[vni] = per_session.get(vni, 0) + flow.packets
            name = session.name
            if name is not None and session_names.get(vni) is not name:
                session_names[vni] = name
            endpoint = session.gwlb_endpoint_id or NO_ENDPOINT
            if endpoint not in per_endpoint and len(per_endpoint) >= MAX_ENDPOINT_LABELS:
                endpoint = OTHER_ENDPOINT
            per_endpoint[endpoint] = per_endpoint.get(endpoint, 0) + 1
            records.append(make(key, flow, reason, sequence))
        self.sequence = sequence
        return records

    def reconfigure(self, config: Config, sessions: SessionMap) -> None:
        """New flow settings and sessions (SIGHUP): flows keep the decision they were admitted
        with; flows the old rules did not keep are decided again."""
        self.table.configure(config.flows)
        self.use_sessions(sessions)

    def use_sessions(self, sessions: SessionMap) -> None:
        """Swap the session map (reload, EC2 enrichment); cached not-kept decisions are remade."""
        self.sessions = sessions
        self._session_cache.clear()
        self._last_vni = -1
        self._last_session = None
        self._endpoint_sessions.clear()
        self.table.forget_decisions()
        self._records.forget_sessions()


def account_batch(
    account: Account,
    slots: list[memoryview],
    names: list[memoryview],
    sizes: tuple[int, ...],
    now: float,
) -> None:
    """``account`` each datagram of one recvmmsg(2) call: ``sizes[i]`` bytes in ``slots[i]``, from
    the raw sockaddr ``names[i]``. The loop of the receive path, here so that it runs compiled."""
    for i in range(len(sizes)):
        account(slots[i], sizes[i], now, names[i])


def packed_address(text: str) -> bytes | None:
    """Packed form of an address string (outer source from a socket), None if not an address."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, text)
        except OSError:
            continue
    return None


_AF_INET = socket.AF_INET.value
_AF_INET6 = socket.AF_INET6.value
_SOCKADDR_IN_LEN = 8  # family, port, IPv4 address: what _last_ipv4_sender reads
_LITTLE_ENDIAN = sys.byteorder == "little"  # a sockaddr's family is in host order
_V4_MAPPED = bytes(10) + b"\xff\xff"


def sockaddr_address(raw: memoryview) -> bytes | None:
    """Packed address of a raw ``struct sockaddr`` (what recvmmsg fills in), IPv4-mapped unwrapped."""
    family = int.from_bytes(raw[0:2], sys.byteorder)
    if family == _AF_INET:
        return bytes(raw[4:8])
    if family == _AF_INET6:
        address = bytes(raw[8:24])
        return address[12:] if address.startswith(_V4_MAPPED) else address
    return None
