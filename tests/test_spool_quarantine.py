"""A spool segment that cannot be read is set aside, not waited on; quarantine never overwrites.

The faults are real: EACCES from another user's private file read by a thread that permission bits apply to,
ENOENT from a segment deleted behind the spool's back, EIO from an ext4 file system on a loop
device that was shut down (tests/disk_faults.py). Each test checks the identity: every entry
appended is read back or sits in a segment that was set aside (counted, logged); and that the
spool asked for a bounded number of reads, never an endless wait.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from disk_faults import ext4_loop, no_free_descriptors, permissions_enforced, shut_down

from collector.io.spool import MAX_READ_ATTEMPTS, QUARANTINE, Spool, SpoolReadError

JSON = "application/json"
PER_SEGMENT = 40
SEGMENTS = 3
CALLS_BOUND = 3 * MAX_READ_ATTEMPTS + 10
"""More read calls than any correct spool needs here: the loop below fails instead of hanging."""
NOBODY = 65534


def make_segments(directory: Path) -> list[list[bytes]]:
    """SEGMENTS closed segments of PER_SEGMENT entries each; their values, per segment."""
    spool = Spool(directory, max_bytes=1 << 30, segment_bytes=1 << 20)
    spool.open()
    out = []
    for s in range(SEGMENTS):
        values = [b'{"segment":%d,"n":%d}' % (s, i) for i in range(PER_SEGMENT)]
        keys = [b"%016x" % (s * 1000 + i) for i in range(PER_SEGMENT)]
        assert spool.append(JSON, keys, values) == PER_SEGMENT
        assert spool.rotate()
        out.append(values)
    spool.close()
    return out


def segment_path(directory: Path, ident: int) -> Path:
    return directory / f"{ident:020d}.seg"


def read_all(spool: Spool) -> tuple[list[bytes], int]:
    """Read (and acknowledge) until the spool has nothing unread; returns the values and how many
    reads raised SpoolReadError. Fails after CALLS_BOUND calls: replay must not wait forever."""
    values: list[bytes] = []
    errors = 0
    for _ in range(CALLS_BOUND):
        try:
            chunk = spool.read(1000)
        except SpoolReadError:
            errors += 1
            continue
        if chunk is None:
            return values, errors
        values.extend(chunk.values)
        spool.ack(chunk.segment, len(chunk.values))
    raise AssertionError(
        f"replay still not done after {CALLS_BOUND} reads ({errors} read errors): it waits on an"
        f" unreadable segment; notes: {spool.counters.notes}"
    )


def check_set_aside(
    spool: Spool, directory: Path, written: list[list[bytes]], read: list[bytes], errors: int
) -> None:
    """Segments 1 and 3 replayed in order, segment 2 set aside after MAX_READ_ATTEMPTS reads:
    appended == replayed + set aside, and the set-aside segment is counted and noted."""
    assert read == written[0] + written[2]
    assert errors == MAX_READ_ATTEMPTS - 1  # the last attempt sets it aside and goes on
    counters = spool.counters
    assert counters.unreadable_segments == 1
    assert counters.unreadable_bytes > PER_SEGMENT * 10
    assert counters.read_errors == MAX_READ_ATTEMPTS
    assert any(
        "set aside" in note and "00000000000000000002.seg" in note for note in counters.notes
    )
    assert spool.is_empty()
    assert spool.size_bytes == 0
    assert not list(directory.glob("*.seg"))


def test_a_segment_that_answers_eacces_is_quarantined_and_replay_goes_on(tmp_path: Path) -> None:
    written = make_segments(tmp_path)
    second = segment_path(tmp_path, 2)
    original = second.read_bytes()
    # another user's private file (the spool's own chmod at open cannot make it readable)
    os.chown(second, NOBODY, NOBODY)
    os.chmod(second, 0o600)
    spool = Spool(tmp_path, max_bytes=1 << 30, segment_bytes=1 << 20)
    with permissions_enforced():
        spool.open()
        read, errors = read_all(spool)
    check_set_aside(spool, tmp_path, written, read, errors)
    moved = tmp_path / QUARANTINE / second.name
    assert moved.read_bytes() == original  # kept whole, for an operator
    assert spool.counters.quarantined_segments == 1
    spool.close()


def test_a_segment_deleted_behind_the_spools_back_is_counted_and_replay_goes_on(
    tmp_path: Path,
) -> None:
    written = make_segments(tmp_path)
    spool = Spool(tmp_path, max_bytes=1 << 30, segment_bytes=1 << 20)
    spool.open()
    segment_path(tmp_path, 2).unlink()  # an operator, a cleanup job
    read, errors = read_all(spool)
    check_set_aside(spool, tmp_path, written, read, errors)
    assert spool.counters.quarantined_segments == 1  # set aside for good (nothing to move)
    assert not (tmp_path / QUARANTINE).exists() or not list((tmp_path / QUARANTINE).iterdir())
    spool.close()


def test_a_segment_on_a_failed_disk_eio_is_set_aside_and_replay_goes_on(tmp_path: Path) -> None:
    """The second segment lives on a disk that fails (its name in the spool is a symbolic link to
    it, so only that segment is on the failed disk): every read of it answers EIO."""
    written = make_segments(tmp_path / "spool")
    directory = tmp_path / "spool"
    second = segment_path(directory, 2)
    with ext4_loop(tmp_path / "disk") as disk:
        (disk / second.name).write_bytes(second.read_bytes())
        second.unlink()
        second.symlink_to(disk / second.name)
        spool = Spool(directory, max_bytes=1 << 30, segment_bytes=1 << 20)
        spool.open()
        shut_down(disk)
        read, errors = read_all(spool)
        check_set_aside(spool, directory, written, read, errors)
        assert spool.counters.quarantined_segments == 1
        assert (directory / QUARANTINE / second.name).is_symlink()  # moved, never deleted
        assert "Input/output error" in " ".join(spool.counters.notes)
        spool.close()


def test_process_wide_errors_are_waited_out_without_a_bound(tmp_path: Path) -> None:
    """EMFILE says nothing about the segment: it is never set aside for it, however often."""
    written = make_segments(tmp_path)
    spool = Spool(tmp_path, max_bytes=1 << 30, segment_bytes=1 << 20)
    spool.open()
    with no_free_descriptors():
        for _ in range(MAX_READ_ATTEMPTS * 3):
            with pytest.raises(SpoolReadError, match="Too many open files"):
                spool.read(1000)
    read, errors = read_all(spool)
    assert (read, errors) == ([v for values in written for v in values], 0)
    assert spool.counters.unreadable_segments == 0
    assert spool.counters.quarantined_segments == 0
    spool.close()


def test_quarantine_never_overwrites_an_earlier_quarantined_segment(tmp_path: Path) -> None:
    """A segment id can come back (a spool emptied, then used again starts at 1): the damaged
    segment of today must not replace the one an operator has not looked at yet."""
    quarantine = tmp_path / QUARANTINE
    quarantine.mkdir(mode=0o700)
    earlier = b"the segment quarantined by an earlier run"
    (quarantine / "00000000000000000001.seg").write_bytes(earlier)
    (quarantine / "00000000000000000001-1.seg").write_bytes(earlier + b" (and another)")
    (tmp_path / "00000000000000000001.seg").write_bytes(b"NOTASPOOLSEGMENT")
    spool = Spool(tmp_path, max_bytes=1 << 30, segment_bytes=1 << 20)
    spool.open()
    assert spool.read(100) is None
    assert spool.counters.quarantined_segments == 1
    assert (quarantine / "00000000000000000001.seg").read_bytes() == earlier
    assert (quarantine / "00000000000000000001-1.seg").read_bytes() == earlier + b" (and another)"
    assert (quarantine / "00000000000000000001-2.seg").read_bytes() == b"NOTASPOOLSEGMENT"
    spool.close()
