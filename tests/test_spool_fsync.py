"""An fsync that fails (EIO, for real: ext4 on a loop device, shut down) is a failure, not a
spooled record: Linux forgets the dirty pages whose writeback failed, so the segment's entries are
counted lost (``unsynced_entries``) and never replayed; after the disk comes back, what the spool
replays plus what it counted lost is exactly what it said it wrote."""

from __future__ import annotations

from pathlib import Path

from disk_faults import ext4_loop, remount, shut_down

from collector.io.spool import Spool

JSON = "application/json"


def values(first: int, count: int) -> list[bytes]:
    return [b'{"sequence":%d}' % i + b"x" * 200 for i in range(first, first + count)]


def test_a_segment_whose_fsync_fails_is_counted_lost_not_spooled(tmp_path: Path) -> None:
    with ext4_loop(tmp_path / "disk") as disk:
        spool = Spool(disk / "spool", max_bytes=1 << 30, segment_bytes=1 << 20)
        spool.open()
        synced = values(0, 100)
        assert spool.append(JSON, [b"k"] * 100, synced) == 100
        assert spool.rotate()  # closed and fsynced while the disk works
        synced_bytes = spool.size_bytes
        unsynced = values(100, 150)
        assert spool.append(JSON, [b"k"] * 150, unsynced) == 150  # in the page cache only
        shut_down(disk)
        spool.rotate()  # closes the segment: its fsync fails
        assert spool.size_bytes == synced_bytes  # it is no longer in the spool's books
        counters = spool.counters
        assert counters.unsynced_entries == 150
        assert counters.write_errors >= 1
        assert "Input/output error" in counters.last_write_error
        assert any("fsync failed" in note for note in counters.notes), counters.notes
        later = values(250, 50)
        dropped = 50 - spool.append(JSON, [b"k"] * 50, later)  # the disk is gone for good
        assert dropped == 50
        spool.close()

        remount(disk)  # the disk comes back with what reached it
        again = Spool(disk / "spool", max_bytes=1 << 30, segment_bytes=1 << 20)
        again.open()
        replayed: list[bytes] = []
        while (chunk := again.read(1000)) is not None:
            replayed.extend(chunk.values)
            again.ack(chunk.segment, len(chunk.values))
        again.close()
    # every entry offered is replayed once or was counted (lost at fsync, or not written)
    assert replayed == synced
    assert len(replayed) + counters.unsynced_entries + dropped == 300
