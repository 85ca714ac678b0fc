"""A disk spool for records the broker has not acknowledged: append-only segment files, read in order.

Layout: one directory per sink (mode 0700; files 0600: records are traffic metadata), a ``LOCK``
file (flock, so two live collectors never share a spool), segment files ``<20-digit id>.seg``,
oldest id first, and ``quarantine/`` for segments found damaged. A segment is::

    header   8s magic b"VMCSPOOL", u8 version, u8 reserved, u16 content-type length, f64 created
             (Unix s), then the content type (e.g. b"application/json")
    entries  u32 body length, u32 CRC-32 of the body, body =
             version 1: u16 key length, key, value
             version 2: u16 key length, key, u16 exporter length, exporter, u64 sequence, value

Entries are written with one ``write`` per ``append`` call, so what was appended survives the death
of the process; a segment is fsynced when it is closed. When that fsync fails (EIO), the kernel may
have dropped what was written: the segment's entries are counted in ``unsynced_entries`` (lost, not
spooled) and the segment is set aside, never replayed. A crash can still leave a torn entry at the
end of the last segment: the reader checks length and CRC, skips the rest of that segment and counts
it, and never raises for damage.

What is never lost silently:
- a failed write (disk full, I/O error) is cut back to the last whole entry, or the segment is closed
  so no later append extends a torn one; ``append`` returns exactly how many entries reached the
  file, and the caller counts the rest as dropped;
- a read error of the process (EMFILE, ENFILE, ENOMEM) is transient: ``read`` raises
  SpoolReadError and the segment stays for the next attempt, however often;
- a read error of the segment itself (ENOENT, EACCES, EIO, ...) is retried ``MAX_READ_ATTEMPTS``
  times (``read`` raises SpoolReadError meanwhile), then the segment is set aside: moved to
  ``quarantine/`` (or, when it is gone, forgotten), counted with its size, noted for the log, and
  the read goes on with the next segment. A restart does not try it again;
- a segment verified damaged (bad header, torn or corrupt entry) is moved to ``quarantine/`` once
  its good entries are acknowledged: kept, counted, noted for the log;
- a name in ``quarantine/`` is never overwritten: a segment whose name is taken there gets
  ``<id>-<n>.seg`` (ids start again at 1 in a spool that was emptied);
- a segment is deleted only once every entry read from it is acknowledged; a restart replays
  unacknowledged segments whole, so a partly delivered segment yields detectable duplicates (same
  exporter and sequence), never a gap.

The spool does blocking file I/O: calls are short (one write per batch), and the sink calls it only
while the broker is slow or down, or at start and shutdown.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"VMCSPOOL"
VERSION = 2
READABLE_VERSIONS = (1, 2)
_HEADER = struct.Struct("<8sBBHd")
_ENTRY = struct.Struct("<II")
_SHORT = struct.Struct("<H")
_SEQUENCE = struct.Struct("<Q")
SUFFIX = ".seg"
QUARANTINE = "quarantine"
DIR_MODE = 0o700
FILE_MODE = 0o600
MAX_KEY_BYTES = 0xFFFF
MAX_ENTRY_BYTES = 64 * 1024 * 1024
"""A length field above this is taken as corruption, not as a huge record (protects memory)."""
MAX_NOTES = 100
MAX_READ_ATTEMPTS = 3
"""Failed reads of one segment, for reasons of its own (ENOENT, EACCES, EIO), before it is set
aside: a segment the disk will not give back must not hold up every segment behind it."""
MAX_QUARANTINE_NAMES = 1000
"""Names tried for one quarantined segment (``<id>.seg``, ``<id>-1.seg``, ...)."""
PROCESS_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EINTR, errno.EAGAIN})
"""Read errors that say something about the process, not about the segment: never set it aside."""


class SpoolError(Exception):
    """The spool directory cannot be used (permissions, another collector holds the lock)."""


class SpoolLockedError(SpoolError):
    """Another live process holds the spool directory's lock."""


class SpoolReadError(SpoolError):
    """A segment could not be read right now (EMFILE, EIO); it is kept and read again later (a
    segment that fails for reasons of its own: up to MAX_READ_ATTEMPTS times)."""


@dataclass(slots=True)
class SpoolChunk:
    """Entries read from one segment, in order."""

    segment: int
    content_type: str
    created_s: float
    keys: list[bytes]
    values: list[bytes]
    exporters: list[bytes] = field(default_factory=list)
    """Per entry; empty for entries of version-1 segments."""
    sequences: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Segment:
    ident: int
    path: Path
    size: int
    content_type: str = ""
    created_s: float = 0.0
    version: int = VERSION
    header_read: bool = False
    data: bytes | None = None  # loaded when reading starts
    offset: int = 0  # read position in data
    read_done: bool = False
    damaged: bool = False
    entries_read: int = 0
    entries_acked: int = 0
    read_failures: int = 0  # for reasons of the segment's own (see PROCESS_ERRNOS)


