"""A fault-injecting TCP proxy for delivery tests: sits between a client and a real server (the
local Kafka broker) on loopback and, on command, hangs, delays, resets or blackholes connections.

It runs its own asyncio loop in a thread, so it keeps working while the test's loop is blocked and
can sit in front of a broker that a (synchronous) fixture starts. Modes apply to every chunk of
every connection from the moment they are set:

- ``pass``: forward both ways;
- ``delay``: forward each chunk ``delay_s`` late (order kept);
- ``hang``: accept connections, never read or answer (a listener stuck in its accept backlog);
- ``blackhole``: established connections stall whole (nothing read, nothing lost: TCP would
  retransmit); new ones are accepted and everything sent on them is discarded, unanswered;
- ``reset``: new connections are reset (RST) as soon as they are accepted.

``reset_connections()`` resets every open connection at once (a middlebox or broker restart).

``rewrite_produce(error_code, partitions)`` makes the proxy speak Kafka: it frames both directions,
remembers which requests are Produce requests (and their version), and rewrites the error code of
the chosen partitions in their responses, so the client's own code path sees a broker error (the
broker has stored the batch all the same: a retry is a duplicate, as after a lost acknowledgement).
Only loopback addresses are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from aiokafka.protocol import produce

Mode = Literal["pass", "delay", "hang", "blackhole", "reset"]
T = TypeVar("T")
CHUNK = 65536
PRODUCE = 0  # Kafka API key of Produce
PRODUCE_RESPONSES: dict[int, Any] = {
    version: getattr(produce, f"ProduceResponse_v{version}")
    for version in range(9)
    if hasattr(produce, f"ProduceResponse_v{version}")
}
"""The Produce response layouts aiokafka knows (all without tagged fields)."""


@dataclass
class ProduceRewrite:
    """Rewrite the error code of these partitions (all when None) in Produce responses, at most
    ``limit`` partition responses (None: until cleared)."""

    error_code: int
    partitions: frozenset[int] | None = None
    limit: int | None = None
    done: int = 0


class FaultProxy:
    """``127.0.0.1:port`` -> ``target``; a target of None serves only ``hang``/``blackhole``."""

    def __init__(
        self, target: tuple[str, int] | None, *, port: int = 0, mode: Mode = "pass"
    ) -> None:
        self.target = target
        self.port = port
        self.mode: Mode = mode
        self.delay_s = 0.0
        self.accepted = 0
        self.forwarded_bytes = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._mode_changed: asyncio.Event | None = None
        self._rewrite: ProduceRewrite | None = None
        self.rewritten = 0
        """Partition responses whose error code the proxy rewrote."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- control (any thread) ------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._stop)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def set_mode(self, mode: Mode, delay_s: float = 0.0) -> None:
        def apply() -> None:
            self.mode, self.delay_s = mode, delay_s
            assert self._mode_changed is not None
            self._mode_changed.set()
            self._mode_changed = asyncio.Event()

        self._loop.call_soon_threadsafe(apply)

    def rewrite_produce(
        self, error_code: int, partitions: set[int] | None = None, limit: int | None = None
    ) -> None:
        """From now on, Produce responses for ``partitions`` (all when None) carry
        ``error_code`` instead of the broker's answer, ``limit`` times (None: until
        ``stop_rewriting``). Takes effect for connections opened afterwards and for open ones."""
        rule = ProduceRewrite(error_code, frozenset(partitions) if partitions else None, limit)

        def apply() -> None:
            self._rewrite = rule

        self._loop.call_soon_threadsafe(apply)

    def stop_rewriting(self) -> None:
        def apply() -> None:
            self._rewrite = None

        self._loop.call_soon_threadsafe(apply)

    def reset_connections(self) -> int:
        """RST every open connection; returns how many there were."""

        async def reset_all() -> int:
            writers = list(self._writers)
            for writer in writers:
                _reset(writer)
            return len(writers)

        return self._call(reset_all)

    def _call(self, coro: Callable[[], Awaitable[T]]) -> T:
        return asyncio.run_coroutine_threadsafe(_wrap(coro), self._loop).result(30)

    # -- the proxy (its own loop) --------------------------------------------------------------

    async def _start(self) -> None:
        self._mode_changed = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            self._server.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            if self.mode == "reset":
                _reset(writer)
                return
            if self.target is None or self.mode not in ("pass", "delay"):
                await self._pipe(reader, None)  # hang or blackhole from the first byte
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                _reset(writer)
                return
            self._writers.add(up_writer)
            produce_versions: dict[int, int] = {}  # correlation id -> version, in flight
            await asyncio.gather(
                self._pipe(reader, up_writer, requests=produce_versions),
                self._pipe(up_reader, writer, responses=produce_versions),
                return_exceptions=True,
            )
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    with contextlib.suppress(Exception):
                        w.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter | None,
        *,
        requests: dict[int, int] | None = None,
        responses: dict[int, int] | None = None,
    ) -> None:
        """Forward ``reader`` to ``writer``. Kafka framing (``requests``: note the Produce
        requests in it; ``responses``: rewrite theirs) is on from the first byte, so a rewrite
        rule set later applies to connections already open."""
        framing = bytearray()
        try:
            while True:
                # an established stream stalls whole (TCP would retransmit what a blackhole
                # drops): nothing is read, nothing is lost, the peers just hear nothing
                while self.mode == "hang" or (self.mode == "blackhole" and writer is not None):
                    assert self._mode_changed is not None
                    await self._mode_changed.wait()
                data = await reader.read(CHUNK)
                if not data:
                    break
                if writer is None:  # accepted while hung or blackholed: nowhere to go
                    continue
                if self.mode == "delay":
                    await asyncio.sleep(self.delay_s)
                if requests is not None or responses is not None:
                    framing += data
                    data = self._frames(framing, requests, responses)
                    if not data:
                        continue
                writer.write(data)
                await writer.drain()
                self.forwarded_bytes += len(data)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()

    def _frames(
        self,
        buffer: bytearray,
        requests: dict[int, int] | None,
        responses: dict[int, int] | None,
    ) -> bytes:
        """Take the complete Kafka frames off ``buffer`` (what is left waits for more bytes) and
        return them to forward, Produce responses rewritten by the rule in force."""
        out = bytearray()
        while len(buffer) >= 4:
            (size,) = struct.unpack_from(">i", buffer)
            if len(buffer) < 4 + size:
                break
            frame = bytes(buffer[: 4 + size])
            del buffer[: 4 + size]
            if requests is not None:
                api_key, version, correlation = struct.unpack_from(">hhi", frame, 4)
                if api_key == PRODUCE:
                    requests[correlation] = version
            elif responses is not None:
                (correlation,) = struct.unpack_from(">i", frame, 4)
                version = responses.pop(correlation, None)
                if version is not None:
                    frame = self._rewritten(frame, version)
            out += frame
        return bytes(out)

    def _rewritten(self, frame: bytes, version: int) -> bytes:
        rule = self._rewrite
        layout = PRODUCE_RESPONSES.get(version)
        if rule is None or layout is None:
            return frame
        response = layout.decode(frame[8:])
        changed = False
        topics = []
        for topic, partitions in response.topics:
            rewritten = []
            for partition_info in partitions:
                fields = list(partition_info)
                chosen = rule.partitions is None or fields[0] in rule.partitions
                if chosen and (rule.limit is None or rule.done < rule.limit):
                    fields[1] = rule.error_code
                    rule.done += 1
                    self.rewritten += 1
                    changed = True
                rewritten.append(tuple(fields))
            topics.append((topic, rewritten))
        if not changed:
            return frame
        fields = [response.get_item(name) for name in layout.SCHEMA.names]
        fields[layout.SCHEMA.names.index("topics")] = topics
        body = layout(*fields).encode()
        return struct.pack(">i", len(body) + 4) + frame[4:8] + body


async def _wrap(coro: Callable[[], Awaitable[Any]]) -> Any:
    return await coro()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN (SO_LINGER 0), the way a crashed peer or middlebox does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
