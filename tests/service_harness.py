"""Start the real collector as a subprocess on loopback and talk to it like the NLB would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tests.packets import icmp, tcp, udp, vxlan

DEADLINE_S = 30.0
START_ATTEMPTS = 4  # a port another test took between free_port() and the collector's bind
__all__ = ["Collector", "clean_environ", "free_port", "icmp", "tcp", "udp", "vxlan", "wait_for"]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_environ(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the caller's COLLECTOR_* settings, plus ``extra``: a
    collector under test sees only the settings its test chose."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    return {**env, **(extra or {})}


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` holds open (empty once it is gone)."""
    found: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        entries = list(fd_dir.iterdir())
    except OSError:
        return found
    for entry in entries:
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (the supervisor's workers)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its closing paren
        if int(text.rpartition(")")[2].split()[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def bound_inodes(tables: tuple[str, ...], port: int, state: str | None = None) -> set[int]:
    """Inodes of every socket in /proc/net/TABLE bound to local ``port`` (in ``state``, hex)."""
    found: set[int] = set()
    for table in tables:
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rpartition(":")[2], 16) == port and state in (None, fields[3]):
                found.add(int(fields[9]))
    return found


def wait_for(
    predicate: Any, what: str, deadline_s: float = DEADLINE_S, every_s: float = 0.05
) -> Any:
    end = time.monotonic() + deadline_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every_s)


class Collector:
    """`python -m collector run` on loopback ports, with helpers to send, probe and stop it."""

    def __init__(
        self,
        tmp: Path,
        *args: str,
        config: str | None = None,
        workers: int = 1,
        sink: str | None = None,
        env: dict[str, str] | None = None,
        stdout: int | None = None,
    ) -> None:
        self.out = tmp / "records.jsonl"
        self.args = args
        self.workers = workers
        self.sink = sink
        self.env = clean_environ(env)
        self.stdout = stdout
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = tmp / "collector.toml"
            self.config_path.write_text(config)
        self.log = (tmp / "collector.log").open("wb")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._spawn()

    def _spawn(self) -> None:
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.http_port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "collector",
            "run",
            "--listen",
            f"127.0.0.1:{self.udp_port}",
            "--health",
            f"127.0.0.1:{self.http_port}",
            "--workers",
            str(self.workers),
            "--sink",
            self.sink or f"file:{self.out}",
            *self.args,
        ]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.log if self.stdout is None else self.stdout,
            stderr=subprocess.STDOUT if self.stdout is None else self.log,
            env=self.env,
        )

    @property
    def address(self) -> tuple[str, int]:
        """Where the collector receives VXLAN."""
        return ("127.0.0.1", self.udp_port)

    def owns_its_ports(self) -> bool:
        """Whether every socket on the UDP port and the HTTP listener are this collector's own.
        With SO_REUSEPORT a second collector given the same free port would not fail to bind:
        it would silently share the traffic, so the harness looks instead."""
        ours = set().union(*map(socket_inodes, [self.proc.pid, *children(self.proc.pid)]))
        udp_sockets = bound_inodes(("udp", "udp6"), self.udp_port)
        listeners = bound_inodes(("tcp", "tcp6"), self.http_port, state="0A")  # TCP_LISTEN
        return bool(udp_sockets and listeners) and (udp_sockets | listeners) <= ours

    def start(self) -> dict[str, Any]:
        """Wait for /healthz 200 on ports this collector alone holds; on a clash, or a bind that
        failed because another process took a port first, start again on other ports."""
        for _ in range(START_ATTEMPTS - 1):
            try:
                body = self.wait_healthy()
            except AssertionError:
                if "cannot bind" not in self.logs() and "cannot listen" not in self.logs():
                    raise
            else:
                if self.owns_its_ports():
                    return body
            self.proc.kill()
            self.proc.wait()
            self.out.unlink(missing_ok=True)  # whatever a shared port brought in is not ours
            self._spawn()
        body = self.wait_healthy()
        assert self.owns_its_ports(), "the collector shares its ports with another process"
        return body

    def __enter__(self) -> Collector:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()
        self.log.close()

    def logs(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return 0, b""

    def health(self) -> tuple[int, dict[str, Any]]:
        code, body = self.get("/healthz")
        return code, (json.loads(body) if body else {})

    def wait_healthy(self) -> dict[str, Any]:
        def ok() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"collector exited {self.proc.returncode}:\n{self.logs()}")
            code, body = self.health()
            return body if code == 200 else None

        return wait_for(ok, "/healthz 200")  # type: ignore[no-any-return]

    def metrics(self) -> dict[str, float]:
        code, body = self.get("/metrics")
        assert code == 200
        out: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def send(self, datagrams: Iterable[bytes]) -> int:
        count = 0
        for d in datagrams:
            self.sock.sendto(d, ("127.0.0.1", self.udp_port))
            count += 1
        return count

    def worker_datagrams(self) -> dict[int, int]:
        """Datagrams each live worker has counted, by worker index."""
        _, body = self.health()
        return {w["index"]: w.get("datagrams", 0) for w in body.get("workers", [])}

    def worker_pids(self) -> dict[int, int]:
        """The pid of each live worker, by worker index."""
        _, body = self.health()
        return {w["index"]: w["pid"] for w in body.get("workers", []) if "pid" in w}

    def send_spread(self, datagrams: Sequence[bytes], max_senders: int = 64) -> int:
        """Send every datagram in order, round robin over sender sockets of which at least one
        reaches each worker. SO_REUSEPORT hashes each source port to one worker, so N random
        ports miss one of two workers once in 2**(N-1) runs: the first datagrams are sent one
        per new socket, each waited for, until every worker has counted one of them."""
        senders: list[socket.socket] = []
        start = self.worker_datagrams()
        total = sum(start.values())
        sent = 0
        try:
            while True:
                grown = {i for i, n in self.worker_datagrams().items() if n > start.get(i, 0)}
                if len(grown) >= self.workers or sent == len(datagrams):
                    break
                assert len(senders) < max_senders, f"no source port reached workers {grown}"
                senders.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                senders[-1].sendto(datagrams[sent], ("127.0.0.1", self.udp_port))
                sent += 1

                def counted(want: int = total + sent) -> bool:
                    return sum(self.worker_datagrams().values()) >= want

                wait_for(counted, "the probe datagram counted")
            for i, datagram in enumerate(datagrams[sent:]):
                senders[i % len(senders)].sendto(datagram, ("127.0.0.1", self.udp_port))
        finally:
            for s in senders:
                s.close()
        return len(datagrams)

    def senders_by_worker(
        self, probes: Iterable[bytes], max_senders: int = 64
    ) -> tuple[dict[int, socket.socket], list[tuple[int, bytes]]]:
        """One sender socket per worker index. Each new socket sends the next probe datagram and
        the worker whose count grows is the one SO_REUSEPORT hashes that socket to (the mapping
        holds while the group of worker sockets stays the same: a restart reshuffles it).
        Returns the sockets and where each probe landed, so callers can account for them."""
        found: dict[int, socket.socket] = {}
        landed: list[tuple[int, bytes]] = []
        supply = iter(probes)
        while len(found) < self.workers:
            assert len(landed) < max_senders, f"no source port reached a worker beyond {found}"
            before = self.worker_datagrams()
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe = next(supply)
            sender.sendto(probe, ("127.0.0.1", self.udp_port))

            def grown(before: dict[int, int] = before) -> list[int]:
                now = self.worker_datagrams()
                return [i for i, n in now.items() if n > before.get(i, 0)]

            (index,) = wait_for(grown, "the probe datagram counted")
            landed.append((index, probe))
            if index in found:
                sender.close()
            else:
                found[index] = sender
        return found, landed

    def wait_received(self, total: int) -> None:
        wait_for(
            lambda: self.metric("collector_datagrams_received_total") >= total,
            f"{total} datagrams received",
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def records(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line]
