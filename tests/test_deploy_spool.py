"""The spool must fit on its volume: a collector whose spools (one per worker, each up to
``kafka.spool_max_bytes``) cannot fit on the volume of ``kafka.spool_dir`` refuses to start (exit 2
naming the key), before it fills the disk under itself. Checked with ``collector check-config``
(what the systemd unit runs first) and ``collector run``, on a real small file system (a tmpfs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.disk_faults import small_tmpfs
from tests.service_harness import clean_environ

MIB = 1 << 20


def config(spool: Path, max_bytes: int) -> str:
    return f"""
sink = "kafka://127.0.0.1:9/flows"
workers = 2
[kafka]
spool_dir = "{spool}"
spool_max_bytes = {max_bytes}
"""


def collector(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        capture_output=True,
        text=True,
        env=clean_environ(),
        timeout=60,
        check=False,
    )


def test_a_spool_that_cannot_fit_its_volume_is_refused(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "volume", "16m") as volume:
        spool = volume / "spool"
        path = tmp_path / "collector.toml"
        # 2 workers x 10 MiB on 16 MiB: refused by check-config and by run, naming the key
        path.write_text(config(spool, 10 * MIB))
        checked = collector("check-config", str(path))
        assert checked.returncode == 2, checked.stdout + checked.stderr
        assert "kafka.spool_max_bytes" in checked.stderr
        assert "2 workers x 10485760 bytes" in checked.stderr
        assert str(spool) in checked.stderr
        ran = collector("run", "--config", str(path), "--listen", "127.0.0.1:0")
        assert ran.returncode == 2
        assert "kafka.spool_max_bytes" in ran.stderr
        assert "Traceback" not in ran.stderr
        # 2 x 6 MiB fits
        path.write_text(config(spool, 6 * MIB))
        assert collector("check-config", str(path)).returncode == 0

        # What the spool already holds is its own: 8 MiB of segments leave 8 MiB free, and
        # 2 x 7 MiB still fits (the spool may reuse its 8).
        spool.mkdir()
        (spool / "segment").write_bytes(b"\0" * (8 * MIB))
        path.write_text(config(spool, 7 * MIB))
        held = collector("check-config", str(path))
        assert held.returncode == 0, held.stderr
        # but something else filling the volume is not
        (spool / "segment").rename(volume / "other")
        assert collector("check-config", str(path)).returncode == 2
