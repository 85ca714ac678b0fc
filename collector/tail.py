"""``python -m collector tail kafka://HOST:PORT/TOPIC``: read records back and print them.

A consumer without a group: it reads every partition of the topic (from the earliest offsets with
``--from-beginning``, else from the end), commits nothing and disturbs no consumer group. Each
message is decoded by its ``content-type`` header, printed as a table, JSON lines or flow-log lines,
and its ``(exporter, sequence)`` is tracked: at exit a summary on stderr shows, per exporter, the
records read, the gaps between the sequence numbers seen (lost records) and the repeats
(duplicates). Ctrl-C, SIGTERM, ``--max-records`` and ``--timeout-s`` all end it the same way:
summary, exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec

from collector.config import Config, KafkaConfig
from collector.encoders import CONTENT_TYPES
from collector.errors import ConfigError
from collector.io.exporter_end import END_MARKER, decode_end
from collector.records import FlowRecord, decode
from collector.wire.l4 import TCP_FLAG_NAMES

POLL_MS = 200
"""How long one fetch waits; bounds how late a signal or the idle timeout is noticed."""
MAX_WARNINGS = 5
"""Undecodable messages reported one by one; the rest are only counted (the topic may be noisy)."""

JSON = CONTENT_TYPES["json"]
MSGPACK = CONTENT_TYPES["msgpack"]
FLOW_LOG = CONTENT_TYPES["vpc-flow-log"]

_PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6", 132: "sctp", 47: "gre", 50: "esp"}

# (title, width); the last column is not padded
_COLUMNS = (
    ("time", 23),
    ("exporter", 26),
    ("seq", 7),
    ("vni/session", 16),
    ("dir", 7),
    ("proto", 5),
    ("src:port -> dst:port", 44),
    ("packets", 8),
    ("bytes", 10),
    ("flags", 15),
    ("end", 0),
)
_RIGHT = {"seq", "packets", "bytes"}


# -- sequence tracking ---------------------------------------------------------------------------


@dataclass
class SequenceTracker:
    """The sequence numbers seen for one exporter, kept as sorted disjoint ranges.

    Memory grows with the number of gaps, not with the records read.
    """

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    records: int = 0
    duplicates: int = 0
    end: int = 0
    """The exporter's last sequence, from an end marker (0: unknown); a missing tail up to it is
    lost, not late."""

    def add(self, sequence: int) -> bool:
        """Record one sequence number; False when it was seen before."""
        self.records += 1
        i = bisect.bisect_right(self.starts, sequence) - 1
        if i >= 0 and sequence <= self.ends[i]:
            self.duplicates += 1
            return False
        joins_left = i >= 0 and self.ends[i] == sequence - 1
        joins_right = i + 1 < len(self.starts) and self.starts[i + 1] == sequence + 1
        if joins_left and joins_right:
            self.ends[i] = self.ends[i + 1]
            del self.starts[i + 1], self.ends[i + 1]
        elif joins_left:
            self.ends[i] = sequence
        elif joins_right:
            self.starts[i + 1] = sequence
        else:
            self.starts.insert(i + 1, sequence)
            self.ends.insert(i + 1, sequence)
        return True

    @property
    def first(self) -> int:
        return self.starts[0] if self.starts else 0

    @property
    def last(self) -> int:
        return self.ends[-1] if self.ends else 0

    @property
    def lost(self) -> int:
        """Sequence numbers missing between the first and the last one seen, and after the last
        one up to the end an end marker named."""
        inner = sum(self.starts[i + 1] - self.ends[i] - 1 for i in range(len(self.starts) - 1))
        return inner + max(0, self.end - self.last)

    def gaps(self, limit: int = 3) -> list[tuple[int, int]]:
        """Missing ranges (inclusive), at most ``limit``: the first ones between the first and
        the last sequence seen, and always the lost tail up to an end marker's last sequence (a
        dead exporter's tail is what its end marker is there to show)."""
        out = [(self.ends[i] + 1, self.starts[i + 1] - 1) for i in range(len(self.starts) - 1)]
        if self.end > self.last:
            return [*out[: max(0, limit - 1)], (self.last + 1, self.end)]
        return out[:limit]

    @property
    def gap_count(self) -> int:
        """How many missing ranges there are (``gaps`` shows at most its ``limit``)."""
        return len(self.starts) - 1 + (self.end > self.last)


