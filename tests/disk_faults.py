"""Real disk faults for the spool tests: a small tmpfs that fills up (root only), a process whose
file descriptors are all taken (EMFILE on the next open), an ext4 file system on a loop device
that is shut down (EIO on every read, write, fsync and rename: device-mapper's ``error`` target is
not in this kernel, the ext4 shutdown ioctl gives the same errno from the same layers above the
block device), and a root thread that permission bits apply to (EACCES)."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import resource
import struct
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


EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32), linux/fs/ext4/ext4.h
EXT4_GOING_FLAGS_NOLOGFLUSH = 2  # shut down without flushing the journal: what is unsynced is lost


@contextmanager
def ext4_loop(mountpoint: Path, size_bytes: int = 32 * 1024 * 1024) -> Iterator[Path]:
    """An ext4 file system on a loop device (its image next to the mount point), mounted on
    ``mountpoint``; unmounted (and the loop device freed) whatever happens. Skips the test,
    saying why, where the kernel refuses (no loop devices, not root)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    image = mountpoint.with_name(mountpoint.name + ".img")
    with image.open("wb") as fh:
        fh.truncate(size_bytes)
    made = subprocess.run(
        ["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True, check=False
    )
    if made.returncode != 0:
        pytest.skip(f"cannot make an ext4 file system here: {made.stderr.strip()}")
    mounted = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        image.unlink()
        pytest.skip(f"cannot mount a loop device here (needs root): {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        image.unlink(missing_ok=True)


def shut_down(mountpoint: Path) -> None:
    """Shut the ext4 file system down (the EXT4_IOC_SHUTDOWN ioctl, what xfs_io's ``shutdown``
    does): from now on every read, write, fsync and rename on it fails with EIO, the kernel's own
    answer for a disk that went away; and what was written but not synced is not written."""
    fd = os.open(mountpoint, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
    finally:
        os.close(fd)


_LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


@contextmanager
def permissions_enforced() -> Iterator[None]:
    """File permission bits apply to this thread even though it runs as root: CAP_DAC_OVERRIDE
    and CAP_DAC_READ_SEARCH leave its effective capabilities (Linux capabilities are per thread;
    they stay permitted and come back at the end). A file of mode 000 then answers EACCES, for
    real. Skips where capget/capset are not to be had."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        pytest.skip(f"capget failed: {os.strerror(ctypes.get_errno())}")
    saved = data[0].effective
    data[0].effective = saved & ~((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH))
    if libc.capset(ctypes.byref(header), data) != 0:
        pytest.skip(f"capset failed: {os.strerror(ctypes.get_errno())}")
    try:
        yield
    finally:
        data[0].effective = saved
        if libc.capset(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "cannot restore this thread's capabilities")


def remount(mountpoint: Path) -> None:
    """Unmount a (shut down) ext4_loop file system and mount its image again: the disk "comes
    back" holding exactly what reached it before the failure."""
    image = mountpoint.with_name(mountpoint.name + ".img")
    subprocess.run(["umount", str(mountpoint)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
