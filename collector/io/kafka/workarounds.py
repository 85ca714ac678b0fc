"""Every place the Kafka sink reaches into aiokafka's internals, and why.

Each workaround names the aiokafka issue it works around; when one is fixed upstream, its code here
can go. Nothing else in the package touches a private member of aiokafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from typing import Any

from collector.logs import RateLimiter

log = logging.getLogger(__name__)

LZ4_LEVEL = 0
"""lz4 frame level: 0 is lz4's fast mode (see use_fast_lz4)."""
LOG_EVERY_S = 10.0
"""aiokafka's repeated warnings pass at most once per template this often, with a count."""

_AIOKAFKA_LOGGERS = (
    "aiokafka",
    "aiokafka.conn",
    "aiokafka.cluster",
    "aiokafka.producer.producer",
    "aiokafka.producer.sender",
    "aiokafka.admin.client",
)


def use_fast_lz4() -> None:
    """Make aiokafka compress lz4 batches in lz4's fast mode instead of level 9 (LZ4HC).

    Since 0.11 aiokafka compresses lz4 at level 9 with no setting to change it (aio-libs/aiokafka
    issue 1028; pull request 1121 would change the default). Measured here on 200 kB of records:
    3.5 ms at level 9, 0.2 ms in fast mode, for batches 13 % larger; at level 9 compression alone
    costs 2.3 us per record, a third of the budget of 150k records/s on one core. Brokers
    decompress either the same way. The replacement is process-wide and idempotent; it covers the
    Cython and the pure-Python record builders (module globals, hence the setattr).
    """
    cramjam = importlib.import_module("cramjam")  # aiokafka's codec library (extra lz4/zstd)

    def lz4_encode(payload: Any, level: int = LZ4_LEVEL) -> bytes:
        # Kafka's lz4 framing: independent blocks, no content checksum (KIP-57)
        compressor = cramjam.lz4.Compressor(level=level, content_checksum=False, block_linked=False)
        compressor.compress(payload)
        return bytes(compressor.finish())

    for name in (
        "aiokafka.codec",
        "aiokafka.record.default_records",
        "aiokafka.record._crecords.default_records",
    ):
        with contextlib.suppress(ImportError):
            module = importlib.import_module(name)
            if getattr(module, "lz4_encode", None) is not None:
                setattr(module, "lz4_encode", lz4_encode)  # noqa: B010 - a module global


class _RepeatFilter(logging.Filter):
    """Pass one record per message template and logger every LOG_EVERY_S, noting how many were
    held back. aiokafka logs each failed reconnect and each retried batch, several times a second
    during a broker outage, with no setting to quiet it (aio-libs/aiokafka issues 851 and 1101);
    the operator needs the first line and a count, not thousands."""

    def __init__(self) -> None:
        super().__init__()
        self._limiter = RateLimiter(LOG_EVERY_S)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        # templates: a bounded set from aiokafka's source
        total = self._limiter.check(f"{record.name}\0{record.msg}", time.monotonic())
        if total is None:
            return False
        if total > 1:
            record.msg = (
                f"{record.msg} [{total - 1} more like this in the last {LOG_EVERY_S:.0f} s]"
            )
        return True


_REPEAT_FILTER = _RepeatFilter()


def quiet_aiokafka_repeats() -> None:
    """Rate-limit aiokafka's repeated warnings (idempotent; logger filters do not see records of
    child loggers, hence the list)."""
    for name in _AIOKAFKA_LOGGERS:
        logger = logging.getLogger(name)
        if _REPEAT_FILTER not in logger.filters:
            logger.addFilter(_REPEAT_FILTER)


def sender_task(producer: Any) -> asyncio.Task[Any] | None:
    """The producer's background sender task (a private member)."""
    return getattr(getattr(producer, "_sender", None), "sender_task", None)


def producer_broken(producer: Any) -> bool:
    """The sender task ended: the producer still takes batches but never sends them again, and
    says nothing (aio-libs/aiokafka issue 1039). Only a new producer carries on."""
    task = sender_task(producer)
    return task is not None and task.done()


async def drop_producer(producer: Any, timeout_s: float) -> None:
    """Stop a producer without its stop(), which waits for every batch it holds and never returns
    while the broker is gone (aio-libs/aiokafka issues 1101 and 512): cancel the sender task,
    close the connections, and mark it closed so its __del__ does not warn about an unclosed
    producer. (Failing the batches inside aiokafka trips over its own bookkeeping of retried
    batches; the caller takes them back instead.)"""
    task = sender_task(producer)
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=timeout_s)
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout_s):
            await producer.client.close()
    producer._closed = True  # see the docstring


async def stop_producer(producer: Any, *, graceful: bool, timeout_s: float) -> None:
    """Stop a producer within a bound: graceful is aiokafka's stop(), which waits for the batches
    it holds (acked or failed, each reaches the sink's callbacks); with the broker gone that never
    ends (aio-libs/aiokafka issue 1101), so then, or after ``timeout_s``, the producer is dropped
    instead (drop_producer); the caller takes back the batches it still held."""
    if graceful:
        try:
            async with asyncio.timeout(timeout_s):
                await producer.stop()
        except TimeoutError:
            reason = f"no answer within {timeout_s:g} s"
        except Exception as exc:  # a broken sender raises on the way out
            reason = f"{type(exc).__name__}: {exc}"
        else:
            return
        log.warning("the Kafka producer did not stop cleanly (%s); dropping it", reason)
    await drop_producer(producer, timeout_s)
