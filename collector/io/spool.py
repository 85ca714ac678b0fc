"""A disk spool for records the broker has not acknowledged: append-only segment files, read in order.

Layout: one directory per sink, a ``LOCK`` file (flock, so two live collectors never share a spool)
and segment files ``<20-digit id>.seg``, oldest id first. A segment is::

    header   8s magic b"VMCSPOOL", u8 version, u8 reserved, u16 content-type length, f64 created
             (Unix s), then the content type (e.g. b"application/json")
    entries  u32 body length, u32 CRC-32 of the body, body = u16 key length, key, value

Entries are written with one ``write`` per ``append`` call, so what was appended survives the death
of the process; a segment is fsynced when it is closed. A crash can still leave a torn entry at the
end of the last segment: the reader checks length and CRC, skips the rest of that segment and counts
it, and never raises. A segment is deleted once every entry read from it is acknowledged; a restart
replays unacknowledged segments whole, so a partly delivered segment yields detectable duplicates
(same exporter and sequence), never a gap.

The spool does blocking file I/O by design: calls are short (one write per batch) and it is only
used while the broker is slow or down, or at start and shutdown.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"VMCSPOOL"
VERSION = 1
_HEADER = struct.Struct("<8sBBHd")
_ENTRY = struct.Struct("<II")
_KEY_LEN = struct.Struct("<H")
SUFFIX = ".seg"
MAX_KEY_BYTES = 0xFFFF
MAX_ENTRY_BYTES = 64 * 1024 * 1024
"""A length field above this is taken as corruption, not as a huge record (protects memory)."""


class SpoolError(Exception):
    """The spool directory cannot be used (permissions, another collector holds the lock)."""


class SpoolLockedError(SpoolError):
    """Another live process holds the spool directory's lock."""


@dataclass(slots=True)
class SpoolChunk:
    """Entries read from one segment, in order."""

    segment: int
    content_type: str
    created_s: float
    keys: list[bytes]
    values: list[bytes]


@dataclass(slots=True)
class _Segment:
    ident: int
    path: Path
    size: int
    content_type: str = ""
    created_s: float = 0.0
    data: bytes | None = None  # loaded when reading starts
    offset: int = 0  # read position in data
    read_done: bool = False
    entries_read: int = 0
    entries_acked: int = 0


@dataclass(slots=True)
class SpoolCounters:
    """What the spool saw of damage; totals since open."""

    corrupt_segments: int = 0
    """Segments whose header was unreadable (deleted) or whose tail was torn or corrupt."""
    skipped_bytes: int = 0
    """Bytes not replayed because they were torn or corrupt."""
    notes: list[str] = field(default_factory=list)
    """One line per damaged segment, for the log (bounded)."""


