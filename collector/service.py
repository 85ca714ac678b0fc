"""The supervisor: worker processes, health and metrics, signals, reload and drain.

It owns no packets. It starts one worker per CPU (each with its own SO_REUSEPORT socket), restarts
crashed workers with backoff, aggregates their snapshots for /metrics, answers the NLB's health
checks, and runs the lifecycle: SIGTERM/SIGINT -> 503 at once, drain_s, stop workers (they flush
every flow and their sink), exit 0; SIGHUP -> reload sessions and filters, or keep the old ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import msgspec
import uvloop

from collector.aws_filters import FilterFollower, filter_versions
from collector.build import compiled, describe
from collector.checks import validate
from collector.config import Config, load_config, parse_hostport
from collector.errors import CollectorError, ConfigError
from collector.io.http import HealthServer
from collector.io.udp import open_socket, retire_socket
from collector.logs import setup_logging
from collector.messages import MessageError, Reload, Snapshot, Stop, decode_from_worker, encode
from collector.metrics import Aggregate, WorkerView
from collector.worker import worker_main

log = logging.getLogger("collector.service")

MONITOR_INTERVAL_S = 0.25
RESTART_BACKOFF_MIN_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
STABLE_RUN_S = 60.0  # a worker that ran this long resets its restart backoff


class Slot:
    """One worker slot: the current process, its pipe, restart bookkeeping."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: BaseProcess | None = None
        self.conn: Connection | None = None
        self.started = 0.0
        self.failures = 0
        self.restart_handle: asyncio.TimerHandle | None = None
        # the supervisor's reference to the worker's sockets (per listener key: ``listen``,
        # ``geneve_listen``): when the worker dies, what was queued on them is counted
        # (retire_socket) instead of vanishing with the worker's file descriptors
        self.socks: dict[str, socket.socket] = {}


