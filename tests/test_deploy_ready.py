"""deploy/image/collector-ready run for real: bash, curl and an HTTP server on loopback standing in
for the instance metadata service and the collector's /healthz, the AWS CLI and cfn-signal
replaced by scripts that record their calls (and answer describe-target-health as the load
balancer would while it registers a target).

What it shows: the wait is bounded by the time since boot (the launch hook's clock), it logs why it
waits (the /healthz status and body, the target's health state and reason), it completes the hook
only after /healthz 200 and signals success only once the target is healthy; and when the boot
runs out of time it says what /healthz last answered, signals failure and abandons the launch.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.cfn_template import ROOT

READY = ROOT / "deploy" / "image" / "collector-ready"
INSTANCE = "i-0123456789abcdef0"
STARTING = b'{"status": "unhealthy", "sink": {"states": ["starting"]}, "workers": []}'

AWS_STUB = """#!/bin/bash
echo "aws $*" >> "$CALLS"
if [ "$1 $2" = "elbv2 describe-target-health" ]; then
    n=$(cat "$CALLS.health" 2>/dev/null || echo 0)
    echo $((n + 1)) > "$CALLS.health"
    if [ "$n" -lt 1 ]; then
        printf 'initial\\tElb.RegistrationInProgress\\tTarget registration is in progress\\n'
    else
        printf 'healthy\\tNone\\tNone\\n'
    fi
fi
exit 0
"""
SIGNAL_STUB = """#!/bin/bash
echo "cfn-signal $*" >> "$CALLS"
"""


class Instance(BaseHTTPRequestHandler):
    """The metadata service (IMDSv2) and /healthz: 503 for the first ``starting`` answers."""

    starting = 1
    answered = 0

    def do_PUT(self) -> None:
        self._send(200, b"token")

    def do_GET(self) -> None:
        if self.path == "/latest/meta-data/instance-id":
            self._send(200, INSTANCE.encode())
        elif self.path == "/healthz":
            cls = type(self)
            cls.answered += 1
            if cls.answered <= cls.starting:
                self._send(503, STARTING)
            else:
                self._send(200, b'{"status": "ok"}')
        else:
            self._send(404, b"")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def instance() -> Iterator[tuple[str, type[Instance]]]:
    handler = type("Handler", (Instance,), {"answered": 0, "starting": 1})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def run_ready(
    tmp_path: Path, base: str, uptime_s: int
) -> tuple[subprocess.CompletedProcess[str], str]:
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "aws").write_text(AWS_STUB)
    (stubs / "cfn-signal").write_text(SIGNAL_STUB)
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    calls = tmp_path / "calls"
    (tmp_path / "uptime").write_text(f"{uptime_s}.25 {uptime_s * 2}.50\n")
    env = {
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "CALLS": str(calls),
        "HEALTHZ_URL": f"{base}/healthz",
        "METADATA_URL": f"{base}/latest",
        "CFN_SIGNAL": str(stubs / "cfn-signal"),
        "UPTIME_FILE": str(tmp_path / "uptime"),
        "AWS_DEFAULT_REGION": "eu-west-1",
        "CFN_STACK": "mirror",
        "CFN_RESOURCE": "CollectorGroup",
        "ASG_NAME": "mirror-collectors",
        "LAUNCH_HOOK_NAME": "collector-launch",
        "TARGET_GROUP_ARN": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/c/1",
        "TARGET_ENI": "",
    }
    result = subprocess.run(
        ["bash", str(READY)], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    return result, calls.read_text() if calls.exists() else ""


def test_ready_logs_why_it_waits_and_signals_once_the_target_is_healthy(
    tmp_path: Path, instance: tuple[str, type[Instance]]
) -> None:
    base, handler = instance
    result, calls = run_ready(tmp_path, base, uptime_s=120)
    log = result.stdout
    assert result.returncode == 0, log + result.stderr
    # why it waited: /healthz's status and body (the sink still starting)
    assert "collector-ready: waiting for /healthz 200 (120 s after boot): HTTP 503: " in log
    assert '"states": ["starting"]' in log
    assert handler.answered == 2
    # the target's health with the load balancer's reason, each state once
    assert "target health: initial\tElb.RegistrationInProgress\tTarget registration is in" in log
    assert "target health: healthy\tNone\tNone" in log
    lines = calls.splitlines()
    hook = next(i for i, c in enumerate(lines) if "complete-lifecycle-action" in c)
    assert "--lifecycle-action-result CONTINUE" in lines[hook]
    assert f"--instance-id {INSTANCE}" in lines[hook]
    health_calls = [i for i, c in enumerate(lines) if "describe-target-health" in c]
    assert health_calls and min(health_calls) > hook  # registered only after the hook
    assert lines[-1].startswith("cfn-signal --exit-code 0 --stack mirror")


def test_ready_gives_up_with_the_last_answer_when_the_boot_ran_out_of_time(
    tmp_path: Path, instance: tuple[str, type[Instance]]
) -> None:
    base, handler = instance
    handler.starting = 10**6  # /healthz never turns 200
    # 845 s after boot: past READY_TIMEOUT_S (840), a minute before the hook's 900 s
    result, calls = run_ready(tmp_path, base, uptime_s=845)
    assert result.returncode == 1
    assert (
        "collector-ready: /healthz not 200 840 s after boot; last answer: HTTP 503: "
        in result.stdout
    )
    assert '"states": ["starting"]' in result.stdout
    assert "cfn-signal --exit-code 1" in calls
    assert "--lifecycle-action-result ABANDON" in calls
    assert "CONTINUE" not in calls
    assert "describe-target-health" not in calls
