"""Where an exporter's sequence ended, so a consumer can tell a dead worker's lost tail from records
that are merely late.

Each Kafka sink keeps the last sequence it was given, with its exporter name, in a small file of its
spool slot (``wN/EXPORTER``): one ``pwrite`` per submitted batch, into the page cache, so it
survives the process being killed. A clean close marks it ended. The next sink that claims the slot
(the restarted worker) finds an exporter that did not end cleanly and, with ``kafka.end_markers``
on, once the records that exporter left in the spool are delivered (they were late, not lost),
publishes an *end marker* to the topic: a message whose ``content-type`` is ``END_MARKER`` and
whose ``exporter`` and ``sequence`` headers name the exporter and its last sequence. ``collector
tail`` then counts the sequences between the last one it read and that one as lost (the dead
worker's missing tail); without the marker they would be invisible.

An end marker is kept on disk until the broker took it: the sink that finds an unclean exporter
first copies its end into the slot's ``ENDS`` file (written whole, fsynced, renamed), before its own
exporter overwrites ``EXPORTER``; ``mark_published`` removes it once the broker acknowledged the
marker. So a sink that stops (or dies) before a broker answers hands the end on to the next sink of
the slot, and the oldest pending end is published first. An end that cannot be kept (the disk
refuses ``ENDS``) is counted in ``ExporterState.unkept_ends``: it lives in memory only.

No aiokafka here: ``collector tail`` reads markers without importing the sink.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import msgspec

END_MARKER = "application/vnd.vpc-mirror-collector.exporter-end+json"
"""Content type of an end marker (its value is ``ExporterEnd`` as JSON)."""
STATE_FILE = "EXPORTER"
PENDING_FILE = "ENDS"
"""End markers found and not yet published, oldest first, one JSON line each."""
_NAME_BYTES = 400
_LINE = _NAME_BYTES + 1 + 20 + 1 + 1 + 1  # name, tab, sequence, tab, clean flag, newline


class ExporterEnd(msgspec.Struct, frozen=True):
    """The value of an end marker."""

    exporter: str
    last_sequence: int
    """The last sequence the exporter's sink was given; records up to it that never reached the
    topic were lost with the process."""
    reason: str = "the worker ended without a clean shutdown"


def encode_end(end: ExporterEnd) -> bytes:
    return msgspec.json.encode(end)


def decode_end(value: bytes) -> ExporterEnd:
    """Raises msgspec.DecodeError / ValidationError for a malformed marker."""
    return msgspec.json.decode(value, type=ExporterEnd)


_pending_in: dict[ExporterEnd, Path] = {}
"""Pending ends handed out by ``ExporterState.open``, by the slot whose ENDS file holds them."""


@dataclass(slots=True)
class ExporterState:
    """The ``EXPORTER`` file of one spool slot, kept open while the sink lives."""

    path: Path
    fd: int = -1
    exporter: str = ""
    last_sequence: int = 0
    unkept_ends: int = 0
    """Ends of dead exporters that could not be written to ENDS (kept in memory only)."""

    @classmethod
    def open(cls, directory: Path) -> tuple[ExporterState, ExporterEnd | None]:
        """Open (create) the file; returns it and the oldest end marker not yet published: one an
        earlier sink of the slot could not publish, or the previous exporter's end when that one
        did not close cleanly (kept in ENDS first, see the module docstring). Raises OSError."""
        path = directory / STATE_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        state = cls(path, fd)
        previous = _parse(os.pread(fd, _LINE, 0))
        pending = pending_ends(directory)
        if previous is not None and previous not in pending:
            pending.append(previous)
            try:
                _write_pending(directory, pending)
            except OSError:
                state.unkept_ends += 1
        if not pending:
            return state, None
        _pending_in[pending[0]] = directory
        return state, pending[0]

    def note(self, exporter: str, sequence: int) -> None:
        """The sink was given records up to ``sequence`` (one fixed-size pwrite, no fsync)."""
        if sequence <= self.last_sequence and exporter == self.exporter:
            return
        self.exporter, self.last_sequence = exporter, sequence
        self._write(clean=False)

    def close(self, *, clean: bool) -> None:
        if self.fd < 0:
            return
        if self.exporter:
            with contextlib.suppress(OSError):
                self._write(clean=clean)
        os.close(self.fd)
        self.fd = -1

    def _write(self, *, clean: bool) -> None:
        name = self.exporter.encode()[:_NAME_BYTES].ljust(_NAME_BYTES)
        line = b"%s\t%20d\t%s\n" % (name, self.last_sequence, b"1" if clean else b"0")
        os.pwrite(self.fd, line, 0)


def pending_ends(directory: Path) -> list[ExporterEnd]:
    """The slot's end markers not yet published, oldest first (unreadable lines are skipped: a
    torn last line is one the rename never made visible)."""
    try:
        text = (directory / PENDING_FILE).read_bytes()
    except FileNotFoundError:
        return []
    ends: list[ExporterEnd] = []
    for line in text.splitlines():
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            end = decode_end(line)
            if end not in ends:
                ends.append(end)
    return ends


def mark_published(end: ExporterEnd) -> None:
    """The broker acknowledged ``end``'s marker: it leaves its slot's ENDS file. When that cannot
    be written, the next sink publishes it again (a repeated marker, never a lost one)."""
    directory = _pending_in.pop(end, None)
    if directory is None:
        return
    remaining = [e for e in pending_ends(directory) if e != end]
    with contextlib.suppress(OSError):
        _write_pending(directory, remaining)


def _write_pending(directory: Path, ends: list[ExporterEnd]) -> None:
    """Replace ENDS whole (write, fsync, rename, fsync the directory); none left: removed."""
    path = directory / PENDING_FILE
    if not ends:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    temporary = directory / (PENDING_FILE + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        data = b"".join(encode_end(e) + b"\n" for e in ends)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, path)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _parse(data: bytes) -> ExporterEnd | None:
    if len(data) != _LINE:
        return None
    name, _, rest = data.partition(b"\t")
    sequence, _, flag = rest.partition(b"\t")
    exporter = name.decode("utf-8", "replace").rstrip()
    if not exporter or not sequence.strip().isdigit() or flag != b"0\n":
        return None
    return ExporterEnd(exporter, int(sequence))
