"""Where records go: stdout and file sinks, and the SPEC parser that picks a sink.

Sinks take records in batches (``submit`` never blocks the receive path) and say how they are doing
(``status``) so /healthz can tell "degraded" from "cannot take traffic".
"""

from __future__ import annotations

import contextlib
import os
import select
import stat
import sys
import time
from collections.abc import Callable

from collector.config import Config, KafkaConfig
from collector.encoders import encoder_for, record_separator
from collector.errors import ConfigError, SinkError
from collector.io.sink import Sink, SinkStatus
from collector.records import FlowRecord


class StreamSink:
    """JSON lines (or another format) written to a file descriptor with one write per batch."""

    def __init__(
        self,
        name: str,
        fd_opener: Callable[[], int],
        encode: Callable[[FlowRecord], bytes],
        separator: bytes = b"\n",
    ):
        self.name = name
        self._open = fd_opener
        self._encode = encode
        self._separator = separator  # b"" for formats that frame themselves (goflow2)
        self._fd = -1
        self._counters = SinkStatus()
        self._error = ""
        self._atomic_limit = 0

    async def start(self) -> None:
        try:
            self._fd = self._open()
            regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
        except OSError as exc:
            raise SinkError(f"sink {self.name}: {exc.strerror}", retriable=False) from exc
        # Several workers share one stdout pipe: a write of at most PIPE_BUF bytes is atomic there,
        # so batches go out in whole-line chunks of that size and lines never interleave. Appends
        # to a regular file opened with O_APPEND are one write per batch.
        self._atomic_limit = 0 if regular else select.PIPE_BUF

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def submit(self, records: list[FlowRecord]) -> None:
        if not records:
            return
        encode, end = self._encode, self._separator
        started = time.monotonic()
        lines = [encode(r) + end for r in records]
        try:
            if self._atomic_limit:
                for chunk in _chunks(lines, self._atomic_limit):
                    self._write(chunk)
            else:
                self._write(b"".join(lines))
        except OSError as exc:
            self._counters.failures += 1
            self._counters.failed += len(records)
            self._error = f"write failed: {exc.strerror}"
            return
        self._error = ""
        self._counters.delivered += len(records)
        self._counters.latency_observations.append(time.monotonic() - started)

    async def flush(self, timeout_s: float) -> None:
        if self._fd >= 0:
            # pipes and terminals cannot be synced; what was written to them is delivered
            with contextlib.suppress(OSError):
                os.fsync(self._fd)

    async def close(self) -> None:
        if self._fd > 2:
            os.close(self._fd)
        self._fd = -1

    def status(self) -> SinkStatus:
        c = self._counters
        observations, c.latency_observations = c.latency_observations, []
        return SinkStatus(
            state="failed" if self._error else "ok",
            detail=self._error,
            delivered=c.delivered,
            failed=c.failed,
            failures=c.failures,
            latency_observations=observations,
        )


def _chunks(lines: list[bytes], limit: int) -> list[bytes]:
    """Join lines into chunks of at most ``limit`` bytes (a longer line is a chunk of its own)."""
    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        if current and size + len(line) > limit:
            chunks.append(b"".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        chunks.append(b"".join(current))
    return chunks


def make_sink(spec: str, config: Config, *, key: str = "sink", worker: int = 0) -> Sink:
    """Build the sink a SPEC names: ``-``, ``file:PATH``, ``kafka://HOST:PORT[,...]/TOPIC``,
    ``ipfix://HOST:PORT`` or ``ipfix+tcp://HOST:PORT``; ``worker`` is the worker's index."""
    if spec.startswith(("ipfix://", "ipfix+tcp://")):
        from collector.io.ipfix import IpfixSink, parse_ipfix_spec  # noqa: PLC0415

        transport, host, port = parse_ipfix_spec(spec, key)
        return IpfixSink(transport, host, port, config.ipfix, worker=worker)
    encode = encoder_for(config.records.format, config.records.vpc_flow_log_format)
    end = record_separator(config.records.format)
    if spec == "-":
        return StreamSink("stdout", sys.stdout.fileno, encode, end)
    if spec.startswith("file:"):
        path = spec[len("file:") :]
        if not path:
            raise ConfigError(key, "file: needs a path, e.g. file:/var/log/flows.jsonl")
        return StreamSink(
            f"file:{path}",
            lambda: os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
            encode,
            end,
        )
    if spec.startswith("kafka://"):
        bootstrap, topic = parse_kafka_spec(spec, key)
        from collector.io.kafka import KafkaSink  # noqa: PLC0415 - aiokafka only when asked for

        return KafkaSink(bootstrap, topic, config.kafka, config.records)
    raise ConfigError(
        key,
        f"{spec!r} is not '-', 'file:PATH', 'kafka://HOST:PORT/TOPIC', 'ipfix://HOST:PORT' "
        "or 'ipfix+tcp://HOST:PORT'",
    )


def parse_kafka_spec(spec: str, key: str = "sink") -> tuple[list[str], str]:
    """``kafka://h1:p1,h2:p2/topic`` -> (["h1:p1", "h2:p2"], "topic")."""
    rest = spec[len("kafka://") :]
    hosts, _, topic = rest.partition("/")
    servers = [h for h in hosts.split(",") if h]
    if not servers or not topic or "/" in topic:
        raise ConfigError(key, f"{spec!r} is not kafka://HOST:PORT[,HOST:PORT]/TOPIC")
    for server in servers:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(key, f"{server!r} in {spec!r} is not HOST:PORT")
    return servers, topic


__all__ = ["KafkaConfig", "Sink", "SinkStatus", "StreamSink", "make_sink", "parse_kafka_spec"]
