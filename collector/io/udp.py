"""UDP ingest: SO_REUSEPORT sockets and the receive path.

Three receive paths are kept so the benchmark can compare them (bench/ingest.py): ``mmsg`` reads up
to 64 datagrams per recvmmsg(2) call into a preallocated buffer and coalesces wake-ups; ``reader``
drains the socket with ``recvfrom_into`` into one reused buffer on each readiness event; ``protocol``
is uvloop's DatagramProtocol with a bytes object and a clock read per datagram. ``mmsg`` is the
default on Linux because it measured cheapest per packet.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from collector.config import parse_hostport
from collector.errors import ConfigError

if TYPE_CHECKING:
    from collector.pipeline import Pipeline

log = logging.getLogger("collector.udp")

# feed(buffer, length, now, outer source): the outer source is a text address, packed bytes, or a
# raw sockaddr as a memoryview (recvmmsg), resolved only when a new flow needs it
Feed = Callable[[bytes | bytearray | memoryview, int, float, str | bytes | memoryview | None], None]


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
        self.read()

    def read(self) -> int:
        """Read and feed what the socket holds, up to max_batch datagrams; how many were read."""
        recv = self.sock.recvfrom_into
        buf = self.buf
        feed = self.feed
        now = time.time()
        count = 0
        while count < self.max_batch:
            try:
                n, addr = recv(buf)
            except BlockingIOError:
                break
            except OSError:  # e.g. ECONNREFUSED bounced by ICMP; counted, never raised
                self.errors += 1
                break
            feed(buf, n, now, addr[0])
            count += 1
        return count


class ProtocolIngest(asyncio.DatagramProtocol):
    """uvloop's datagram protocol: one callback and one bytes object per datagram."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.errors = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's UDPTransport

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


# ---- recvmmsg(2): many datagrams per system call ----------------------------------------------
class _IoVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_IoVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint))


SOCKADDR_BYTES = 28  # sizeof(struct sockaddr_in6), large enough for either family
MSG_DONTWAIT = 0x40
_MSG_LEN_OFFSET = _MMsgHdr.msg_len.offset
_MMSG_SIZE = ctypes.sizeof(_MMsgHdr)


def _load_recvmmsg() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
    fn.restype = ctypes.c_int
    return fn


_RECVMMSG = _load_recvmmsg()


def recvmmsg_available() -> bool:
    """Whether this platform's C library has recvmmsg(2) (Linux does)."""
    return _RECVMMSG is not None


class MmsgIngest:
    """Up to ``vlen`` datagrams per recvmmsg(2) call into one preallocated buffer, with coalescing.

    Each slot of the buffer has a memoryview made once, so handing a datagram to the pipeline
    allocates nothing. When a read finds fewer datagrams than ``vlen`` the socket is nearly drained;
    instead of waking on every new datagram the reader then polls again after ``coalesce_s``
    (interrupt coalescing: flow records do not need sub-millisecond latency), and it only goes back
    to waiting for readiness when a poll finds the socket empty.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        pipeline: Pipeline,
        *,
        max_batch: int,
        max_datagram_bytes: int,
        vlen: int = 64,
        coalesce_s: float = 0.001,
    ) -> None:
        if _RECVMMSG is None:
            raise ConfigError("recv_mode", "recvmmsg is not available on this platform")
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.account = pipeline.account
        self.stats = pipeline.stats
        self.max_batch = max(max_batch, vlen)
        self.vlen = vlen
        self.coalesce_s = coalesce_s
        self.errors = 0
        self.buf = bytearray(vlen * max_datagram_bytes)
        self.names = bytearray(vlen * SOCKADDR_BYTES)
        self.iovecs = (_IoVec * vlen)()
        self.msgs = (_MMsgHdr * vlen)()
        buf_addr = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))
        names_addr = ctypes.addressof(ctypes.c_char.from_buffer(self.names))
        for i in range(vlen):
            self.iovecs[i].iov_base = buf_addr + i * max_datagram_bytes
            self.iovecs[i].iov_len = max_datagram_bytes
            hdr = self.msgs[i].msg_hdr
            hdr.msg_name = names_addr + i * SOCKADDR_BYTES
            hdr.msg_namelen = SOCKADDR_BYTES
            hdr.msg_iov = ctypes.pointer(self.iovecs[i])
            hdr.msg_iovlen = 1
        view = memoryview(self.buf)
        names = memoryview(self.names)
        self.slots = [
            view[i * max_datagram_bytes : (i + 1) * max_datagram_bytes] for i in range(vlen)
        ]
        self.name_views = [
            names[i * SOCKADDR_BYTES : (i + 1) * SOCKADDR_BYTES] for i in range(vlen)
        ]
        self.msgs_addr = ctypes.addressof(self.msgs)
        self.msgs_view = memoryview(self.msgs).cast("B")
        # one unpack per batch reads every msg_len: "<pad>I<pad>" repeated k times
        self.lengths = [
            struct.Struct("=" + f"{_MSG_LEN_OFFSET}xI{_MMSG_SIZE - _MSG_LEN_OFFSET - 4}x" * k)
            for k in range(vlen + 1)
        ]
        self.polling: asyncio.TimerHandle | None = None
        self.reading = False
        self.running = False

    def start(self) -> None:
        """Start receiving."""
        self.running = True
        self._arm()

    def stop(self) -> None:
        """Stop receiving."""
        self.running = False
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False
        if self.polling is not None:
            self.polling.cancel()
            self.polling = None

    def _arm(self) -> None:
        if self.running and not self.reading:
            self.loop.add_reader(self.fd, self._on_readable)
            self.reading = True

    def _on_readable(self) -> None:
        got = self.read()
        if got and self.coalesce_s:  # switch to polling until a poll finds nothing
            self.loop.remove_reader(self.fd)
            self.reading = False
            self.polling = self.loop.call_later(self.coalesce_s, self._poll)

    def _poll(self) -> None:
        self.polling = None
        if not self.running:
            return
        if self.read():
            self.polling = self.loop.call_later(self.coalesce_s, self._poll)
        else:
            self._arm()

    def read(self) -> int:
        """Read and feed what the socket holds, up to max_batch datagrams; how many were read."""
        recv = _RECVMMSG
        assert recv is not None
        account = self.account
        stats = self.stats
        slots = self.slots
        names = self.name_views
        lengths = self.lengths
        msgs_view = self.msgs_view
        fd, msgs, vlen = self.fd, self.msgs_addr, self.vlen
        total = 0
        now = time.time()
        while total < self.max_batch:
            k = recv(fd, msgs, vlen, MSG_DONTWAIT, None)
            if k <= 0:
                if k < 0 and ctypes.get_errno() not in (
                    errno.EAGAIN,
                    errno.EWOULDBLOCK,
                    errno.EINTR,
                ):
                    self.errors += 1
                break
            sizes = lengths[k].unpack_from(msgs_view)
            for slot, name, n in zip(slots, names, sizes, strict=False):
                account(slot, n, now, name)
            stats.datagrams += k
            stats.rx_bytes += sum(sizes)
            total += k
            if k < vlen:
                break
        return total
