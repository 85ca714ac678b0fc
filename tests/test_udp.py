"""The three receive paths (mmsg, reader, protocol) in process, on real loopback sockets.

Datagrams are built with scapy and sent through the kernel; each test runs a uvloop loop, as the
worker does, until the pipeline has counted what was sent, then flushes the records.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import uvloop

from collector.errors import ConfigError
from collector.io import udp
from collector.io.udp import (
    MmsgBatch,
    MmsgIngest,
    ReaderIngest,
    open_socket,
    socket_drops,
    start_ingest,
    unmapped,
)
from collector.pipeline import Pipeline
from collector.records import FlowRecord
from tests.pipeline_support import drops, make_pipeline, tcp
from tests.pipeline_support import udp as udp_datagram

PATHS = ("mmsg", "reader", "protocol")
WAIT_S = 20.0  # bound on waiting for the kernel to hand over what was sent (not a timing check)
MAX_BATCH = 512
PEER4, PEER6 = "10.1.2.3", "2001:db8::77"

ACCEPT_BOTH_DIRECTIONS = {
    "rules": [
        {
            "direction": direction,
            "rule_number": number,
            "action": "accept",
            "source_cidr": cidr,
            "destination_cidr": cidr,
        }
        for direction in ("egress", "ingress")
        for number, cidr in ((100, "0.0.0.0/0"), (200, "::/0"))
    ]
}


def settings(*, with_filter: bool) -> dict[str, Any]:
    # no addresses: the outer source (the sender here, the ENI's primary IPv4 on AWS) decides
    session: dict[str, Any] = {"vni": 7, "name": "s7"}
    if not with_filter:
        return {"sessions": [session]}
    return {"sessions": [{**session, "filter": "f"}], "filters": {"f": ACCEPT_BOTH_DIRECTIONS}}


async def wait_until(predicate: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("the receive path did not count what was sent")
        await asyncio.sleep(0.005)


def receive(
    listen: str, sender: str, mode: str, datagrams: list[bytes], pipeline: Pipeline
) -> tuple[str, list[FlowRecord]]:
    """Bind ``listen``, send ``datagrams`` from ``sender``, run ``mode`` until all are counted;
    the receive path that ran and the records."""
    sock = open_socket(listen, 4 << 20)
    port = sock.getsockname()[1]
    family = socket.AF_INET6 if ":" in sender else socket.AF_INET

    async def run() -> str:
        loop = asyncio.get_running_loop()
        ingest = await start_ingest(
            loop,
            sock,
            pipeline,
            mode=mode,
            max_batch=MAX_BATCH,
            max_datagram_bytes=2048,
            coalesce_s=0.001,
        )
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as out:
                out.bind((sender, 0))
                for data in datagrams:
                    out.sendto(data, (sender, port))
            await wait_until(lambda: pipeline.stats.datagrams == len(datagrams))
        finally:
            ingest.stop()
        return ingest.path

    try:
        path = uvloop.run(run())
    finally:
        sock.close()
    return path, pipeline.flush()


# (listen address, sender address): every family a worker can meet, dual-stack included
ENDPOINTS = [
    ("127.0.0.1:0", "127.0.0.1"),
    ("[::1]:0", "::1"),
    ("[::]:0", "127.0.0.1"),  # an IPv4 sender seen through a dual-stack socket as ::ffff:...
    ("[::]:0", "::1"),
]


@pytest.mark.parametrize("with_filter", [False, True], ids=["no-filter", "filter"])
@pytest.mark.parametrize(("listen", "sender"), ENDPOINTS)
@pytest.mark.parametrize("mode", PATHS)
def test_every_path_infers_direction_from_the_sender_on_every_family(
    mode: str, listen: str, sender: str, with_filter: bool
) -> None:
    peer = PEER6 if ":" in sender else PEER4
    egress = [udp_datagram(7, sender, peer, 4000, 53, 10) for _ in range(6)]
    ingress = [udp_datagram(7, peer, sender, 53, 4000, 30) for _ in range(4)]
    stranger = [udp_datagram(7, peer, peer, 1, 2) for _ in range(3)]
    pipeline = make_pipeline(settings(with_filter=with_filter))
    path, records = receive(listen, sender, mode, egress + ingress + stranger, pipeline)
    assert path == mode
    found = {(r.src_addr, r.dst_addr): (r.direction, r.packets) for r in records}
    ip = 40 if ":" in sender else 20
    assert found.pop((sender, peer)) == ("egress", 6)
    assert found.pop((peer, sender)) == ("ingress", 4)
    if with_filter:  # a filter cannot decide without a direction: dropped and counted
        assert found == {}
        assert drops(pipeline) == {"unknown_direction": 3}
    else:
        assert found == {(peer, peer): ("unknown", 3)}
        assert drops(pipeline) == {}
    assert pipeline.stats.rx_bytes == sum(map(len, egress + ingress + stranger))
    by_direction = {r.direction: r.bytes for r in records}
    assert by_direction["egress"] == 6 * (ip + 8 + 10)
    assert by_direction["ingress"] == 4 * (ip + 8 + 30)


def test_unmapped_only_unwraps_ipv4_mapped_addresses() -> None:
    assert unmapped("::ffff:10.0.0.1") == "10.0.0.1"
    assert unmapped("::ffff:a00:1") == "::ffff:a00:1"  # not the dotted form a socket reports
    assert unmapped("2001:db8::1") == "2001:db8::1"
    assert unmapped("10.0.0.1") == "10.0.0.1"


def fill(sock: socket.socket, datagrams: list[bytes]) -> None:
    """Queue ``datagrams`` on ``sock`` before any receive path runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        for data in datagrams:
            out.sendto(data, sock.getsockname())
    assert socket_drops(sock) == 0  # all of them are in the queue


