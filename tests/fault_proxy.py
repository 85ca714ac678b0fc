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
Only loopback addresses are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

Mode = Literal["pass", "delay", "hang", "blackhole", "reset"]
T = TypeVar("T")
CHUNK = 65536


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
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    with contextlib.suppress(Exception):
                        w.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None
    ) -> None:
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
                writer.write(data)
                await writer.drain()
                self.forwarded_bytes += len(data)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()


async def _wrap(coro: Callable[[], Awaitable[Any]]) -> Any:
    return await coro()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN (SO_LINGER 0), the way a crashed peer or middlebox does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
