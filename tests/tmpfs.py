"""A real, small file system for disk-full tests: a tmpfs mounted for the test (root only)."""

from __future__ import annotations

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