class Supervisor:
    def __init__(self, config: Config, config_path: str | None, overrides: Mapping[str, Any]):
        self.config = config
        self.config_path = config_path
        self.overrides = dict(overrides)
        self.workers = config.workers or os.cpu_count() or 1
        self.aggregate = Aggregate()
        self.slots = {i: Slot(i) for i in range(self.workers)}
        self.ctx = multiprocessing.get_context("spawn")
        self.stopping = False
        self.done = asyncio.Event()
        self.exit_status = 0
        self.fatal_message = ""
        self.http = HealthServer({"/healthz": self.healthz, "/metrics": self.metrics})
        # the config as its file gives it; self.config is what the workers use (the same, with
        # the followed filters' rules from AWS in place of their file copies)
        self.file_config = config
        self.filter_follower: FilterFollower | None = None
        self._publish_filter_versions()

    # ---- health and metrics -------------------------------------------------------------
    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body). 503 only when this target cannot take traffic (or is draining)."""
        workers = []
        status = "ok"
        sink_states = []
        for index, view in sorted(self.aggregate.workers.items()):
            snap = view.snapshot
            entry: dict[str, Any] = {
                "index": index,
                "alive": view.alive,
                "responsive": view.responsive,
                "restarts": view.restarts,
            }
            if snap is not None and view.alive:
                entry.update(
                    pid=snap.pid,
                    loop_lag_s=round(snap.loop_lag_s, 4),
                    recv_path=snap.recv_path,
                    flows_active=snap.flows_active,
                    datagrams=snap.datagrams,
                    sink={
                        "state": snap.sink.state,
                        "detail": snap.sink.detail,
                        "queue_records": snap.sink.queue_records,
                        "spool_bytes": snap.sink.spool_bytes,
                    },
                )
                sink_states.append(snap.sink.state)
            workers.append(entry)
            if not (view.alive and view.responsive and snap is not None):
                status = "unhealthy"
        if len(workers) < self.workers:
            status = "unhealthy"
        if "failed" in sink_states:
            status = "unhealthy"
        elif status == "ok" and "degraded" in sink_states:
            status = "degraded"  # nothing lost yet: the NLB would only fail open if we said 503
        if self.stopping:
            status = "draining"
        code = 200 if status in ("ok", "degraded") else 503
        body = {
            "status": status,
            "workers": workers,
            "sink": {"spec": self._sink_label(), "states": sink_states},
        }
        return code, body

    def _sink_label(self) -> str:
        spec = self.config.sink
        return spec.split("/")[0] + "//..." if spec.startswith("kafka://") else spec

    def healthz(self) -> tuple[int, str, bytes]:
        code, body = self.health()
        self.aggregate.healthy = code == 200
        return code, "application/json", (json.dumps(body) + "\n").encode()

    def metrics(self) -> tuple[int, str, bytes]:
        self.aggregate.healthy = self.health()[0] == 200
        self.aggregate.session_names = {
            s.vni: s.name or f"vni-{s.vni}" for s in self.config.sessions
        }
        return 200, "text/plain; version=0.0.4; charset=utf-8", self.aggregate.render()

    # ---- workers --------------------------------------------------------------------------
    def spawn(self, slot: Slot) -> None:
        loop = asyncio.get_running_loop()
        parent, child = self.ctx.Pipe()
        socks: dict[str, socket.socket] = {}
        try:
            for key, address in self.config.listeners:
                socks[key] = open_socket(address, self.config.recv_buffer_bytes, key=key)
        except ConfigError:
            for opened in socks.values():
                opened.close()
            parent.close()
            child.close()
            raise
        process = self.ctx.Process(
            target=worker_main,
            args=(slot.index, msgspec.msgpack.encode(self.config), child, socks),
            name=f"collector-worker-{slot.index}",
        )
        process.start()
        child.close()
        slot.socks = socks
        slot.process, slot.conn, slot.started = process, parent, time.time()
        view = self.aggregate.workers.setdefault(slot.index, WorkerView(index=slot.index))
        view.alive, view.responsive, view.snapshot = True, False, None
        view.last_seen = time.monotonic()
        loop.add_reader(parent.fileno(), self._on_message, slot)
        loop.add_reader(process.sentinel, self._on_exit, slot)

    def _on_message(self, slot: Slot) -> None:
        if not self._read_message(slot):
            conn = slot.conn
            if conn is not None:
                asyncio.get_running_loop().remove_reader(conn.fileno())

    def _read_message(self, slot: Slot) -> bool:
        """Handle one message from a worker; False at end of pipe."""
        conn = slot.conn
        if conn is None:
            return False
        try:
            message = decode_from_worker(conn.recv_bytes())
        except (EOFError, OSError):
            return False
        except MessageError as exc:  # the same code runs on both sides: a bug, not a peer
            log.error("bad message from a worker", extra={"worker": slot.index, "error": str(exc)})
            return True
        view = self.aggregate.workers[slot.index]
        if isinstance(message, Snapshot):
            snap = message.snapshot
            for seconds in snap.sink.latency_observations:
                self.aggregate.latency.observe(seconds)
            snap.sink.latency_observations = []
            view.snapshot = snap
            view.last_seen = time.monotonic()
            view.responsive = snap.loop_lag_s <= self.config.max_loop_lag_s
        else:
            log.error(
                "worker cannot start",
                extra={"worker": slot.index, "message": message.message, "status": message.status},
            )
            self.exit_status = message.status
            self.fatal_message = message.message
            self.begin_shutdown(fatal=True)
        return True

    def _on_exit(self, slot: Slot) -> None:
        loop = asyncio.get_running_loop()
        process = slot.process
        if process is None:
            return
        loop.remove_reader(process.sentinel)
        process.join(timeout=5)  # the sentinel fires as it exits; reap it for its exit code
        if slot.conn is not None:
            # read what the worker said last (its final snapshot) before closing the pipe
            while slot.conn.poll() and self._read_message(slot):
                pass
            loop.remove_reader(slot.conn.fileno())
            slot.conn.close()
            slot.conn = None
        view = self.aggregate.workers[slot.index]
        view.alive = view.responsive = False
        queued, drops = self._retire_socket(slot)
        if view.snapshot is not None:
            if drops is not None:  # the socket's own final count, newer than the last snapshot
                view.snapshot.kernel_drops = drops
            self.aggregate.retired.add(view.snapshot)
            view.snapshot = None
        self.aggregate.retired.lost_datagrams += queued
        slot.process = None
        code = process.exitcode
        if self.stopping:
            if code not in (0, None) and self.exit_status == 0:
                self.exit_status = 1
            log.info("worker exited", extra={"worker": slot.index, "exit_code": code})
            if all(s.process is None for s in self.slots.values()):
                self.done.set()
            return
        ran = time.time() - slot.started
        slot.failures = 1 if ran >= STABLE_RUN_S else slot.failures + 1
        delay = min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_MIN_S * 2 ** (slot.failures - 1))
        log.error(
            "worker died; restarting",
            extra={"worker": slot.index, "exit_code": code, "restart_in_s": delay},
        )
        view.restarts += 1
        slot.restart_handle = loop.call_later(delay, self._restart, slot)

    def _retire_socket(self, slot: Slot) -> tuple[int, int | None]:
        """Count and close what a dead worker's sockets still hold: (datagrams queued, their
        final kernel drop count, None when one could not be read)."""
        socks, slot.socks = slot.socks, {}
        queued = 0
        drops: int | None = 0
        for sock in socks.values():
            sock_queued, sock_drops = retire_socket(sock)
            queued += sock_queued
            drops = None if drops is None or sock_drops is None else drops + sock_drops
        if not socks:
            return 0, None
        if queued:
            log.error(
                "datagrams queued for a dead worker are lost",
                extra={"worker": slot.index, "datagrams": queued},
            )
        return queued, drops

    def _restart(self, slot: Slot) -> None:
        slot.restart_handle = None
        if self.stopping:
            return
        try:
            self.spawn(slot)
        except ConfigError as exc:  # e.g. the socket cannot be opened again: try again later
            log.error("worker cannot restart", extra={"worker": slot.index, "error": str(exc)})
            delay = RESTART_BACKOFF_MAX_S
            slot.restart_handle = asyncio.get_running_loop().call_later(delay, self._restart, slot)

    async def _monitor(self) -> None:
        while not self.done.is_set():
            now = time.monotonic()
            for view in self.aggregate.workers.values():
                if view.alive and now - view.last_seen > self.config.max_loop_lag_s:
                    view.responsive = False
            self.aggregate.healthy = self.health()[0] == 200
            await asyncio.sleep(MONITOR_INTERVAL_S)

    # ---- lifecycle --------------------------------------------------------------------------
    def begin_shutdown(self, *, fatal: bool = False) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.aggregate.draining = True
        self.aggregate.healthy = False
        drain = 0.0 if fatal else self.config.drain_s
        log.info("shutting down", extra={"drain_s": drain})
        asyncio.get_running_loop().create_task(self._stop_workers(drain))

    async def _stop_workers(self, drain_s: float) -> None:
        if drain_s:
            await asyncio.sleep(drain_s)
        for slot in self.slots.values():
            if slot.restart_handle is not None:
                slot.restart_handle.cancel()
                slot.restart_handle = None
            for sock in slot.socks.values():
                # the worker's final drain must be the last reader of its socket: close ours first
                sock.close()
            slot.socks = {}
            if slot.conn is not None:
                # a worker already gone is accounted for by _on_exit
                with contextlib.suppress(OSError):
                    slot.conn.send_bytes(encode(Stop()))
        if all(s.process is None for s in self.slots.values()):
            self.done.set()
            return
        try:
            await asyncio.wait_for(self.done.wait(), self.config.stop_timeout_s)
        except TimeoutError:
            for slot in self.slots.values():
                if slot.process is not None:
                    log.error("worker did not stop; killing", extra={"worker": slot.index})
                    slot.process.kill()
            self.exit_status = self.exit_status or 1

    def reload(self) -> None:
        if self.config_path is None:
            log.warning("SIGHUP ignored: no --config file to reload")
            return
        try:
            config = load_config(self.config_path, overrides=self.overrides)
            validate(config)
            file_config = msgspec.structs.replace(
                self.file_config,
                sessions=config.sessions,
                filters=config.filters,
                flows=config.flows,
                base_dir=config.base_dir,
            )
            in_use = self._in_use(file_config)
            validate(in_use)  # the file's inline rules next to the rules followed from AWS
        except ConfigError as exc:
            log.error("reload refused; keeping the running config", extra={"error": str(exc)})
            return
        self.file_config = file_config
        self._push(in_use)
        log.info("config reloaded", extra={"sessions": len(config.sessions)})

    def _in_use(self, file_config: Config) -> Config:
        if self.filter_follower is None:
            return file_config
        return self.filter_follower.overlay(file_config)

    def _push(self, config: Config) -> None:
        """Make ``config`` the running one: every worker gets it through the reload message."""
        self.config = config
        message = encode(Reload(config))
        for slot in self.slots.values():
            if slot.conn is not None:
                try:
                    slot.conn.send_bytes(message)
                except OSError:
                    continue
        self._publish_filter_versions()

    def _publish_filter_versions(self) -> None:
        follower = self.filter_follower
        versions = (
            follower.versions(self.file_config)
            if follower is not None
            else filter_versions(self.file_config)
        )
        self.aggregate.filter_versions = {
            name: (v.filter_id, v.version) for name, v in versions.items()
        }
        if follower is not None:
            self.aggregate.filter_refreshes = follower.refreshes
            self.aggregate.filter_refresh_failures = follower.failures

    async def _follow_filters(self, follower: FilterFollower) -> None:
        """Read the followed filters from the EC2 API on a period (in a thread: it blocks) and
        push a changed rule set through the reload path."""
        while not self.stopping:
            changed = await asyncio.to_thread(follower.refresh, self.file_config)
            if changed and not self.stopping:
                self._push(follower.overlay(self.file_config))
                log.info(
                    "mirror filters reloaded from AWS",
                    extra={
                        "versions": ",".join(
                            f"{name}={version}"
                            for name, (_, version) in sorted(self.aggregate.filter_versions.items())
                        )
                    },
                )
            else:
                self._publish_filter_versions()
            await asyncio.sleep(self.config.aws.filter_refresh_interval_s)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        host, port = parse_hostport(self.config.health, "health")
        try:
            await self.http.start(host, port)
        except OSError as exc:
            raise ConfigError(
                "health", f"cannot listen on {self.config.health}: {exc.strerror}"
            ) from exc
        for key, address in self.config.listeners:  # fail fast, naming the listener's key
            open_socket(address, 4096, key=key).close()
        if self.config.aws.follow_filters and FilterFollower.followed(self.config):
            # before any worker starts: no boto3 or no region is a config error (exit 2)
            self.filter_follower = FilterFollower(self.config.aws)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.begin_shutdown)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        for slot in self.slots.values():
            self.spawn(slot)
        follow = None
        if self.filter_follower is not None:
            follow = asyncio.create_task(self._follow_filters(self.filter_follower))
        log.info(
            "collector started",
            extra={
                "listen": self.config.listen,
                "geneve_listen": self.config.geneve_listen,
                "health": self.config.health,
                "workers": self.workers,
                "sink": self._sink_label(),
                "compiled": compiled(),
            },
        )
        if not compiled():
            log.warning(describe())
        monitor = asyncio.create_task(self._monitor())
        await self.done.wait()
        monitor.cancel()
        if follow is not None:
            follow.cancel()
        await self.http.close()
        if self.fatal_message:
            raise _FatalError(self.fatal_message, self.exit_status)
        log.info("collector stopped", extra={"exit_status": self.exit_status})
        return self.exit_status


class _FatalError(CollectorError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def run_service(config: Config, config_path: str | None, overrides: Mapping[str, Any]) -> int:
    """The ``run`` command."""
    setup_logging(config.log_format, config.log_level)
    try:
        return uvloop.run(Supervisor(config, config_path, overrides).run())
    except _FatalError as exc:
        print(f"collector: {exc}", flush=True, file=sys.stderr)
        return exc.status
