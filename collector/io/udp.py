"""UDP ingest: SO_REUSEPORT sockets and the receive path.

Three receive paths are kept so the benchmark can compare them (bench/ingest.py): ``mmsg`` reads up
to 64 datagrams per recvmmsg(2) call into a preallocated buffer and coalesces wake-ups; ``reader``
drains the socket with ``recvfrom_into`` into one reused buffer on each readiness event; ``protocol``
is uvloop's DatagramProtocol with a bytes object and a clock read per datagram. ``mmsg`` is the
default on Linux because it measured cheapest per packet; ``start_ingest`` picks the path and the
ingest's ``path`` says which one actually runs (``mmsg`` falls back to ``reader`` without recvmmsg).

None of them ever sleeps while the socket holds data: a read stops at ``max_batch`` datagrams only
to let the loop serve timers, health and metrics, and the next read follows at once.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.config import parse_hostport
from collector.errors import ConfigError
from collector.pipeline import account_batch

if TYPE_CHECKING:
    from collector.pipeline import Pipeline

log = logging.getLogger("collector.udp")

# feed(buffer, length, now, outer source): the outer source is a text address, packed bytes, or a
# raw sockaddr as a memoryview (recvmmsg), resolved only when a new flow needs it
Feed = Callable[[bytes | bytearray | memoryview, int, float, str | bytes | memoryview | None], None]


SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; the socket module lacks it


def set_receive_buffer(sock: socket.socket, size: int) -> None:
    """Ask for a ``size``-byte receive buffer: past net.core.rmem_max when the process may
    (CAP_NET_ADMIN: SO_RCVBUFFORCE), else as far as rmem_max lets SO_RCVBUF go."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:  # EPERM without CAP_NET_ADMIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def open_socket(
    listen: str, recv_buffer_bytes: int, *, reuse_port: bool = True, key: str = "listen"
) -> socket.socket:
    """A non-blocking UDP socket bound to ``listen`` with SO_REUSEPORT and a large receive buffer
    (errors name the config ``key``: ``listen`` or ``geneve_listen``)."""
    host, port = parse_hostport(listen, key)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(key, f"cannot resolve {host!r}: {exc.strerror}") from exc
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        set_receive_buffer(sock, recv_buffer_bytes)
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
        raise ConfigError(key, f"cannot bind UDP {listen}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


V4_MAPPED_PREFIX = "::ffff:"  # how a dual-stack (``[::]``) socket names an IPv4 sender


def unmapped(text: str) -> str:
    """``::ffff:a.b.c.d`` -> ``a.b.c.d``: an IPv4 sender seen through a dual-stack socket is the
    IPv4 address the session's ``addresses`` name (recvmmsg's sockaddr is unwrapped alike)."""
    if text.startswith(V4_MAPPED_PREFIX) and "." in text:
        return text[len(V4_MAPPED_PREFIX) :]
    return text


def _dual_stack(sock: socket.socket) -> bool:
    """Whether IPv4 senders reach this socket as IPv4-mapped IPv6 addresses."""
    if sock.family != socket.AF_INET6:
        return False
    try:
        return not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    except OSError:
        return True


class ReaderIngest:
    """Drain the socket on readiness into a reused buffer."""

    path = "reader"

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
        # only a dual-stack socket pays for the per-datagram prefix check
        self.unmap = _dual_stack(sock)
        self.backlogged = False  # the last read stopped at max_batch: the socket may hold more

    def start(self) -> None:
        """Start receiving: a readiness callback that the (level-triggered) loop calls again at
        once while the socket still holds data, after serving whatever else is due."""
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
        unmap = self.unmap
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
            feed(buf, n, now, unmapped(addr[0]) if unmap else addr[0])
            count += 1
        self.backlogged = count >= self.max_batch
        return count


class ProtocolIngest(asyncio.DatagramProtocol):
    """uvloop's datagram protocol: one callback and one bytes object per datagram."""

    path = "protocol"

    def __init__(self, feed: Feed, *, unmap: bool = False) -> None:
        self.feed = feed
        self.unmap = unmap
        self.errors = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.backlogged = False  # the transport reads; whether the socket holds more is unknown

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's UDPTransport

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        source = str(addr[0])
        self.feed(data, len(data), time.time(), unmapped(source) if self.unmap else source)

    def error_received(self, exc: Exception) -> None:
        self.errors += 1

    def stop(self) -> None:
        """Stop receiving; closing the transport closes the socket too."""
        if self.transport is not None:
            self.transport.close()

    def read(self) -> int:
        """Nothing to drain by hand: the transport owns the socket (uniform with the others)."""
        return 0


def udp_socket_rows() -> Iterator[list[str]]:
    """The fields of every row of /proc/net/udp and /proc/net/udp6 (local address at 1, inode at
    9, drops at 12)."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) >= 13:
                yield fields


def socket_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped on this socket (the ``drops`` column of /proc/net/udp{,6})."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    for fields in udp_socket_rows():
        if fields[9] == inode:
            return int(fields[12])
    return None


def retire_socket(sock: socket.socket) -> tuple[int, int | None]:
    """Close the socket of a worker that died and count what it left behind.

    The supervisor keeps a reference to each worker's socket, so a worker's death does not discard
    the datagrams queued on it without a trace. Connecting the socket to its own address takes it
    out of the SO_REUSEPORT group's choice at once (the kernel hands a connected member only
    datagrams from its peer, and nothing sends from our own port): new datagrams go to the live
    workers, and the queue can be drained and counted exactly before the socket is closed.
    Returns (datagrams that were queued, the socket's final kernel drop count or None).
    """
    drops: int | None = None
    try:
        host, port = sock.getsockname()[:2]
        if host in ("0.0.0.0", "::"):  # noqa: S104 - unspecified: reach ourselves on loopback
            host = "::1" if sock.family == socket.AF_INET6 else "127.0.0.1"
        sock.connect((host, port))
    except OSError as exc:  # still drained below; datagrams arriving meanwhile can slip through
        log.warning("could not detach a dead worker's socket", extra={"error": str(exc)})
    sock.setblocking(False)
    queued = 0
    buffer = bytearray(65535)
    try:
        while True:
            sock.recv_into(buffer)
            queued += 1
    except (BlockingIOError, InterruptedError):
        pass
    except OSError as exc:
        log.warning("could not drain a dead worker's socket", extra={"error": str(exc)})
    try:
        drops = socket_drops(sock)
    finally:
        sock.close()
    return queued, drops


# ---- recvmmsg(2): many datagrams per system call ----------------------------------------------
class IoVec(ctypes.Structure):
    """``struct iovec``."""

    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class MsgHdr(ctypes.Structure):
    """``struct msghdr``."""

    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(IoVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class MMsgHdr(ctypes.Structure):
    """``struct mmsghdr`` (recvmmsg(2), sendmmsg(2))."""

    _fields_ = (("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint))


SOCKADDR_BYTES = 28  # sizeof(struct sockaddr_in6), large enough for either family
MSG_DONTWAIT = 0x40
MSG_WAITFORONE = 0x10000  # recvmmsg: block for the first datagram only
_MSG_LEN_OFFSET = MMsgHdr.msg_len.offset
_MMSG_SIZE = ctypes.sizeof(MMsgHdr)


def libc_function(name: str, argtypes: tuple[Any, ...]) -> Callable[..., int] | None:
    """A C library function returning int through ctypes (errno kept), None where absent."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_MMSG_ARGS = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
_RECVMMSG = libc_function("recvmmsg", _MMSG_ARGS)


def recvmmsg_available() -> bool:
    """Whether this platform's C library has recvmmsg(2) (Linux does)."""
    return _RECVMMSG is not None


class MmsgBatch:
    """The preallocated buffers of one recvmmsg(2) call: ``vlen`` slots of ``slot_bytes`` each.

    Each slot and each source address has a memoryview made once, so handing a datagram on
    allocates nothing; one ``struct`` unpack per call reads every ``msg_len``.
    """

    def __init__(self, vlen: int, slot_bytes: int) -> None:
        if _RECVMMSG is None:
            raise ConfigError("recv_mode", "recvmmsg is not available on this platform")
        self.recvmmsg = _RECVMMSG
        self.vlen = vlen
        self.buf = bytearray(vlen * slot_bytes)
        self.names = bytearray(vlen * SOCKADDR_BYTES)
        self.iovecs = (IoVec * vlen)()
        self.msgs = (MMsgHdr * vlen)()
        buf_addr = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))
        names_addr = ctypes.addressof(ctypes.c_char.from_buffer(self.names))
        for i in range(vlen):
            self.iovecs[i].iov_base = buf_addr + i * slot_bytes
            self.iovecs[i].iov_len = slot_bytes
            hdr = self.msgs[i].msg_hdr
            hdr.msg_name = names_addr + i * SOCKADDR_BYTES
            hdr.msg_namelen = SOCKADDR_BYTES
            hdr.msg_iov = ctypes.pointer(self.iovecs[i])
            hdr.msg_iovlen = 1
        view = memoryview(self.buf)
        names = memoryview(self.names)
        self.slots = [view[i * slot_bytes : (i + 1) * slot_bytes] for i in range(vlen)]
        self.name_views = [
            names[i * SOCKADDR_BYTES : (i + 1) * SOCKADDR_BYTES] for i in range(vlen)
        ]
        self.msgs_addr = ctypes.addressof(self.msgs)
        self.msgs_view = memoryview(self.msgs).cast("B")
        # "<pad>I<pad>" repeated k times: every msg_len of a k-datagram call in one unpack
        self.lengths = [
            struct.Struct("=" + f"{_MSG_LEN_OFFSET}xI{_MMSG_SIZE - _MSG_LEN_OFFSET - 4}x" * k)
            for k in range(vlen + 1)
        ]

    def recv(self, fd: int, flags: int = MSG_DONTWAIT) -> int:
        """One recvmmsg(2) call: datagrams read (0 when none), or -errno."""
        k = self.recvmmsg(fd, self.msgs_addr, self.vlen, flags, None)
        return k if k >= 0 else -ctypes.get_errno()

    def sizes(self, k: int) -> tuple[int, ...]:
        """The lengths of the first ``k`` datagrams of the last call."""
        return self.lengths[k].unpack_from(self.msgs_view)


