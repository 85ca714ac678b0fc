"""UDP ingest: SO_REUSEPORT sockets and the receive path.

Two receive paths are kept so the benchmark can compare them (bench/ingest.py): ``reader`` drains the
socket with ``recvfrom_into`` into one reused buffer, up to ``max_batch`` datagrams per wake-up and
one clock read per batch; ``protocol`` is uvloop's DatagramProtocol with a bytes object and a clock
read per datagram. ``reader`` is the default because it measured faster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from collector.config import parse_hostport
from collector.errors import ConfigError

log = logging.getLogger("collector.udp")

Feed = Callable[[bytes | bytearray | memoryview, int, float, str | bytes | None], None]


def open_socket(listen: str, recv_buffer_bytes: int, *, reuse_port: bool = True) -> socket.socket:
    """A non-blocking UDP socket bound to ``listen`` with SO_REUSEPORT and a large receive buffer."""
    host, port = parse_hostport(listen, "listen")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError("listen", f"cannot resolve {host!r}: {exc.strerror}") from exc
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer_bytes)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux doubles it
        if granted < recv_buffer_bytes:
            log.warning(
                "receive buffer capped by the kernel",
                extra={
                    "asked_bytes": recv_buffer_bytes,
                    "granted_bytes": granted,
                    "hint": "raise net.core.rmem_max",
                },
            )
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError("listen", f"cannot bind UDP {listen}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


class ReaderIngest:
    """Drain the socket on readiness into a reused buffer (the default receive path)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        feed: Feed,
        *,
        max_batch: int,
        max_datagram_bytes: int,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.feed = feed
        self.max_batch = max_batch
        self.buf = bytearray(max_datagram_bytes)
        self.errors = 0

    def start(self) -> None:
        """Start receiving."""
        self.loop.add_reader(self.sock.fileno(), self._on_readable)

    def stop(self) -> None:
        """Stop receiving (the socket stays open until closed by the caller)."""
        self.loop.remove_reader(self.sock.fileno())

    def _on_readable(self) -> None:
        recv = self.sock.recvfrom_into
        buf = self.buf
        feed = self.feed
        now = time.time()
        for _ in range(self.max_batch):
            try:
                n, addr = recv(buf)
            except BlockingIOError:
                return
            except OSError:  # e.g. ECONNREFUSED bounced by ICMP; counted, never raised
                self.errors += 1
                return
            feed(buf, n, now, addr[0])


class ProtocolIngest(asyncio.DatagramProtocol):
    """uvloop's datagram protocol: one callback and one bytes object per datagram."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.errors = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.feed(data, len(data), time.time(), str(addr[0]))

    def error_received(self, exc: Exception) -> None:
        self.errors += 1


def socket_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped on this socket (the ``drops`` column of /proc/net/udp{,6})."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) >= 13 and fields[9] == inode:
                return int(fields[12])
    return None