def test_mmsg_reads_a_full_socket_at_once_and_waits_only_after_draining_it() -> None:
    # a coalescing wait longer than the test: had a full batch been followed by that wait, the
    # datagrams behind it would never be read; they are, and the only wait is the last one
    flows = [tcp(7, "10.0.0.1", "10.0.0.2", 1024 + i, 80) for i in range(64)]
    datagrams = [flows[i % 64] for i in range(5 * MAX_BATCH + 10)]
    pipeline = make_pipeline()
    sock = open_socket("127.0.0.1:0", 8 << 20)
    fill(sock, datagrams)

    async def run() -> MmsgIngest:
        loop = asyncio.get_running_loop()
        ingest = MmsgIngest(
            loop, sock, pipeline, max_batch=MAX_BATCH, max_datagram_bytes=2048, coalesce_s=3600
        )
        ingest.start()
        try:
            await wait_until(lambda: pipeline.stats.datagrams == len(datagrams))
            assert ingest.scheduled is not None  # now coalescing: the socket was found drained
            assert not ingest.reading
        finally:
            ingest.stop()
        return ingest

    try:
        ingest = uvloop.run(run())
    finally:
        sock.close()
    assert (ingest.full_reads, ingest.drained_reads) == (5, 1)
    assert sum(r.packets for r in pipeline.flush()) == len(datagrams)


def test_mmsg_lets_the_loop_run_between_batches() -> None:
    # what health checks and timers rely on at saturation: a callback due now runs after one
    # batch, long before the backlog is read
    data = tcp(7, "10.0.0.1", "10.0.0.2", 1024, 80)
    datagrams = [data] * (8 * MAX_BATCH)
    pipeline = make_pipeline()
    sock = open_socket("127.0.0.1:0", 8 << 20)
    fill(sock, datagrams)
    seen: list[int] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        ingest = MmsgIngest(
            loop, sock, pipeline, max_batch=MAX_BATCH, max_datagram_bytes=2048, coalesce_s=0
        )
        ingest.start()
        await asyncio.sleep(0)
        loop.call_soon(lambda: seen.append(pipeline.stats.datagrams))
        try:
            await wait_until(lambda: pipeline.stats.datagrams == len(datagrams))
        finally:
            ingest.stop()

    try:
        uvloop.run(run())
    finally:
        sock.close()
    assert seen and seen[0] <= 2 * MAX_BATCH


