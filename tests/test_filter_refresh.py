"""Running collectors follow their mirror filters in AWS (``[aws] follow_filters``).

The stack writes filter A's rules to a file at boot; a stack update that widens the filter changes
AWS only. Here the real collector runs against moto's EC2 (a moto server on loopback, reached
through AWS_ENDPOINT_URL): the filter's rules change in the EC2 API, and without a restart the
collector's /metrics shows the new version and a flow the old rules rejected is kept.

moto 5 implements CreateTrafficMirrorFilter and DescribeTrafficMirrorFilters but not
CreateTrafficMirrorFilterRule: its filters always answer with empty rule lists. The test puts the
rules on moto's filter object, where moto's own DescribeTrafficMirrorFilters serialises them, so
the collector still parses an EC2 API answer (botocore reads moto's XML by the EC2 model).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.ec2.models import ec2_backends
from moto.server import ThreadedMotoServer

from collector.aws_filters import FilterFollower, rules_version
from collector.config import AwsConfig, Config, load_config
from collector.filter import rules_from_aws
from tests.service_harness import Collector, clean_environ, free_port, tcp, wait_for

ACCOUNT, REGION = "123456789012", "us-east-1"
SOURCE = "10.0.0.5"


def rule(number: int, action: str, destination: str) -> dict[str, Any]:
    return {
        "TrafficMirrorFilterRuleId": f"tmfr-{number:017x}",
        "TrafficDirection": "egress",
        "RuleNumber": number,
        "RuleAction": action,
        "SourceCidrBlock": "0.0.0.0/0",
        "DestinationCidrBlock": destination,
    }


NARROW = [rule(10, "reject", "10.99.0.0/16"), rule(100, "accept", "10.9.0.0/16")]
WIDE = [rule(10, "reject", "10.99.0.0/16"), rule(100, "accept", "0.0.0.0/0")]


@pytest.fixture
def ec2_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto server on loopback (in this process: the test reaches its backend)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def set_rules(filter_id: str, rules: list[dict[str, Any]]) -> None:
    """What CreateTrafficMirrorFilterRule / DeleteTrafficMirrorFilterRule do to the filter."""
    moto_filter = ec2_backends[ACCOUNT][REGION].traffic_mirror_filters[filter_id]
    # moto's serialiser reads a shape's members from the object's snake_case attributes
    moto_filter.egress_filter_rules = [{**r, "TrafficMirrorFilterId": filter_id} for r in rules]


def version_in_use(c: Collector) -> dict[str, str]:
    """The filter_id and version labels of collector_filter_version_info."""
    for name in c.metrics():
        if name.startswith("collector_filter_version_info{"):
            labels = dict(
                part.split("=", 1) for part in name[name.index("{") + 1 : -1].split(",") if part
            )
            return {k: v.strip('"') for k, v in labels.items()}
    return {}


def counted(c: Collector, accepted: int, rejected: int) -> None:
    def done() -> bool:
        m = c.metrics()
        return (
            m.get('collector_filter_packets_total{action="accept"}', 0) == accepted
            and m.get('collector_packets_dropped_total{reason="filter_reject"}', 0) == rejected
        )

    wait_for(done, f"{accepted} accepted and {rejected} rejected")


def test_a_changed_rule_set_takes_effect_without_a_restart(
    ec2_endpoint: str, tmp_path: Path
) -> None:
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=ec2_endpoint)
    filter_id = ec2.create_traffic_mirror_filter(Description="filter A")["TrafficMirrorFilter"][
        "TrafficMirrorFilterId"
    ]
    set_rules(filter_id, NARROW)
    # as the stack's boot script does: describe-traffic-mirror-filters into a file
    described = ec2.describe_traffic_mirror_filters(TrafficMirrorFilterIds=[filter_id])
    described.pop("ResponseMetadata")
    (tmp_path / "filter-a.json").write_text(json.dumps(described))
    narrow_version = rules_version(rules_from_aws(described, filter_id, "f"))
    wide_version = rules_version(
        rules_from_aws(
            {
                "TrafficMirrorFilters": [
                    {"TrafficMirrorFilterId": filter_id, "EgressFilterRules": WIDE}
                ]
            },
            filter_id,
            "f",
        )
    )
    assert narrow_version != wide_version

    config = f"""
[aws]
region = "{REGION}"
follow_filters = true
filter_refresh_interval_s = 0.2

