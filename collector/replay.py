"""Offline replay: a capture through the very same pipeline, with the capture's clock."""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import msgspec

from collector.config import Config
from collector.encoders import encoder_for, record_separator
from collector.io.pcap import CaptureStats, read_mirrored
from collector.io.sink import SinkStatus
from collector.logs import setup_logging
from collector.pipeline import Pipeline
from collector.records import FlowRecord
from collector.sessions import build_sessions
from collector.wire.drops import Drop

EXPIRE_EVERY_S = 1.0  # capture seconds between expiry passes, as the live service's timer
SINK_BACKLOG_RECORDS = 10_000  # records a sink may hold before the replay waits for it


def replay(
    path: str | Path,
    config: Config,
    emit: Callable[[list[FlowRecord]], None],
    capture: CaptureStats | None = None,
) -> Pipeline:
    """Run a capture through a pipeline; ``emit`` gets records in batches as flows end.

    UDP to ``vxlan_port`` is VXLAN, UDP to ``geneve_port`` GENEVE from a Gateway Load Balancer
    (its outer source, the GWLB's address, plays no part: direction comes from the mirror
    datagram inside); a capture may hold both."""
    pipeline = Pipeline(config, build_sessions(config), exporter=f"replay/{Path(path).name}")
    capture = capture if capture is not None else CaptureStats()
    next_expiry: float | None = None
    ports = config.vxlan_port, config.geneve_port
    for payload, now, outer_src, geneve in read_mirrored(path, *ports, capture):
        if next_expiry is None:
            next_expiry = now + EXPIRE_EVERY_S
        elif now >= next_expiry:
            emit(pipeline.expire(now))
            next_expiry = now + EXPIRE_EVERY_S
        if geneve:
            pipeline.feed_geneve(payload, len(payload), now, outer_src)
        else:
            pipeline.feed(payload, len(payload), now, outer_src)
    emit(pipeline.flush())
    pipeline.stats.drops[Drop.NOT_VXLAN] += capture.not_vxlan
    pipeline.stats.datagrams += capture.not_vxlan
    return pipeline


def run_replay(path: str, config: Config, out: BinaryIO | None = None, sink_spec: str = "-") -> int:
    """The ``replay`` command: records to stdout (or ``sink_spec``), a summary on stderr."""
    if sink_spec != "-":
        return _replay_to_sink(path, config, sink_spec)
    stream = out if out is not None else sys.stdout.buffer
    encode = encoder_for(config.records.format, config.records.vpc_flow_log_format)
    end = record_separator(config.records.format)

    def emit(records: list[FlowRecord]) -> None:
        if records:
            stream.write(b"".join([encode(r) + end for r in records]))

    capture = CaptureStats()
    try:
        pipeline = replay(path, config, emit, capture)
        stream.flush()
    except BrokenPipeError:  # `replay ... | head` is a normal way to look at a capture
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        return 0
    if capture.truncated_file:
        print(
            f"replay {Path(path).name}: the capture file ends inside a record (cut short while "
            "being written?); everything before that point was replayed",
            file=sys.stderr,
        )
    _summary(path, pipeline)
    return 0


def _summary(path: str, pipeline: Pipeline, extra: str = "") -> None:
    stats = pipeline.stats
    drops = {Drop(i).label: n for i, n in enumerate(stats.drops) if n}
    print(
        f"replay {Path(path).name}: datagrams={stats.datagrams} kept={stats.kept} "
        f"records={pipeline.sequence} drops={drops or 'none'} host={socket.gethostname()}{extra}",
        file=sys.stderr,
    )


def _replay_to_sink(path: str, config: Config, spec: str) -> int:
    """Replay into any sink: the capture is read in a thread, the sink runs on an event loop.

    Batches pass through a bounded queue and the loop waits while the sink holds more than
    SINK_BACKLOG_RECORDS, so a slow sink slows the replay down instead of dropping records.
    Exit status 1 when the sink lost or could not deliver records.
    """
    from collector.io.sinks import make_sink  # noqa: PLC0415 - stdout replays need no sinks

    setup_logging(config.log_format, config.log_level)  # the sink's errors, with their reasons
    sink = make_sink(spec, config)
    batches: queue.Queue[list[FlowRecord] | None] = queue.Queue(maxsize=16)
    capture = CaptureStats()
    done: list[Pipeline] = []

    def emit(records: list[FlowRecord]) -> None:
        if records:
            batches.put(records)

    def read() -> None:
        try:
            done.append(replay(path, config, emit, capture))
        finally:
            batches.put(None)

    async def drive() -> SinkStatus:
        await sink.start()
        reader = asyncio.get_running_loop().run_in_executor(None, read)
        while (batch := await asyncio.to_thread(batches.get)) is not None:
            sink.submit(batch)
            # the sink contract has no "backlog below N" event, only status(): poll it
            while sink.status().queue_records > SINK_BACKLOG_RECORDS:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        await reader
        await sink.flush(msgspec.structs.replace(config, sink=spec).sink_flush_timeout_s)
        await sink.close()
        return sink.status()

    status = asyncio.run(drive())
    if capture.truncated_file:
        print(f"replay {Path(path).name}: the capture file ends inside a record", file=sys.stderr)
    lost = status.dropped + status.failed
    _summary(path, done[0], f" sink={sink.name} delivered={status.delivered} lost={lost}")
    return 1 if lost else 0
