"""Every loss visible: one worker overloaded on purpose loses datagrams, and counts each of them.

The blaster (sendmmsg from two processes, flat out) sends a flood of new flows, the costliest
traffic per datagram, at a worker whose socket buffer is small; whatever the worker could not
read the kernel dropped and counted, and the collector exports that count.
"""

from __future__ import annotations

from pathlib import Path

from bench.blast import NewFlows, blast
from bench.harness import port_drops
from tests.service_harness import Collector, wait_for

FLOOD = 300_000
ROUNDS = 5  # floods sent at most until the kernel has dropped something


def test_overloaded_worker_accounts_for_every_datagram_sent(tmp_path: Path) -> None:
    env = {"COLLECTOR_RECV_BUFFER_BYTES": "262144"}
    with Collector(tmp_path, env=env, sink="file:/dev/null") as c:
        target = ("127.0.0.1", c.udp_port)
        sent = first_pass = 0
        for _ in range(ROUNDS):
            result = blast(target, FLOOD, procs=2, profile="new-flows", first_pass=first_pass)
            first_pass += NewFlows.passes_for(FLOOD // 2 + 1)
            sent += result.sent
            assert result.sent == FLOOD  # the kernel took every datagram it was handed
            if port_drops(c.udp_port):
                break
        dropped = port_drops(c.udp_port)
        assert dropped > 0, "the worker kept up: nothing was overloaded"

        def accounted() -> tuple[float, float] | None:
            m = c.metrics()
            received = m.get("collector_datagrams_received_total", 0.0)
            drops = m.get("collector_kernel_drops_total", 0.0)
            return (received, drops) if received + drops == sent else None

        received, drops = wait_for(accounted, "received + kernel drops == sent")
        assert received > 0
        assert drops == port_drops(c.udp_port) == dropped  # what the kernel itself reports
        assert c.stop() == 0