[flows]
active_timeout_s = 600
inactive_timeout_s = 600

[[sessions]]
vni = 100
name = "source-a"
interface_id = "eni-0aaaaaaaaaaaaaaaa"
addresses = ["{SOURCE}"]
filter = "filter-a"

[filters.filter-a]
aws_json = "filter-a.json"
filter_id = "{filter_id}"
"""
    env = {
        "AWS_ENDPOINT_URL": ec2_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    with Collector(tmp_path, "--log-format", "json", config=config, workers=2, env=env) as c:
        wait_for(
            lambda: c.metric("collector_filter_refreshes_total") >= 1, "a first filter refresh"
        )
        assert version_in_use(c) == {
            "filter": "filter-a",
            "filter_id": filter_id,
            "version": narrow_version,
        }
        pids = c.worker_pids()
        # the old rules keep 10.9.0.0/16 and reject the rest
        c.send(
            [tcp(100, SOURCE, "10.9.0.1", 40000, 443), tcp(100, SOURCE, "10.50.0.1", 40001, 443)]
        )
        counted(c, accepted=1, rejected=1)

        set_rules(filter_id, WIDE)  # the stack update widens filter A in AWS
        wait_for(
            lambda: version_in_use(c).get("version") == wide_version,
            "the widened rule set in use",
        )
        # the reload path: each worker logs that it applied the new rules
        wait_for(
            lambda: sum('"sessions reloaded"' in line for line in c.logs().splitlines()) == 2,
            "both workers applied the new rules",
        )
        # the same flow to 10.50/16, and a new one: both kept now; the excluded net still not
        c.send(
            [
                tcp(100, SOURCE, "10.50.0.1", 40001, 443),
                tcp(100, SOURCE, "10.60.0.1", 40002, 443),
                tcp(100, SOURCE, "10.99.0.1", 40003, 443),
            ]
        )
        counted(c, accepted=3, rejected=2)
        assert c.worker_pids() == pids  # no restart, no new worker
        assert c.metric("collector_filter_refresh_failures_total") == 0

        # a SIGHUP re-reads the file, whose copy of filter A is the boot's narrow one: the rules
        # followed from AWS stay in use
        c.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: sum('"sessions reloaded"' in line for line in c.logs().splitlines()) == 4,
            "both workers reloaded",
        )
        assert version_in_use(c)["version"] == wide_version
        c.send([tcp(100, SOURCE, "10.70.0.1", 40004, 443)])
        counted(c, accepted=4, rejected=2)
        assert c.stop() == 0
    kept = {r["dst_addr"] for r in c.records()}
    assert kept == {"10.9.0.1", "10.50.0.1", "10.60.0.1", "10.70.0.1"}


def test_a_failed_refresh_keeps_the_rules_in_use(ec2_endpoint: str, tmp_path: Path) -> None:
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=ec2_endpoint)
    filter_id = ec2.create_traffic_mirror_filter(Description="filter A")["TrafficMirrorFilter"][
        "TrafficMirrorFilterId"
    ]
    set_rules(filter_id, NARROW)
    described = ec2.describe_traffic_mirror_filters(TrafficMirrorFilterIds=[filter_id])
    described.pop("ResponseMetadata")
    (tmp_path / "filter-a.json").write_text(json.dumps(described))
    config = f"""
[aws]
region = "{REGION}"
follow_filters = true
filter_refresh_interval_s = 0.2

[[sessions]]
vni = 100
addresses = ["{SOURCE}"]
filter = "filter-a"

[filters.filter-a]
aws_json = "filter-a.json"
filter_id = "{filter_id}"
"""
    # the filter is deleted in AWS (or the role lost the permission): refreshes fail
    ec2_backends[ACCOUNT][REGION].traffic_mirror_filters.pop(filter_id)
    env = {
        "AWS_ENDPOINT_URL": ec2_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    with Collector(tmp_path, "--log-format", "json", config=config, env=env) as c:
        wait_for(
            lambda: c.metric("collector_filter_refresh_failures_total") >= 2,
            "failed refreshes counted",
        )
        assert version_in_use(c)["version"] == rules_version(
            rules_from_aws(described, filter_id, "f")
        )
        c.send(
            [tcp(100, SOURCE, "10.9.0.1", 40000, 443), tcp(100, SOURCE, "10.50.0.1", 40001, 443)]
        )
        counted(c, accepted=1, rejected=1)
        assert "mirror filter refresh failed" in c.logs()
        assert c.stop() == 0


# ------------------------------------------------------------------------- the follower in process


def file_config(tmp_path: Path, filter_id: str, inline: str = "") -> Config:
    path = tmp_path / "collector.toml"
    path.write_text(
        f"""
