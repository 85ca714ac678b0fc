"""The ingest sweep's verdicts, report rows and plots, from points whose outcome is known; the
freeze, fill, drain measurement on tiny fills (counts, not timings) and its verdicts."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from bench import drain
from bench.drain import Drain, frozen, summarize
from bench.harness import CollectorReceiver, Senders, make_receiver, process_state
from bench.ingest import Lineup, Point, fresh_per_point, knee, matched_rate, targets
from bench.plots import plots
from bench.report import table_rows
from bench.traffic import PROFILES, build


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


def test_flat_out_is_judged_at_bare_uvloops_rate_offered_paced() -> None:
    """Flat out offers each receiver a different rate (a receiver using less CPU lets the senders
    go faster), so targets skip it; bare uvloop's flat-out rate comes back as a paced point."""
    uvloop_flat = point("uvloop", 0, 0, 2.0)
    uvloop_flat.send_rate_pps = 394_801
    points = [point("uvloop", 100e3, 0, 2.0), uvloop_flat, point("collector", 100e3, 0, 1.5)]
    assert matched_rate(points, "mixed", [100e3, 0]) == 394_000
    assert matched_rate(points, "new-flows", [100e3, 0]) is None  # no such point
    assert matched_rate(points, "mixed", [100e3, 500e3, 0]) is None  # not above the paced rates
    lossy = point("uvloop", 0, 10, 2.0)
    assert matched_rate([lossy], "mixed", [100e3, 0]) is None  # uvloop lost: nothing to match
    points += [
        point("collector", 0, 5000, 1.5),  # lost flat out, at a rate uvloop was never offered
        point("uvloop", 394_000, 0, 2.0),
        point("collector", 394_000, 0, 1.5),
    ]
    found = by_target(targets(points, ["mixed"]))
    assert found["mixed: zero loss wherever bare uvloop has zero loss"] == ("2/2 rates", True)
    assert found["mixed: CPU/packet <= 1.0x bare uvloop at 394,000/s"] == ("0.75x", True)


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
    # the sweep's 2-worker ratio is context now: the target is judged by freeze, fill, drain
    (key,) = [k for k in found if k.startswith("mixed: sweep, senders on the same cores")]
    value, verdict = found[key]
    assert verdict is None
    assert "sender-bound" in str(value)
    assert "mixed: 2 workers >= 1.6x one worker's zero-loss rate" not in found


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


def drained(
    receiver: str, pps: float, *, profile: str = "mixed", lost: int = 0, **extra: Any
) -> Drain:
    sent = 100_000
    fields: dict[str, Any] = {
        "receiver": receiver,
        "profile": profile,
        "count": sent,
        "sent": sent,
        "fill_s": 0.2,
        "fill_rate_pps": 500_000,
        "fill_kernel_drops": lost,
        "fill_backlog_drops": 0,
        "queued_bytes": [1000],
        "frozen_s": 0.3,
        "drain_s": sent / pps,
        "drain_pps": pps,
        "socket_drain_s": [sent / pps],
        "received": sent - lost,
        "unexplained": 0,
        "cpu_s": 0.1,
        "cpu_us_per_packet": 1.0,
        "cpu_wait_s": 0.0,
        "polls": 10,
        "poller_cpu_s": 0.0,
        "load_1m": 0.0,
    }
    fields.update(extra)
    return Drain(**fields)


def test_drain_target_is_the_median_2w_over_1w_ratio_of_the_valid_runs() -> None:
    two = {"queued_bytes": [500, 500], "socket_drain_s": [0.1, 0.1], "pids_unchanged": True}
    runs = [
        drained("collector", 500_000),
        drained("collector", 520_000),
        drained("collector", 480_000),
        drained("collector", 2_000_000, lost=5),  # overflowed the buffer: not counted
        drained("collector-2w", 900_000, worker_shares=[0.5, 0.5], **two),
        drained("collector-2w", 950_000, worker_shares=[0.49, 0.51], **two),
        drained("collector-2w", 1_000_000, worker_shares=[0.52, 0.48], **two),
    ]
    summary = summarize(runs, ["mixed"], ["collector", "collector-2w"])
    assert summary["collector/mixed"]["drain_pps"] == 500_000
    assert summary["collector/mixed"]["valid"] == 3
    assert summary["collector/mixed"]["fill_kernel_drops"] == 5
    assert summary["collector-2w/mixed"]["drain_pps"] == 950_000
    assert summary["collector-2w/mixed"]["worker_shares"] == [0.49, 0.51]
    assert summary["collector-2w/mixed"]["pids_unchanged"] is True
    (target,) = drain.targets(summary, ["mixed"])
    assert target["target"] == "mixed: 2 workers >= 1.6x one worker's zero-loss rate"
    assert target["value"].startswith("1.90x (950,000 vs 500,000/s")
    assert "0.49/0.51" in target["value"]
    assert target["pass"] is True
    slow = [drained("collector", 500_000), drained("collector-2w", 700_000, **two)]
    (target,) = drain.targets(summarize(slow, ["mixed"], ["collector", "collector-2w"]), ["mixed"])
    assert target["pass"] is False


