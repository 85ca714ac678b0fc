"""The ops files under deploy/ against the things that will consume them.

- Every CloudFormation template passes cfn-lint (checkov runs in make lint-deploy).
- Every metric the Grafana dashboard, the Prometheus alerts, the CloudWatch agent and the stack's
  scaling policy and alarms use exists in a real collector's /metrics (a collector started here,
  on loopback, with a file sink), and it exits 0 on SIGTERM.
- The config the stack writes at boot passes ``collector check-config`` (with filter A as the
  stack creates it); the bundle carries deploy/systemd/ and the installer puts each file where the
  boot script expects it; the lock file is checked in test_deploy_lock.py.
- The systemd unit, the Dockerfile and the compose file carry the settings the runbook promises.
The template's own facts (security groups, hooks, rules, alarms, ...) are in test_deploy_stack.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cfn_template import (
    EXAMPLE_PARAMETERS,
    ROOT,
    STACK,
    Resolver,
    heredoc,
    load_stack,
    parameter_defaults,
    user_data_source,
)

DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "collector.service"
LIFECYCLE_SCRIPT = DEPLOY / "systemd" / "collector-lifecycle"
LIFECYCLE_UNIT = DEPLOY / "systemd" / "collector-lifecycle.service"
DASHBOARD = DEPLOY / "grafana" / "collector-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
INSTALLER = DEPLOY / "image" / "install-collector"
BUILD_BUNDLE = DEPLOY / "image" / "build-bundle"
CLOUDWATCH_AGENT = DEPLOY / "cloudwatch" / "amazon-cloudwatch-agent.json"

HEALTH_DEADLINE_S = 30.0
STOP_DEADLINE_S = 60.0


def _env_without_collector_settings() -> dict[str, str]:
    """The caller's environment minus COLLECTOR_* (they would override the flags under test)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}


# ------------------------------------------------------------------------- CloudFormation


def _templates() -> list[Path]:
    return sorted(
        p
        for p in (DEPLOY / "cloudformation").rglob("*")
        if p.suffix in {".yaml", ".yml", ".json", ".template"}
    )


def test_cfn_lint_passes_on_every_template() -> None:
    templates = _templates()
    assert STACK in templates
    # cfn-lint of this interpreter's environment (a dev dependency), run as its console script does.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from cfnlint.runner import main; sys.exit(main())",
            # Informational checks too (explicit deletion policies on stateful resources).
            "--include-checks",
            "I",
            "--",
            *map(str, templates),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"cfn-lint:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize(
    ("path", "bundled", "target"),
    [
        (UNIT, "systemd/collector.service", "/etc/systemd/system/collector.service"),
        (LIFECYCLE_SCRIPT, "systemd/collector-lifecycle", "/usr/local/sbin/collector-lifecycle"),
        (
            LIFECYCLE_UNIT,
            "systemd/collector-lifecycle.service",
            "/etc/systemd/system/collector-lifecycle.service",
        ),
    ],
)
def test_bundle_carries_deploy_systemd_and_the_installer_puts_it_in_place(
    path: Path, bundled: str, target: str
) -> None:
    build = BUILD_BUNDLE.read_text()
    source = path.relative_to(ROOT).as_posix()
    assert source in build, f"build-bundle does not pack {source}"
    installer = re.sub(r"\s*\\\n\s*", " ", INSTALLER.read_text())
    assert re.search(rf'"\$here/{re.escape(bundled)}" {re.escape(target)}\b', installer), (
        f"install-collector does not install {bundled} as {target}"
    )
    # The boot script starts what the installer put there, by these names.
    script, _ = user_data_source(load_stack())
    unit_name = Path(target).name
    if unit_name.endswith(".service"):
        assert unit_name in script


