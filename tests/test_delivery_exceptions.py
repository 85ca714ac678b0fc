"""No catch-all eats records: an unexpected exception (a bug, a library surprise) raised once at
each stage of the delivery path, against the real local broker. Whatever the stage, every record
is delivered, or counted (failed: the one record that could not be encoded; dropped: the slice a
spool write lost), and the topic holds exactly the records not counted: the books balance.
emitted == delivered + failed + dropped + spooled."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka_fixtures import KafkaBroker, make_records, read_topic, unique_topic, wait_until

from collector.config import KafkaConfig, RecordsConfig
from collector.io.kafka import KafkaSink
from collector.io.spool import Spool

JSON = RecordsConfig()
EMITTED = 6000


class InjectedError(RuntimeError):
    """The unexpected exception (no handler anywhere knows it)."""


def once(fn: Callable[..., Any], when: Callable[..., bool] = lambda *a, **k: True) -> Any:
    """``fn``, except that the first call for which ``when`` holds raises InjectedError."""
    fired = False

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal fired
        if not fired and when(*args, **kwargs):
            fired = True
            raise InjectedError("injected once")
        return fn(*args, **kwargs)

    wrapper.fired = lambda: fired  # type: ignore[attr-defined]
    return wrapper


def inject(stage: str, sink: KafkaSink, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Arm the fault; returns the wrapper (to check it fired)."""
    delivery = sink.delivery
    if stage == "encode":  # a deterministic bug: the encoder raises for one record, always
        encode = delivery.encode

        def wrapper(record: Any) -> bytes:
            if record.sequence == 2500:
                wrapper.fired = lambda: True  # type: ignore[attr-defined]
                raise InjectedError("cannot encode this one")
            return encode(record)

        wrapper.fired = lambda: False  # type: ignore[attr-defined]
        delivery.encode = wrapper
    elif stage == "batch build":
        calls = iter(range(10**9))
        wrapper = once(delivery.new_builder, lambda: next(calls) == 3)
        delivery.new_builder = wrapper
    elif stage == "send":
        producer = sink._producer
        wrapper = once(producer.send_batch)

        async def send_batch(*args: Any, **kwargs: Any) -> Any:
            return await wrapper(*args, **kwargs)

        monkeypatch.setattr(producer, "send_batch", send_batch)
    elif stage == "ack handling":
        wrapper = once(delivery.acked)
        delivery.acked = wrapper  # type: ignore[method-assign]
    elif stage == "spool write":
        wrapper = once(Spool.append)
        monkeypatch.setattr(Spool, "append", wrapper)
    elif stage == "spool read":
        wrapper = once(Spool.read)
        monkeypatch.setattr(Spool, "read", wrapper)
    else:
        raise AssertionError(stage)
    return wrapper


@pytest.mark.kafka
@pytest.mark.parametrize(
    "stage", ["encode", "batch build", "send", "ack handling", "spool write", "spool read"]
)
async def test_an_unexpected_exception_at_any_stage_loses_nothing_uncounted(
    stage: str,
    kafka_broker: KafkaBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = unique_topic("exceptions")
    exporter = "bug/w0/1"
    # write-ahead for the spool stages: every record is written to and read from the spool
    wal = stage.startswith("spool")
    config = KafkaConfig(spool_dir=str(tmp_path / "spool"), linger_ms=5, wal=wal)
    sink = KafkaSink([kafka_broker.bootstrap], topic, config, JSON)
    await sink.start()
    try:
        wrapper = inject(stage, sink, monkeypatch)
        for start in range(1, EMITTED + 1, 500):
            sink.submit(make_records(500, exporter, start=start))
        await wait_until(
            lambda: (s := sink.status()).delivered + s.failed + s.dropped == EMITTED,
            60,
            f"every record delivered or counted after an exception at {stage}",
        )
        await sink.flush(30)
        status = sink.status()
    finally:
        await sink.close()
    assert wrapper.fired()
    # the books: emitted == delivered + failed + dropped + spooled
    assert status.delivered + status.failed + status.dropped == EMITTED
    assert status.spool_bytes == 0
    lost = status.failed + status.dropped
    if stage == "encode":
        assert (status.failed, status.dropped) == (1, 0)  # the one record, counted
    elif stage != "spool write":
        assert lost == 0  # re-queued and sent again
    messages = await read_topic(kafka_broker.bootstrap, topic, EMITTED - lost)
    sequences = {int(dict(m.headers)["sequence"]) for m in messages}
    assert len(sequences) == EMITTED - lost
    if stage == "encode":
        assert sequences == set(range(1, EMITTED + 1)) - {2500}
