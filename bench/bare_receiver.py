"""Baselines for the ingest benchmark: receivers that only count datagrams.

    python -m bench.bare_receiver uvloop|recvmmsg PORT RCVBUF [reuseport]

``uvloop``: a bare uvloop ``DatagramProtocol`` (one callback and one bytes object per datagram).
``recvmmsg``: the floor for user-space receive in Python on this machine: a blocking loop of
recvmmsg(2) calls (64 datagrams each, the collector's own buffers from collector.io.udp) that
adds up the counts and does nothing else. Each runs as its own process, prints ``ready PORT``
once bound (PORT 0 binds a free port), then answers each line on stdin with its count. The
receive buffer is asked for as the collector asks for its own (``set_receive_buffer``: past
net.core.rmem_max with SO_RCVBUFFORCE when the process may), so every receiver gets the same.
With ``reuseport`` the socket joins an SO_REUSEPORT group on PORT (two counting processes on one
port: the machine's own ceiling for two receiving processes).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading

import uvloop

from collector.io.udp import MSG_WAITFORONE, MmsgBatch, set_receive_buffer


class Counter(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.count = 0

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.count += 1


def bound_socket(port: int, rcvbuf: int, reuse_port: bool = False) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    set_receive_buffer(sock, rcvbuf)  # as the collector asks: past rmem_max when root
    sock.bind(("127.0.0.1", port))
    return sock


async def uvloop_main(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    counter = Counter()
    await loop.create_datagram_endpoint(lambda: counter, sock=sock)
    done = asyncio.Event()

    def on_stdin() -> None:
        line = sys.stdin.readline()
        if not line or line.strip() == "quit":
            done.set()
            return
        print(counter.count, flush=True)

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    print(f"ready {sock.getsockname()[1]}", flush=True)
    await done.wait()


class MmsgCounter:
    """Blocking recvmmsg(2) calls that only count; the count is read by the stdin thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.batch = MmsgBatch(64, 2048)
        self.count = 0

    def run(self) -> None:
        recv, fd = self.batch.recv, self.sock.fileno()
        count = 0
        while True:
            k = recv(fd, MSG_WAITFORONE)  # blocks for the first datagram, then takes what is there
            if k > 0:
                count += k
                self.count = count


def recvmmsg_main(sock: socket.socket) -> None:
    counter = MmsgCounter(sock)
    threading.Thread(target=counter.run, daemon=True).start()
    print(f"ready {sock.getsockname()[1]}", flush=True)
    for line in sys.stdin:  # the thread blocks in the kernel, not on the GIL, between calls
        if line.strip() == "quit":
            return
        print(counter.count, flush=True)


if __name__ == "__main__":
    kind, port, rcvbuf = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sock = bound_socket(port, rcvbuf, reuse_port=sys.argv[4:] == ["reuseport"])
    if kind == "recvmmsg":
        recvmmsg_main(sock)
    else:
        uvloop.run(uvloop_main(sock))
