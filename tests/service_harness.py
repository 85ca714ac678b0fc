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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.packets import icmp, tcp, udp, vxlan

DEADLINE_S = 30.0
__all__ = ["Collector", "free_port", "icmp", "tcp", "udp", "vxlan", "wait_for"]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    ) -> None:
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.http_port = free_port()
        self.out = tmp / "records.jsonl"
        self.config_path: Path | None = None
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
            str(workers),
            "--sink",
            sink or f"file:{self.out}",
            *args,
        ]
        if config is not None:
            self.config_path = tmp / "collector.toml"
            self.config_path.write_text(config)
            cmd += ["--config", str(self.config_path)]
        self.log = (tmp / "collector.log").open("wb")
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def __enter__(self) -> Collector:
        self.wait_healthy()
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