_RETRY_ERRNOS = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class MmsgIngest:
    """Up to ``vlen`` datagrams per recvmmsg(2) call, ``max_batch`` per turn of the loop.

    Three states. *Armed*: waiting for readiness. *Busy*: the last read stopped at ``max_batch``
    with the socket still holding data; the next read is scheduled with ``call_soon``, so timers,
    health and metrics run in between but nothing sleeps. *Coalescing*: the last read drained the
    socket; instead of waking on every new datagram the next read comes ``coalesce_s`` later
    (interrupt coalescing: flow records need no sub-millisecond latency, and the socket buffer
    holds that much traffic). A read that finds nothing re-arms. The wait therefore only ever
    follows an empty socket, and the read rate has no ceiling but the CPU.
    """

    path = "mmsg"

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
        geneve: bool = False,
    ) -> None:
        self.batch = MmsgBatch(vlen, max_datagram_bytes)
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        # a GENEVE socket (a Gateway Load Balancer's datagrams) takes the GENEVE packet path
        self.geneve = geneve
        self.account = pipeline.account_geneve if geneve else pipeline.account
        self.stats = pipeline.stats
        self.max_batch = max(max_batch, vlen)
        self.vlen = vlen
        self.coalesce_s = coalesce_s
        self.errors = 0
        self.drained = True  # whether the last read() emptied the socket
        self.scheduled: asyncio.Handle | None = None
        self.reading = False
        self.running = False
        # what each wake-up did, for tests and the benchmark: reads that stopped at max_batch
        # (and were followed at once), reads that drained the socket
        self.full_reads = 0
        self.drained_reads = 0

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
        if self.scheduled is not None:
            self.scheduled.cancel()
            self.scheduled = None

    @property
    def backlogged(self) -> bool:
        """The last read stopped at max_batch with the socket still holding data."""
        return not self.drained

    def _arm(self) -> None:
        if self.running and not self.reading:
            self.loop.add_reader(self.fd, self._on_readable)
            self.reading = True

    def _disarm(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False

    def _on_readable(self) -> None:
        self._after(self.read())

    def _poll(self) -> None:
        self.scheduled = None
        if self.running:
            self._after(self.read())

    def _after(self, got: int) -> None:
        """Schedule the next read from what this one found."""
        if not got:
            self._arm()
        elif not self.drained:
            self.full_reads += 1
            self._disarm()
            self.scheduled = self.loop.call_soon(self._poll)
        else:
            self.drained_reads += 1
            if self.coalesce_s:
                self._disarm()
                self.scheduled = self.loop.call_later(self.coalesce_s, self._poll)
            else:
                self._arm()

    def read(self) -> int:
        """Read and feed what the socket holds, up to max_batch datagrams; how many were read.
        ``drained`` tells whether the socket was found empty (or short of a full call)."""
        batch = self.batch
        recv = batch.recvmmsg
        account = self.account
        stats = self.stats
        slots = batch.slots
        names = batch.name_views
        lengths = batch.lengths
        msgs_view = batch.msgs_view
        fd, msgs, vlen = self.fd, batch.msgs_addr, self.vlen
        total = 0
        drained = False
        now = time.time()
        while total < self.max_batch:
            k = recv(fd, msgs, vlen, MSG_DONTWAIT, None)
            if k <= 0:
                if k < 0 and ctypes.get_errno() not in _RETRY_ERRNOS:
                    self.errors += 1
                drained = True
                break
            sizes = lengths[k].unpack_from(msgs_view)
            account_batch(account, slots, names, sizes, now)
            stats.datagrams += k
            if self.geneve:
                stats.geneve_datagrams += k
            stats.rx_bytes += sum(sizes)
            total += k
            if k < vlen:
                drained = True
                break
        self.drained = drained
        return total


Ingest = MmsgIngest | ReaderIngest | ProtocolIngest


async def start_ingest(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    pipeline: Pipeline,
    *,
    mode: str,
    max_batch: int,
    max_datagram_bytes: int,
    coalesce_s: float,
    geneve: bool = False,
) -> Ingest:
    """Start the receive path ``mode`` asks for on ``sock``; ``.path`` names the one that runs
    (``mmsg`` without recvmmsg(2) falls back to ``reader``, with a warning). ``geneve``: the
    socket receives a Gateway Load Balancer's GENEVE datagrams (same paths, GENEVE decoding)."""
    feed = pipeline.feed_geneve if geneve else pipeline.feed
    if mode == "mmsg" and not recvmmsg_available():
        log.warning("recvmmsg unavailable; using the reader receive path")
        mode = "reader"
    if mode == "protocol":
        protocol = ProtocolIngest(feed, unmap=_dual_stack(sock))
        await loop.create_datagram_endpoint(lambda: protocol, sock=sock)
        return protocol
    if mode == "mmsg":
        mmsg = MmsgIngest(
            loop,
            sock,
            pipeline,
            max_batch=max_batch,
            max_datagram_bytes=max_datagram_bytes,
            coalesce_s=coalesce_s,
            geneve=geneve,
        )
        mmsg.start()
        return mmsg
    reader = ReaderIngest(
        loop, sock, feed, max_batch=max_batch, max_datagram_bytes=max_datagram_bytes
    )
    reader.start()
    return reader
