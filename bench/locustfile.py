"""Locust users that send mirrored traffic to the collector as VXLAN datagrams over UDP.

    locust -f bench/locustfile.py --headless -u 4 -r 4 -t 30s --host udp://127.0.0.1:4789 \\
        --collector-metrics http://127.0.0.1:8080/metrics
    locust -f bench/locustfile.py        # web UI on http://127.0.0.1:8089

Each user stands for a group of mirror sources: it walks a traffic profile from bench/traffic.py
(flows per source, packet sizes, IPv4/IPv6 share, several VNIs, sessions that truncate packets)
from its own offset and sends a small burst of datagrams per task. Every datagram is one Locust
request of type ``udp`` named after its kind (``ipv4-tcp``, ``ipv6-udp-truncated``, ...), with the
time sendto() took and the datagram's length. When the test stops, the collector's /metrics are
scraped again and the report (sent, received, dropped by reason, loss %) is printed and written to
a JSON file.

Options (command line, ``LOCUST_*`` environment variables or the web UI's custom parameters):
    --host udp://HOST:PORT          the collector (a loopback address only; default 127.0.0.1:4789)
    --collector-metrics URL         the collector's /metrics (without it: no loss report)
    --traffic-profile NAME          mixed | small | large | many-flows
    --flows N                       override the profile's number of distinct flows
    --burst N                       datagrams per task
    --bursts-per-s X                pacing per user; 0 sends bursts back to back
    --max-datagrams-per-user N      a user stops after this many datagrams
    --max-seconds S                 a user stops after this long
    --report-json PATH              where the report goes
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import json
import os
import random
import socket
import struct
import sys
import time
import urllib.error
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
from locust import User, events, task
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench` from any directory

from bench.harness import by_label, format_locust_report, scrape
from bench.traffic import PROFILES, build

DEFAULT_TARGET = "udp://127.0.0.1:4789"
DEFAULT_REPORT = Path(__file__).resolve().parent / "results" / "locust-latest.json"
DATAGRAMS_PER_PROFILE = 20_000  # built once per process with scapy, then sent over and over
SETTLE_S = 10.0  # longest wait at stop for the collector's counters to catch up

_U16 = struct.Struct("!H")
_PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("VXLAN over UDP (bench/locustfile.py)")
    group.add_argument(
        "--collector-metrics",
        default="",
        env_var="LOCUST_COLLECTOR_METRICS",
        help="URL of the collector's /metrics, scraped at start and stop for the loss report",
    )
    group.add_argument(
        "--traffic-profile",
        default="mixed",
        choices=sorted(PROFILES),
        env_var="LOCUST_TRAFFIC_PROFILE",
        help="traffic mix from bench/traffic.py",
    )
    group.add_argument(
        "--flows", type=int, default=0, env_var="LOCUST_FLOWS", help="distinct flows (0: profile)"
    )
    group.add_argument(
        "--burst", type=int, default=32, env_var="LOCUST_BURST", help="datagrams per task"
    )
    group.add_argument(
        "--bursts-per-s",
        type=float,
        default=0.0,
        env_var="LOCUST_BURSTS_PER_S",
        help="bursts per second per user; 0 = back to back",
    )
    group.add_argument(
        "--max-datagrams-per-user",
        type=int,
        default=5_000_000,
        env_var="LOCUST_MAX_DATAGRAMS_PER_USER",
        help="a user stops after sending this many datagrams",
    )
    group.add_argument(
        "--max-seconds",
        type=float,
        default=900.0,
        env_var="LOCUST_MAX_SECONDS",
        help="a user stops after this many seconds, with or without --run-time",
    )
    group.add_argument(
        "--report-json",
        default=str(DEFAULT_REPORT),
        env_var="LOCUST_REPORT_JSON",
        help="file the end-of-test report is written to",
    )
    # the web UI serves on the loopback interface unless told otherwise
    parser.set_defaults(web_host="127.0.0.1")


def parse_target(host: str | None) -> tuple[str, int]:
    """``udp://HOST:PORT`` or ``HOST:PORT`` -> (host, port); loopback addresses only."""
    text = host or os.environ.get("LOCUST_HOST") or DEFAULT_TARGET
    parts = urlsplit(text if "://" in text else f"udp://{text}")
    if parts.scheme != "udp" or not parts.hostname:
        raise ValueError(f"--host must be udp://HOST:PORT, not {text!r}")
    address = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    if not ipaddress.ip_address(address).is_loopback:
        raise ValueError(f"{address} is not a loopback address: this load test stays on this host")
    return address, parts.port or 4789