@dataclass
class TailStats:
    """What a tail read, for the summary."""

    exporters: dict[str, SequenceTracker] = field(default_factory=dict)
    records: int = 0
    flow_log_lines: int = 0
    undecodable: int = 0
    end_markers: int = 0

    def track(self, exporter: str, sequence: int) -> None:
        self._tracker(exporter).add(sequence)

    def mark_end(self, exporter: str, last_sequence: int) -> None:
        """An end marker: ``exporter`` emitted nothing after ``last_sequence``."""
        self.end_markers += 1
        tracker = self._tracker(exporter)
        tracker.end = max(tracker.end, last_sequence)

    def _tracker(self, exporter: str) -> SequenceTracker:
        tracker = self.exporters.get(exporter)
        if tracker is None:
            tracker = self.exporters[exporter] = SequenceTracker()
        return tracker

    def summary(self) -> str:
        lines = [
            f"collector tail: {self.records} messages, {len(self.exporters)} exporters"
            + (
                f", {self.flow_log_lines} flow-log lines (no sequence)"
                if self.flow_log_lines
                else ""
            )
            + (f", {self.undecodable} undecodable" if self.undecodable else "")
            + (f", {self.end_markers} end markers" if self.end_markers else "")
        ]
        if self.exporters:
            width = max(len("exporter"), *(len(e) for e in self.exporters))
            lines.append(
                f"  {'exporter':<{width}}  {'records':>8}  {'first':>8}  {'last':>8}"
                f"  {'lost':>6}  {'duplicates':>10}"
            )
            for name in sorted(self.exporters):
                t = self.exporters[name]
                shown = t.gaps()
                gaps = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in shown)
                if t.gap_count > len(shown):
                    gaps += f" ({t.gap_count - len(shown)} more ranges)"
                lines.append(
                    f"  {name:<{width}}  {t.records:>8}  {t.first:>8}  {t.last:>8}"
                    f"  {t.lost:>6}  {t.duplicates:>10}" + (f"  missing: {gaps}" if gaps else "")
                )
            lost = sum(t.lost for t in self.exporters.values())
            duplicates = sum(t.duplicates for t in self.exporters.values())
            lines.append(f"  total lost {lost}, duplicates {duplicates}")
        return "\n".join(lines)


# -- decoding and printing ------------------------------------------------------------------------


def header(headers: Any, name: str) -> str | None:
    """The value of a message header (case-insensitive name), if any."""
    for key, value in headers or ():
        if key.lower() == name and value is not None:
            return bytes(value).decode("utf-8", "replace")
    return None


def content_type(headers: Any) -> str | None:
    """The ``content-type`` header of a message, if any."""
    return header(headers, "content-type")


def origin(headers: Any) -> tuple[str, int] | None:
    """``(exporter, sequence)`` from the message headers the sink writes for every value format;
    None when they are missing or malformed (older collectors, other producers)."""
    exporter = header(headers, "exporter")
    sequence = header(headers, "sequence")
    if exporter is None or sequence is None or not sequence.isdigit():
        return None
    return exporter, int(sequence)


def decode_value(value: bytes, ctype: str | None) -> FlowRecord | str:
    """A record, or a flow-log line (text, printed as is). Raises on anything else."""
    kind = (ctype or "").split(";")[0].strip().lower()
    if ctype == FLOW_LOG or (kind == "text/plain" and "vpc-flow-log" in (ctype or "")):
        return value.decode("utf-8", "replace").rstrip("\n")
    if kind == JSON:
        return decode(value, "json")
    if kind == MSGPACK:
        return decode(value, "msgpack")
    # no or unknown header: JSON starts with "{", msgpack maps with 0x8X/0xde/0xdf
    return decode(value, "json") if value[:1] == b"{" else decode(value, "msgpack")


def _endpoint(addr: str, port: int, protocol: int) -> str:
    text = f"[{addr}]" if ":" in addr else addr
    return f"{text}:{port}" if protocol in (6, 17, 132) else text


def _flags(r: FlowRecord) -> str:
    if r.protocol == 6:
        names = [name for bit, name in TCP_FLAG_NAMES if r.tcp_flags & bit]
        return "|".join(names) if names else "-"
    if r.icmp_type is not None:
        return f"type {r.icmp_type}/{r.icmp_code}"
    return "-"


def table_header() -> str:
    return _row([title for title, _ in _COLUMNS])


def _row(cells: list[str]) -> str:
    out = []
    for (title, width), cell in zip(_COLUMNS, cells, strict=True):
        out.append(cell.rjust(width) if title in _RIGHT else cell.ljust(width))
    return " ".join(out).rstrip()


def table_row(r: FlowRecord) -> str:
    when = datetime.fromtimestamp(r.start_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:23]
    session = f"{r.vni}/{r.session}" if r.session else str(r.vni)
    src = _endpoint(r.src_addr, r.src_port, r.protocol)
    dst = _endpoint(r.dst_addr, r.dst_port, r.protocol)
    return _row(
        [
            when,
            r.exporter,
            str(r.sequence),
            session,
            r.direction,
            _PROTOCOLS.get(r.protocol, str(r.protocol)),
            f"{src} -> {dst}",
            str(r.packets),
            str(r.bytes),
            _flags(r),
            r.end_reason,
        ]
    )


def formatter(fmt: str, config: Config) -> Callable[[FlowRecord], str]:
    """How one record is printed for ``--format``."""
    if fmt == "json":
        encoder = msgspec.json.Encoder()
        return lambda r: encoder.encode(r).decode()
    if fmt == "vpc-flow-log":
        from collector.encoders.flowlog import FlowLogFormat  # noqa: PLC0415

        flow_log = FlowLogFormat.parse(config.records.vpc_flow_log_format)
        return lambda r: flow_log.encode(r).decode()
    return table_row


