"""Packet blaster: mirrored traffic as VXLAN datagrams over UDP, flat out or at a target rate.

    python -m bench.blast --target 127.0.0.1:4789 --count 1000000 [--rate 200000] [--procs 2]
        [--sockets 1] [--profile mixed|small|large|many-flows|new-flows] [--json]

Each process sends with sendmmsg(2) through ctypes, up to 64 datagrams per system call, straight
from one prebuilt buffer (no Python work per datagram). Exact counts: the sum of what sendmmsg
returned, i.e. the datagrams the kernel accepted; a call the kernel refuses (ENOBUFS, EAGAIN, an
ICMP error reported back) sends nothing, is counted in ``errors`` and is tried again.

``new-flows`` makes every datagram a new inner 5-tuple (a TCP SYN flood, as a port scan or the
mirror of a busy NAT gateway looks): 32,768 prebuilt datagrams per process differ by ports, and
each pass over them rewrites the inner addresses in place, so 2^31 datagrams per process go by
before a 5-tuple repeats. The rewrites keep the address sum constant, so the IPv4 and TCP
checksums scapy computed stay valid.

``send_datagrams`` is the sending core on its own (one process, prebuilt datagrams, a rate).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import multiprocessing
import socket
import time
from dataclasses import asdict, dataclass

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from bench.traffic import PROFILES, build
from collector.io.udp import IoVec, MMsgHdr, libc_function

VLEN = 64  # datagrams per sendmmsg(2) call, and between clock checks when pacing
PROFILE_NAMES = (*sorted(PROFILES), "new-flows")
NEW_FLOW_PORTS = 32_768  # datagrams per prebuilt pass of new-flows: one per port pair
MAX_SECONDS = 900.0  # a sender stops after this long whatever it was asked
_SENDMMSG = libc_function("sendmmsg", (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int))
_RETRY = {errno.ENOBUFS, errno.EAGAIN, errno.EINTR, errno.ECONNREFUSED, errno.EHOSTUNREACH}


@dataclass
class SendResult:
    """What one sending process did."""

    sent: int
    bytes: int
    seconds: float
    errors: int  # refused calls, tried again


@dataclass
class BlastResult:
    sent: int
    seconds: float
    rate_pps: float
    bytes: int
    procs: int
    profile: str
    errors: int


class Ring:
    """Datagrams in one contiguous buffer, with an mmsghdr per datagram pointing into it."""

    def __init__(self, datagrams: list[bytes]) -> None:
        if not datagrams:
            raise ValueError("no datagrams to send")
        self.count = len(datagrams)
        self.buf = bytearray(b"".join(datagrams))
        self.iovecs = (IoVec * self.count)()
        self.msgs = (MMsgHdr * self.count)()
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))
        self.prefix = [0]  # bytes before datagram i, so a call's byte count is one subtraction
        for i, data in enumerate(datagrams):
            self.iovecs[i].iov_base = base + self.prefix[-1]
            self.iovecs[i].iov_len = len(data)
            self.msgs[i].msg_hdr.msg_iov = ctypes.pointer(self.iovecs[i])
            self.msgs[i].msg_hdr.msg_iovlen = 1
            self.prefix.append(self.prefix[-1] + len(data))
        self.base = ctypes.addressof(self.msgs)
        self.stride = ctypes.sizeof(MMsgHdr)

    def wrapped(self) -> None:
        """Called after each full pass: the datagrams may change for the next one."""


class NewFlows(Ring):
    """TCP SYNs whose inner 5-tuple never repeats within 2^31 datagrams (see the module doc)."""

    IP_AT = 8 + 14  # VXLAN, then an untagged Ethernet header
    SRC_LOW, DST_LOW = IP_AT + 14, IP_AT + 18  # low 16 bits of the inner addresses

    def __init__(self, index: int, first_pass: int = 0, vni: int = 101) -> None:
        # address low words p and 0xFFFF - p (ones' complement sum constant), ports s and
        # 0xFFFF - s likewise: the checksums computed once for the template hold for every datagram
        template = bytes(
            VXLAN(vni=vni, flags=0x08)
            / Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
            / IP(src=f"10.{index % 256}.0.0", dst=f"172.{16 + index // 256 % 16}.255.255")
            / TCP(sport=1024, dport=0xFFFF - 1024, flags="S")
        )
        self.size = len(template)
        datagrams = []
        sport_at = self.IP_AT + 20
        for j in range(NEW_FLOW_PORTS):
            d = bytearray(template)
            d[sport_at : sport_at + 4] = (1024 + j).to_bytes(2, "big") + (
                0xFFFF - 1024 - j
            ).to_bytes(2, "big")
            datagrams.append(bytes(d))
        super().__init__(datagrams)
        self.passes = first_pass - 1
        self.wrapped()  # rewrite the template's addresses for the first pass

    @staticmethod
    def passes_for(count: int) -> int:
        """Passes a ``count``-datagram send starts: the next send starts after them."""
        return count // NEW_FLOW_PORTS + 1

    def wrapped(self) -> None:
        self.passes = p = (self.passes + 1) & 0xFFFF
        n, size, buf = self.count, self.size, self.buf
        for offset, word in ((self.SRC_LOW, p), (self.DST_LOW, 0xFFFF - p)):
            for k, byte in enumerate(word.to_bytes(2, "big")):
                start = offset + k
                buf[start : start + n * size : size] = bytes((byte,)) * n


def _socket(target: tuple[str, int]) -> socket.socket:
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.connect(target)  # sendmmsg then needs no address per message
    return sock


def send_ring(
    ring: Ring,
    target: tuple[str, int],
    count: int,
    *,
    rate: float = 0.0,
    sockets: int = 1,
    max_seconds: float = MAX_SECONDS,
) -> SendResult:
    """Send exactly ``count`` datagrams of ``ring`` (cycling) to ``target`` at ``rate``/s (0 =
    flat out) from ``sockets`` sockets in turn (SO_REUSEPORT spreads sockets over workers)."""
    if _SENDMMSG is None:
        raise OSError("sendmmsg is not available on this platform")
    sendmmsg = _SENDMMSG
    socks = [_socket(target) for _ in range(sockets)]
    fds = [s.fileno() for s in socks]
    base, stride, n, prefix = ring.base, ring.stride, ring.count, ring.prefix
    sent = nbytes = errors = i = turn = 0
    start = time.perf_counter()
    deadline = start + max_seconds
    try:
        while sent < count:
            want = min(VLEN, count - sent, n - i)
            k = sendmmsg(fds[turn], base + i * stride, want, 0)
            if k <= 0:
                code = ctypes.get_errno()
                if k < 0 and code not in _RETRY:
                    raise OSError(code, f"sendmmsg: {errno.errorcode.get(code, code)}")
                errors += 1
                if code == errno.ENOBUFS:
                    time.sleep(0.0001)  # the device queue is full: let it drain a little
            else:
                nbytes += prefix[i + k] - prefix[i]
                sent += k
                i += k
                if i == n:
                    i = 0
                    ring.wrapped()
            turn = turn + 1 if turn + 1 < sockets else 0
            now = time.perf_counter()
            if rate:
                ahead = sent / rate - (now - start)
                if ahead > 0:
                    time.sleep(ahead)
            if now > deadline:
                break
    finally:
        for s in socks:
            s.close()
    return SendResult(sent, nbytes, time.perf_counter() - start, errors)


def send_datagrams(
    datagrams: list[bytes],
    target: tuple[str, int],
    count: int,
    *,
    rate: float = 0.0,
    sockets: int = 1,
) -> SendResult:
    """Send exactly ``count`` of ``datagrams`` (cycling) to ``target`` at ``rate``/s (0 = flat
    out), from this process; what the kernel accepted."""
    return send_ring(Ring(datagrams), target, count, rate=rate, sockets=sockets)


def _proc(
    index: int,
    data: list[bytes] | None,
    target: tuple[str, int],
    count: int,
    rate: float,
    sockets: int,
    first_pass: int,
    go: multiprocessing.synchronize.Event,
    ready: multiprocessing.Queue,  # type: ignore[type-arg]
    out: multiprocessing.Queue,  # type: ignore[type-arg]
) -> None:
    ring = NewFlows(index, first_pass) if data is None else Ring(data)
    ready.put(index)
    go.wait()
    out.put(asdict(send_ring(ring, target, count, rate=rate, sockets=sockets)))


def blast(
    target: tuple[str, int],
    count: int,
    *,
    rate: float = 0.0,
    procs: int = 1,
    profile: str = "mixed",
    datagrams: list[bytes] | None = None,
    sockets: int = 1,
    first_pass: int = 0,
) -> BlastResult:
    """Send ``count`` datagrams split over ``procs`` processes; ``rate`` 0 means flat out.

    The processes build their datagrams first and start sending together; ``seconds`` is the
    longest of their sending times. ``new-flows`` starts at pass ``first_pass``: a later send
    with ``first_pass`` advanced by ``NewFlows.passes_for(count // procs + 1)`` repeats no flow.
    """
    if datagrams is None and profile != "new-flows":
        datagrams = build(PROFILES[profile], min(count, 50_000))
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    ready: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    shares = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
    workers = [
        ctx.Process(
            target=_proc,
            args=(
                i,
                None if datagrams is None else (datagrams[i::procs] or datagrams),
                target,
                share,
                rate / procs,
                sockets,
                first_pass,
                go,
                ready,
                out,
            ),
        )
        for i, share in enumerate(shares)
    ]
    for w in workers:
        w.start()
    try:
        for _ in workers:
            ready.get(timeout=120)
        go.set()
        results = [out.get(timeout=MAX_SECONDS + 60) for _ in workers]
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
    sent = sum(r["sent"] for r in results)
    seconds = max(r["seconds"] for r in results)
    return BlastResult(
        sent=sent,
        seconds=seconds,
        rate_pps=sent / seconds if seconds else 0.0,
        bytes=sum(r["bytes"] for r in results),
        procs=procs,
        profile=profile,
        errors=sum(r["errors"] for r in results),
    )


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="127.0.0.1:4789")
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument(
        "--rate", type=float, default=0.0, help="datagrams/s in total; 0 = flat out"
    )
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--sockets", type=int, default=1, help="sending sockets per process")
    parser.add_argument("--profile", choices=PROFILE_NAMES, default="mixed")
    parser.add_argument(
        "--first-pass", type=int, default=0, help="new-flows: where the 5-tuples start"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = blast(
        parse_target(args.target),
        args.count,
        rate=args.rate,
        procs=args.procs,
        profile=args.profile,
        sockets=args.sockets,
        first_pass=args.first_pass,
    )
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(
            f"sent {result.sent} datagrams ({result.bytes} bytes) in {result.seconds:.2f} s "
            f"= {result.rate_pps:,.0f}/s with {result.procs} process(es), profile "
            f"{result.profile}, {result.errors} refused calls retried"
        )


if __name__ == "__main__":
    main()