def test_installer_takes_nothing_from_a_package_index() -> None:
    installer = re.sub(r"\s*\\\n\s*", " ", INSTALLER.read_text())
    pip_lines = [line for line in installer.splitlines() if '/bin/pip" install' in line]
    assert len(pip_lines) == 2
    for line in pip_lines:
        assert "--no-index" in line
    (locked,) = [line for line in pip_lines if "requirements.lock" in line]
    assert "--require-hashes" in locked
    assert "--only-binary :all:" in locked
    # The baked image is recognised by this file; the boot script skips the install when present.
    assert "/opt/collector/installed" in installer
    script, _ = user_data_source(load_stack())
    assert "if [ ! -e /opt/collector/installed ]; then" in script
    assert "sha256sum --check --strict" in script
    assert "pip install" not in script


def test_scram_env_helper_escapes_for_systemd() -> None:
    helper = DEPLOY / "image" / "collector-scram-env"
    secret = {"username": "collector", "password": 'p"a$s\\w`d'}
    result = subprocess.run(
        [sys.executable, str(helper)],
        env={"SECRET": json.dumps(secret)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # systemd.exec(5): inside double quotes a backslash escapes the next character.
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert lines["COLLECTOR_KAFKA_SASL_USERNAME"] == '"collector"'
    unescaped = re.sub(r"\\(.)", r"\1", lines["COLLECTOR_KAFKA_SASL_PASSWORD"][1:-1])
    assert unescaped == secret["password"]
    refused = subprocess.run(
        [sys.executable, str(helper)],
        env={"SECRET": json.dumps({"username": "a", "password": "x\ny"})},
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 1
    assert "line break" in refused.stderr
    assert "Traceback" not in refused.stderr


def _filter_a_as_aws_describes_it(resolver: Resolver) -> dict[str, Any]:
    """describe-traffic-mirror-filters output for filter A with the rules the stack creates."""
    rules: dict[str, list[dict[str, Any]]] = {"ingress": [], "egress": []}
    for name, resource in resolver.template["Resources"].items():
        if resource["Type"] != "AWS::EC2::TrafficMirrorFilterRule":
            continue
        if "Condition" in resource and not resolver.condition(resource["Condition"]):
            continue
        props = resolver.resolve(resource["Properties"])
        rule = {
            "TrafficMirrorFilterRuleId": f"tmfr-{len(rules['ingress']) + len(rules['egress']):017x}",
            "TrafficMirrorFilterId": props["TrafficMirrorFilterId"],
            "TrafficDirection": props["TrafficDirection"],
            "RuleNumber": int(props["RuleNumber"]),
            "RuleAction": props["RuleAction"],
            "SourceCidrBlock": props["SourceCidrBlock"],
            "DestinationCidrBlock": props["DestinationCidrBlock"],
            "Description": props.get("Description", name),
        }
        if "Protocol" in props:
            rule["Protocol"] = int(props["Protocol"])
        for key in ("SourcePortRange", "DestinationPortRange"):
            if key in props:
                rule[key] = {k: int(v) for k, v in props[key].items()}
        rules[props["TrafficDirection"]].append(rule)
    assert rules["ingress"]
    assert rules["egress"]
    return {
        "TrafficMirrorFilters": [
            {
                "TrafficMirrorFilterId": resolver.refs["MirrorFilterA"],
                "IngressFilterRules": rules["ingress"],
                "EgressFilterRules": rules["egress"],
                "NetworkServices": [],
                "Description": "Filter A",
                "Tags": [],
            }
        ]
    }


AUTH_VARIANTS = {
    "none": ({"KafkaAuth": "none"}, {}),
    "sasl-scram": (
        {
            "KafkaAuth": "sasl-scram",
            "KafkaScramSecretArn": (
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:AmazonMSK_collector-AbCdEf"
            ),
        },
        # What the boot script writes to /etc/collector/collector.env from the secret.
        {"COLLECTOR_KAFKA_SASL_USERNAME": "collector", "COLLECTOR_KAFKA_SASL_PASSWORD": "s3cret"},
    ),
    "msk-iam": (
        {
            "KafkaAuth": "msk-iam",
            "MskClusterArn": "arn:aws:kafka:eu-west-1:123456789012:cluster/flows/0a1b2c3d-4e5f-6a7b",
        },
        {},
    ),
}


@pytest.mark.parametrize("auth", sorted(AUTH_VARIANTS))
def test_config_written_by_the_stack_passes_check_config(auth: str, tmp_path: Path) -> None:
    template = load_stack()
    extra_parameters, environment = AUTH_VARIANTS[auth]
    parameters = {**parameter_defaults(template), **EXAMPLE_PARAMETERS, **extra_parameters}
    resolver = Resolver(template, parameters)
    script = resolver.resolve({"Fn::Sub": user_data_source(template)})

    filter_json = tmp_path / "filter-a.json"
    filter_json.write_text(json.dumps(_filter_a_as_aws_describes_it(resolver)))
    config_text = heredoc(script, "/etc/collector/collector.toml")
    assert '"/etc/collector/filter-a.json"' in config_text
    config = tmp_path / "collector.toml"
    config.write_text(config_text.replace("/etc/collector/filter-a.json", str(filter_json)))

    result = subprocess.run(
        [sys.executable, "-m", "collector", "check-config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**_env_without_collector_settings(), **environment},
    )
    assert result.returncode == 0, f"{config_text}\n---\n{result.stdout}{result.stderr}"
    assert "2 sessions, 1 filters" in result.stdout


# ------------------------------------------------------------------------- metrics


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass(frozen=True)
class CollectorRun:
    metrics: str
    exit_status: int
    stderr: str


@pytest.fixture(scope="module")
def collector_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorRun]:
    """A real collector: started, healthy, scraped once, stopped with SIGTERM."""
    tmp = tmp_path_factory.mktemp("collector")
    health = f"127.0.0.1:{_free_port(socket.SOCK_STREAM)}"
    stderr_path = tmp / "stderr.log"
    with stderr_path.open("w") as stderr, (tmp / "stdout.log").open("w") as stdout:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "collector",
                "run",
                "--listen",
                f"127.0.0.1:{_free_port(socket.SOCK_DGRAM)}",
                "--health",
                health,
                "--workers",
                "1",
                "--sink",
                f"file:{tmp / 'records.jsonl'}",
            ],
            cwd=ROOT,
            env=_env_without_collector_settings(),
            stdout=stdout,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + HEALTH_DEADLINE_S
            status = 0
            while status != 200:
                if proc.poll() is not None:
                    pytest.fail(f"collector exited {proc.returncode}:\n{stderr_path.read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"/healthz not 200 within {HEALTH_DEADLINE_S} s (last {status})")
                try:
                    status, _body = _get(f"http://{health}/healthz")
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    status = 0
                if status != 200:
                    time.sleep(0.1)
            metrics_status, metrics = _get(f"http://{health}/metrics")
            assert metrics_status == 200
            proc.send_signal(signal.SIGTERM)
            exit_status = proc.wait(timeout=STOP_DEADLINE_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    yield CollectorRun(metrics, exit_status, stderr_path.read_text())


_TYPE_LINE = re.compile(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)$")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]")
_METRIC_NAME = re.compile(r"\bcollector_[a-z0-9_]+\b")


def exposed_series_names(metrics_text: str) -> set[str]:
    """Every series name a PromQL query may use against this exposition.

    Families come from the TYPE lines, so a labelled metric that has no sample yet still counts:
    a counter family is queried as NAME_total, a histogram as NAME_bucket/_sum/_count, a gauge
    as NAME. Sample lines add the names that are present right now.
    """
    names: set[str] = set()
    for line in metrics_text.splitlines():
        if type_line := _TYPE_LINE.match(line):
            family, kind = type_line.groups()
            if kind == "counter":
                names.add(family if family.endswith("_total") else f"{family}_total")
            elif kind == "histogram":
                names.update(f"{family}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
            elif kind == "summary":
                names.update(f"{family}{suffix}" for suffix in ("", "_sum", "_count"))
            else:
                names.add(family)
        elif not line.startswith("#") and (sample := _SAMPLE.match(line)):
            names.add(sample.group(1))
    return names


def metric_names_in(text: str) -> set[str]:
    """collector_* names anywhere in a dashboard or rule file (queries, help texts)."""
    return set(_METRIC_NAME.findall(text))


def test_exposition_parser_reads_families_without_samples() -> None:
    text = (
        "# HELP collector_packets_dropped_total Dropped.\n"
        "# TYPE collector_packets_dropped_total counter\n"
        "# TYPE collector_sink_delivery_latency_seconds histogram\n"
        'collector_sink_delivery_latency_seconds_bucket{le="+Inf"} 0.0\n'
        "# TYPE collector_flows_active gauge\n"
        "collector_flows_active 3.0\n"
    )
    assert exposed_series_names(text) == {
        "collector_packets_dropped_total",
        "collector_sink_delivery_latency_seconds_bucket",
        "collector_sink_delivery_latency_seconds_sum",
        "collector_sink_delivery_latency_seconds_count",
        "collector_flows_active",
    }


def test_dashboard_and_alerts_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    assert all(metric_names_in(expr) for expr in exprs)

    rules = yaml.safe_load(ALERTS.read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert alerts
    for rule in alerts:
        assert metric_names_in(rule["expr"]), rule["alert"]
        assert rule["labels"]["severity"] in {"page", "ticket"}
        assert rule["annotations"]["summary"]


def test_collector_exits_0_on_sigterm(collector_run: CollectorRun) -> None:
    assert collector_run.exit_status == 0, collector_run.stderr


@pytest.mark.parametrize("path", [DASHBOARD, ALERTS], ids=["dashboard", "alerts"])
def test_every_metric_used_exists_in_metrics(collector_run: CollectorRun, path: Path) -> None:
    used = metric_names_in(path.read_text())
    assert used
    missing = used - exposed_series_names(collector_run.metrics)
    assert not missing, f"{path.name} uses metrics the collector does not export: {sorted(missing)}"


# ------------------------------------------------------------------------- host and container


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as section -> key -> values (keys may repeat; an empty value resets)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_systemd_unit_is_hardened() -> None:
    service = parse_unit(UNIT)["Service"]

    def one(key: str) -> str:
        values = service.get(key, [])
        assert len(values) == 1, f"{key}: {values}"
        return values[0]

    assert one("User") == "collector"
    assert one("NoNewPrivileges") == "yes"
    assert one("ProtectSystem") == "strict"
    assert one("ProtectHome") == "yes"
    assert one("PrivateTmp") == "yes"
    assert "/var/lib/collector" in one("ReadWritePaths").split()
    assert one("CapabilityBoundingSet") == ""
    assert set(one("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in service["SystemCallFilter"]
    assert one("Restart") == "on-failure"
    assert one("KillSignal") == "SIGTERM"
    assert one("EnvironmentFile") == "-/etc/collector/collector.env"
    assert one("ExecStart") == (
        "/opt/collector/venv/bin/collector run --config /etc/collector/collector.toml"
    )
    assert re.fullmatch(r"/bin/kill -HUP \$MAINPID", one("ExecReload"))

    # Stopping must outlast the stack's default drain plus the supervisor's stop grace (which
    # itself exceeds the sink's flush), or systemd kills a collector still flushing.
    from collector.config import Config, KafkaConfig

    drain_s = float(parameter_defaults(load_stack())["DrainSeconds"])
    stop_grace_s = max(Config().stop_timeout_s, KafkaConfig().flush_timeout_s)
    assert _seconds(one("TimeoutStopSec")) > drain_s + stop_grace_s
    # The stack's drop-in recomputes it from DrainSeconds with the same margin.
    script, _ = user_data_source(load_stack())
    margin = int(
        re.search(r"TimeoutStopSec=\$\(\( \$\{DrainSeconds\} \+ (\d+) \)\)s", script).group(1)
    )
    assert margin > stop_grace_s


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_runs_unprivileged_with_a_health_check() -> None:
    instructions = _dockerfile_instructions()

    def values(keyword: str) -> list[str]:
        return [rest for kw, rest in instructions if kw == keyword]

    # a builder stage compiles the wheel; the image itself has no compiler
    assert values("FROM") == ["python:3.11-slim AS build", "python:3.11-slim"]
    users = values("USER")
    assert users
    assert users[-1] not in {"root", "0"}
    runs = values("RUN")
    assert any("gcc" in run for run in runs[: runs.index(next(r for r in runs if "wheel" in r))])
    assert any("pip wheel" in run and "/src" in run for run in runs)
    (install,) = [run for run in runs if "/tmp/wheels/*.whl" in run]
    assert "--require-hashes" in install
    assert "requirements.lock" in install
    assert "sys.exit(not b.compiled())" in install  # the image build fails on a pure build
    exposed = {port for line in values("EXPOSE") for port in line.split()}
    assert {"4789/udp", "8080"} <= exposed
    assert values("STOPSIGNAL") == ["SIGTERM"]
    (health,) = values("HEALTHCHECK")
    assert "/healthz" in health
    assert "urllib.request" in health
    assert "curl" not in health


def test_compose_broker_matches_the_local_broker() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    kafka = compose["services"]["kafka"]
    env = {key: str(value) for key, value in kafka["environment"].items()}

    pom = ET.parse(DEPLOY / "kafka" / "pom.xml").getroot()
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = pom.findtext("m:properties/m:kafka.version", namespaces=namespace)
    assert version
    assert kafka["image"] == f"apache/kafka:{version}"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://127.0.0.1:9092"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "127.0.0.1:9092:9092" in kafka["ports"]

    collector = compose["services"]["collector"]
    assert collector["build"]["dockerfile"] == "deploy/Dockerfile"
    assert collector["network_mode"] == "service:kafka"
    sink = collector["command"][collector["command"].index("--sink") + 1]
    assert sink.startswith("kafka://127.0.0.1:9092/")


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    promtool = ROOT / ".cache" / "promtool" / "usr" / "bin" / "promtool"
    assert promtool.exists(), "run `make test` (it fetches promtool from the prometheus package)"
    rules = ROOT / "deploy" / "prometheus"
    checked = subprocess.run(
        [str(promtool), "check", "rules", "alerts.yml"],
        cwd=rules,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [str(promtool), "test", "rules", "alerts_test.yml"],
        cwd=rules,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


# ------------------------------------------------------------------------- CloudWatch


def _cloudwatch_metric_names() -> set[str]:
    """collector_* metrics the stack's scaling policy and alarms read from CloudWatch."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("Namespace") == "VpcMirrorCollector":
                names.add(node["MetricName"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(load_stack()["Resources"])
    return names


def test_cloudwatch_agent_publishes_what_the_stack_reads(collector_run: CollectorRun) -> None:
    agent = json.loads(CLOUDWATCH_AGENT.read_text())
    prometheus = agent["logs"]["metrics_collected"]["prometheus"]
    fleet, per_session = prometheus["emf_processor"]["metric_declaration"]
    exposed = exposed_series_names(collector_run.metrics)
    published = set()
    for declaration in (fleet, per_session):
        for selector in declaration["metric_selectors"]:
            matched = {name for name in exposed if re.fullmatch(selector, name)}
            assert matched, f"the agent's selector {selector} matches nothing in /metrics"
            published |= matched
    used = _cloudwatch_metric_names()
    assert "collector_datagrams_received_total" in used
    assert "collector_kernel_drops_total" in used
    assert used <= published, (
        f"the stack reads metrics the agent does not publish: {used - published}"
    )
    assert prometheus["emf_processor"]["metric_namespace"] == "VpcMirrorCollector"
    # The scaling policy and the alarms select on the Fleet dimension alone.
    assert ["Fleet"] in fleet["dimensions"]
    assert ["Fleet", "InstanceId"] in fleet["dimensions"]
    # The silent-source alarms: one series per session (its label) over the fleet.
    assert per_session["metric_selectors"] == ["^collector_session_datagrams_total$"]
    assert per_session["dimensions"] == [["Fleet", "session"]]
    assert "collector_session_datagrams_total" in used


def test_cloudwatch_agent_ships_the_logs_to_the_stacks_groups() -> None:
    agent = json.loads(CLOUDWATCH_AGENT.read_text())
    files = {
        entry["file_path"]: entry["log_group_name"]
        for entry in agent["logs"]["logs_collected"]["files"]["collect_list"]
    }
    assert files == {
        "/var/log/collector-bootstrap.log": "@LOG_GROUP_PREFIX@/bootstrap",
        "/var/log/messages": "@LOG_GROUP_PREFIX@/system",
    }
    resolver = Resolver(load_stack(), {**parameter_defaults(load_stack()), **EXAMPLE_PARAMETERS})
    groups = {
        resource["Properties"]["LogGroupName"]
        for resource in resolver.resources("AWS::Logs::LogGroup").values()
    }
    # named after the stack and its id: a new stack of the same name does not meet the kept ones
    prefix = "/vpc-mirror-collector/mirror-test/0a1b2c3d"
    rendered = {
        group.replace("@LOG_GROUP_PREFIX@", prefix)
        for group in [
            *files.values(),
            agent["logs"]["metrics_collected"]["prometheus"]["log_group_name"],
        ]
    }
    assert rendered == groups
    script = resolver.resolve({"Fn::Sub": user_data_source(load_stack())})
    assert f"LOG_GROUP_PREFIX={prefix}" in script
    assert "/var/log/collector-bootstrap.log" in script
    # The journal reaches /var/log/messages through rsyslog, which the installer sets up.
    assert "rsyslog" in INSTALLER.read_text()
    prometheus_yaml = yaml.safe_load((DEPLOY / "cloudwatch" / "prometheus.yaml").read_text())
    (job,) = prometheus_yaml["scrape_configs"]
    assert job["job_name"] == "collector"
    (static,) = job["static_configs"]
    assert static["targets"] == ["127.0.0.1:8080"]
    assert set(static["labels"]) == {"Fleet", "InstanceId"}


def test_cloudwatch_agent_scrape_config_passes_promtool(tmp_path: Path) -> None:
    promtool = ROOT / ".cache" / "promtool" / "usr" / "bin" / "promtool"
    assert promtool.exists(), "run `make test` (it fetches promtool from the prometheus package)"
    # As collector-cloudwatch-setup renders it on an instance.
    rendered = (
        (DEPLOY / "cloudwatch" / "prometheus.yaml")
        .read_text()
        .replace("@FLEET@", "mirror")
        .replace("@INSTANCE_ID@", "i-0123456789abcdef0")
    )
    config = tmp_path / "collector-prometheus.yaml"
    config.write_text(rendered)
    checked = subprocess.run(
        [str(promtool), "check", "config", "--syntax-only", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    setup = (DEPLOY / "image" / "collector-cloudwatch-setup").read_text()
    for placeholder in re.findall(
        r"@[A-Z_]+@", (DEPLOY / "cloudwatch" / "prometheus.yaml").read_text()
    ):
        assert placeholder in setup, f"collector-cloudwatch-setup does not fill in {placeholder}"
    for placeholder in re.findall(r"@[A-Z_]+@", CLOUDWATCH_AGENT.read_text()):
        assert placeholder in setup, f"collector-cloudwatch-setup does not fill in {placeholder}"
