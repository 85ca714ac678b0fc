"""deploy/image/collector-ready and deploy/systemd/collector-lifecycle run for real: bash, curl and
an HTTP server on loopback standing in
for the instance metadata service and the collector's /healthz, the AWS CLI and cfn-signal
replaced by scripts that record their calls (and answer describe-target-health as the load
balancer would while it registers a target).

What it shows: the wait is bounded by the time since boot (the launch hook's clock), it logs why it
waits (the /healthz status and body, the target's health state and reason), it completes the hook
only after /healthz 200 and signals success only once the target is healthy; and when the boot
runs out of time it says what /healthz last answered, signals failure and abandons the launch.
And with a network-interface target, collector-lifecycle is the health check a load balancer would
be: a collector that was healthy and stays unhealthy gets its instance marked Unhealthy, once.
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
from tests.service_harness import wait_for

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


# ------------------------------------------------------------------------- eni: the instance checks itself

LIFECYCLE = ROOT / "deploy" / "systemd" / "collector-lifecycle"
SYSTEMCTL_STUB = """#!/bin/bash
echo "systemctl $*" >> "$CALLS"
[ "$1" = show ] && echo success
exit 0
"""


class Lifecycle(Instance):
    """IMDS with the target lifecycle state, and /healthz: 200 ``healthy`` times, then 503."""

    healthy = 3
    state = "InService"
    polls = 0

    def do_GET(self) -> None:
        cls = type(self)
        if self.path == "/latest/meta-data/autoscaling/target-lifecycle-state":
            cls.polls += 1
            self._send(200, cls.state.encode())
        elif self.path == "/healthz":
            cls.answered += 1
            self._send(200 if cls.answered <= cls.healthy else 503, b"{}")
        else:
            super().do_GET()


def run_lifecycle(tmp_path: Path, base: str, replace_after: str) -> subprocess.Popen[str]:
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "aws").write_text(AWS_STUB)
    (stubs / "systemctl").write_text(SYSTEMCTL_STUB)
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "CALLS": str(tmp_path / "calls"),
        "IMDS_URL": f"{base}/latest",
        "HEALTHZ_URL": f"{base}/healthz",
        "POLL_S": "0.1",
        # the drain's heartbeat loop sleeps this long; its sleep outlives the loop by as much
        "HEARTBEAT_S": "0.2",
        "REPLACE_UNHEALTHY_S": replace_after,
        "AWS_DEFAULT_REGION": "eu-west-1",
        "ASG_NAME": "mirror-collectors",
        "LIFECYCLE_HOOK_NAME": "collector-drain",
    }
    return subprocess.Popen(
        ["bash", str(LIFECYCLE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


@pytest.fixture
def lifecycle_instance() -> Iterator[tuple[str, type[Lifecycle]]]:
    handler = type(
        "Handler", (Lifecycle,), {"answered": 0, "healthy": 3, "state": "InService", "polls": 0}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def calls_of(tmp_path: Path) -> str:
    path = tmp_path / "calls"
    return path.read_text() if path.exists() else ""


def finish(proc: subprocess.Popen[str], handler: type[Lifecycle]) -> str:
    """Let the group terminate the instance (the drain runs as on scale-in); the script's output."""
    handler.state = "Terminated"
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out


def test_eni_mode_marks_an_instance_whose_collector_stays_unhealthy(
    tmp_path: Path, lifecycle_instance: tuple[str, type[Lifecycle]]
) -> None:
    base, handler = lifecycle_instance
    proc = run_lifecycle(tmp_path, base, replace_after="1")
    try:
        wait_for(lambda: "set-instance-health" in calls_of(tmp_path), "the instance marked")
    finally:
        out = finish(proc, handler)
    calls = calls_of(tmp_path).splitlines()
    marks = [c for c in calls if "set-instance-health" in c]
    assert marks == [
        "aws autoscaling set-instance-health --instance-id i-0123456789abcdef0"
        " --health-status Unhealthy"
    ]  # once
    assert "/healthz answers 503: the instance is replaced if it lasts 1 s" in out
    assert "marking the instance Unhealthy" in out
    assert "systemctl stop collector.service" in calls
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("healthy", "replace_after"),
    [(0, "1"), (3, "")],
    ids=["never-healthy-yet", "setting-off"],
)
def test_before_a_first_200_or_without_the_setting_nothing_is_marked(
    tmp_path: Path,
    lifecycle_instance: tuple[str, type[Lifecycle]],
    healthy: int,
    replace_after: str,
) -> None:
    base, handler = lifecycle_instance
    handler.healthy = healthy  # 0: a boot, which collector-ready owns
    proc = run_lifecycle(tmp_path, base, replace_after=replace_after)
    try:
        # a second's worth of polls, past the 1 s the first case would need
        wait_for(lambda: handler.answered >= 20 or handler.polls >= 20, "the loop polled")
    finally:
        finish(proc, handler)
    assert "set-instance-health" not in calls_of(tmp_path)
    assert proc.returncode == 0
