"""The ingest sweep's verdicts, report rows and plots, from points whose outcome is known."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from bench.ingest import Point, knee, targets
from bench.plots import plots
from bench.report import table_rows


def point(receiver: str, rate: float, lost: int, cpu: float = 1.0, profile: str = "mixed") -> Point:
    sent = 100_000
    return Point(
        receiver=receiver,
        profile=profile,
        offered_pps=rate,
        sent=sent,
        send_rate_pps=rate or 330_000,
        received=sent - lost,
        kernel_drops=lost,
        unexplained=0,
        backlog_drops=0,
        loss_pct=100 * lost / sent,
        cpu_s=cpu * (sent - lost) / 1e6,
        cpu_us_per_packet=cpu if lost < sent else None,
        load_1m=0.0,
    )


def by_target(result: list[dict[str, object]]) -> dict[str, tuple[object, object]]:
    return {str(t["target"]): (t["value"], t["pass"]) for t in result}


def test_knee_is_the_highest_lossless_rate_and_flat_out_counts_at_the_senders_rate() -> None:
    assert knee([point("c", 100e3, 0), point("c", 200e3, 5), point("c", 150e3, 0)]) == 150e3
    assert knee([point("c", 100e3, 0), point("c", 0, 0)]) == 330_000
    assert knee([point("c", 100e3, 1)]) is None


def test_targets_fail_where_the_collector_loses_and_bare_uvloop_does_not() -> None:
    points = [
        point("uvloop", 100e3, 0, 2.0),
        point("uvloop", 200e3, 0, 2.0),
        point("uvloop", 0, 900, 2.0),
        point("recvmmsg", 200e3, 0, 1.0),
        point("collector", 100e3, 0, 1.5),
        point("collector", 200e3, 3, 1.5),
        point("collector", 0, 5000, 1.5),
    ]
    found = by_target(targets(points, ["mixed"]))
    assert found["mixed: zero loss wherever bare uvloop has zero loss"] == ("1/2 rates", False)
    assert found["mixed: CPU/packet <= 1.0x bare uvloop at 200,000/s"] == ("0.75x", True)
    assert found["mixed: CPU/packet <= 1.3x the recvmmsg loop at 200,000/s"] == ("1.50x", False)


def test_a_receiver_that_took_nothing_fails_the_cpu_targets() -> None:
    points = [point("uvloop", 100e3, 0, 2.0), point("collector", 100e3, 100_000)]
    found = by_target(targets(points, ["mixed"]))
    assert found["mixed: CPU/packet <= 1.0x bare uvloop at 100,000/s"] == ("infx", False)


def test_targets_say_when_the_run_cannot_tell() -> None:
    points = [
        point("uvloop", 100e3, 7),  # a disturbed baseline: no rate to compare at
        point("collector", 100e3, 0),
        point("collector", 0, 0),
        point("collector-2w", 100e3, 0),
        point("collector-2w", 0, 0),  # lossless flat out: the senders set the knee
    ]
    found = by_target(targets(points, ["mixed"]))
    value, verdict = found["mixed: zero loss wherever bare uvloop has zero loss"]
    assert verdict is None
    assert "rerun" in str(value)
    value, verdict = found["mixed: 2 workers >= 1.6x one worker's zero-loss rate"]
    assert verdict is None
    assert "sender-bound" in str(value)


def test_report_rows_and_plots_from_a_sweep(tmp_path: Path) -> None:
    points = [
        point(name, rate, lost, profile=profile)
        for profile in ("mixed", "new-flows")
        for name, lost in (("recvmmsg", 0), ("uvloop", 0), ("collector", 0), ("collector-2w", 0))
        for rate in (100e3, 0)
    ]
    ingest = {
        "profiles": ["mixed", "new-flows"],
        "receivers": ["recvmmsg", "uvloop", "collector", "collector-2w"],
        "points": [asdict(p) for p in points],
        "knees_pps": {"collector/mixed": 330_000},
        "targets": targets(points, ["mixed", "new-flows"]),
        "sender_max_pps": 330_000,
    }
    results = {"ingest": {"status": "ok", "result": ingest}}
    rows = table_rows(results)
    assert rows[0][0] == "Live ingest (mixed): highest zero-loss rate, 1 worker"
    assert rows[0][1].startswith("330,000/s")
    verdicts = {row[3] for row in rows if row[0].startswith("Target:")}
    assert verdicts <= {"PASS", "FAIL", "n/a"}
    assert "PASS" in verdicts
    made = plots(results, tmp_path)
    assert made == {"loss": "loss-vs-rate.png", "cpu": "cpu-per-packet.png"}
    for name in made.values():
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
