"""The Kafka sink's spool: which directory a sink claims, what goes in, and what did not fit.

Every record that should have reached the spool and did not is counted here as dropped, with the
reason logged (rate-limited): a full spool, a failed write, or no spool at all.

All file I/O (appends, fsyncs, segment reads, deletions, the dead-letter spool) runs in one thread
of its own, never on the event loop that receives datagrams: a slow disk delays the spool, not the
receive path. One thread keeps the spool's calls in the order they were made, so a record spilled
before a read is on disk for that read, and an acknowledgement follows the read it belongs to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from collector.config import KafkaConfig
from collector.errors import ConfigError
from collector.io.exporter_end import ExporterEnd, ExporterState
from collector.io.kafka.delivery import Parked
from collector.io.spool import Spool, SpoolChunk, SpoolError, SpoolLockedError
from collector.logs import RateLimiter

log = logging.getLogger(__name__)

DEAD_LETTER = "dead-letter"
MAX_SPOOL_SLOTS = 256
"""Spool directories per topic (one per live worker process); bounds the search at start."""
LOG_EVERY_S = 10.0
"""Drops are logged at most this often, with a count."""
THREAD_NAME = "kafka-spool"
T = TypeVar("T")


class RateLimitedLog:
    """Log a recurring condition at most every ``every_s``, with how often it happened meanwhile
    (one limiter per key: a bounded set of the sink's own keys)."""

    def __init__(self, logger: logging.Logger, every_s: float) -> None:
        self._logger = logger
        self._limiter = RateLimiter(every_s)

    def __call__(self, key: str, level: int, message: str, *args: object, count: int = 1) -> None:
        total = self._limiter.check(key, time.monotonic(), count)
        if total is not None:
            self._logger.log(level, message + " (%d since the last message)", *args, total)


class SinkSpool:
    """One sink's spool directory and the drop accounting of what could not be written to it."""

    def __init__(self, config: KafkaConfig, topic: str, spool_name: str | None) -> None:
        """``spool_name``: subdirectory of ``kafka.spool_dir``; by default the sink claims the
        first free ``TOPIC/wN`` (see open)."""
        self._config = config
        self._topic = topic
        self._name = spool_name
        self.path = Path(config.spool_dir) / (spool_name or f"{topic}/w0")
        self._spool: Spool | None = None
        self._thread_dropped = 0  # written by the spool thread only
        self._loop_dropped = 0  # written by the event loop only
        self.dropped_s = float("-inf")
        self.drop_reason = ""
        self.write_error = ""
        self.write_error_s = float("-inf")
        self._ratelimited = RateLimitedLog(log, LOG_EVERY_S)
        self._notes_logged = 0
        self._dead: Spool | None = None
        self._dead_letter_reasons: set[str] = set()
        self._inherited = 0
        self.exporter_state: ExporterState | None = None
        """Where this sink's exporter got to (written on the event loop: one small pwrite per
        submitted batch, so a kill cannot leave it behind)."""
        self.previous_end: ExporterEnd | None = None
        """The slot's previous exporter, when it did not close cleanly (see exporter_end)."""
        self.dead_lettered = 0
        self._parked_in = 0  # written by the event loop only
        self._parked_out = 0  # written by the spool thread only
        self._parked_bytes_in = 0  # written by the event loop only
        self._parked_bytes_out = 0  # written by the spool thread only
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)

    # -- the spool thread ----------------------------------------------------------------------

    def _submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        future = self._thread.submit(fn, *args)
        future.add_done_callback(_log_failure)
        return future

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.wrap_future(self._submit(fn, *args))

    async def open(self) -> None:
        """See _open; in the spool thread."""
        await self._run(self._open)

    def park(self, parked: Parked | None) -> Future[None] | None:
        """Write encoded records in the spool thread, after everything handed over before;
        counted in ``parking`` until they are written or dropped."""
        if parked is None:
            return None
        count = len(parked.values)
        size = _size(parked)
        self._parked_in += count
        self._parked_bytes_in += size

        def write() -> None:
            try:
                self._park(parked)
            finally:
                self._parked_out += count
                self._parked_bytes_out += size

        return self._submit(write)

    @property
    def parking_bytes(self) -> int:
        """Bytes of keys and values handed to the spool thread (spill, dead letters) and not yet
        written: memory, within kafka.queue_bytes with the rest of the sink's."""
        return self._parked_bytes_in - self._parked_bytes_out

    @property
    def dropped(self) -> int:
        """Records dropped: by the spool thread (the spool could not take them) or on the event
        loop (memory full while the spool thread is behind)."""
        return self._thread_dropped + self._loop_dropped

    def drop_on_loop(self, count: int, why: str) -> None:
        """Count a drop decided on the event loop at once (the spool thread may be stuck)."""
        self._loop_dropped += count
        self.dropped_s = time.monotonic()
        self.drop_reason = why
        self._ratelimited("drop", logging.ERROR, "dropped %d records: %s", count, why, count=count)

    @property
    def parked_total(self) -> int:
        """Records ever handed to the spool thread (a change means something was spilled)."""
        return self._parked_in

    @property
    def parking(self) -> int:
        """Records handed to the spool thread and not yet written (or dropped): still memory."""
        return self._parked_in - self._parked_out

    def drop_later(self, count: int, why: str) -> None:
        """Count a drop seen on the event loop; the counter is the spool thread's to write."""
        try:
            self._submit(self.drop, count, why)
        except RuntimeError:  # the thread has ended (after close): nobody else writes it now
            self.drop(count, why)

    def ack(self, segment: int | None, count: int) -> None:
        """See _ack; in the spool thread, in order."""
        if segment is not None:
            self._submit(self._ack, segment, count)

    def dead_letter(self, parked: Parked, reason: str, error: str) -> None:
        """See _dead_letter; in the spool thread. Logged once per ``reason`` (the counter tells
        the rest)."""
        if reason not in self._dead_letter_reasons:
            self._dead_letter_reasons.add(reason)
            log.error(
                "the broker refuses records for good (%s); they go to %s (counted as"
                " dead-lettered), the rest keep flowing",
                error,
                self.dead_letter_path,
            )
        size = _size(parked)
        self._parked_bytes_in += size

        def write() -> None:
            try:
                self._dead_letter(parked)
            finally:
                self._parked_bytes_out += size

        self._submit(write)

    async def next_chunk(self, limit: int) -> SpoolChunk | None:
        """See _next_chunk; in the spool thread, after every write handed over before."""
        return await self._run(self._next_chunk, limit)

    async def rotate(self) -> None:
        """fsync the open segment (in the spool thread): what was spooled survives a crash."""
        await self._run(self._rotate)

    async def close(self) -> None:
        """Close the open segment (fsync) and release the directory; segments stay."""
        await self._run(self._close)

    async def forget(self) -> None:
        """Close and let go (a failed start): the next start claims a slot again."""
        await self.close()
        self._spool = None

    def shutdown(self) -> None:
        """End the spool thread once everything handed to it is done."""
        self._thread.shutdown(wait=True)

    # -- lifecycle -----------------------------------------------------------------------------

    def _open(self) -> None:
        """Claim the spool named by ``spool_name``, or else the first free slot ``TOPIC/wN``:
        worker processes each claim one (a slot is locked while its process lives), and a
        restarted fleet claims, and so replays, the same slots. Raises ConfigError."""
        c = self._config
        if self._name is not None:
            candidates = [self.path]
        else:
            base = Path(c.spool_dir) / self._topic
            candidates = [base / f"w{slot}" for slot in range(MAX_SPOOL_SLOTS)]
        for path in candidates:
            spool = Spool(path, max_bytes=c.spool_max_bytes, segment_bytes=c.spool_segment_bytes)
            try:
                spool.open()
            except SpoolLockedError as exc:
                if len(candidates) == 1:
                    raise ConfigError("kafka.spool_dir", str(exc)) from exc
                continue
            except SpoolError as exc:
                raise ConfigError("kafka.spool_dir", str(exc)) from exc
            self.path = path
            self._spool = spool
            self._inherited = spool.last_segment
            try:
                self.exporter_state, self.previous_end = ExporterState.open(path)
            except OSError as exc:
                spool.close()
                raise ConfigError(
                    "kafka.spool_dir", f"cannot write {path / 'EXPORTER'}: {exc.strerror}"
                ) from exc
            self.log_notes()
            if not spool.is_empty():
                log.info(
                    "spool %s holds %d bytes from an earlier run; they are sent first",
                    path,
                    spool.size_bytes,
                )
            return
        raise ConfigError(
            "kafka.spool_dir",
            f"all {MAX_SPOOL_SLOTS} spool slots under {candidates[0].parent} are in use",
        )

    def _close(self) -> None:
        if self.exporter_state is not None:
            self.exporter_state.close(clean=True)
            self.exporter_state = None
        if self._spool is not None:
            self._spool.close()
        if self._dead is not None:
            self._dead.close()
            self._dead = None

    # -- state ---------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._spool is not None

    @property
    def size_bytes(self) -> int:
        return self._spool.size_bytes if self._spool is not None else 0

    def is_empty(self) -> bool:
        return self._spool is None or self._spool.is_empty()

    @property
    def skipped_bytes(self) -> int:
        return self._spool.counters.skipped_bytes if self._spool is not None else 0

    @property
    def corrupt_segments(self) -> int:
        return self._spool.counters.corrupt_segments if self._spool is not None else 0

    # -- records in and out --------------------------------------------------------------------

    def _park(self, parked: Parked) -> None:
        """Write encoded records; what does not reach the disk is dropped and counted."""
        count = len(parked.values)
        if self._spool is None:
            self.drop(count, "no spool is open")
            return
        spool = self._spool
        errors = spool.counters.write_errors
        try:
            written = spool.append(
                parked.content_type, parked.keys, parked.values, parked.exporters, parked.sequences
            )
        except Exception as exc:  # a bug: what did not reach the disk is counted, not lost
            log.exception("spool write failed unexpectedly")
            self.drop(count, f"the spool write failed: {type(exc).__name__}: {exc}")
            return
        if written == count:
            return
        self.log_notes()
        if spool.counters.write_errors > errors:
            self.write_error = (
                f"cannot write the spool {self.path}: {spool.counters.last_write_error}"
            )
            self.write_error_s = time.monotonic()
            self.drop(count - written, self.write_error)
        else:
            self.drop(
                count - written,
                f"spool full ({spool.size_bytes} of {self._config.spool_max_bytes} bytes)",
            )

    @property
    def dead_letter_path(self) -> Path:
        return self.path / DEAD_LETTER

    def _dead_letter(self, parked: Parked) -> None:
        """Keep records the broker refuses for good in ``dead-letter/`` (a spool of its own, never
        replayed by the collector: an operator decides); what cannot be written is dropped."""
        count = len(parked.values)
        if self._dead is None:
            c = self._config
            dead = Spool(
                self.dead_letter_path,
                max_bytes=c.spool_max_bytes,
                segment_bytes=c.spool_segment_bytes,
            )
            try:
                dead.open()
            except SpoolError as exc:
                self.drop(count, f"cannot open the dead-letter spool: {exc}")
                return
            self._dead = dead
        try:
            written = self._dead.append(
                parked.content_type, parked.keys, parked.values, parked.exporters, parked.sequences
            )
        except Exception as exc:  # a bug: what did not reach the disk is counted, not lost
            log.exception("dead-letter write failed unexpectedly")
            self.drop(count, f"the dead-letter write failed: {type(exc).__name__}: {exc}")
            return
        self.dead_lettered += written
        try:  # each is closed (fsynced) at once: they are rare and must survive
            self._dead.rotate()
        except Exception:  # written: kept, counted; the next one closes the segment
            log.exception("closing the dead-letter segment failed")
        if written < count:
            self.drop(count - written, f"the dead-letter spool {self.dead_letter_path} is full")

    def drop(self, count: int, why: str) -> None:
        self._thread_dropped += count
        self.dropped_s = time.monotonic()
        self.drop_reason = why
        self._ratelimited("drop", logging.ERROR, "dropped %d records: %s", count, why, count=count)

    def _next_chunk(self, limit: int) -> SpoolChunk | None:
        """The next unread records in order (the open segment is closed for it when nothing else
        is left); None when the spool has nothing unread. Raises SpoolReadError when the next
        segment cannot be read now: the caller tries again later (nothing is skipped)."""
        if self._spool is None:
            return None
        try:
            chunk = self._spool.read(limit)
            if chunk is None and self._spool.rotate():
                chunk = self._spool.read(limit)
        finally:
            self.log_notes()
        return chunk

    def log_notes(self) -> None:
        """Log what the spool noted (damage, quarantine, errors) since the last call."""
        if self._spool is None:
            return
        notes = self._spool.counters.notes
        for note in notes[self._notes_logged :]:
            log.warning("spool %s: %s", self.path, note)
        self._notes_logged = len(notes)

    def holds_inherited(self) -> bool:
        """Segments an earlier process left here still wait for delivery."""
        return self._spool is not None and self._spool.holds_through(self._inherited)

    @property
    def quarantined_segments(self) -> int:
        return self._spool.counters.quarantined_segments if self._spool is not None else 0

    @property
    def read_errors(self) -> int:
        return self._spool.counters.read_errors if self._spool is not None else 0

    def _ack(self, segment: int, count: int) -> None:
        """``count`` records read from ``segment`` left memory for good (delivered or failed)."""
        if self._spool is not None:
            self._spool.ack(segment, count)
            if self._spool.counters.quarantined_segments:
                self.log_notes()

    def _rotate(self) -> None:
        if self._spool is not None:
            self._spool.rotate()


def _size(parked: Parked) -> int:
    return sum(map(len, parked.keys)) + sum(map(len, parked.values))


def _log_failure(future: Future[Any]) -> None:
    """A bug in a spool call must not vanish with its future (the calls never raise on purpose)."""
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.error("spool operation failed: %r", exc, exc_info=exc)
