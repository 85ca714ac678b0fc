"""Offline replay: a capture through the very same pipeline, with the capture's clock."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from collector.config import Config
from collector.io.pcap import CaptureStats, read_vxlan
from collector.pipeline import Pipeline
from collector.records import FlowRecord, encoder_for
from collector.sessions import build_sessions
from collector.wire.drops import Drop

EXPIRE_EVERY_S = 1.0  # capture seconds between expiry passes, as the live service's timer


def replay(
    path: str | Path,
    config: Config,
    emit: Callable[[list[FlowRecord]], None],
    capture: CaptureStats | None = None,
) -> Pipeline:
    """Run a capture through a pipeline; ``emit`` gets records in batches as flows end."""
    pipeline = Pipeline(config, build_sessions(config), exporter=f"replay/{Path(path).name}")
    capture = capture if capture is not None else CaptureStats()
    next_expiry: float | None = None
    for payload, now, outer_src in read_vxlan(path, config.vxlan_port, capture):
        if next_expiry is None:
            next_expiry = now + EXPIRE_EVERY_S
        elif now >= next_expiry:
            emit(pipeline.expire(now))
            next_expiry = now + EXPIRE_EVERY_S
        pipeline.feed(payload, len(payload), now, outer_src)
    emit(pipeline.flush())
    pipeline.stats.drops[Drop.NOT_VXLAN] += capture.not_vxlan
    pipeline.stats.datagrams += capture.not_vxlan
    return pipeline


def run_replay(path: str, config: Config, out: BinaryIO | None = None) -> int:
    """The ``replay`` command: records as lines on stdout, a summary on stderr."""
    stream = out if out is not None else sys.stdout.buffer
    encode = encoder_for(config.records.format, config.records.vpc_flow_log_format)

    def emit(records: list[FlowRecord]) -> None:
        if records:
            stream.write(b"".join([encode(r) + b"\n" for r in records]))

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
    stats = pipeline.stats
    drops = {Drop(i).label: n for i, n in enumerate(stats.drops) if n}
    print(
        f"replay {Path(path).name}: datagrams={stats.datagrams} kept={stats.kept} "
        f"records={pipeline.sequence} drops={drops or 'none'} host={socket.gethostname()}",
        file=sys.stderr,
    )
    return 0
