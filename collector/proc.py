"""Readings of one process from /proc (proc(5)): CPU time, resident memory, open file descriptors
and start time, and per worker slot CPU seconds that carry over restarts. Linux only; a process
that is gone reads as None."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple


class ProcessSample(NamedTuple):
    """What /proc says of one process."""

    cpu_seconds: float
    resident_bytes: int
    open_fds: int
    start_time_s: float


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@functools.cache  # read once: the boot time does not change while the host runs
def _boot_time() -> float:
    """Seconds since the epoch at boot (proc(5): the ``btime`` line of /proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise ValueError("/proc/stat has no btime line")


def read_process(pid: int) -> ProcessSample | None:
    """CPU time, resident memory, open fds and start time of a process (None once it is gone)."""
    proc = Path("/proc") / str(pid)
    try:
        stat = (proc / "stat").read_text()
        # statm's resident count is summed exactly; stat's rss field may lag behind (per-CPU caches)
        rss_pages = int((proc / "statm").read_text().split()[1])
        fds = len(os.listdir(proc / "fd"))
        boot = _boot_time()
    except (OSError, ValueError, IndexError):
        return None
    # proc(5): the command name in field 2 may hold spaces and parentheses; fields after it split
    fields = stat[stat.rindex(")") + 2 :].split()
    try:
        utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15, in clock ticks
        start_ticks = int(fields[19])  # field 22
    except (IndexError, ValueError):
        return None
    return ProcessSample(
        cpu_seconds=(utime + stime) / _CLOCK_TICKS,
        resident_bytes=rss_pages * _PAGE_BYTES,
        open_fds=fds,
        start_time_s=boot + start_ticks / _CLOCK_TICKS,
    )


ProcessReader = Callable[[int], ProcessSample | None]


class ProcessCounters:
    """Per worker slot, CPU seconds that carry over restarts: the count of a new process starts
    from what the slot's earlier processes were last seen to use (what a crashed worker used after
    the last scrape is not counted, but the count never goes backwards)."""

    def __init__(self) -> None:
        self._base: dict[int, float] = {}  # slot -> CPU seconds of its earlier processes
        self._last: dict[int, tuple[int, float]] = {}  # slot -> (pid, CPU seconds last seen)

    def cpu(self, index: int, pid: int | None, sample: ProcessSample | None) -> float:
        """The slot's CPU seconds given its current process (None: no process right now)."""
        last_pid, last_cpu = self._last.get(index, (0, 0.0))
        base = self._base.get(index, 0.0)
        if pid is None or sample is None:
            return base + last_cpu
        if pid != last_pid:
            base += last_cpu
            self._base[index] = base
            last_cpu = 0.0
        cpu = max(sample.cpu_seconds, last_cpu)
        self._last[index] = (pid, cpu)
        return base + cpu
