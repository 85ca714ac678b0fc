"""The Kafka sink's spool: which directory a sink claims, what goes in, and what did not fit.

Every record that should have reached the spool and did not is counted here as dropped, with the
reason logged (rate-limited): a full spool, a failed write, or no spool at all.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from collector.config import KafkaConfig
from collector.errors import ConfigError
from collector.io.kafka.delivery import Parked
from collector.io.spool import Spool, SpoolChunk, SpoolError, SpoolLockedError
from collector.logs import RateLimiter

log = logging.getLogger(__name__)

DEAD_LETTER = "dead-letter"
MAX_SPOOL_SLOTS = 256
"""Spool directories per topic (one per live worker process); bounds the search at start."""
LOG_EVERY_S = 10.0
"""Drops are logged at most this often, with a count."""


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
        self.dropped = 0
        self.dropped_s = float("-inf")
        self.write_error = ""
        self.write_error_s = float("-inf")
        self._limiter = RateLimiter(LOG_EVERY_S)
        self._notes_logged = 0
        self._dead: Spool | None = None
        self.dead_lettered = 0

    # -- lifecycle -----------------------------------------------------------------------------

    def open(self) -> None:
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

    def close(self) -> None:
        """Close the open segment (fsync) and release the directory; segments stay."""
        if self._spool is not None:
            self._spool.close()
        if self._dead is not None:
            self._dead.close()
            self._dead = None

    def forget(self) -> None:
        """Close and let go (a failed start): the next start claims a slot again."""
        self.close()
        self._spool = None

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

    def park(self, parked: Parked | None) -> None:
        """Write encoded records; what does not reach the disk is dropped and counted."""
        if parked is None:
            return
        count = len(parked.values)
        if self._spool is None:
            self.drop(count, "no spool is open")
            return
        spool = self._spool
        errors = spool.counters.write_errors
        written = spool.append(
            parked.content_type, parked.keys, parked.values, parked.exporters, parked.sequences
        )
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
                f"the spool is full ({spool.size_bytes} of {self._config.spool_max_bytes} bytes)",
            )

    @property
    def dead_letter_path(self) -> Path:
        return self.path / DEAD_LETTER

    def dead_letter(self, parked: Parked) -> None:
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
        written = self._dead.append(
            parked.content_type, parked.keys, parked.values, parked.exporters, parked.sequences
        )
        self._dead.rotate()  # each is closed (fsynced) at once: they are rare and must survive
        self.dead_lettered += written
        if written < count:
            self.drop(count - written, f"the dead-letter spool {self.dead_letter_path} is full")

    def drop(self, count: int, why: str) -> None:
        self.dropped += count
        self.dropped_s = now = time.monotonic()
        total = self._limiter.check("drop", now, count)
        if total is not None:
            log.error("dropped %d records: %s (%d since the last message)", count, why, total)

    def next_chunk(self, limit: int) -> SpoolChunk | None:
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

    @property
    def quarantined_segments(self) -> int:
        return self._spool.counters.quarantined_segments if self._spool is not None else 0

    @property
    def read_errors(self) -> int:
        return self._spool.counters.read_errors if self._spool is not None else 0

    def ack(self, segment: int | None, count: int) -> None:
        """``count`` records read from ``segment`` left memory for good (delivered or failed)."""
        if segment is not None and self._spool is not None:
            self._spool.ack(segment, count)
            if self._spool.counters.quarantined_segments:
                self.log_notes()

    def rotate(self) -> None:
        """fsync the open segment: what was spooled survives a crash from here on."""
        if self._spool is not None:
            self._spool.rotate()