def kind(datagram: bytes) -> str:
    """A short name for a datagram: inner IP version, transport, and whether it is truncated."""
    off = 8 + 12
    (etype,) = _U16.unpack_from(datagram, off)
    while etype in (0x8100, 0x88A8):
        off += 4
        (etype,) = _U16.unpack_from(datagram, off)
    l3 = off + 2
    if etype == 0x86DD:
        version, proto = "ipv6", datagram[l3 + 6]
        ip_len = _U16.unpack_from(datagram, l3 + 4)[0] + 40
    else:
        version, proto = "ipv4", datagram[l3 + 9]
        ip_len = _U16.unpack_from(datagram, l3 + 2)[0]
    name = f"{version}-{_PROTOCOLS.get(proto, str(proto))}"
    return f"{name}-truncated" if len(datagram) - l3 < ip_len else name


_traffic: dict[tuple[str, int], tuple[list[bytes], list[str]]] = {}


def traffic(profile_name: str, flows: int) -> tuple[list[bytes], list[str]]:
    """The datagrams of a profile and their names, built once per process."""
    key = (profile_name, flows)
    if key not in _traffic:
        profile = PROFILES[profile_name]
        if flows:
            profile = dataclasses.replace(profile, flows=flows)
        datagrams = build(profile, max(DATAGRAMS_PER_PROFILE, profile.flows))
        _traffic[key] = (datagrams, [kind(d) for d in datagrams])
        # the build blocked the event loop for a while: without this, --run-time would count
        # from the loop's cached time before the build and end the test that much early
        gevent.get_hub().loop.update_now()
    return _traffic[key]