def test_a_drain_is_invalid_when_counts_do_not_add_up_or_a_worker_was_replaced() -> None:
    assert drained("collector", 1e6).valid
    assert drained("collector", 1e6).clean  # one socket: no split to judge
    assert not drained("collector", 1e6, lost=1).valid
    assert not drained("collector", 1e6, received=99_999).valid
    assert not drained("collector", 1e6, pids_unchanged=False).valid
    assert not drained("collector", 1e6, drain_s=None, drain_pps=None).valid
    uneven = drained("collector-2w", 1e6, queued_bytes=[700, 300])
    assert uneven.valid and not uneven.clean
    busy = drained("collector", 1e6, cpu_wait_s=0.05)  # waited half of its 0.1 s drain
    assert busy.valid and not busy.clean
    assert drain.kept([uneven, drained("collector-2w", 9e5, queued_bytes=[520, 480])]).sent
    (target,) = drain.targets(
        summarize(
            [drained("collector", 1e6, lost=1), drained("collector-2w", 1e6)],
            ["mixed"],
            ["collector", "collector-2w"],
        ),
        ["mixed"],
    )
    assert target["pass"] is None


def test_frozen_stops_the_processes_and_resumes_them_even_on_error() -> None:
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])]
    procs.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
    pids = [p.pid for p in procs]
    try:
        with pytest.raises(RuntimeError, match="fill failed"), frozen(pids):
            assert [process_state(pid) for pid in pids] == ["T", "T"]
            raise RuntimeError("fill failed")
        assert all(process_state(pid) in ("S", "R") for pid in pids)
    finally:
        for p in procs:
            p.kill()
            p.wait()


class FailingSenders(Senders):
    def send(self, *args: Any, **kwargs: Any) -> Any:
        raise OSError("the senders failed")


@pytest.fixture(scope="module")
def senders() -> Senders:
    """One sender process, a few prebuilt mixed datagrams (building 50,000 takes long)."""
    out = Senders(1)
    out.data["mixed"] = build(PROFILES["mixed"], 300)
    return out


def test_freeze_fill_drain_counts_add_up_on_a_tiny_fill(senders: Senders) -> None:
    receiver = make_receiver("recvmmsg", rcvbuf=8 << 20)
    try:
        result = drain.measure(receiver, "mixed", 3_000, senders)
        assert result.sent == result.received == 3_000
        assert result.fill_kernel_drops == 0
        assert result.unexplained == 0
        assert result.drain_s is not None and result.drain_pps is not None
        assert len(result.queued_bytes) == 1 and result.queued_bytes[0] > 0
        assert result.valid
        assert process_state(receiver.proc.pid) in ("S", "R")  # resumed
        with pytest.raises(OSError, match="senders failed"):
            drain.measure(receiver, "mixed", 3_000, FailingSenders(1))
        assert process_state(receiver.proc.pid) in ("S", "R")
        assert receiver.count() == 3_000  # still counting: it was resumed
    finally:
        receiver.close()


def test_freeze_fill_drain_of_two_workers_keeps_their_pids_and_splits_the_fill(
    senders: Senders,
) -> None:
    receiver = make_receiver("collector-2w", rcvbuf=8 << 20)
    try:
        assert isinstance(receiver, CollectorReceiver)
        assert len(receiver.freeze_pids) == 3  # the supervisor and both workers
        result = drain.measure(receiver, "mixed", 6_000, senders)
        assert result.sent == result.received == 6_000
        assert result.pids_unchanged is True and result.restarts == 0
        assert len(result.queued_bytes) == 2
        assert result.worker_shares is not None and sum(result.worker_shares) == pytest.approx(1)
        assert result.worker_pps is not None and len(result.worker_pps) == 2
        assert all(process_state(pid) in ("S", "R") for pid in receiver.freeze_pids)
    finally:
        receiver.close()


class FakeReceiver:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeSweep:
    def __init__(self) -> None:
        self.started: list[FakeReceiver] = []

    def start(self, name: str, profile: str) -> FakeReceiver:
        self.started.append(FakeReceiver(name))
        return self.started[-1]


def test_a_collector_on_new_flows_is_fresh_for_every_point_and_the_others_are_kept() -> None:
    assert fresh_per_point("collector-2w", "new-flows")
    assert not fresh_per_point("collector", "mixed")
    assert not fresh_per_point("uvloop", "new-flows")
    for profile, fresh in (("new-flows", True), ("mixed", False)):
        sweep = FakeSweep()
        lineup = Lineup(sweep, profile)  # type: ignore[arg-type]
        first = [lineup.ready("collector"), lineup.ready("uvloop")]
        second = [lineup.ready("collector"), lineup.ready("uvloop")]
        assert (first[0] is not second[0]) is fresh
        assert first[0].closed is fresh  # type: ignore[union-attr]
        assert first[1] is second[1]
        lineup.close()
        assert all(r.closed for r in sweep.started)


