"""Log lines and the rate limiter (collector/logs.py)."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from collector.logs import JsonFormatter, RateLimiter, TextFormatter, setup_logging


def test_the_first_event_of_a_key_passes_then_one_per_interval_with_the_held_back_count() -> None:
    limiter = RateLimiter(10.0)
    assert limiter.check("vxlan_flags", 100.0) == 1
    assert limiter.check("vxlan_flags", 101.0) is None
    assert limiter.check("vxlan_flags", 109.9, count=5) is None
    assert limiter.suppressed == 6
    # the next line that gets out says how often it happened since the last one: 6 + this 1
    assert limiter.check("vxlan_flags", 110.0) == 7
    assert limiter.check("vxlan_flags", 110.5) is None
    assert limiter.check("non_ip", 110.5) == 1  # keys are independent


def test_allow_is_check_as_a_boolean() -> None:
    limiter = RateLimiter(1.0)
    assert [limiter.allow("k", t) for t in (0.0, 0.5, 1.0, 1.2, 2.5)] == [
        True,
        False,
        True,
        False,
        True,
    ]


def test_keys_beyond_the_bound_are_held_back_and_counted_never_stored() -> None:
    """A sender that chooses keys cannot grow the limiter: new keys past max_keys are refused."""
    limiter = RateLimiter(60.0, max_keys=3)
    assert [limiter.check(f"k{i}", 0.0) for i in range(3)] == [1, 1, 1]
    for i in range(3, 1000):
        assert limiter.check(f"k{i}", float(i)) is None
    assert limiter.suppressed == 997
    assert len(limiter._last) == 3
    assert limiter.check("k0", 61.0) == 1  # known keys keep working


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "collector.worker", logging.WARNING, __file__, 1, "dropped", None, None
    )
    record.created = 1_764_100_000.25
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_carry_the_extra_fields() -> None:
    line = JsonFormatter().format(_record(reason="non_ip", count=3))
    assert json.loads(line) == {
        "ts": 1_764_100_000.25,
        "level": "warning",
        "logger": "collector.worker",
        "msg": "dropped",
        "reason": "non_ip",
        "count": 3,
    }


def _fail() -> None:
    raise ValueError("bad\nvalue")


def test_text_lines_are_one_line_even_with_a_traceback() -> None:
    try:
        _fail()
    except ValueError:
        record = _record(worker=1)
        record.exc_info = sys.exc_info()
    line = TextFormatter().format(record)
    assert "\n" not in line
    assert line.startswith("2025-11-25T19:46:40Z warning collector.worker: dropped worker=1 | ")
    assert "ValueError: bad | value" in line


def test_setup_logging_writes_to_stderr_at_the_level_asked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("json", "warning")
        logging.getLogger("collector.test").info("not shown")
        logging.getLogger("collector.test").error("shown", extra={"key": "value"})
        out, err = capsys.readouterr()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert out == ""
    (line,) = err.splitlines()
    assert json.loads(line)["msg"] == "shown"
    assert json.loads(line)["key"] == "value"
