"""The disk spool against real files: truncations, corruption, bounds, locking, copies, file
modes, transient read errors (a real EMFILE), quarantine, and a real full file system (tmpfs)."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from disk_faults import no_free_descriptors, resize, small_tmpfs

from collector.io.spool import Spool, SpoolError, SpoolReadError


def write_segment(directory: Path, entries: list[tuple[bytes, bytes]]) -> Path:
    spool = Spool(directory, max_bytes=1 << 30, segment_bytes=1 << 20)
    spool.open()
    assert spool.append("application/json", [k for k, _ in entries], [v for _, v in entries]) == (
        len(entries)
    )
    spool.close()
    (segment,) = directory.glob("*.seg")
    return segment


def read_everything(directory: Path) -> tuple[list[tuple[bytes, bytes]], Spool]:
    spool = Spool(directory, max_bytes=1 << 30, segment_bytes=1 << 20)
    spool.open()
    out: list[tuple[bytes, bytes]] = []
    while (chunk := spool.read(3)) is not None:
        assert chunk.content_type == "application/json"
        out.extend(zip(chunk.keys, chunk.values, strict=True))
    spool.close()
    return out, spool


def test_spool_survives_every_truncation(tmp_path: Path) -> None:
    """A crash can cut the last segment anywhere: the reader keeps every whole entry before the
    cut, skips and counts the torn rest, and never raises."""
    entries = [(f"{i:016x}".encode(), b'{"sequence":%d}' % i * (i + 1)) for i in range(6)]
    original = write_segment(tmp_path / "orig", entries).read_bytes()
    header_size = 8 + 1 + 1 + 2 + 8 + len(b"application/json")
    ends = []
    offset = header_size
    for key, value in entries:
        offset += 8 + 2 + len(key) + 2 + 8 + len(value)  # entry header, key, no exporter, seq
        ends.append(offset)
    for cut in range(len(original)):
        directory = tmp_path / f"cut{cut}"
        directory.mkdir()
        (directory / "00000000000000000001.seg").write_bytes(original[:cut])
        got, spool = read_everything(directory)
        whole = sum(1 for end in ends if end <= cut)
        assert got == entries[:whole], cut
        torn = cut < header_size or cut not in (header_size, *ends)
        assert spool.counters.corrupt_segments == (1 if torn else 0), cut
    got, spool = read_everything(tmp_path / "orig")
    assert got == entries
    assert spool.counters.corrupt_segments == 0


def test_spool_flipped_byte_is_caught_by_the_crc(tmp_path: Path) -> None:
    entries = [(b"%016x" % i, b"value-%d" % i) for i in range(5)]
    segment = write_segment(tmp_path, entries)
    data = bytearray(segment.read_bytes())
    data[-12] ^= 0x40  # inside the last entry's value
    segment.write_bytes(bytes(data))
    got, spool = read_everything(tmp_path)
    assert got == entries[:4]
    assert spool.counters.corrupt_segments == 1
    assert "CRC mismatch" in spool.counters.notes[0]


def test_spool_bounds_bytes_and_deletes_acknowledged_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=2000, segment_bytes=600)
    spool.open()
    keys = [b"%016x" % i for i in range(100)]
    values = [b"x" * 50 for _ in range(100)]
    written = spool.append("application/json", keys, values)
    assert 0 < written < 100
    assert spool.size_bytes <= 2000
    assert len(list(tmp_path.glob("*.seg"))) > 1
    read = 0
    while (chunk := spool.read(1000)) is not None or spool.rotate():
        if chunk is None:
            continue
        assert chunk.keys == keys[read : read + len(chunk.keys)]
        read += len(chunk.values)
        spool.ack(chunk.segment, len(chunk.values))
    assert read == written
    assert spool.is_empty()
    assert spool.size_bytes == 0
    assert not list(tmp_path.glob("*.seg"))
    spool.close()


def test_spool_keeps_unacknowledged_segments_for_the_next_run(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20)
    spool.open()
    spool.append("application/msgpack", [b"k1", b"k2"], [b"v1", b"v2"])
    spool.rotate()
    chunk = spool.read(10)
    assert chunk is not None
    spool.ack(chunk.segment, 1)  # one of two delivered when the process stops
    spool.close()
    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20)
    again.open()
    chunk = again.read(10)
    assert chunk is not None
    assert (chunk.content_type, chunk.values) == ("application/msgpack", [b"v1", b"v2"])
    again.close()


def test_spool_directory_is_locked_against_a_second_collector(tmp_path: Path) -> None:
    first = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20)
    first.open()
    second = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20)
    with pytest.raises(SpoolError, match="in use by another running collector"):
        second.open()
    first.close()
    second.open()
    second.close()


def test_spool_copy_is_independent(tmp_path: Path) -> None:
    """Segments are plain files: copying a spool directory to another host and starting a
    collector there replays it (what ops do when replacing an instance)."""
    entries = [(b"%016x" % i, b"v%d" % i) for i in range(10)]
    write_segment(tmp_path / "a", entries)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    os.remove(tmp_path / "b" / "LOCK")
    got, _ = read_everything(tmp_path / "b")
    assert got == entries


# -- privacy, damage, transient errors, a full disk ---------------------------------------------


def test_spool_files_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir(mode=0o755)  # an older spool directory, created wider
    spool = Spool(directory, max_bytes=1 << 20, segment_bytes=1 << 20)
    spool.open()
    spool.append("application/json", [b"k"], [b"v"])
    spool.rotate()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = list(directory.iterdir())
    assert {p.name for p in files} == {"LOCK", "00000000000000000001.seg"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    spool.close()


def test_a_damaged_segment_is_quarantined_never_deleted(tmp_path: Path) -> None:
    entries = [(b"%016x" % i, b"value-%d" % i) for i in range(5)]
    segment = write_segment(tmp_path, entries)
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0x01
    segment.write_bytes(bytes(data))
    (tmp_path / "00000000000000000002.seg").write_bytes(b"NOTASPOOLSEGMENT")
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20)
    spool.open()
    chunk = spool.read(100)
    assert chunk is not None
    assert chunk.values == [v for _, v in entries[:4]]
    assert spool.read(100) is None
    spool.ack(chunk.segment, len(chunk.values))  # the good entries are delivered
    quarantine = tmp_path / "quarantine"
    assert sorted(p.name for p in quarantine.iterdir()) == [
        "00000000000000000001.seg",
        "00000000000000000002.seg",
    ]
    assert (quarantine / "00000000000000000001.seg").read_bytes() == bytes(data)  # kept whole
    assert spool.counters.quarantined_segments == 2
    assert spool.counters.corrupt_segments == 2
    assert spool.is_empty()
    assert not list(tmp_path.glob("*.seg"))
    spool.close()


def test_transient_read_errors_keep_the_segment_and_are_retried(tmp_path: Path) -> None:
    entries = [(b"%016x" % i, b"value-%d" % i) for i in range(20)]
    write_segment(tmp_path, entries)
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20)
    spool.open()
    with no_free_descriptors():
        for _ in range(3):
            with pytest.raises(SpoolReadError, match="Too many open files"):
                spool.read(100)
    assert spool.counters.read_errors == 3
    assert spool.counters.corrupt_segments == 0
    assert len(list(tmp_path.glob("*.seg"))) == 1  # kept
    chunk = spool.read(100)
    assert chunk is not None
    assert chunk.values == [v for _, v in entries]
    spool.ack(chunk.segment, len(chunk.values))
    assert spool.is_empty()
    spool.close()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "fs", "256k") as mountpoint:
        yield mountpoint


def test_a_full_disk_drops_exactly_what_was_not_written(small_fs: Path) -> None:
    """Appends on a file system that runs out of space: each append says how many entries reached
    the disk; none is torn, no later append extends a torn segment, and after space returns every
    later entry is read back. (max_bytes is far above the disk: the disk is the limit.)"""
    spool = Spool(small_fs / "spool", max_bytes=1 << 30, segment_bytes=64 * 1024)
    spool.open()
    written: list[bytes] = []
    lost = 0
    n = 0
    while lost < 2000:
        values = [b"%08d" % (n + i) + b"x" * 300 for i in range(50)]
        n += 50
        count = spool.append("application/json", [b"k"] * 50, values)
        written.extend(values[:count])
        lost += 50 - count
    assert spool.counters.write_errors > 0
    assert "No space left on device" in spool.counters.last_write_error
    resize(small_fs, "4m")
    after = [b"%08d" % (n + i) + b"y" * 300 for i in range(500)]
    assert spool.append("application/json", [b"k"] * 500, after) == 500
    written.extend(after)
    spool.close()

    again = Spool(small_fs / "spool", max_bytes=1 << 30, segment_bytes=64 * 1024)
    again.open()
    read: list[bytes] = []
    while (chunk := again.read(1000)) is not None:
        read.extend(chunk.values)
    assert read == written  # exactly what append reported, in order, nothing torn
    assert again.counters.corrupt_segments == 0
    again.close()
