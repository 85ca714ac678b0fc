"""Real disk faults for the spool tests: a small tmpfs that fills up (root only), and a process
whose file descriptors are all taken (EMFILE on the next open)."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (e.g. "256k") on ``mountpoint``; unmounted whatever happens.
    Skips the test, saying why, where mounting is impossible (not root, no mount namespace)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def resize(mountpoint: Path, size: str) -> None:
    """Give the tmpfs more (or less) room: space returns."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mountpoint)], check=True)


@contextmanager
def no_free_descriptors() -> Iterator[None]:
    """Every file descriptor below a lowered RLIMIT_NOFILE is taken: the next open() fails with
    EMFILE, a real transient error. Restored (and the fillers closed) whatever happens; open
    sockets and files keep working meanwhile."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
    try:
        while True:
            try:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
                break
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
