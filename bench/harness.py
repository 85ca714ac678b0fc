"""A collector in a subprocess for the load benchmarks, and its /metrics as numbers.

Every address is on 127.0.0.1: the benchmarks only ever send to this machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

LOOPBACK = "127.0.0.1"

Metrics = dict[str, float]  # 'name' or 'name{label="value"}' -> value


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port nothing listens on right now (UDP or TCP) on 127.0.0.1."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


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
    """``python -m collector run`` on free loopback ports with a /dev/null file sink."""

    def __init__(
        self,
        workers: int = 1,
        *,
        env: Mapping[str, str] | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.workers = workers
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
                str(workers),
                "--listen",
                f"{LOOPBACK}:{self.port}",
                "--health",
                f"{LOOPBACK}:{self.http}",
                "--sink",
                f"file:{os.devnull}",
                "--log-level",
                "error",
            ],
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + start_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"collector exited with status {self.proc.returncode}")
            try:
                body = self.health()
                if body.get("status") == "ok" and len(body.get("workers", [])) == workers:
                    self.pids = [int(w["pid"]) for w in body["workers"]]
                    break
            except (OSError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("collector did not become healthy in time")
            time.sleep(0.1)

    def health(self) -> dict[str, object]:
        url = f"http://{LOOPBACK}:{self.http}/healthz"
        with urllib.request.urlopen(url, timeout=2) as response:
            return dict(json.loads(response.read()))

    def metrics(self) -> Metrics:
        return scrape(self.metrics_url)

    def received(self) -> int:
        return int(self.metrics().get("collector_datagrams_received_total", 0.0))

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
