"""The live service's lifecycle where it is hardest: a worker killed while it holds traffic, drain
windows of zero and a second signal during one, kernel drops over two workers and a restart.

Workers are frozen with SIGSTOP where a test needs to know exactly what one holds: a stopped
worker's last snapshot (already read by the supervisor) is then the whole truth about it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

from tests.service_harness import Collector, udp, wait_for

LONG_FLOWS = "[flows]\nactive_timeout_s = 600\ninactive_timeout_s = 600\n"


def probes(first_port: int) -> Iterator[bytes]:
    """Probe datagrams for senders_by_worker: one new UDP flow each."""
    return (udp(7, "10.0.0.5", "10.9.0.1", first_port + k, 53) for k in range(64))


def flows_of(c: Collector) -> dict[int, int]:
    _, body = c.health()
    return {w["index"]: w.get("flows_active", 0) for w in body.get("workers", [])}


def test_a_worker_killed_holding_flows_loses_exactly_those_and_reports_them(
    tmp_path: Path,
) -> None:
    with Collector(tmp_path, config=LONG_FLOWS, workers=2) as c:
        senders, landed = c.senders_by_worker(probes(30000))
        victim, survivor = 1, 0
        victim_probes = sum(1 for index, _ in landed if index == victim)
        for port in range(40000, 40020):  # 20 flows of 2 packets each held by the victim
            for _ in range(2):
                senders[victim].sendto(udp(7, "10.0.0.5", "10.9.9.9", port, 53, 20), c.address)
        for port in range(50000, 50010):
            senders[survivor].sendto(udp(7, "10.0.0.5", "10.9.9.9", port, 53, 20), c.address)
        sent = len(landed) + 40 + 10
        held_flows, held_packets = 20 + victim_probes, 40 + victim_probes

        def victim_reported() -> bool:
            received = c.metric("collector_datagrams_received_total")
            return flows_of(c).get(victim) == held_flows and received == sent

        wait_for(victim_reported, "the victim's flows in its last snapshot")
        pid = c.worker_pids()[victim]
        os.kill(pid, signal.SIGSTOP)  # frozen: the snapshot just read is all it holds
        # traffic goes on to the other worker while the victim is frozen and killed
        for port in range(50000, 50015):
            senders[survivor].sendto(udp(7, "10.0.0.5", "10.9.9.9", port, 53, 20), c.address)
        sent += 15
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: c.metric("collector_worker_restarts_total") == 1, "a restart")
        c.wait_healthy()
        for sender in senders.values():
            sender.close()
        # and after the restart, on whichever worker the new socket group hashes it to
        sent += c.send_spread([udp(7, "10.0.0.5", "10.9.9.9", 60000 + i, 53) for i in range(30)])
        c.wait_received(sent)
        metrics = c.metrics()
        assert metrics['collector_worker_exit_lost_total{kind="flows"}'] == held_flows
        assert metrics['collector_worker_exit_lost_total{kind="records"}'] == 0  # file sink
        assert metrics["collector_datagrams_received_total"] == sent  # its counts are kept
        assert c.stop() == 0
    packets = {r["src_port"]: r["packets"] for r in c.records()}
    victim_ports = set(range(40000, 40020))
    victim_ports |= {30000 + k for k, (index, _) in enumerate(landed) if index == victim}
    assert not victim_ports & packets.keys()  # everything the victim held is gone...
    assert sum(packets.values()) == sent - held_packets  # ...and nothing else
    expected = dict.fromkeys(range(50000, 50010), 2) | dict.fromkeys(range(50010, 50015), 1)
    expected |= dict.fromkeys(range(60000, 60030), 1)
    expected |= {30000 + k: 1 for k, (index, _) in enumerate(landed) if index == survivor}
    assert packets == expected


def test_datagrams_queued_for_a_killed_worker_are_counted_lost_and_the_rest_rehashed(
    tmp_path: Path,
) -> None:
    with Collector(tmp_path, config=LONG_FLOWS, workers=2) as c:
        senders, landed = c.senders_by_worker(probes(30000))
        sent = len(landed)
        c.wait_received(sent)
        victim, survivor = 1, 0
        pid = c.worker_pids()[victim]
        os.kill(pid, signal.SIGSTOP)  # everything sent to it now waits on its socket
        queued = 0
        for port in range(41000, 41100):
            senders[victim].sendto(udp(7, "10.0.0.5", "10.9.9.9", port, 53, 20), c.address)
            queued += 1
        sent += queued
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: c.metric("collector_worker_restarts_total") == 1, "a restart")
        lost = 'collector_worker_exit_lost_total{kind="datagrams"}'
        assert c.metrics()[lost] == queued  # counted exactly, none read, none dropped
        # the dead socket left the SO_REUSEPORT group: the victim's sender reaches a live worker
        for port in range(42000, 42010):
            senders[victim].sendto(udp(7, "10.0.0.5", "10.9.9.9", port, 53, 20), c.address)
            senders[survivor].sendto(udp(7, "10.0.0.5", "10.9.9.9", port, 54, 20), c.address)
        sent += 20
        for sender in senders.values():
            sender.close()

        def accounted() -> bool:
            m = c.metrics()
            seen = m.get("collector_datagrams_received_total", 0)
            return seen + m.get("collector_kernel_drops_total", 0) + m[lost] == sent

        wait_for(accounted, "received + kernel drops + lost with the worker == sent")
        assert c.metric("collector_kernel_drops_total") == 0
        assert c.stop() == 0
    ports = {r["src_port"] for r in c.records()}
    assert ports.isdisjoint(range(41000, 41100))
    assert set(range(42000, 42010)) <= ports


def test_drain_zero_still_accounts_what_the_kernel_had_queued(tmp_path: Path) -> None:
    with Collector(tmp_path, "--drain-s", "0", config=LONG_FLOWS) as c:
        first = c.send(udp(7, "10.0.0.5", "10.9.9.9", 7000 + i % 10, 53) for i in range(50))
        c.wait_received(first)
        (pid,) = c.worker_pids().values()
        os.kill(pid, signal.SIGSTOP)  # what is sent now waits in the socket's queue
        try:
            queued = c.send(udp(7, "10.0.0.5", "10.9.9.9", 7000 + i % 10, 53) for i in range(100))
            c.proc.send_signal(signal.SIGTERM)

            def draining() -> dict[str, object] | None:
                code, body = c.health()
                return body if code == 503 else None

            assert wait_for(draining, "503 at once")["status"] == "draining"
        finally:
            os.kill(pid, signal.SIGCONT)
        assert c.proc.wait(timeout=60) == 0
    records = c.records()
    assert sum(r["packets"] for r in records) == first + queued
    assert {r["end_reason"] for r in records} == {"shutdown"}
    assert sorted(r["src_port"] for r in records) == list(range(7000, 7010))


def test_a_second_signal_during_the_drain_neither_cuts_it_short_nor_loses_flows(
    tmp_path: Path,
) -> None:
    with Collector(tmp_path, "--drain-s", "10", config=LONG_FLOWS) as c:
        first = c.send(udp(7, "10.0.0.5", "10.9.9.9", 8000 + i, 53) for i in range(20))
        c.wait_received(first)
        c.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: c.health()[0] == 503, "draining")
        c.proc.send_signal(signal.SIGTERM)
        c.proc.send_signal(signal.SIGINT)
        more = c.send(udp(7, "10.0.0.5", "10.9.9.9", 8000 + i, 53) for i in range(20))
        c.wait_received(first + more)  # still ingesting: the drain goes on
        assert c.proc.poll() is None
        assert "worker stopped" not in c.logs()
        assert c.proc.wait(timeout=60) == 0
        assert c.logs().count("shutting down") == 1
    records = c.records()
    assert {r["src_port"]: r["packets"] for r in records} == {8000 + i: 2 for i in range(20)}


def test_kernel_drops_are_counted_over_two_workers_and_across_a_restart(tmp_path: Path) -> None:
    env = {"COLLECTOR_RECV_BUFFER_BYTES": "65536"}
    with Collector(tmp_path, env=env, workers=2) as c:
        sent = 0

        def accounted() -> bool:
            m = c.metrics()
            received = m.get("collector_datagrams_received_total", 0)
            return received + m.get("collector_kernel_drops_total", 0) == sent

        def overflow_every_worker(first_port: int) -> None:
            """Freeze both workers, send more than their socket buffers hold on each socket."""
            nonlocal sent
            senders, landed = c.senders_by_worker(probes(first_port))
            sent += len(landed)
            pids = c.worker_pids()
            for pid in pids.values():
                os.kill(pid, signal.SIGSTOP)
            try:
                for sender in senders.values():
                    for i in range(3000):
                        datagram = udp(7, "10.4.0.1", "10.4.0.2", 1000 + i % 50, 53, 200)
                        sender.sendto(datagram, c.address)
                        sent += 1
            finally:
                for pid in pids.values():
                    os.kill(pid, signal.SIGCONT)
                for sender in senders.values():
                    sender.close()

        overflow_every_worker(30000)
        # equality needs both workers' drops: each socket overflowed on its own
        wait_for(accounted, "received + kernel drops == sent, over both workers")
        drops = c.metric("collector_kernel_drops_total")
        assert drops > 0

        os.kill(c.worker_pids()[1], signal.SIGKILL)
        wait_for(lambda: c.metric("collector_worker_restarts_total") == 1, "a restart")
        c.wait_healthy()
        assert c.metric("collector_kernel_drops_total") == drops  # kept, not reset or doubled

        overflow_every_worker(31000)  # the restarted worker's new socket drops too
        wait_for(accounted, "received + kernel drops == sent, across the restart")
        assert c.metric("collector_kernel_drops_total") > drops
        assert c.stop() == 0
