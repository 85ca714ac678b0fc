"""What the benchmarks share: a collector in a subprocess, its /metrics as numbers, free ports,
per-process CPU and per-port kernel drops and receive queues from /proc, the ingest benchmarks'
receivers (the counting baselines of bench.bare_receiver and the collector) and senders, and the
local Kafka broker.

Every address is on 127.0.0.1: the benchmarks only ever send to this machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bench.blast import BlastResult, NewFlows, blast
from bench.traffic import PROFILES, build
from collector.io.udp import udp_socket_rows

LOOPBACK = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
KAFKACTL = ROOT / "deploy" / "kafka" / "kafkactl"
KAFKA = (LOOPBACK, 9092)  # kafkactl's default
TICKS = os.sysconf("SC_CLK_TCK")
PORT_ATTEMPTS = 5
RCVBUF = 32 << 20  # what the collector asks for by default (recv_buffer_bytes)
SOCKETS_PER_SENDER = 8  # sending sockets per process, so SO_REUSEPORT spreads them over workers

Metrics = dict[str, float]  # 'name' or 'name{label="value"}' -> value


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port the kernel just handed out for 127.0.0.1 (bound to port 0 and read back).

    A subprocess must bind it after this returns; with SO_REUSEPORT a clash would silently share
    traffic instead of failing, so the collector harness checks who holds the port afterwards.
    """
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def udp_sockets(port: int) -> list[tuple[int, int]]:
    """(inode, kernel drops) of every UDP socket bound to ``port`` (/proc/net/udp and udp6)."""
    suffix = f":{port:04X}"
    return [
        (int(fields[9]), int(fields[12]))
        for fields in udp_socket_rows()
        if fields[1].endswith(suffix)
    ]


def port_drops(port: int) -> int:
    """Datagrams the kernel dropped on the sockets bound to ``port`` (full receive buffers)."""
    return sum(drops for _, drops in udp_sockets(port))