@pytest.mark.parametrize("mode", ["mmsg", "reader"])
def test_read_stops_at_max_batch_and_says_what_it_read(mode: str) -> None:
    data = udp_datagram(7, "10.0.0.1", "10.0.0.2", 5, 6)
    pipeline = make_pipeline()
    sock = open_socket("127.0.0.1:0", 8 << 20)
    fill(sock, [data] * (MAX_BATCH + 100))

    async def run() -> list[tuple[int, bool]]:
        loop = asyncio.get_running_loop()
        ingest: MmsgIngest | ReaderIngest
        if mode == "mmsg":
            ingest = MmsgIngest(loop, sock, pipeline, max_batch=MAX_BATCH, max_datagram_bytes=2048)
        else:
            ingest = ReaderIngest(
                loop, sock, pipeline.feed, max_batch=MAX_BATCH, max_datagram_bytes=2048
            )
        return [(ingest.read(), ingest.backlogged) for _ in range(3)]

    try:
        counts = uvloop.run(run())
    finally:
        sock.close()
    # ``backlogged``: the read stopped at max_batch (what expiry steps wait on)
    assert counts == [(MAX_BATCH, True), (100, False), (0, False)]
    assert pipeline.stats.datagrams == MAX_BATCH + 100


def test_mmsg_falls_back_to_reader_without_recvmmsg_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(udp, "_RECVMMSG", None)
    with pytest.raises(ConfigError) as caught:
        MmsgBatch(8, 2048)
    assert caught.value.key == "recv_mode"
    data = udp_datagram(7, "127.0.0.1", PEER4, 1, 2)
    pipeline = make_pipeline()
    path, records = receive("127.0.0.1:0", "127.0.0.1", "mmsg", [data] * 5, pipeline)
    assert path == "reader"
    assert [(r.direction, r.packets) for r in records] == [("egress", 5)]


def test_mmsg_batch_reads_datagrams_and_their_lengths() -> None:
    batch = MmsgBatch(8, 2048)
    sock = open_socket("127.0.0.1:0", 1 << 20)
    try:
        fill(sock, [bytes([i]) * (100 + i) for i in range(10)])
        k = batch.recv(sock.fileno())
        assert k == 8
        assert batch.sizes(k) == tuple(100 + i for i in range(8))
        assert bytes(batch.slots[3][:103]) == bytes([3]) * 103
        k = batch.recv(sock.fileno())
        assert batch.sizes(k) == (108, 109)
        assert batch.recv(sock.fileno()) < 0  # -EAGAIN: nothing left, never raised
    finally:
        sock.close()


def test_receive_buffer_passes_rmem_max_when_allowed_else_stops_at_it() -> None:
    """With CAP_NET_ADMIN the asked buffer is granted past net.core.rmem_max (SO_RCVBUFFORCE);
    without it SO_RCVBUF is used and the kernel caps it: no error either way."""
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    asked = 4 * rmem_max
    sock = open_socket("127.0.0.1:0", asked)
    try:
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    finally:
        sock.close()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, udp.SO_RCVBUFFORCE, asked)
        allowed = True
    except PermissionError:
        allowed = False
    finally:
        probe.close()
    if allowed:
        assert granted == asked
    else:
        assert granted == rmem_max


class _BusyFor:
    """A receive path that reports a backlog for its first ``turns`` looks."""

    def __init__(self, turns: int) -> None:
        self.turns = turns
        self.looks = 0

    @property
    def backlogged(self) -> bool:
        self.looks += 1
        return self.looks <= self.turns


def test_expiry_steps_wait_while_the_receive_path_is_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between expiry steps the worker yields until the receive path caught up (its last read was
    not a full batch), but never longer than EXPIRY_YIELD_MAX_S, so expiry always progresses."""
    from collector import worker

    async def turns_taken(ingest: Any) -> int:
        owner = SimpleNamespace(ingests=[] if ingest is None else [ingest])
        loop = asyncio.get_running_loop()
        counted = 0

        async def count_turns() -> None:
            nonlocal counted
            while True:
                counted += 1
                await asyncio.sleep(0)

        counter = asyncio.ensure_future(count_turns())
        await asyncio.sleep(0)
        start = counted
        await worker.Worker._let_ingest_catch_up(owner, loop)  # type: ignore[arg-type]
        taken = counted - start
        counter.cancel()
        return taken

    assert uvloop.run(turns_taken(None)) == 1
    assert uvloop.run(turns_taken(_BusyFor(0))) == 1
    assert uvloop.run(turns_taken(_BusyFor(7))) == 8
    monkeypatch.setattr(worker, "EXPIRY_YIELD_MAX_S", 0.01)
    always = _BusyFor(10**12)
    assert uvloop.run(turns_taken(always)) >= 2  # bounded: it returned although always behind
    for ingest_path in (ReaderIngest, MmsgIngest):
        assert (
            hasattr(ingest_path, "backlogged")
            or "backlogged" in ingest_path.__init__.__code__.co_names
        )
