"""IPFIX export sinks: ``ipfix://HOST:PORT`` (UDP) and ``ipfix+tcp://HOST:PORT`` (RFC 7011).

Neither ever blocks the receive loop: UDP datagrams go out on a non-blocking socket, paced by a
token bucket (``ipfix.max_datagrams_per_s``, timer callbacks send what waits), TCP records wait
in a bounded queue that a background task writes out.

What each transport can lose, and how it is counted:

- **UDP** has no acknowledgement. A datagram the kernel refuses (send buffer full, ICMP port
  unreachable reported on the connected socket, no route) is counted in ``dropped`` with its
  records. A datagram lost in the network or by a receiver that is down without the kernel
  hearing of it is not seen here; the receiver sees it as a gap in the message sequence numbers.
  Templates are sent again every ``ipfix.template_refresh_s`` (RFC 7011 section 8.4), so a
  receiver that restarts decodes data again within that time; records it gets before are lost.
  Datagrams waiting for the pacing beyond ``ipfix.queue_records`` records are dropped and counted.
- **TCP** records wait in memory (``ipfix.queue_records``) while the collector is unreachable and
  are sent after the reconnect (backoff doubling from 0.5 s to ``ipfix.reconnect_max_s``). Each
  connection is a new transport session: templates first, sequence numbers from 0. A batch whose
  write failed is sent again in full (a receiver may see some records twice); records already in
  the kernel's send buffer when a connection breaks can be lost. A full queue drops new records
  and counts them. A clean shutdown withdraws the templates (section 8.1) and closes.

Errors are counted (``failures``) and logged once per reason until the sink is healthy again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections import deque
from typing import Literal

from collector.config import IpfixConfig
from collector.encoders.ipfix import MessageEncoder, max_message_bytes
from collector.errors import ConfigError, SinkError
from collector.io.sink import SinkStatus
from collector.records import FlowRecord

log = logging.getLogger("collector.ipfix")

BACKOFF_START_S = 0.5
TCP_BATCH_RECORDS = 1024  # records per write on TCP; bounds what one broken write sends again
UDP_RECOVERY_S = 30.0
UDP_SEND_BUFFER_BYTES = 4 << 20
UDP_BURST_S = 0.005  # the token bucket holds this many seconds of max_datagrams_per_s
UDP_TICK_S = 0.001
TCP_MESSAGE_BYTES = 65_535  # RFC 7011 section 3.1: the largest message the length field allows

Transport = Literal["udp", "tcp"]


def parse_ipfix_spec(spec: str, key: str = "sink") -> tuple[Transport, str, int]:
    """``ipfix://HOST:PORT`` or ``ipfix+tcp://HOST:PORT`` -> (transport, host, port)."""
    if spec.startswith("ipfix+tcp://"):
        transport: Transport = "tcp"
        rest = spec[len("ipfix+tcp://") :]
    elif spec.startswith("ipfix://"):
        transport = "udp"
        rest = spec[len("ipfix://") :]
    else:
        raise ConfigError(key, f"{spec!r} is not ipfix://HOST:PORT or ipfix+tcp://HOST:PORT")
    host, _, port = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or "/" in rest or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(key, f"{spec!r} is not ipfix://HOST:PORT or ipfix+tcp://HOST:PORT")
    return transport, host, int(port)


