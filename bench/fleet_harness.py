"""The fleet on one machine: namespaces, a Kafka broker of its own, collectors, sources, the NLB.

``Fleet`` builds everything (bench/fleet_net.py), runs the harness thread inside the load-balancer
namespace, and tears it all down in ``close`` whatever happened before. The shared broker on
127.0.0.1:9092 is never touched: this fleet's broker is another kafkactl instance with its own data
directory, listening on the Kafka namespace's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.fleet_lb import TargetGroup, count_forwarded, install
from bench.fleet_net import HEALTH_PORT, KAFKA_PORT, VXLAN_PORT, Node, Topology, entered
from bench.harness import Metrics, parse_metrics
from bench.traffic import PROFILES, Profile

ROOT = Path(__file__).resolve().parent.parent
KAFKACTL = ROOT / "deploy" / "kafka" / "kafkactl"
TOPIC = "fleet-flows"
PARTITIONS = 6
DRAIN_S = 6.0  # > (unhealthy threshold + 1) x interval + unhealthy draining: the NLB lets go first
SAMPLE_S = 0.5


@dataclass(frozen=True)
class Session:
    """A mirror source and its session: the ENI's inner addresses (IPv4 and IPv6) and the subnet
    of the source namespace (its address is the outer source)."""

    name: str
    vni: int
    eni: str
    inner_address: str
    inner_address6: str
    subnet: int
    gwlb_endpoint: int = 0  # the GWLB endpoint of its VPC (the fleet's gwlb mode)

    @property
    def gwlb_endpoint_id(self) -> str:
        """The endpoint id as records carry it (``vpce-`` and 17 hex digits)."""
        return f"vpce-{self.gwlb_endpoint:017x}"


SESSIONS = (
    Session("source-a", 1001, "eni-0a0a0a0a0a0a0a0a0", "172.31.1.25", "2001:db8:31:1::25", 1, 0xA1),
    Session("source-b", 1002, "eni-0b0b0b0b0b0b0b0b0", "172.31.2.25", "2001:db8:31:2::25", 2, 0xB2),
)


def packet_lengths(profile: Profile) -> dict[str, int]:
    """The sessions' PacketLength (0: whole packets). PacketLength is a session's setting, so the
    profile's truncate_share applies to the sessions: that share of them, rounded (the last ones),
    truncate every frame to ``profile.truncate_to`` bytes after the VXLAN header."""
    truncated = round(profile.truncate_share * len(SESSIONS))
    return {
        s.name: profile.truncate_to if i >= len(SESSIONS) - truncated else 0
        for i, s in enumerate(SESSIONS)
    }


CONFIG = """\
[flows]
active_timeout_s = 5.0
inactive_timeout_s = 4.0

[records]
exporter = "{name}"

[kafka]
spool_dir = "{spool}"
topic_partitions = {partitions}
linger_ms = 10