# -- Kafka ---------------------------------------------------------------------------------------


def consumer_kwargs(c: KafkaConfig) -> dict[str, Any]:
    """Connection and security settings of ``[kafka]`` for a consumer (checked as the sink checks
    them: a ConfigError names the key)."""
    from collector.io.kafka.client import client_kwargs  # noqa: PLC0415 - aiokafka only when tailing

    return client_kwargs(c, client_id=f"{c.client_id}-tail")


class _Output:
    """stdout that turns a closed pipe (``| head``) into a stop instead of a traceback."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.closed = False

    def write_lines(self, lines: list[str]) -> None:
        if self.closed or not lines:
            return
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except BrokenPipeError:
            self.closed = True
            # keep the interpreter's final flush of stdout from failing again
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())


async def tail(
    bootstrap: list[str],
    topic: str,
    *,
    fmt: str,
    config: Config,
    from_beginning: bool,
    max_records: int | None,
    timeout_s: float | None,
    stop: asyncio.Event,
    out: _Output,
    stats: TailStats,
) -> int:
    """Consume until stopped; returns the exit status."""
    from aiokafka import AIOKafkaConsumer  # noqa: PLC0415 - only tail and the sink need aiokafka
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    show = formatter(fmt, config)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        **consumer_kwargs(config.kafka),
    )
    starting = asyncio.ensure_future(consumer.start())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, KafkaError, OSError):
                await starting
            return 0
        try:
            starting.result()
        except (KafkaError, OSError) as exc:
            print(f"collector tail: cannot reach {','.join(bootstrap)}: {exc}", file=sys.stderr)
            return 1
        if topic not in await consumer.topics():
            print(f"collector tail: topic {topic!r} does not exist yet; waiting", file=sys.stderr)
        consumer.subscribe([topic])
        if fmt == "table":
            out.write_lines([table_header()])
        idle_since = time.monotonic()
        while not stop.is_set() and not out.closed:
            batches = await consumer.getmany(timeout_ms=POLL_MS)
            lines: list[str] = []
            for messages in batches.values():
                for message in messages:
                    stats.records += 1
                    lines.extend(_render(message, show, stats))
                    if max_records is not None and stats.records >= max_records:
                        break
                if max_records is not None and stats.records >= max_records:
                    break
            out.write_lines(lines)
            if max_records is not None and stats.records >= max_records:
                break
            now = time.monotonic()
            if batches:
                idle_since = now
            elif timeout_s is not None and now - idle_since >= timeout_s:
                break
    finally:
        stopping.cancel()
        # also after a failed start: the client holds connections and warns when left unclosed
        with contextlib.suppress(KafkaError, OSError):
            await consumer.stop()
    return 0


def _render(message: Any, show: Callable[[FlowRecord], str], stats: TailStats) -> list[str]:
    value = message.value or b""
    ctype = content_type(message.headers)
    if ctype == END_MARKER:  # not a record: where a dead worker's exporter ended
        try:
            end = decode_end(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            stats.undecodable += 1
            return []
        stats.mark_end(end.exporter, end.last_sequence)
        return []
    try:
        item = decode_value(value, ctype)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        stats.undecodable += 1
        if stats.undecodable <= MAX_WARNINGS:
            where = f"partition {message.partition} offset {message.offset}"
            print(f"collector tail: undecodable message at {where}: {exc}", file=sys.stderr)
        return []
    # the headers name the record whatever the value format; a record's own fields otherwise
    named = origin(message.headers)
    if named is None and not isinstance(item, str):
        named = (item.exporter, item.sequence)
    if named is None:
        stats.flow_log_lines += 1
    else:
        stats.track(*named)
    return [item] if isinstance(item, str) else [show(item)]


def run_tail(args: argparse.Namespace, config: Config) -> int:
    """Entry point of ``collector tail``; returns the exit status."""
    from collector.io.sinks import parse_kafka_spec  # noqa: PLC0415

    bootstrap, topic = parse_kafka_spec(args.spec, "tail")
    if args.max_records is not None and args.max_records < 1:
        raise ConfigError("--max-records", "must be at least 1")
    if args.timeout_s is not None and args.timeout_s <= 0:
        raise ConfigError("--timeout-s", "must be positive")
    if args.format == "vpc-flow-log":
        from collector.encoders.flowlog import FlowLogFormat  # noqa: PLC0415

        FlowLogFormat.parse(config.records.vpc_flow_log_format)  # a bad format fails before I/O
    stats = TailStats()
    out = _Output(sys.stdout)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            return await tail(
                bootstrap,
                topic,
                fmt=args.format,
                config=config,
                from_beginning=args.from_beginning,
                max_records=args.max_records,
                timeout_s=args.timeout_s,
                stop=stop,
                out=out,
                stats=stats,
            )
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    status = asyncio.run(main())
    if status == 0:
        print(stats.summary(), file=sys.stderr)
    return status