def udp_queues(port: int) -> dict[int, tuple[int, int]]:
    """inode -> (bytes queued, kernel drops) of each IPv4 UDP socket bound to ``port``.

    Cheap enough to call every millisecond (one read of /proc/net/udp; the benchmarks bind
    127.0.0.1 only). The queue is the socket's receive memory (sk_rmem_alloc, skb truesize, not
    payload bytes): 0 exactly when nothing is left to read.
    """
    suffix = b":%04X" % port
    with open("/proc/net/udp", "rb") as table:
        lines = table.read().splitlines()[1:]
    out = {}
    for line in lines:
        fields = line.split()
        if len(fields) >= 13 and fields[1].endswith(suffix):
            out[int(fields[9])] = (int(fields[4].split(b":")[1], 16), int(fields[12]))
    return out


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` holds open (its /proc/PID/fd links)."""
    found = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def process_state(pid: int) -> str:
    """The state letter of ``pid`` (R, S, T for stopped, ...) or '' when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def run_and_wait_seconds(pids: Iterable[int]) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of every thread of these
    processes so far (/proc/PID/task/TID/schedstat, nanoseconds): the wait is CPU time that
    something else on the machine took while they had work."""
    run = wait = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                fields = (task / "schedstat").read_text().split()
            except OSError:  # the thread ended meanwhile
                continue
            run += int(fields[0])
            wait += int(fields[1])
    return run / 1e9, wait / 1e9


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of these processes so far (clock ticks, 10 ms)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def backlog_drops() -> int:
    """Packets dropped by the kernel before any socket (per-CPU backlog full; softnet_stat)."""
    try:
        lines = Path("/proc/net/softnet_stat").read_text().splitlines()
    except OSError:
        return 0
    return sum(int(line.split()[1], 16) for line in lines)


def parse_metrics(text: str) -> Metrics:
    """Prometheus text exposition -> {sample name with labels: value}."""
    out: Metrics = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def scrape(url: str, timeout_s: float = 5.0) -> Metrics:
    """GET a /metrics URL and parse it."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return parse_metrics(response.read().decode())


def by_label(metrics: Metrics, name: str, label: str) -> dict[str, float]:
    """The samples of one labelled metric: {label value: sample value}."""
    prefix = f'{name}{{{label}="'
    return {
        key[len(prefix) :].split('"', 1)[0]: value
        for key, value in metrics.items()
        if key.startswith(prefix)
    }


class Collector:
    """``python -m collector run`` on free loopback ports with a /dev/null file sink (or ``sink``).

    Default config otherwise; ``env`` adds ``COLLECTOR_*`` settings. Once healthy, the UDP port
    must be held by exactly the collector's workers, or it starts again on other ports.
    """

    def __init__(
        self,
        workers: int = 1,
        *,
        env: Mapping[str, str] | None = None,
        start_timeout_s: float = 30.0,
        sink: str = f"file:{os.devnull}",
    ) -> None:
        self.workers = workers
        self.sink = sink
        clean = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
        self.env = {**clean, **(env or {})}
        for attempt in range(PORT_ATTEMPTS):
            self._start(start_timeout_s)
            if len(udp_sockets(self.port)) == workers:
                return
            self.close()
            if attempt == PORT_ATTEMPTS - 1:
                raise RuntimeError(f"UDP port {self.port} is shared with another process")

    def _start(self, start_timeout_s: float) -> None:
        self.port = free_port(socket.SOCK_DGRAM)
        self.http = free_port(socket.SOCK_STREAM)
        self.metrics_url = f"http://{LOOPBACK}:{self.http}/metrics"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "collector",
                "run",
                "--workers",
                str(self.workers),
                "--listen",
                f"{LOOPBACK}:{self.port}",
                "--health",
                f"{LOOPBACK}:{self.http}",
                "--sink",
                self.sink,
                "--log-level",
                "error",
            ],
            env=self.env,
        )
        deadline = time.monotonic() + start_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"collector exited with status {self.proc.returncode}")
            try:
                body = self.health()
                workers = body.get("workers", [])
                assert isinstance(workers, list)
                if body.get("status") == "ok" and len(workers) == self.workers:
                    self.pids = [int(w["pid"]) for w in workers]
                    self.health_body = body
                    break
            except (OSError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("collector did not become healthy in time")
            time.sleep(0.1)

    def health(self) -> dict[str, object]:
        """The /healthz body, 503 included (its body says why)."""
        url = f"http://{LOOPBACK}:{self.http}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            with exc:
                return dict(json.loads(exc.read()))

    def metrics(self) -> Metrics:
        return scrape(self.metrics_url)

    def received(self) -> int:
        return int(self.metrics().get("collector_datagrams_received_total", 0.0))

    def count(self) -> int:
        """Datagrams received (the ingest benchmark's receiver interface)."""
        return self.received()

    def settle(self, expected: int, *, still_polls: int = 4, interval_s: float = 0.3) -> int:
        """Wait until the received count reaches ``expected`` or stops moving; return it."""
        last, still = -1, 0
        deadline = time.monotonic() + 60
        while True:
            count = self.received()
            if count >= expected or still >= still_polls or time.monotonic() > deadline:
                return count
            still = still + 1 if count == last else 0
            last = count
            time.sleep(interval_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Bare:
    """One of the counting baselines (bench.bare_receiver) in a subprocess."""

    def __init__(
        self, kind: str, rcvbuf: int = RCVBUF, *, port: int = 0, reuse_port: bool = False
    ) -> None:
        self.name = kind
        extra = ["reuseport"] if reuse_port else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bare_receiver", kind, str(port), str(rcvbuf), *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        word, bound = self.proc.stdout.readline().split()
        assert word == "ready"
        self.port = int(bound)
        self.pids = [self.proc.pid]  # whose CPU is the receiver's
        self.freeze_pids = self.pids  # what bench.drain stops
        self.health_url: str | None = None
        self.quiet_s = 1.0

    def count(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


class BarePair:
    """Two recvmmsg counting loops in one SO_REUSEPORT group (``recvmmsg-2p``): what two
    receiving processes take on this machine when they do nothing else, the ceiling of 2 workers."""

    def __init__(self, rcvbuf: int = RCVBUF) -> None:
        self.name = "recvmmsg-2p"
        self.members = [Bare("recvmmsg", rcvbuf, reuse_port=True)]
        try:
            port = self.members[0].port
            self.members.append(Bare("recvmmsg", rcvbuf, port=port, reuse_port=True))
        except BaseException:
            self.close()
            raise
        self.port = port
        self.pids = [m.proc.pid for m in self.members]
        self.freeze_pids = self.pids
        self.health_url: str | None = None
        self.quiet_s = 1.0

    def count(self) -> int:
        return sum(self.per_worker())

    def per_worker(self) -> list[int]:
        return [m.count() for m in self.members]

    def close(self) -> None:
        for member in self.members:
            member.close()


class CollectorReceiver:
    """The collector as an ingest receiver: ``env`` adds COLLECTOR_* settings (``mode``: the
    receive path, COLLECTOR_RECV_MODE)."""

    def __init__(self, workers: int, mode: str = "", env: Mapping[str, str] | None = None) -> None:
        self.name = "collector" if workers == 1 else f"collector-{workers}w"
        if mode:
            self.name += f"-{mode}"
        self.collector = Collector(
            workers, env={**({"COLLECTOR_RECV_MODE": mode} if mode else {}), **(env or {})}
        )
        self.port = self.collector.port
        self.pids = self.collector.pids  # the workers: they do the receiving
        self.freeze_pids = [self.collector.proc.pid, *self.pids]  # the supervisor too
        self.health_url = f"http://{LOOPBACK}:{self.collector.http}/healthz"
        self.quiet_s = 4.0  # publications every 0.5 s, and a loop that lagged seconds under floods

    def count(self) -> int:
        return self.collector.received()

    def workers(self) -> list[dict[str, Any]]:
        """/healthz's worker entries, by index."""
        workers = self.collector.health().get("workers", [])
        assert isinstance(workers, list)
        return sorted(workers, key=lambda w: int(w["index"]))

    def per_worker(self) -> list[int]:
        return [int(w.get("datagrams", 0)) for w in self.workers()]

    def close(self) -> None:
        self.collector.close()


Receiver = Bare | BarePair | CollectorReceiver
BARE_RECEIVERS = ("recvmmsg", "uvloop")
COLLECTOR_MODES = ("reader", "protocol")  # collector-MODE: 1 worker, another receive path


def make_receiver(
    name: str, *, rcvbuf: int = RCVBUF, env: Mapping[str, str] | None = None
) -> Receiver:
    """``recvmmsg``, ``recvmmsg-2p``, ``uvloop``, ``collector``, ``collector-pure``,
    ``collector-2w`` or ``collector-MODE``, every one asking for a ``rcvbuf``-byte receive buffer
    per socket (``env``: more settings for a collector)."""
    if name in BARE_RECEIVERS:
        return Bare(name, rcvbuf)
    if name == "recvmmsg-2p":
        return BarePair(rcvbuf)
    settings = {**({"COLLECTOR_RECV_BUFFER_BYTES": str(rcvbuf)} if rcvbuf != RCVBUF else {})}
    settings.update(env or {})
    if name == "collector":
        return CollectorReceiver(1, env=settings)
    if name == "collector-pure":  # the pure-Python build: what a machine without cc runs
        receiver = CollectorReceiver(1, env={**settings, "COLLECTOR_PURE_PYTHON": "1"})
        receiver.name = name
        return receiver
    if name == "collector-2w":
        return CollectorReceiver(2, env=settings)
    mode = name.removeprefix("collector-")
    if name.startswith("collector-") and mode in COLLECTOR_MODES:
        return CollectorReceiver(1, mode, env=settings)
    raise ValueError(f"unknown receiver {name!r}")


SETTLE_POLL_S = 0.25


def settle(receiver: Receiver, before: int, sent: int, drops: int) -> int:
    """Wait until the receiver has counted what the kernel did not drop, or its count has not
    moved for ``receiver.quiet_s`` (the collector publishes every 0.5 s, later when its loop lags:
    what arrives after this would be counted into the next point); the count since ``before``."""
    last, changed = -1, time.monotonic()
    deadline = changed + 60
    while True:
        count = receiver.count() - before
        now = time.monotonic()
        if count + (port_drops(receiver.port) - drops) >= sent or now > deadline:
            return count
        if count != last:
            last, changed = count, now
        elif now - changed >= receiver.quiet_s:
            return count
        time.sleep(SETTLE_POLL_S)


class Senders:
    """bench.blast as the ingest benchmarks use it: each profile's datagrams built once, and
    new-flows 5-tuples that never repeat within a run (each send starts after the last one's
    passes)."""

    def __init__(self, procs: int) -> None:
        self.procs = procs
        self.first_pass = 0
        self.data: dict[str, list[bytes]] = {}

    def send(
        self,
        port: int,
        profile: str,
        count: int,
        rate: float,
        sockets: int = SOCKETS_PER_SENDER,
    ) -> BlastResult:
        """``count`` datagrams to 127.0.0.1:``port`` at ``rate``/s in total (0 = flat out)."""
        if profile != "new-flows" and profile not in self.data:
            self.data[profile] = build(PROFILES[profile], 50_000)
        result = blast(
            (LOOPBACK, port),
            count,
            rate=rate,
            procs=self.procs,
            profile=profile,
            datagrams=self.data.get(profile),
            sockets=sockets,
            first_pass=self.first_pass,
        )
        self.first_pass += NewFlows.passes_for(count // self.procs + 1)
        return result


def broker_listening(address: tuple[str, int] = KAFKA) -> bool:
    """Whether something accepts connections where the benchmarks look for a broker."""
    try:
        with socket.create_connection(address, timeout=2):
            return True
    except OSError:
        return False


class Broker:
    """The local Kafka broker (deploy/kafka/kafkactl): started when none listens, and stopped
    again by ``stop`` only if this process started it."""

    def __init__(self, address: tuple[str, int] = KAFKA) -> None:
        self.address = address
        self.started = False
        self.error = ""

    def ensure(self) -> bool:
        if broker_listening(self.address):
            return True
        if not KAFKACTL.exists():
            self.error = "deploy/kafka/kafkactl not found"
            return False
        if self._ctl("status", 30).returncode == 0:
            return True
        print("starting the local Kafka broker (deploy/kafka/kafkactl start)", file=sys.stderr)
        done = self._ctl("start", 900)  # the first start fetches the broker's jars
        if done.returncode != 0:
            self.error = "kafkactl start failed: " + " | ".join(
                done.stderr.strip().splitlines()[-4:]
            )
            return False
        self.started = True
        return True

    def stop(self) -> None:
        if self.started:
            self._ctl("stop", 120)
            self.started = False

    @staticmethod
    def _ctl(command: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [str(KAFKACTL), command],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess([command], 1, "", f"kafkactl {command} timed out")


def format_locust_report(report: dict[str, Any]) -> str:
    """The end-of-test report of bench/locustfile.py as a few lines of text."""
    lines = [
        f"VXLAN load test: {report['users']} users, profile {report['profile']} "
        f"({report['flows']} flows), {report['seconds']} s, target {report['target']}",
        f"  sent {report['sent']:,} datagrams ({report['sent_bytes']:,} bytes, "
        f"{report['sent_pps']:,}/s), {report['send_failures']:,} send failures",
    ]
    collector = report["collector"]
    if collector is None:
        lines.append("  collector: no --collector-metrics, no loss report")
        return "\n".join(lines)
    drops = ", ".join(f"{k}={v:,}" for k, v in collector["dropped_by_reason"].items()) or "none"
    lines += [
        f"  collector received {collector['received']:,}; lost {collector['lost']:,} "
        f"= {collector['loss_pct']:.3f}% (kernel drops {collector['kernel_drops']:,})",
        f"  dropped by the collector (by reason): {drops}",
        f"  flows active: {collector['flows_active']:,}",
    ]
    return "\n".join(lines)