def test_report_rows_for_the_drain_and_the_flood(tmp_path: Path) -> None:
    two = {"queued_bytes": [500, 500], "socket_drain_s": [0.1, 0.1], "pids_unchanged": True}
    runs = [
        drained("recvmmsg", 1_500_000),
        drained("uvloop", 800_000),
        drained("collector", 600_000),
        drained("collector-2w", 1_100_000, worker_shares=[0.5, 0.5], **two),
    ]
    names = ["recvmmsg", "uvloop", "collector", "collector-2w"]
    summary = summarize(runs, ["mixed"], names)
    flood_points = [point(n, 150e3, 0, cpu, "new-flows") for n, cpu in (("uvloop", 1.2),)]
    flood_points += [point("recvmmsg", 150e3, 0, 1.0, "new-flows")]
    flood_points += [point("collector", 150e3, 10, 3.0, "new-flows")]
    ingest = {
        "profiles": ["mixed"],
        "receivers": names,
        "points": [],
        "knees_pps": {},
        "targets": drain.targets(summary, ["mixed"]),
        "drain": {
            "profiles": ["mixed"],
            "receivers": names,
            "repeat": 1,
            "counts": {"mixed": 100_000},
            "buffer_bytes": 512 << 20,
            "poll_s": 0.0015,
            "summary": summary,
        },
        "flood": {
            "rate_pps": 150_000,
            "seconds": 8.0,
            "inactive_timeout_s": 1.0,
            "points": [asdict(p) for p in flood_points],
            "collector_records": 99_990,
            "note": "a flood",
        },
    }
    rows = {row[0]: row[1:] for row in table_rows({"ingest": {"status": "ok", "result": ingest}})}
    figure, base, ratio = rows[
        "Live ingest (mixed): drain rate with the senders stopped (freeze, fill 100,000, drain), "
        "1 worker"
    ]
    assert figure == "600,000/s; 2 workers 1,100,000/s (shares 0.50/0.50)"
    assert base == "bare uvloop 800,000/s; recvmmsg loop 1,500,000/s"
    assert ratio == "2w/1w 1.83x"
    (flood_row,) = [k for k in rows if k.startswith("Live ingest (new-flows flood")]
    assert rows[flood_row][0].endswith("99,990 records written")
    assert rows[flood_row][2] == "2.50x / 3.00x"
    assert rows["Target: mixed: 2 workers >= 1.6x one worker's zero-loss rate"][2] == "PASS"
    made = plots({"ingest": {"status": "ok", "result": ingest}}, tmp_path)
    assert made["drain"] == "drain-rate.png"


def test_disturbed_runs_count_only_when_no_run_was_clean() -> None:
    two = {"queued_bytes": [500, 500], "socket_drain_s": [0.1, 0.1], "pids_unchanged": True}
    busy = {**two, "cpu_wait_s": 0.1}  # the workers waited half of a 0.1 s drain for a CPU
    names = ["collector", "collector-2w"]
    runs = [
        drained("collector", 500_000),
        drained("collector-2w", 1_000_000, **two),
        drained("collector-2w", 600_000, **busy),
        drained("collector-2w", 610_000, **busy),
    ]
    summary = summarize(runs, ["mixed"], names)
    assert summary["collector-2w/mixed"]["drain_pps"] == 1_000_000
    assert summary["collector-2w/mixed"]["clean"] == 1
    (target,) = drain.targets(summary, ["mixed"])
    assert target["pass"] is True
    summary = summarize(runs[:1] + runs[2:], ["mixed"], names)
    assert summary["collector-2w/mixed"]["disturbed_only"] is True
    (target,) = drain.targets(summary, ["mixed"])
    assert target["pass"] is None
    assert "disturbed" in target["value"]


def test_two_counting_loops_on_one_port_split_a_tiny_fill(senders: Senders) -> None:
    receiver = make_receiver("recvmmsg-2p", rcvbuf=8 << 20)
    try:
        result = drain.measure(receiver, "mixed", 6_000, senders)
        assert result.sent == result.received == 6_000
        assert len(result.queued_bytes) == 2
        assert result.worker_shares is not None and sum(result.worker_shares) == pytest.approx(1)
        assert all(process_state(pid) in ("S", "R") for pid in receiver.freeze_pids)
    finally:
        receiver.close()
    assert drain.receivers_for(["recvmmsg", "collector"]) == [
        "recvmmsg",
        "recvmmsg-2p",
        "collector",
        "collector-pure",
    ]