{sessions}
# ingress UDP to port 53 is not kept (the README's example rule); everything else is, IPv4 and
# IPv6 (a rule matches one address family), every protocol (ICMP included)
[filters.filter-a]
{rules}"""

FILTER_RULES = (  # (direction, rule number, action, protocol, CIDR, destination ports)
    ("ingress", 100, "reject", 17, "0.0.0.0/0", "53"),
    ("ingress", 101, "reject", 17, "::/0", "53"),
    ("ingress", 200, "accept", None, "0.0.0.0/0", None),
    ("ingress", 201, "accept", None, "::/0", None),
    ("egress", 100, "accept", None, "0.0.0.0/0", None),
    ("egress", 101, "accept", None, "::/0", None),
)


def _rules_toml() -> str:
    out = []
    for direction, number, action, protocol, cidr, ports in FILTER_RULES:
        lines = ["[[filters.filter-a.rules]]", f'direction = "{direction}"',
                 f"rule_number = {number}", f'action = "{action}"']  # fmt: skip
        if protocol is not None:
            lines.append(f"protocol = {protocol}")
        lines += [f'source_cidr = "{cidr}"', f'destination_cidr = "{cidr}"']
        if ports is not None:
            lines.append(f'destination_ports = "{ports}"')
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


@dataclass
class Collector:
    """``python -m collector run`` with one worker in its own namespace."""

    name: str
    node: Node
    proc: subprocess.Popen[bytes]
    last: Metrics = field(default_factory=dict)
    gone: bool = False

    def metrics(self, timeout_s: float = 2.0) -> Metrics:
        url = f"http://{self.node.address}:{HEALTH_PORT}/metrics"
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            self.last = parse_metrics(response.read().decode())
        return self.last

    def healthy(self) -> bool:
        try:
            url = f"http://{self.node.address}:{HEALTH_PORT}/healthz"
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return int(response.status) == 200
        except OSError:
            return False


class SourceProcess:
    """A bench/fleet_source.py process in a source namespace, one command at a time."""

    def __init__(
        self,
        session: Session,
        node: Node,
        log: IO[bytes],
        profile: Profile,
        packet_length: int,
        gwlb: bool = False,
    ) -> None:
        self.session = session
        sizes = ",".join(f"{size}:{weight}" for size, weight in profile.sizes)
        endpoint = ["--gwlb-endpoint", str(session.gwlb_endpoint)] if gwlb else []
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", node.netns, sys.executable, "-m", "bench.fleet_source",
             "--address", node.address, "--vni", str(session.vni), "--sizes", sizes,
             "--truncate-to", str(packet_length), "--seed", str(profile.seed), *endpoint],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=ROOT,
        )  # fmt: skip

    def command(self, **message: Any) -> dict[str, dict[str, int]]:
        """Send one command; the reply: ``{"sent": {flow: datagrams}, "bytes": {flow: bytes}}``."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"source {self.session.name} exited ({self.proc.poll()})")
        reply: dict[str, dict[str, int]] = json.loads(line)
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, RuntimeError):
                self.command(op="exit")
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class Fleet:
    """Everything of one fleet; use as a context manager (``close`` always tears down)."""

    def __init__(self, profile: Profile = PROFILES["mixed"], *, gwlb: bool = False) -> None:
        self.profile = profile  # the traffic mix the sources mirror (bench/traffic.py)
        # the sources mirror to a GWLB endpoint: GENEVE on 6081 from the load balancer's address
        self.gwlb = gwlb
        self.packet_length = packet_lengths(profile)  # per session; 0: whole packets
        self.net = Topology()
        self.collectors: dict[str, Collector] = {}
        self.sources: dict[str, SourceProcess] = {}
        self.group: TargetGroup | None = None
        self.samples: list[tuple[float, str, float]] = []  # (time, collector, datagrams)
        self.marks: list[tuple[float, str]] = []  # (time, what happened)
        self.kafka_env: dict[str, str] = {}
        self.bootstrap = ""
        self._ns: contextlib.ExitStack | None = None
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._logs: list[IO[bytes]] = []
        self._count = 0
        self._loop = asyncio.new_event_loop()
        self._consumer: AIOKafkaConsumer | None = None

    def __enter__(self) -> Fleet:
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _log(self, name: str) -> IO[bytes]:
        log = (self.net.work / f"{name}.log").open("ab")
        self._logs.append(log)
        return log

    # ---- build and tear down ------------------------------------------------------------
    def up(self, collectors: int = 3) -> None:
        self.net.build()
        self._ns = contextlib.ExitStack()
        self._ns.enter_context(entered(self.net.lb))
        install(self.net.lb)
        kafka = self.net.add("kafka", 9)
        self.bootstrap = f"{kafka.address}:{KAFKA_PORT}"
        self._start_kafka(kafka)
        for session in SESSIONS:
            node = self.net.add(session.name, session.subnet)
            log = self._log(session.name)
            length = self.packet_length[session.name]
            self.sources[session.name] = SourceProcess(
                session, node, log, self.profile, length, self.gwlb
            )
        self.group = TargetGroup(self.net.lb)
        self.group.start()
        self._sampler = threading.Thread(target=self._sample, name="sampler", daemon=True)
        self._sampler.start()
        self.ensure(collectors)

    def _start_kafka(self, node: Node) -> None:
        self.kafka_env = {
            "KAFKA_HOST": node.address,
            "KAFKA_PORT": str(KAFKA_PORT),
            "KAFKA_CONTROLLER_PORT": str(KAFKA_PORT + 1),
            "KAFKA_SASL_PORT": "off",
            "KAFKA_DATA_DIR": str(self.net.work / "kafka"),
            "KAFKA_HEAP": "384m",
        }
        self._kafkactl("start", 600)
        self._loop.run_until_complete(self._start_consumer())

    def _kafkactl(self, command: str, timeout_s: float) -> None:
        netns = self.net.nodes["kafka"].netns
        done = subprocess.run(
            ["ip", "netns", "exec", netns, str(KAFKACTL), command],
            timeout=timeout_s, env={**os.environ, **self.kafka_env},
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:  # the work directory goes at teardown: say why here
            raise RuntimeError(f"kafkactl {command} in {netns}: {done.stderr.strip()[-2000:]}")

    def close(self) -> None:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(timeout=5)
        if self.group is not None:
            self.group.stop()
        for source in self.sources.values():
            source.close()
        for collector in self.collectors.values():
            self._kill(collector)
        self._stop_consumer()
        if self.kafka_env:
            with contextlib.suppress(subprocess.SubprocessError, OSError, RuntimeError):
                self._kafkactl("stop", 120)
        if self._ns is not None:
            self._ns.close()
            self._ns = None
        self.net.close()  # kills anything left inside the namespaces, then removes them
        for log in self._logs:
            log.close()

    # ---- collectors ---------------------------------------------------------------------
    def start_collector(self) -> Collector:
        self._count += 1
        name = f"c{self._count}"
        node = self.net.add(name, 20 + self._count)
        spool = self.net.work / name / "spool"
        spool.mkdir(parents=True)
        config = self.net.work / name / "collector.toml"
        config.write_text(
            CONFIG.format(
                name=name,
                spool=spool,
                partitions=PARTITIONS,
                sessions=_sessions_toml(),
                rules=_rules_toml(),
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
        proc = subprocess.Popen(
            ["ip", "netns", "exec", node.netns, sys.executable, "-m", "collector", "run",
             "--config", str(config), "--listen", f"{node.address}:{VXLAN_PORT}",
             "--health", f"{node.address}:{HEALTH_PORT}", "--workers", "1",
             "--sink", f"kafka://{self.bootstrap}/{TOPIC}", "--drain-s", str(DRAIN_S),
             "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=self._log(name), stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a crash kills supervisor and worker
        )  # fmt: skip
        collector = Collector(name, node, proc)
        self.collectors[name] = collector
        return collector

    def live(self) -> list[Collector]:
        return [c for c in self.collectors.values() if not c.gone]

    def ensure(self, count: int, timeout_s: float = 60.0) -> list[Collector]:
        """Start collectors until ``count`` are live, registered and healthy in the group."""
        assert self.group is not None
        new = [self.start_collector() for _ in range(count - len(self.live()))]
        deadline = time.monotonic() + timeout_s
        for collector in new:
            while not collector.healthy():
                if collector.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.net.work / f"{collector.name}.log").read_text(errors="replace")
                    tail = "\n".join(log.splitlines()[-15:])  # the work directory goes at teardown
                    raise RuntimeError(f"collector {collector.name} did not start:\n{tail}")
                time.sleep(0.1)
            count_forwarded(self.net.lb, collector.name, collector.node.address)
            self.group.register(collector.name, collector.node.address)
            self.mark(f"{collector.name} registered")
        for collector in new:
            self.group.wait_state(collector.name, ("healthy",))
        return self.live()

    def terminate(self, collector: Collector) -> None:
        """SIGTERM to the supervisor (scale-in): it drains for DRAIN_S, flushes and exits."""
        collector.proc.send_signal(signal.SIGTERM)
        self.mark(f"{collector.name} SIGTERM")

    def crash(self, collector: Collector) -> None:
        """SIGKILL to its process group: supervisor and worker die at once, flows and all."""
        os.killpg(collector.proc.pid, signal.SIGKILL)
        collector.proc.wait()
        collector.gone = True
        self.mark(f"{collector.name} SIGKILL")

    def _kill(self, collector: Collector) -> None:
        if collector.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(collector.proc.pid, signal.SIGKILL)
            collector.proc.wait()
        collector.gone = True

    def capture(self, role: str, count: int) -> subprocess.Popen[str]:
        """tshark on the load balancer's link to ``role``: ``count`` VXLAN datagrams, one line
        each with every ip.src, ip.dst, ipv6.src, ipv6.dst, udp.srcport, udp.dstport, vxlan.vni,
        tcp.srcport, tcp.dstport, vlan.id and udp.length (outer first, comma-separated; fields
        separated by ``;``). Returns once tshark is capturing."""
        fields = ("ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "udp.srcport", "udp.dstport",
                  "vxlan.vni", "tcp.srcport", "tcp.dstport", "vlan.id", "udp.length")  # fmt: skip
        command = ["tshark", "-l", "-n", "-i", f"to-{role}"[:15], "-c", str(count), "-f",
                   f"udp dst port {VXLAN_PORT}", "-T", "fields", "-E", "occurrence=a",
                   "-E", "separator=;"]  # fmt: skip
        for name in fields:
            command += ["-e", name]
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.net.work
        )
        assert proc.stderr is not None
        for line in proc.stderr:  # "Capturing on 'to-source-a'" once the capture runs
            if line.startswith("Capturing on"):
                break
        return proc

    def mark(self, what: str) -> None:
        self.marks.append((time.time(), what))

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            for collector in self.live():
                with contextlib.suppress(OSError):
                    value = collector.metrics().get("collector_datagrams_received_total", 0.0)
                    self.samples.append((time.time(), collector.name, value))

    # ---- the topic ----------------------------------------------------------------------
    # One consumer for the fleet's life on one event loop: an aiokafka consumer stopped right after
    # it started can raise CancelledError from stop() (aiokafka issue 647).
    async def _start_consumer(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
        finally:
            await admin.close()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False
        )
        await self._consumer.start()
        self._consumer.assign([TopicPartition(TOPIC, p) for p in range(PARTITIONS)])

    def end_offsets(self) -> dict[int, int]:
        return self._loop.run_until_complete(self._offsets())

    async def _offsets(self) -> dict[int, int]:
        assert self._consumer is not None
        parts = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        ends = await self._consumer.end_offsets(parts)
        return {tp.partition: int(offset) for tp, offset in ends.items()}

    def read(self, start: dict[int, int]) -> list[dict[str, Any]]:
        """Every record from ``start`` to the partitions' current ends, decoded."""
        return self._loop.run_until_complete(self._read(start))

    async def _read(self, start: dict[int, int]) -> list[dict[str, Any]]:
        consumer = self._consumer
        assert consumer is not None
        end = await self._offsets()
        remaining = set()
        for p in range(PARTITIONS):
            tp = TopicPartition(TOPIC, p)
            if end[p] > start[p]:
                consumer.seek(tp, start[p])
                consumer.resume(tp)
                remaining.add(p)
            else:
                consumer.pause(tp)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while remaining and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp, messages in batch.items():
                out.extend(json.loads(m.value) for m in messages if m.offset < end[tp.partition])
            for p in sorted(remaining):
                tp = TopicPartition(TOPIC, p)
                if await consumer.position(tp) >= end[p]:
                    remaining.discard(p)
                    consumer.pause(tp)
        if remaining:
            raise TimeoutError(f"partitions {sorted(remaining)} not read to their end in 60 s")
        return out

    def _stop_consumer(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                self._loop.run_until_complete(self._consumer.stop())
            self._consumer = None
        self._loop.close()


def _sessions_toml() -> str:
    return "\n".join(
        f'[[sessions]]\nvni = {s.vni}\nname = "{s.name}"\ninterface_id = "{s.eni}"\n'
        f'addresses = ["{s.inner_address}", "{s.inner_address6}"]\nfilter = "filter-a"\n'
        for s in SESSIONS
    )
