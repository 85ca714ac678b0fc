"""Baseline for the ingest benchmark: a bare uvloop receiver that only counts datagrams.

Runs as its own process; answers each line on stdin with ``count`` on stdout.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import uvloop


class Counter(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.count = 0

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.count += 1


async def main(port: int, rcvbuf: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(("127.0.0.1", port))
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
    print("ready", flush=True)
    await done.wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
