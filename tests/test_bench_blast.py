"""The blaster and the counting baselines of the ingest benchmark, against real loopback sockets."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

from scapy.layers.inet import IP, TCP
from scapy.layers.vxlan import VXLAN

from bench.blast import NEW_FLOW_PORTS, NewFlows, blast, send_datagrams
from bench.harness import port_drops
from collector.wire import decode
from tests.pipeline_support import udp

RECV_BUFFER = 4 << 20
RATE = 50_000  # paced: the collecting thread in this process must keep up


class Sink:
    """A UDP socket on 127.0.0.1 whose datagrams a thread collects until it has ``expected``."""

    def __init__(self, expected: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.target = self.sock.getsockname()
        self.expected = expected
        self.got: list[bytes] = []
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        try:
            while len(self.got) < self.expected:
                self.got.append(self.sock.recv(2048))
        except TimeoutError:
            pass

    def wait(self) -> list[bytes]:
        self.thread.join()
        self.sock.close()
        return self.got


def test_send_datagrams_sends_exactly_the_count_cycling_over_the_datagrams() -> None:
    datagrams = [udp(7, "10.0.0.1", "10.0.0.2", 1000 + i, 53, i) for i in range(10)]
    sink = Sink(2_505)
    result = send_datagrams(datagrams, sink.target, 2_505, sockets=3, rate=RATE)
    got = sink.wait()
    assert result.sent == len(got) == 2_505
    assert result.bytes == sum(map(len, got))
    assert got[:10] == datagrams  # in order, from the first
    assert got[2_500:] == datagrams[:5]


def test_blast_splits_the_count_over_processes_and_reports_what_the_kernel_took() -> None:
    datagrams = [udp(7, "10.0.0.1", "10.0.0.2", 1000 + i, 53, 20) for i in range(50)]
    sink = Sink(6_001)
    result = blast(sink.target, 6_001, procs=3, datagrams=datagrams, rate=30_000)
    got = sink.wait()
    assert (result.sent, result.procs) == (6_001, 3)
    assert len(got) == 6_001
    assert result.bytes == sum(map(len, got))


def five_tuples(datagrams: list[bytes]) -> set[object]:
    keys = set()
    for data in datagrams:
        decoded = decode(data, len(data))
        assert not isinstance(decoded, int), f"undecodable datagram: {decoded}"
        keys.add(decoded[0])
    return keys


def test_new_flows_never_repeat_a_five_tuple_across_passes_and_sends() -> None:
    count = 2 * NEW_FLOW_PORTS + 1_000  # wraps twice: the in-place rewrite is exercised
    first = Sink(count)
    blast(first.target, count, procs=1, profile="new-flows", rate=RATE)
    second = Sink(count)
    blast(
        second.target,
        count,
        procs=1,
        profile="new-flows",
        first_pass=NewFlows.passes_for(count),
        rate=RATE,
    )
    a, b = first.wait(), second.wait()
    assert len(a) == len(b) == count
    keys_a, keys_b = five_tuples(a), five_tuples(b)
    assert len(keys_a) == len(keys_b) == count
    assert not keys_a & keys_b


def test_new_flows_checksums_stay_valid_after_the_rewrite() -> None:
    count = 3 * NEW_FLOW_PORTS
    sink = Sink(count)
    blast(sink.target, count, procs=2, profile="new-flows", first_pass=7, rate=RATE)
    got = sink.wait()
    assert len(got) == count
    for data in got[:: NEW_FLOW_PORTS // 4]:
        inner = VXLAN(data)[IP]
        assert inner[TCP].flags == "S"
        rebuilt = IP(bytes(inner))
        del rebuilt.chksum
        del rebuilt[TCP].chksum
        again = IP(bytes(rebuilt))  # scapy computes both checksums afresh
        assert (again.chksum, again[TCP].chksum) == (inner.chksum, inner[TCP].chksum)


def test_counting_baselines_count_exactly_what_arrived() -> None:
    data = udp(7, "10.0.0.1", "10.0.0.2", 1, 2, 100)
    for kind in ("recvmmsg", "uvloop"):
        with subprocess.Popen(
            [sys.executable, "-m", "bench.bare_receiver", kind, "0", str(RECV_BUFFER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            word, port = proc.stdout.readline().split()
            assert word == "ready"
            result = send_datagrams([data], ("127.0.0.1", int(port)), 3_000, rate=RATE)
            assert result.sent == 3_000
            count = 0
            for _ in range(500):  # a bounded wait for the counter to catch up
                proc.stdin.write("?\n")
                proc.stdin.flush()
                count = int(proc.stdout.readline())
                if count == 3_000:
                    break
                time.sleep(0.01)
            assert (kind, count, port_drops(int(port))) == (kind, 3_000, 0)
            proc.stdin.write("quit\n")
            proc.stdin.flush()
