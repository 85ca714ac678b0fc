"""One worker process: its own SO_REUSEPORT socket, pipeline, flow expiry timer and sink.

Workers ignore SIGTERM/SIGINT (systemd and terminals signal the whole process group): they stop
only when the supervisor says so, or when the supervisor's pipe closes, so drain_s is honoured.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Mapping
from multiprocessing.connection import Connection

import msgspec
import uvloop

from collector.config import GENEVE_LISTENER, Config
from collector.enrich import Enricher
from collector.errors import CollectorError, ConfigError
from collector.io.sinks import Sink, SinkStatus, make_sink
from collector.io.udp import Ingest, open_socket, socket_drops, start_ingest
from collector.logs import RateLimiter, setup_logging
from collector.messages import (
    Fatal,
    FromWorker,
    MessageError,
    Snapshot,
    Stop,
    decode_from_supervisor,
    encode,
)
from collector.metrics import WorkerSnapshot
from collector.pipeline import Pipeline
from collector.sessions import build_sessions
from collector.wire.drops import Drop

log = logging.getLogger("collector.worker")

SNAPSHOT_INTERVAL_S = 0.5  # also the heartbeat the supervisor's liveness check relies on
KERNEL_DROPS_INTERVAL_S = 2.0
# Longest wait between two expiry steps while the receive path is behind: under traffic that
# keeps a worker busy, expiry still ends 1000 flows per this much (and a full table evicts).
EXPIRY_YIELD_MAX_S = 0.05
DROP_LOG_INTERVAL_S = 10.0
FINAL_DRAIN_DATAGRAMS = 1_000_000  # bound on datagrams read from the socket queue at shutdown
STOP_MARGIN_S = 1.5
"""A stopping worker is done this long before the supervisor's stop_timeout_s runs out: the
supervisor must see it exit (and the process end, its spool thread's last writes included)
before it would SIGKILL it mid-write."""
CLOSE_RESERVE_S = 1.0
"""Of the stop budget, kept for the sink's close after its flush (the sink hands what is still in
memory to its spool at the start of close)."""


def exporter_name(config: Config, index: int, started: float) -> str:
    """``HOST/wN/START_MS``: unique per worker incarnation, so sequences never collide."""
    host = config.records.exporter or socket.gethostname()
    return f"{host}/w{index}/{int(started * 1000)}"


class Worker:
    """The asyncio side of a worker process."""

    def __init__(
        self,
        index: int,
        config: Config,
        conn: Connection,
        socks: Mapping[str, socket.socket] | None = None,
    ) -> None:
        self.index = index
        # per listener key (``listen``: VXLAN, ``geneve_listen``: GENEVE), opened by the
        # supervisor, which keeps a reference (see service); the worker opens those not given
        self.given_socks = dict(socks or {})
        self.socks: dict[str, socket.socket] = {}
        self.ingests: list[Ingest] = []
        self.config = config
        self.conn = conn
        self.started = time.time()
        self.configured_sessions = build_sessions(config)
        self.pipeline = Pipeline(
            config, self.configured_sessions, exporter_name(config, index, self.started)
        )
        self.enricher: Enricher | None = None
        self.ingest: Ingest | None = None
        self.sink: Sink = make_sink(config.sink, config, worker=index)
        self.stop_requested = asyncio.Event()
        self.loop_lag_s = 0.0
        self.kernel_drops = 0
        self.drop_log = RateLimiter(DROP_LOG_INTERVAL_S)
        self._logged_drops = [0] * len(Drop)

    def send(self, message: FromWorker) -> None:
        """A message to the supervisor; a closed pipe means the supervisor is gone: stop."""
        try:
            self.conn.send_bytes(encode(message))
        except OSError:
            self.stop_requested.set()

    def snapshot(self, *, stopping: bool = False) -> WorkerSnapshot:
        """Counters now."""
        stats = self.pipeline.stats
        status = self.sink.status()
        # only the Kafka sink spools; /metrics alerts on the fill ratio before the spool is full
        spool_limit = self.config.kafka.spool_max_bytes if self.sink.name.startswith("kafka") else 0
        return WorkerSnapshot(
            index=self.index,
            pid=os.getpid(),
            started=self.started,
            datagrams=stats.datagrams,
            rx_bytes=stats.rx_bytes,
            drops=list(stats.drops),
            records=dict(stats.records),
            flows_active=len(self.pipeline.table),
            evictions=self.pipeline.table.evictions,
            kernel_drops=self.kernel_drops,
            recv_errors=sum(ingest.errors for ingest in self.ingests),
            recv_path=self.ingest.path if self.ingest is not None else "",
            geneve_datagrams=stats.geneve_datagrams,
            geneve_drops=list(stats.geneve_drops),
            session_datagrams=dict(stats.session_datagrams),
            session_names=dict(stats.session_names),
            endpoint_records=dict(stats.endpoint_records),
            enrich_refreshes=self.enricher.refreshes if self.enricher else 0,
            enrich_failures=self.enricher.failures if self.enricher else 0,
            loop_lag_s=self.loop_lag_s,
            spool_limit_bytes=spool_limit,
            sink=status,
            stopping=stopping,
        )

    def _on_message(self) -> None:
        try:
            message = decode_from_supervisor(self.conn.recv_bytes())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
            self.stop_requested.set()
            return
        except MessageError as exc:  # the supervisor and this worker run the same code: a bug
            log.error("bad message from the supervisor", extra={"error": str(exc)})
            return
        if isinstance(message, Stop):
            self.stop_requested.set()
        else:
            self._reload(message.config)

    def _reload(self, config: Config) -> None:
        try:
            sessions = build_sessions(config)
        except ConfigError as exc:  # the supervisor validated it; keep the old one all the same
            log.error("reload refused", extra={"error": str(exc), "worker": self.index})
            return
        self.configured_sessions = sessions
        self.config = msgspec.structs.replace(self.config, flows=config.flows)
        if self.enricher is not None:
            sessions = self.enricher.apply(sessions, self.enricher.view)
        self.pipeline.reconfigure(config, sessions)
        log.info(
            "sessions reloaded", extra={"worker": self.index, "sessions": len(config.sessions)}
        )

    def _log_drops(self, now: float) -> None:
        drops = self.pipeline.stats.drops
        for reason in Drop:
            new = drops[reason] - self._logged_drops[reason]
            if new and self.drop_log.allow(reason.label, now):
                self._logged_drops[reason] = drops[reason]
                log.warning(
                    "datagrams dropped",
                    extra={"reason": reason.label, "count": new, "worker": self.index},
                )

    async def _ticker(self) -> None:
        """Flow expiry, snapshots, loop lag and kernel drops, off the per-packet path."""
        loop = asyncio.get_running_loop()
        interval = min(SNAPSHOT_INTERVAL_S, self.config.flows.expire_interval_s)
        next_expiry = time.time() + self.config.flows.expire_interval_s
        next_drops = 0.0
        expected = loop.time() + interval
        while not self.stop_requested.is_set():
            await asyncio.sleep(max(0.0, expected - loop.time()))
            self.loop_lag_s = max(0.0, loop.time() - expected)
            expected = loop.time() + interval
            now = time.time()
            if now >= next_expiry:
                # in steps, letting the receive path run between them: a scan of a large table and
                # the records of a mass expiry would otherwise stall the loop for their whole time
                for records in self.pipeline.expire_steps(now):
                    self.sink.submit(records)
                    await self._let_ingest_catch_up(loop)
                    if loop.time() >= expected:  # a long expiry still sends the heartbeat
                        self.send(Snapshot(self.snapshot()))
                        expected = loop.time() + interval
                    if self.stop_requested.is_set():  # the shutdown flush ends the rest
                        break
                next_expiry = now + self.config.flows.expire_interval_s
            else:
                self.sink.submit(self.pipeline.collect())  # flows ended by TCP FIN/RST
            if now >= next_drops:
                drops = [socket_drops(sock) for sock in self.socks.values()]
                if None not in drops:
                    self.kernel_drops = sum(d for d in drops if d is not None)
                next_drops = now + KERNEL_DROPS_INTERVAL_S
            self._log_drops(now)
            self.send(Snapshot(self.snapshot()))

    async def _let_ingest_catch_up(self, loop: asyncio.AbstractEventLoop) -> None:
        """Between two expiry steps: let the loop run, and while the receive path is behind (its
        last read stopped at a full batch) keep letting it, for up to EXPIRY_YIELD_MAX_S. Expiry
        then takes the CPU the traffic leaves and the receive path never waits for a mass
        expiry, yet expiry always progresses (a table that stays full evicts its oldest flows)."""
        deadline = loop.time() + EXPIRY_YIELD_MAX_S
        ingests = self.ingests
        while True:  # one turn of the loop at least; the receive path reads a batch per turn
            await asyncio.sleep(0)
            if not any(i.backlogged for i in ingests) or loop.time() >= deadline:
                return

    async def _enrich(self, enricher: Enricher) -> None:
        """Refresh the EC2 view in a thread, off the packet path, and swap the session map."""
        interval = self.config.aws.refresh_interval_s
        while not self.stop_requested.is_set():
            view = await asyncio.to_thread(enricher.refresh)
            self.pipeline.use_sessions(enricher.apply(self.configured_sessions, view))
            # jitter, so the workers of a fleet do not call the EC2 API in lockstep
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))  # noqa: S311

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        try:
            if self.config.aws.enrich:
                self.enricher = Enricher(self.config.aws)
            await self.sink.start()
            for key, address in self.config.listeners:
                sock = self.given_socks.get(key)
                if sock is None:
                    sock = open_socket(address, self.config.recv_buffer_bytes, key=key)
                self.socks[key] = sock
        except ConfigError as exc:
            self.send(Fatal(f"config error: {exc}", ConfigError.exit_status))
            return 2
        except CollectorError as exc:
            self.send(Fatal(str(exc), 1))
            return 1
        # What start-up made (modules, config, the Kafka client) lives as long as the worker:
        # frozen, the cyclic GC's full collections no longer walk it over and over while a flood
        # of records churns through the sink (measured: 4-10 % less CPU per record published).
        gc.collect()
        gc.freeze()
        for key, sock in self.socks.items():
            self.ingests.append(
                await start_ingest(
                    loop,
                    sock,
                    self.pipeline,
                    mode=self.config.recv_mode,
                    max_batch=self.config.max_batch_datagrams,
                    max_datagram_bytes=self.config.max_datagram_bytes,
                    coalesce_s=self.config.recv_coalesce_ms / 1000,
                    geneve=key == GENEVE_LISTENER,
                )
            )
        self.ingest = self.ingests[0]
        loop.add_reader(self.conn.fileno(), self._on_message)
        log.info(
            "worker started",
            extra={"worker": self.index, "pid": os.getpid(), "exporter": self.pipeline.exporter},
        )
        self.send(Snapshot(self.snapshot()))
        tasks = [asyncio.create_task(self._ticker())]
        if self.enricher is not None:
            tasks.append(asyncio.create_task(self._enrich(self.enricher)))
        await self.stop_requested.wait()
        stopping_s = time.monotonic()
        for task in tasks:
            task.cancel()
        # stop receiving, account what the kernel already queued for us, then flush everything
        for ingest in self.ingests:
            ingest.stop()
        for ingest in self.ingests:
            drained = 0
            while drained < FINAL_DRAIN_DATAGRAMS:  # the protocol path's transport drains nothing
                got = ingest.read()
                if not got:
                    break
                drained += got
        self.sink.submit(self.pipeline.flush())
        await self._flush_and_close_sink(stopping_s)
        for sock in self.socks.values():
            sock.close()
        self.send(Snapshot(self.snapshot(stopping=True)))
        log.info(
            "worker stopped",
            extra={"worker": self.index, "records": self.pipeline.sequence},
        )
        return 0

    async def _flush_and_close_sink(self, stopping_s: float) -> None:
        """Flush, then close the sink, both within the stop budget (stop_timeout_s less
        STOP_MARGIN_S from when the stop began): a sink whose broker hangs must not keep the
        worker past the supervisor's patience, which ends in a SIGKILL mid-write. A close cut
        short has already handed its records to the spool thread, which writes them before the
        process ends."""
        deadline = stopping_s + self.config.stop_timeout_s - STOP_MARGIN_S
        flush_s = min(
            self.config.sink_flush_timeout_s, deadline - CLOSE_RESERVE_S - time.monotonic()
        )
        try:
            await self.sink.flush(max(flush_s, 0.0))  # even 0: the file sink fsyncs in it
            async with asyncio.timeout_at(_loop_time(deadline)):
                await self.sink.close()
        except TimeoutError:
            log.error(
                "sink close cut short at the end of the stop budget (stop_timeout_s %.1f s)",
                self.config.stop_timeout_s,
                extra={"worker": self.index},
            )
        except CollectorError as exc:
            log.error("sink flush failed", extra={"worker": self.index, "error": str(exc)})


def _loop_time(monotonic_s: float) -> float:
    """A time.monotonic() instant on the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_s - time.monotonic())


def worker_main(
    index: int,
    config_raw: bytes,
    conn: Connection,
    socks: Mapping[str, socket.socket] | None = None,
) -> None:
    """Process entry point (spawned by the supervisor)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    config = msgspec.msgpack.decode(config_raw, type=Config)
    setup_logging(config.log_format, config.log_level)
    status = uvloop.run(Worker(index, config, conn, socks).run())
    conn.close()
    raise SystemExit(status)


__all__ = ["SinkStatus", "Worker", "worker_main"]