@dataclass(slots=True)
class SpoolCounters:
    """What the spool saw of damage and errors; totals since open."""

    corrupt_segments: int = 0
    """Segments whose header was unreadable or whose tail was torn or corrupt."""
    skipped_bytes: int = 0
    """Bytes not replayed because they were torn or corrupt."""
    quarantined_segments: int = 0
    """Segments set aside for good, never replayed again: damaged ones (their good entries were
    replayed) and unreadable ones, moved to quarantine/ for inspection, or missing."""
    unreadable_segments: int = 0
    """Segments set aside after MAX_READ_ATTEMPTS failed reads (ENOENT, EACCES, EIO): their
    entries were not replayed."""
    unreadable_bytes: int = 0
    """Size of the unreadable segments when they were indexed: what replay could not give back."""
    read_errors: int = 0
    """Failed reads (the segment was kept and read again later, or set aside at the last)."""
    write_errors: int = 0
    """Failed appends and fsyncs (disk full, I/O error)."""
    unsynced_entries: int = 0
    """Entries that append reported written but whose segment's fsync then failed: counted lost
    here (the caller adds them to what it dropped), never replayed."""
    last_write_error: str = ""
    notes: list[str] = field(default_factory=list)
    """One line per damaged segment or error, for the log (bounded)."""


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
            self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.chmod(self.directory, DIR_MODE)  # also an older, wider directory
            fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, FILE_MODE)
            os.fchmod(fd, FILE_MODE)
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
            with contextlib.suppress(OSError):
                os.chmod(path, FILE_MODE)
            segment = _Segment(int(stem), path, path.stat().st_size)
            self._next_id = max(self._next_id, segment.ident + 1)
            self._segments.append(segment)
            self._bytes += segment.size
            with contextlib.suppress(OSError):  # read again (and counted) when its turn comes
                self._read_header(segment)
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

    @property
    def last_segment(self) -> int:
        """The id of the newest segment so far (0: none yet)."""
        return self._next_id - 1

    def holds_through(self, ident: int) -> bool:
        """Some segment up to ``ident`` still waits for delivery or acknowledgement."""
        return any(s.ident <= ident for s in self._segments)

    # -- writing -------------------------------------------------------------------------------

    def append(
        self,
        content_type: str,
        keys: Sequence[bytes],
        values: Sequence[bytes],
        exporters: Sequence[bytes] = (),
        sequences: Sequence[int] = (),
    ) -> int:
        """Append entries in order; returns how many reached the file. The rest did not fit under
        ``max_bytes`` or the write failed (``counters.last_write_error`` says why): the caller
        counts them as dropped. Never raises for a failed write."""
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
                exporter = exporters[i][:MAX_KEY_BYTES] if exporters else b""
                body = b"".join(
                    (
                        _SHORT.pack(len(key)),
                        key,
                        _SHORT.pack(len(exporter)),
                        exporter,
                        _SEQUENCE.pack(sequences[i] if sequences else 0),
                        values[i],
                    )
                )
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
            if not self._write_entries(b"".join(parts)):
                break
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
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, FILE_MODE)
        except OSError as exc:
            self._write_failed(path, exc)
            return False
        try:
            _write_all(fd, header)
        except OSError as exc:  # no header, no segment: a later append must not extend it
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            self._write_failed(path, exc)
            return False
        self._writer_fd = fd
        self._writer = _Segment(ident, path, len(header), content_type, created, header_read=True)
        self._writer_type = content_type
        self._writer_entries = 0
        self._bytes += len(header)
        return True

    def _write_entries(self, data: bytes) -> bool:
        """One write of whole entries; on failure the segment is cut back to its last whole entry
        (or, when even that fails, closed so nothing is appended after the torn bytes)."""
        writer = self._writer
        assert writer is not None
        try:
            _write_all(self._writer_fd, data)
        except OSError as exc:
            self._write_failed(writer.path, exc)
            try:
                os.ftruncate(self._writer_fd, writer.size)
            except OSError:
                writer.damaged = True  # the reader stops at the torn entry and quarantines it
            self._close_writer()
            return False
        return True

    def _lost_at_fsync(self, writer: _Segment) -> None:
        """A failed fsync means the kernel may have dropped the segment's dirty pages (Linux marks
        them clean after a failed writeback): its entries are counted lost, never replayed (a
        replay could hand out a part of them, or garbage), and the file is set aside."""
        entries = self._writer_entries
        self.counters.unsynced_entries += entries
        self.counters.quarantined_segments += 1
        self._bytes -= writer.size
        self._note(
            f"{writer.path.name}: fsync failed ({self.counters.last_write_error}); its {entries}"
            " entries may not be on disk: counted lost, never replayed"
        )
        try:
            moved = self._move_to_quarantine(writer.path)
        except OSError as exc:  # a later run replays what the disk kept: a repeat, never a gap
            self._note(f"{writer.path.name}: cannot quarantine ({exc.strerror}); left in place")
        else:
            self._note(f"{writer.path.name}: moved to {QUARANTINE}/{moved}")

    def _write_failed(self, path: Path, exc: OSError) -> None:
        self.counters.write_errors += 1
        self.counters.last_write_error = exc.strerror or errno.errorcode.get(exc.errno or 0, "?")
        self._note(f"{path.name}: write failed ({self.counters.last_write_error})")

    def _close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        fd, self._writer_fd = self._writer_fd, -1
        synced = True
        try:
            os.fsync(fd)
        except OSError as exc:
            synced = False
            self._write_failed(writer.path, exc)
        finally:
            os.close(fd)
        if self._writer_entries == 0:
            with contextlib.suppress(OSError):
                writer.path.unlink()
            self._bytes -= writer.size
        elif not synced:
            self._lost_at_fsync(writer)
        else:
            self._segments.append(writer)
            with contextlib.suppress(OSError):  # durability of the name; the data is synced
                dir_fd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        self._writer_entries = 0

    # -- reading -------------------------------------------------------------------------------

    def read(self, max_entries: int) -> SpoolChunk | None:
        """The next entries of the oldest closed segment not yet read; None when there is none
        (call ``rotate`` to make the open segment readable). Raises SpoolReadError when the next
        segment cannot be read now (it is kept: a later call tries again, in the same order)."""
        for segment in list(self._segments):  # _parse may retire an all-damaged segment
            if segment.read_done:
                continue
            try:
                if not segment.header_read and not self._read_header(segment):
                    continue  # quarantined
                if segment.data is None:
                    segment.data = self._load(segment)
            except OSError as exc:
                self._read_failed(segment, exc)  # raises, unless the segment was set aside
                continue
            chunk = self._parse(segment, max_entries)
            if chunk.values:
                return chunk
        return None

    def ack(self, segment_id: int, count: int) -> None:
        """``count`` entries read from ``segment_id`` left memory for good (delivered, or failed and
        counted); the segment goes when all of its entries have."""
        for segment in self._segments:
            if segment.ident == segment_id:
                segment.entries_acked += count
                self._maybe_retire(segment)
                return

    def _maybe_retire(self, segment: _Segment) -> None:
        if not (segment.read_done and segment.entries_acked >= segment.entries_read):
            return
        if segment.damaged:
            self._quarantine(segment)
        else:
            with contextlib.suppress(FileNotFoundError):
                segment.path.unlink()
        self._bytes -= segment.size
        self._segments.remove(segment)

    def _quarantine(self, segment: _Segment) -> None:
        """Move a damaged segment aside: kept for inspection, never replayed again."""
        self.counters.quarantined_segments += 1
        try:
            moved = self._move_to_quarantine(segment.path)
        except OSError as exc:
            self._note(f"{segment.path.name}: cannot quarantine ({exc.strerror}); left in place")
            return
        self._note(f"{segment.path.name}: moved to {QUARANTINE}/{moved}")

    def _move_to_quarantine(self, path: Path) -> str:
        """Move ``path`` into quarantine/ under a name nothing there has; returns that name. A hard
        link fails rather than replace (EEXIST), so no name is ever overwritten; where the file
        system has no hard links, a name checked free is renamed to (only this spool's lock
        holder writes there)."""
        target = self.directory / QUARANTINE
        target.mkdir(mode=DIR_MODE, exist_ok=True)
        stem = path.name.removesuffix(SUFFIX)
        for n in range(MAX_QUARANTINE_NAMES):
            name = path.name if n == 0 else f"{stem}-{n}{SUFFIX}"
            try:
                os.link(path, target / name, follow_symlinks=False)
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                if os.path.lexists(target / name):
                    continue
                os.rename(path, target / name)
                return name
            path.unlink()
            return name
        raise OSError(errno.EEXIST, f"{MAX_QUARANTINE_NAMES} quarantined copies of {path.name}")

    def _set_aside(self, segment: _Segment, exc: OSError) -> None:
        """Give up on a segment that failed MAX_READ_ATTEMPTS reads: counted with its size,
        quarantined when it is still there, and the read goes on with the next one."""
        self.counters.unreadable_segments += 1
        self.counters.unreadable_bytes += segment.size
        self._note(
            f"{segment.path.name}: unreadable after {segment.read_failures} attempts"
            f" ({exc.strerror}); set aside ({segment.size} bytes not replayed), replay goes on"
            " with the next segment"
        )
        if exc.errno == errno.ENOENT and not os.path.lexists(segment.path):
            self.counters.quarantined_segments += 1  # gone: nothing to move, nothing to retry
        else:
            self._quarantine(segment)
        segment.read_done = True
        segment.data = None
        self._bytes -= segment.size
        self._segments.remove(segment)

    def _read_header(self, segment: _Segment) -> bool:
        """Read the header; False (and quarantined) when it is verified bad. Raises OSError
        when the file cannot be read now."""
        with open(segment.path, "rb") as fh:
            head = fh.read(_HEADER.size)
            ctype = b""
            if len(head) == _HEADER.size:
                magic, version, _, ctype_len, created = _HEADER.unpack(head)
                ctype = fh.read(ctype_len)
        if (
            len(head) == _HEADER.size
            and len(ctype) == ctype_len
            and magic == MAGIC
            and version in READABLE_VERSIONS
        ):
            segment.content_type = ctype.decode("utf-8", "replace")
            segment.created_s = created
            segment.version = version
            segment.header_read = True
            return True
        self._damage(segment, segment.size, "unreadable header")
        segment.read_done = True
        self._maybe_retire(segment)
        return False

    def _read_failed(self, segment: _Segment, exc: OSError) -> None:
        """Raises SpoolReadError (the segment is kept for another try), or returns when the
        segment failed for reasons of its own too often and was set aside."""
        self.counters.read_errors += 1
        if exc.errno not in PROCESS_ERRNOS:
            segment.read_failures += 1
            if segment.read_failures >= MAX_READ_ATTEMPTS:
                self._set_aside(segment, exc)
                return
        self._note(f"{segment.path.name}: cannot read now ({exc.strerror}); kept, trying again")
        raise SpoolReadError(f"cannot read {segment.path}: {exc.strerror}") from exc

    def _load(self, segment: _Segment) -> bytes:
        data = segment.path.read_bytes()
        segment.offset = _HEADER.size + len(segment.content_type.encode())
        return data

    def _parse(self, segment: _Segment, max_entries: int) -> SpoolChunk:
        data = segment.data or b""
        end = len(data)
        offset = segment.offset
        keys: list[bytes] = []
        values: list[bytes] = []
        exporters: list[bytes] = []
        sequences: list[int] = []
        with_meta = segment.version >= 2
        entry_size = _ENTRY.size
        unpack_entry = _ENTRY.unpack_from
        unpack_short = _SHORT.unpack_from
        unpack_sequence = _SEQUENCE.unpack_from
        crc32 = zlib.crc32
        damage = ""
        while len(values) < max_entries and offset < end:
            if end - offset < entry_size:
                damage = "torn entry header at the end"
                break
            body_len, crc = unpack_entry(data, offset)
            body_start = offset + entry_size
            body_end = body_start + body_len
            if body_len < _SHORT.size or body_len > MAX_ENTRY_BYTES:
                damage = f"impossible entry length {body_len}"
                break
            if body_end > end:
                damage = "torn entry at the end"
                break
            if crc32(memoryview(data)[body_start:body_end]) != crc:
                damage = "CRC mismatch"
                break
            (key_len,) = unpack_short(data, body_start)
            key_end = body_start + _SHORT.size + key_len
            value_start = key_end
            if with_meta:
                if key_end + _SHORT.size > body_end:
                    damage = f"key length {key_len} beyond its entry"
                    break
                (exporter_len,) = unpack_short(data, key_end)
                exporter_end = key_end + _SHORT.size + exporter_len
                value_start = exporter_end + _SEQUENCE.size
                if value_start > body_end:
                    damage = f"exporter length {exporter_len} beyond its entry"
                    break
                exporters.append(data[key_end + _SHORT.size : exporter_end])
                sequences.append(unpack_sequence(data, exporter_end)[0])
            elif value_start > body_end:
                damage = f"key length {key_len} beyond its entry"
                break
            keys.append(data[body_start + _SHORT.size : key_end])
            values.append(data[value_start:body_end])
            offset = body_end
        if damage:
            self._damage(segment, end - offset, f"{damage} at byte {offset}, rest skipped")
            offset = end
        segment.offset = offset
        segment.entries_read += len(values)
        if offset >= end:
            segment.read_done = True
            segment.data = None
            if not values:
                self._maybe_retire(segment)
        return SpoolChunk(
            segment.ident,
            segment.content_type,
            segment.created_s,
            keys,
            values,
            exporters,
            sequences,
        )

    def _damage(self, segment: _Segment, skipped: int, what: str) -> None:
        segment.damaged = True
        self.counters.corrupt_segments += 1
        self.counters.skipped_bytes += skipped
        self._note(f"{segment.path.name}: {what} ({skipped} bytes)")

    def _note(self, line: str) -> None:
        if len(self.counters.notes) < MAX_NOTES:
            self.counters.notes.append(line)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
