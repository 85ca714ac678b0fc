"""Which receive path actually runs is visible in /healthz, for each one asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.io.udp import recvmmsg_available
from tests.service_harness import Collector, udp


@pytest.mark.parametrize("mode", ["mmsg", "reader", "protocol"])
def test_health_names_the_receive_path_each_worker_runs(tmp_path: Path, mode: str) -> None:
    with Collector(tmp_path, workers=2, env={"COLLECTOR_RECV_MODE": mode}) as c:
        sent = c.send(udp(3, "10.0.0.1", "10.0.0.2", 1000 + i, 53) for i in range(20))
        c.wait_received(sent)
        code, body = c.health()
        assert code == 200
        expected = "reader" if mode == "mmsg" and not recvmmsg_available() else mode
        assert [w["recv_path"] for w in body["workers"]] == [expected, expected]
        assert c.stop() == 0