class Spool:
    """Append-only, ordered, bounded record spool in one directory."""

    def __init__(
        self, directory: str | os.PathLike[str], *, max_bytes: int, segment_bytes: int
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.counters = SpoolCounters()
        self._segments: list[_Segment] = []  # closed segments, oldest first
        self._next_id = 1
        self._bytes = 0
        self._lock_fd = -1
        self._writer_fd = -1
        self._writer: _Segment | None = None
        self._writer_entries = 0
        self._writer_type = ""

    # -- lifecycle -----------------------------------------------------------------------------

    def open(self) -> None:
        """Lock the directory and index the segments a previous run left (they are replayed first).

        Raises SpoolError when the directory cannot be created or is locked by another process.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SpoolError(
                f"cannot use spool directory {self.directory}: {exc.strerror}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise SpoolLockedError(
                f"spool directory {self.directory} is in use by another running collector"
                f" (pid {holder})"
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        for path in sorted(self.directory.glob("*" + SUFFIX)):
            stem = path.name[: -len(SUFFIX)]
            if not stem.isdigit():
                continue
            size = path.stat().st_size
            segment = _Segment(int(stem), path, size)
            if self._read_header(segment):
                self._segments.append(segment)
                self._bytes += size
            self._next_id = max(self._next_id, segment.ident + 1)
        for stale in self.directory.glob("*" + SUFFIX + ".tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()

    def close(self) -> None:
        """Close the open segment (fsync) and release the lock. Segments stay for the next run."""
        self._close_writer()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    # -- state ---------------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        """Bytes on disk, headers included."""
        return self._bytes

    def has_unread(self) -> bool:
        """Anything appended and not yet handed out by ``read`` (closed or open segments)."""
        return self._writer_entries > 0 or any(not s.read_done for s in self._segments)

    def is_empty(self) -> bool:
        """Nothing on disk waiting for delivery or acknowledgement."""
        return self._writer_entries == 0 and not self._segments

    # -- writing -------------------------------------------------------------------------------

    def append(self, content_type: str, keys: Sequence[bytes], values: Sequence[bytes]) -> int:
        """Append entries in order; returns how many fit under ``max_bytes`` (the rest are not
        written: the caller counts them as dropped). An OSError (disk full) propagates."""
        count = len(values)
        written = 0
        while written < count:
            if self._writer is None or self._writer_type != content_type:
                self._close_writer()
                if not self._open_writer(content_type):
                    break
            assert self._writer is not None
            room_total = self.max_bytes - self._bytes
            room_segment = self.segment_bytes - self._writer.size
            parts: list[bytes] = []
            size = 0
            i = written
            while i < count:
                key = keys[i][:MAX_KEY_BYTES]
                body = _KEY_LEN.pack(len(key)) + key + values[i]
                entry_size = _ENTRY.size + len(body)
                if size + entry_size > room_total:
                    break
                if size and size + entry_size > room_segment:
                    break
                parts.append(_ENTRY.pack(len(body), zlib.crc32(body)))
                parts.append(body)
                size += entry_size
                i += 1
            if i == written:  # spool full: not even the next entry fits under max_bytes
                if self._writer_entries == 0:
                    self._close_writer()  # drops the header of a segment left empty
                break
            self._write_all(b"".join(parts))
            self._writer.size += size
            self._bytes += size
            self._writer_entries += i - written
            written = i
            if self._writer.size >= self.segment_bytes:
                self._close_writer()
        return written

    def rotate(self) -> bool:
        """Close the open segment so ``read`` can hand it out; False when it held nothing."""
        if self._writer is None or self._writer_entries == 0:
            return False
        self._close_writer()
        return True

    def _open_writer(self, content_type: str) -> bool:
        ctype = content_type.encode()
        created = time.time()
        header = _HEADER.pack(MAGIC, VERSION, 0, len(ctype), created) + ctype
        if self._bytes + len(header) > self.max_bytes:
            return False
        ident = self._next_id
        self._next_id += 1
        path = self.directory / f"{ident:020d}{SUFFIX}"
        self._writer_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._writer = _Segment(ident, path, 0, content_type, created)
        self._writer_type = content_type
        self._writer_entries = 0
        self._write_all(header)
        self._writer.size = len(header)
        self._bytes += len(header)
        return True

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._writer_fd, view) :]

    def _close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        fd, self._writer_fd = self._writer_fd, -1
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if self._writer_entries == 0:
            with contextlib.suppress(OSError):
                writer.path.unlink()
            self._bytes -= writer.size
        else:
            self._segments.append(writer)
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._writer_entries = 0

    # -- reading -------------------------------------------------------------------------------

    def read(self, max_entries: int) -> SpoolChunk | None:
        """The next entries of the oldest closed segment not yet read; None when there is none
        (call ``rotate`` to make the open segment readable)."""
        for segment in list(self._segments):  # _parse may delete an all-damaged segment
            if segment.read_done:
                continue
            if segment.data is None:
                segment.data = self._load(segment)
            chunk = self._parse(segment, max_entries)
            if chunk.values:
                return chunk
        return None

    def ack(self, segment_id: int, count: int) -> None:
        """``count`` entries read from ``segment_id`` were delivered; delete the segment when all
        of its entries are."""
        for segment in self._segments:
            if segment.ident == segment_id:
                segment.entries_acked += count
                self._maybe_delete(segment)
                return

    def _maybe_delete(self, segment: _Segment) -> None:
        if segment.read_done and segment.entries_acked >= segment.entries_read:
            with contextlib.suppress(FileNotFoundError):
                segment.path.unlink()
            self._bytes -= segment.size
            self._segments.remove(segment)

    def _read_header(self, segment: _Segment) -> bool:
        try:
            with open(segment.path, "rb") as fh:
                head = fh.read(_HEADER.size)
                if len(head) == _HEADER.size:
                    magic, version, _, ctype_len, created = _HEADER.unpack(head)
                    ctype = fh.read(ctype_len)
                    if magic == MAGIC and version == VERSION and len(ctype) == ctype_len:
                        segment.content_type = ctype.decode("utf-8", "replace")
                        segment.created_s = created
                        return True
        except OSError:
            pass
        self._note(segment, segment.size, "unreadable header, segment deleted")
        with contextlib.suppress(OSError):
            segment.path.unlink()
        return False

    def _load(self, segment: _Segment) -> bytes:
        try:
            data = segment.path.read_bytes()
        except OSError as exc:
            self._note(segment, segment.size, f"unreadable ({exc.strerror}), skipped")
            return b""
        segment.offset = _HEADER.size + len(segment.content_type.encode())
        return data

    def _parse(self, segment: _Segment, max_entries: int) -> SpoolChunk:
        data = segment.data or b""
        end = len(data)
        offset = segment.offset
        keys: list[bytes] = []
        values: list[bytes] = []
        entry_size = _ENTRY.size
        unpack_entry = _ENTRY.unpack_from
        unpack_key = _KEY_LEN.unpack_from
        crc32 = zlib.crc32
        damage = ""
        while len(values) < max_entries and offset < end:
            if end - offset < entry_size:
                damage = "torn entry header at the end"
                break
            body_len, crc = unpack_entry(data, offset)
            body_start = offset + entry_size
            body_end = body_start + body_len
            if body_len < _KEY_LEN.size or body_len > MAX_ENTRY_BYTES:
                damage = f"impossible entry length {body_len}"
                break
            if body_end > end:
                damage = "torn entry at the end"
                break
            body = memoryview(data)[body_start:body_end]
            if crc32(body) != crc:
                damage = "CRC mismatch"
                break
            (key_len,) = unpack_key(data, body_start)
            key_end = body_start + _KEY_LEN.size + key_len
            if key_end > body_end:
                damage = f"key length {key_len} beyond its entry"
                break
            keys.append(data[body_start + _KEY_LEN.size : key_end])
            values.append(data[key_end:body_end])
            offset = body_end
        if damage:
            self._note(segment, end - offset, f"{damage} at byte {offset}, rest skipped")
            offset = end
        segment.offset = offset
        segment.entries_read += len(values)
        if offset >= end:
            segment.read_done = True
            segment.data = None
            if not values:
                self._maybe_delete(segment)
        return SpoolChunk(segment.ident, segment.content_type, segment.created_s, keys, values)

    def _note(self, segment: _Segment, skipped: int, what: str) -> None:
        self.counters.corrupt_segments += 1
        self.counters.skipped_bytes += skipped
        if len(self.counters.notes) < 100:
            self.counters.notes.append(f"{segment.path.name}: {what} ({skipped} bytes)")
