"""Settings as `run` applies them: the VNI range's two ends as configured sessions, and file, then
environment, then flags, each observed through what the running collector does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.service_harness import Collector, clean_environ, udp, wait_for

EXTREME_VNIS = """
[[sessions]]
vni = 0
name = "vni-zero"
interface_id = "eni-00000000000000000"
addresses = ["10.0.0.5"]

[[sessions]]
vni = 16777215
name = "vni-max"
interface_id = "eni-0ffffffffffffffff"
addresses = ["10.0.0.6"]
"""


def test_vni_0_and_16777215_are_sessions_like_any_other(tmp_path: Path) -> None:
    with Collector(tmp_path, config=EXTREME_VNIS) as c:
        sent = c.send(
            [udp(0, "10.0.0.5", "10.9.9.9", 1000, 53)] * 2
            + [udp(16_777_215, "10.9.9.9", "10.0.0.6", 53, 1000)] * 3
            + [udp(16_777_214, "10.0.0.6", "10.9.9.9", 1000, 53)]  # configured by nobody
        )
        c.wait_received(sent)
        assert c.metric('collector_packets_dropped_total{reason="unknown_vni"}') == 1
        assert c.stop() == 0
    got = {
        r["vni"]: (r["session"], r["interface_id"], r["direction"], r["packets"])
        for r in c.records()
    }
    assert got == {
        0: ("vni-zero", "eni-00000000000000000", "egress", 2),
        16_777_215: ("vni-max", "eni-0ffffffffffffffff", "ingress", 3),
    }


def test_a_vni_beyond_24_bits_is_a_config_error_naming_the_session(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(EXTREME_VNIS.replace("16777215", "16777216"))
    result = subprocess.run(
        [sys.executable, "-m", "collector", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=clean_environ(),
    )
    assert result.returncode == 2
    assert "sessions[1].vni" in result.stderr


def test_flags_beat_the_environment_which_beats_the_file(tmp_path: Path) -> None:
    unused = tmp_path / "unused"
    unused.mkdir()
    config = f"""
workers = 2
sink = "file:{unused}/from-file.jsonl"
recv_mode = "protocol"
drain_s = 120

[flows]
inactive_timeout_s = 600
"""
    env = {
        # given as flags by the harness too: the flags must win
        "COLLECTOR_LISTEN": "127.0.0.1:1",
        "COLLECTOR_HEALTH": "127.0.0.1:1",
        "COLLECTOR_WORKERS": "3",
        "COLLECTOR_SINK": f"file:{unused}/from-env.jsonl",
        "COLLECTOR_DRAIN_S": "120",
        # given by no flag: the environment must beat the file
        "COLLECTOR_RECV_MODE": "reader",
        "COLLECTOR_FLOWS_INACTIVE_TIMEOUT_S": "1",
    }
    with Collector(tmp_path, "--drain-s", "0", config=config, env=env) as c:
        _, body = c.health()  # answered on the --health port, not the environment's
        assert [w["recv_path"] for w in body["workers"]] == ["reader"]  # --workers 1
        sent = c.send([udp(7, "10.0.0.5", "10.9.9.9", 1000, 53)] * 2)
        c.wait_received(sent)  # on the --listen port
        (record,) = wait_for(c.records, "the flow ended by the environment's inactive timeout")
        assert (record["packets"], record["end_reason"]) == (2, "inactive_timeout")
        assert c.stop() == 0  # --drain-s 0: a 120 s drain would outlast stop()'s wait
    assert list(unused.iterdir()) == []  # --sink won over both other sinks