class VxlanMirrorUser(User):
    """A group of mirror sources sending VXLAN datagrams to the collector."""

    host = DEFAULT_TARGET
    _numbers = itertools.count()

    def wait_time(self) -> float:
        """Back to back, or paced to --bursts-per-s per user."""
        rate = float(self.options.bursts_per_s)
        if rate <= 0:
            return 0.0
        self._next_burst = max(self._next_burst + 1.0 / rate, time.monotonic())
        return max(0.0, self._next_burst - time.monotonic())

    def on_start(self) -> None:
        self.options = self.environment.parsed_options
        self.target = parse_target(self.host)
        self.datagrams, self.names = traffic(self.options.traffic_profile, self.options.flows)
        number = next(self._numbers)
        # users start at spread-out offsets: each one sends its own flows at any moment
        self.index = (number * 7919 + random.randrange(len(self.datagrams))) % len(self.datagrams)
        family = socket.AF_INET6 if ":" in self.target[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sent = 0
        self.deadline = time.monotonic() + float(self.options.max_seconds)
        self._next_burst = time.monotonic()

    def on_stop(self) -> None:
        self.sock.close()

    @task
    def burst(self) -> None:
        if self.sent >= self.options.max_datagrams_per_user or time.monotonic() > self.deadline:
            raise StopUser
        fire = self.environment.events.request.fire
        sendto = self.sock.sendto
        target = self.target
        datagrams, names = self.datagrams, self.names
        n = len(datagrams)
        for _ in range(int(self.options.burst)):
            datagram = datagrams[self.index]
            error: Exception | None = None
            start = time.perf_counter()
            try:
                sendto(datagram, target)
            except OSError as exc:  # ENOBUFS and the like: reported as a failed request
                error = exc
            fire(
                request_type="udp",
                name=names[self.index],
                response_time=(time.perf_counter() - start) * 1000.0,
                response_length=len(datagram),
                exception=error,
                context={},
            )
            if error is None:
                self.sent += 1
                self.index = self.index + 1 if self.index + 1 < n else 0


_before: dict[str, Any] = {}


def _sent(environment: Any) -> tuple[int, int, int]:
    """Datagrams sent by all users, failed sends and bytes sent, from Locust's statistics."""
    sent = failed = nbytes = 0
    for (_name, method), entry in environment.stats.entries.items():
        if method == "udp":
            sent += entry.num_requests - entry.num_failures
            failed += entry.num_failures
            nbytes += entry.total_content_length
    return sent, failed, nbytes


@events.init.add_listener
def _on_init(environment: Any, **_kwargs: Any) -> None:
    options = environment.parsed_options
    if options is not None and not isinstance(environment.runner, MasterRunner):
        traffic(options.traffic_profile, options.flows)  # before any run-time clock starts


@events.test_start.add_listener
def _on_test_start(environment: Any, **_kwargs: Any) -> None:
    _before.clear()
    options = environment.parsed_options
    if not isinstance(environment.runner, MasterRunner):  # web UI: options may have changed
        traffic(options.traffic_profile, options.flows)
    if isinstance(environment.runner, WorkerRunner):
        return
    _before["started"] = time.time()
    url = options.collector_metrics
    if url:
        try:
            _before["metrics"] = scrape(url)
        except (OSError, urllib.error.URLError) as exc:
            print(f"collector metrics at {url} unreadable at start: {exc}", file=sys.stderr)


@events.test_stop.add_listener
def _on_test_stop(environment: Any, **_kwargs: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or "started" not in _before:
        return
    report = build_report(environment)
    _before.clear()
    print(format_locust_report(report))
    path = Path(environment.parsed_options.report_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report written to {path}")


def build_report(environment: Any) -> dict[str, Any]:
    options = environment.parsed_options
    sent, failed, nbytes = _sent(environment)
    seconds = time.time() - _before["started"]
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "target": options.host or DEFAULT_TARGET,
        "profile": options.traffic_profile,
        "flows": options.flows or PROFILES[options.traffic_profile].flows,
        "users": sum(getattr(environment.runner, "final_user_classes_count", {}).values()),
        "burst": options.burst,
        "seconds": round(seconds, 1),
        "sent": sent,
        "send_failures": failed,
        "sent_bytes": nbytes,
        "sent_pps": round(sent / seconds) if seconds else 0,
        "by_kind": {
            name: entry.num_requests
            for (name, method), entry in sorted(environment.stats.entries.items())
            if method == "udp"
        },
    }
    url = options.collector_metrics
    if not url or "metrics" not in _before:
        report["collector"] = None
        return report
    before = _before["metrics"]
    name = "collector_datagrams_received_total"
    deadline = time.monotonic() + SETTLE_S
    last = -1.0
    while True:  # workers publish their counters every 0.5 s: wait until they stop moving
        after = scrape(url)
        received = after.get(name, 0.0) - before.get(name, 0.0)
        if received >= sent or received == last or time.monotonic() > deadline:
            break
        last = received
        time.sleep(1.0)
    drops_before = by_label(before, "collector_packets_dropped_total", "reason")
    drops = {
        reason: int(value - drops_before.get(reason, 0.0))
        for reason, value in by_label(after, "collector_packets_dropped_total", "reason").items()
        if value - drops_before.get(reason, 0.0) > 0
    }
    kernel = "collector_kernel_drops_total"
    report["collector"] = {
        "metrics_url": url,
        "received": int(received),
        "dropped_by_reason": drops,
        "kernel_drops": int(after.get(kernel, 0.0) - before.get(kernel, 0.0)),
        "flows_active": int(after.get("collector_flows_active", 0.0)),
        "lost": int(sent - received),
        "loss_pct": round(100.0 * (sent - received) / sent, 3) if sent else 0.0,
    }
    return report