[[sessions]]
vni = 100
addresses = ["{SOURCE}"]
filter = "filter-a"

[filters.filter-a]
aws_json = "filter-a.json"
filter_id = "{filter_id}"
{inline}
"""
    )
    return load_config(str(path))


def test_follower_keeps_inline_rules_and_refuses_rules_that_clash(
    ec2_endpoint: str, tmp_path: Path
) -> None:
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=ec2_endpoint)
    filter_id = ec2.create_traffic_mirror_filter()["TrafficMirrorFilter"]["TrafficMirrorFilterId"]
    set_rules(filter_id, NARROW)
    described = ec2.describe_traffic_mirror_filters(TrafficMirrorFilterIds=[filter_id])
    described.pop("ResponseMetadata")
    (tmp_path / "filter-a.json").write_text(json.dumps(described))
    # an inline rule beyond AWS's quota: kept next to the followed ones
    inline = """
[[filters.filter-a.rules]]
direction = "egress"
rule_number = 500
action = "accept"
source_cidr = "0.0.0.0/0"
destination_cidr = "192.168.0.0/16"
"""
    config = file_config(tmp_path, filter_id, inline)
    follower = FilterFollower(AwsConfig(region=REGION), ec2)
    before = follower.versions(config)["filter-a"]
    assert not before.followed
    assert follower.refresh(config) is False  # AWS holds what the file holds
    assert follower.versions(config)["filter-a"].followed
    set_rules(filter_id, WIDE)
    assert follower.refresh(config) is True
    overlaid = follower.overlay(config).filters["filter-a"]
    assert (overlaid.aws_json, overlaid.filter_id) == (None, None)
    assert [r.rule_number for r in overlaid.rules] == [500, 10, 100]
    assert overlaid.rules[2].destination_cidr == "0.0.0.0/0"
    assert follower.refresh(config) is False  # no change, no reload

    # a rule number AWS now uses that the inline rules use too: refused, the rules in use stay
    set_rules(filter_id, [*WIDE, rule(500, "reject", "10.0.0.0/8")])
    assert follower.refresh(config) is False
    assert follower.failures == 1
    assert "500" in follower.last_error
    assert follower.overlay(config).filters["filter-a"].rules[2].destination_cidr == "0.0.0.0/0"

    # the file now names another filter (a SIGHUP): the file wins
    other = file_config(tmp_path, "tmf-0ffffffffffffffff", inline)
    assert follower.overlay(other).filters["filter-a"].filter_id == "tmf-0ffffffffffffffff"


def test_versions_do_not_depend_on_the_order_aws_lists_rules_in() -> None:
    rules = rules_from_aws(
        {"TrafficMirrorFilters": [{"TrafficMirrorFilterId": "tmf-1", "EgressFilterRules": WIDE}]},
        "tmf-1",
        "f",
    )
    assert rules_version(rules) == rules_version(list(reversed(rules)))
    assert rules_version(rules) != rules_version(rules[:1])


def test_following_without_a_region_is_a_config_error_before_any_worker(tmp_path: Path) -> None:
    (tmp_path / "filter-a.json").write_text(
        json.dumps({"TrafficMirrorFilters": [{"TrafficMirrorFilterId": "tmf-1"}]})
    )
    config = tmp_path / "collector.toml"
    config.write_text(
        """
[aws]
follow_filters = true

[filters.filter-a]
aws_json = "filter-a.json"
filter_id = "tmf-1"
"""
    )
    env = {k: v for k, v in clean_environ().items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = str(tmp_path / "no-aws-config")  # no region from a profile either
    vxlan_port = free_port(socket.SOCK_DGRAM)
    geneve_port = free_port(socket.SOCK_DGRAM)
    while geneve_port == vxlan_port:
        geneve_port = free_port(socket.SOCK_DGRAM)
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "collector",
            "run",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{vxlan_port}",
            "--geneve-listen",
            f"127.0.0.1:{geneve_port}",
            "--health",
            f"127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert "aws.region" in ran.stderr
    assert "Traceback" not in ran.stderr
    assert "worker started" not in ran.stdout + ran.stderr