class _Errors:
    """Counts errors and logs each reason once until the sink has recovered."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failures = 0
        self.logged: set[str] = set()
        self.last = ""
        self.last_at = 0.0

    def record(self, reason: str, detail: str) -> None:
        self.failures += 1
        self.last = f"{reason}: {detail}"
        self.last_at = time.monotonic()
        if reason not in self.logged:
            self.logged.add(reason)
            log.warning(
                "ipfix sink error", extra={"sink": self.name, "reason": reason, "error": detail}
            )

    def recovered(self, quiet_s: float = 0.0) -> None:
        """A success; with ``quiet_s``, only one that many seconds after the last error counts."""
        if not self.last or time.monotonic() - self.last_at < quiet_s:
            return
        log.info("ipfix sink recovered", extra={"sink": self.name})
        self.logged.clear()
        self.last = ""


def _reason(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__).lower()


class IpfixSink:
    """Records to an IPFIX collector over UDP or TCP."""

    def __init__(
        self, transport: Transport, host: str, port: int, config: IpfixConfig, worker: int = 0
    ) -> None:
        scheme = "ipfix+tcp" if transport == "tcp" else "ipfix"
        self.name = f"{scheme}://{host}:{port}"
        self.transport = transport
        self.host = host
        self.port = port
        self.config = config
        # each worker is its own transport session with its own sequence numbers: its own domain
        self.observation_domain_id = (config.observation_domain_id + worker) & 0xFFFFFFFF
        self._encoder: MessageEncoder | None = None
        self._errors = _Errors(self.name)
        self._delivered = 0
        self._dropped = 0
        self._retried = 0
        self._latency: list[float] = []
        # UDP: encoded datagrams waiting for the pacing (ipfix.max_datagrams_per_s)
        self._sock: socket.socket | None = None
        self._pending: deque[tuple[bytes, int]] = deque()
        self._pending_records = 0
        self._tokens = 0.0
        self._tokens_at = time.monotonic()
        self._pump_handle: asyncio.TimerHandle | None = None
        # TCP
        self._queue: deque[FlowRecord] = deque()
        self._inflight = 0
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._up = asyncio.Event()  # set while a connection is open
        self._watcher: asyncio.Task[None] | None = None

    def _new_encoder(self, family: int) -> MessageEncoder:
        size = (
            TCP_MESSAGE_BYTES
            if self.transport == "tcp"
            else max_message_bytes(self.config.mtu_bytes, family == socket.AF_INET6)
        )
        return MessageEncoder(self.observation_domain_id, size, self.config.enterprise_number)

    async def _resolve(self) -> tuple[int, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        kind = socket.SOCK_STREAM if self.transport == "tcp" else socket.SOCK_DGRAM
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(self.host, self.port, type=kind), self.config.connect_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            raise SinkError(
                f"sink {self.name}: cannot resolve {self.host}: {exc}", retriable=True
            ) from exc
        family, _, _, _, address = infos[0]
        return family, (str(address[0]), int(address[1]))

    async def start(self) -> None:
        family, address = await self._resolve()
        self._encoder = self._new_encoder(family)
        if self.transport == "udp":
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            # an expiry pass can hand over thousands of records at once: room for the burst
            # instead of EAGAIN drops (the kernel caps it at net.core.wmem_max)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDP_SEND_BUFFER_BYTES)
            try:
                sock.connect(address)  # a connected socket reports ICMP errors on later sends
            except OSError as exc:
                sock.close()
                raise SinkError(f"sink {self.name}: {exc.strerror}", retriable=True) from exc
            self._sock = sock
            self._tokens = max(1.0, self.config.max_datagrams_per_s * UDP_BURST_S)  # full bucket
            self._tokens_at = time.monotonic()
            return
        self._task = asyncio.create_task(self._run_tcp(address), name=f"ipfix-tcp {self.name}")
        # a collector that is down at start is not fatal: records wait and the task reconnects
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected(), self.config.connect_timeout_s)

    async def _connected(self) -> None:
        await self._up.wait()

    # ---- submit -----------------------------------------------------------------------------------

    def submit(self, records: list[FlowRecord]) -> None:
        if not records:
            return
        if self.transport == "udp":
            self._idle.clear()
            self._send_udp(records)
            return
        room = self.config.queue_records - len(self._queue) - self._inflight
        if room < len(records):
            lost = len(records) - max(room, 0)
            self._dropped += lost
            self._errors.record("queue_full", f"{lost} records dropped, queue full")
            records = records[: max(room, 0)]
        self._queue.extend(records)
        if self._queue:
            self._idle.clear()
            self._wake.set()

    def _send_udp(self, records: list[FlowRecord]) -> None:
        """Encode now (sequence numbers are given in order), send as fast as the pacing allows."""
        encoder = self._encoder
        if self._sock is None or encoder is None:
            self._dropped += len(records)
            self._errors.record("not_started", "records submitted before start")
            return
        pending = self._pending
        for message, count in encoder.encode(records, time.time(), self.config.template_refresh_s):
            if self._pending_records + count > self.config.queue_records:
                self._dropped += count
                self._errors.record("queue_full", f"{count} records dropped, queue full")
                encoder.templates_sent_at = None  # they may have been in it: send them next time
                continue
            pending.append((message, count))
            self._pending_records += count
        self._pump()

    def _pump(self) -> None:
        """Send pending datagrams while the token bucket allows; schedule the rest."""
        self._pump_handle = None
        sock, encoder, pending = self._sock, self._encoder, self._pending
        if sock is None or encoder is None:
            return
        rate = self.config.max_datagrams_per_s
        now = time.monotonic()
        if rate:
            burst = max(1.0, rate * UDP_BURST_S)
            self._tokens = min(burst, self._tokens + (now - self._tokens_at) * rate)
            self._tokens_at = now
        started = now
        failed = False
        while pending and (not rate or self._tokens >= 1):
            message, count = pending.popleft()
            self._pending_records -= count
            self._tokens -= 1
            try:
                sock.send(message)
            except OSError as exc:  # BlockingIOError (buffer full), ConnectionRefusedError, ...
                failed = True
                self._dropped += count
                self._errors.record(_reason(exc), exc.strerror or str(exc))
                encoder.templates_sent_at = None  # they may have been in it: send them next time
                continue
            self._delivered += count
        if not failed:
            # a UDP send that works proves little (a down receiver fails every other send, when
            # its ICMP arrives): recovered means no error for UDP_RECOVERY_S
            self._errors.recovered(UDP_RECOVERY_S)
        self._latency.append(time.monotonic() - started)
        if pending:
            wait = max(UDP_TICK_S, (1 - self._tokens) / rate)
            self._pump_handle = asyncio.get_running_loop().call_later(wait, self._pump)
        else:
            self._idle.set()

    # ---- TCP --------------------------------------------------------------------------------------

    async def _run_tcp(self, address: tuple[str, int]) -> None:
        backoff = BACKOFF_START_S
        while not self._stop.is_set():
            if self._writer is None:
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(*address), self.config.connect_timeout_s
                    )
                except (OSError, TimeoutError) as exc:
                    reason = _reason(exc) if isinstance(exc, OSError) else "connect_timeout"
                    self._errors.record(reason, str(exc) or reason)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), backoff)
                    backoff = min(backoff * 2, self.config.reconnect_max_s)
                    continue
                backoff = BACKOFF_START_S
                assert self._encoder is not None
                self._encoder.restart()
                self._writer = writer
                self._up.set()
                self._watcher = asyncio.create_task(
                    self._watch(reader, writer), name=f"ipfix-watch {self.name}"
                )
                log.info("ipfix collector connected", extra={"sink": self.name})
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wait_for_work()
                continue
            await self._write_batch()

    async def _wait_for_work(self) -> None:
        wake = asyncio.ensure_future(self._wake.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait((wake, stop), return_when=asyncio.FIRST_COMPLETED)
        wake.cancel()
        stop.cancel()

    async def _watch(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A collector never sends on an IPFIX connection: anything read, or EOF, ends it."""
        with contextlib.suppress(OSError):
            await reader.read(1)
        if self._writer is writer and not self._stop.is_set():
            self._errors.record("closed_by_peer", "the collector closed the connection")
            self._drop_connection()

    def _drop_connection(self) -> None:
        self._up.clear()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    async def _write_batch(self) -> None:
        writer, encoder = self._writer, self._encoder
        assert writer is not None and encoder is not None
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(len(queue), TCP_BATCH_RECORDS))]
        self._inflight = len(batch)
        started = time.monotonic()
        try:
            if writer.is_closing():
                raise ConnectionResetError(errno.ECONNRESET, "connection closed")
            writer.write(b"".join(m for m, _ in encoder.encode(batch, time.time())))
            await writer.drain()
        except OSError as exc:
            queue.extendleft(reversed(batch))  # sent again, in order, on the next connection
            self._retried += len(batch)
            self._errors.record(_reason(exc), exc.strerror or str(exc))
            self._drop_connection()
        except asyncio.CancelledError:
            # close() gave up on a collector that stopped reading: the batch was not delivered
            # (counted with the rest of the queue there)
            queue.extendleft(reversed(batch))
            raise
        else:
            self._delivered += len(batch)
            self._latency.append(time.monotonic() - started)
            self._errors.recovered()
        finally:
            self._inflight = 0

    # ---- lifecycle --------------------------------------------------------------------------------

    async def flush(self, timeout_s: float) -> None:
        if self._task is not None or self._pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_s)

    async def close(self) -> None:
        if self._pump_handle is not None:
            self._pump_handle.cancel()
            self._pump_handle = None
        if self._pending:
            self._dropped += self._pending_records
            log.warning(
                "ipfix sink closed with records not sent",
                extra={"sink": self.name, "records": self._pending_records},
            )
            self._pending.clear()
            self._pending_records = 0
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._task is None:
            return
        self._stop.set()
        task, self._task = self._task, None
        # a collector that stopped reading leaves the task blocked in drain(): bounded wait
        _, pending = await asyncio.wait((task,), timeout=self.config.connect_timeout_s)
        for stuck in pending:
            stuck.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stuck
        self._up.clear()
        writer, self._writer = self._writer, None
        if self._watcher is not None:
            self._watcher.cancel()
        if writer is not None and self._encoder is not None:
            try:
                writer.write(self._encoder.withdrawal(time.time()))
                await asyncio.wait_for(writer.drain(), self.config.connect_timeout_s)
            except (OSError, TimeoutError):
                writer.transport.abort()  # a collector that does not read gets no clean close
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), self.config.connect_timeout_s)
        if self._queue:
            lost = len(self._queue)
            self._dropped += lost
            self._queue.clear()
            log.warning(
                "ipfix sink closed with records not sent",
                extra={"sink": self.name, "records": lost},
            )

    def status(self) -> SinkStatus:
        observations, self._latency = self._latency, []
        queued = len(self._queue) + self._inflight + self._pending_records
        state: Literal["ok", "degraded", "failed"] = "ok"
        if self._errors.last:
            full = queued >= self.config.queue_records
            state = "failed" if self.transport == "tcp" and full else "degraded"
        if self.transport == "tcp" and self._writer is None and self._task is not None:
            state = "failed" if queued >= self.config.queue_records else "degraded"
        return SinkStatus(
            state=state,
            detail=self._errors.last,
            queue_records=queued,
            delivered=self._delivered,
            retried=self._retried,
            dropped=self._dropped,
            failures=self._errors.failures,
            latency_observations=observations,
        )
