"""The traps a first deploy walked into (issue 23, part C), each checked on the stack as rendered
for an operator's parameters (tests/cfn_template.py). The collector side of each trap is tested
where it lives: the filter refresh in test_filter_refresh.py, the readiness wait in
test_deploy_ready.py, the silent-session alert in deploy/prometheus/alerts_test.yml."""

from __future__ import annotations

import json
import re

import pytest

from tests.cfn_template import ROOT, heredoc, load_stack, user_data_source
from tests.test_deploy_gwlb import GWLB
from tests.test_deploy_stack import render


def collector_toml(**overrides: str) -> str:
    script = render(**overrides).resolve({"Fn::Sub": user_data_source(load_stack())})
    return heredoc(script, "/etc/collector/collector.toml")


# ------------------------------------------------------------------------- 1. a failed first deploy


def test_log_groups_and_their_key_outlive_a_rollback_under_names_of_their_own() -> None:
    template = load_stack()
    resources = template["Resources"]
    groups = [n for n, r in resources.items() if r["Type"] == "AWS::Logs::LogGroup"]
    assert sorted(groups) == ["BootstrapLogGroup", "MetricsLogGroup", "SystemLogGroup"]
    for name in [*groups, "OpsKey"]:  # without the key the kept logs cannot be read
        assert resources[name]["DeletionPolicy"] == "Retain", name
        assert resources[name]["UpdateReplacePolicy"] == "Retain", name
    resolver = render()
    names = sorted(
        r["Properties"]["LogGroupName"] for r in resolver.resources("AWS::Logs::LogGroup").values()
    )
    # the stack's name, then the first part of its id: a new stack of the same name does not
    # collide with the groups a deleted one left behind
    assert names == [
        f"/vpc-mirror-collector/mirror-test/0a1b2c3d/{kind}"
        for kind in ("bootstrap", "metrics", "system")
    ]
    output = resolver.resolve(template["Outputs"]["LogGroupPrefix"]["Value"])
    assert output == "/vpc-mirror-collector/mirror-test/0a1b2c3d/"


# ------------------------------------------------------------------------- 2. a silent source


def test_each_source_has_a_silent_alarm_on_its_sessions_count() -> None:
    resolver = render()
    alarms = resolver.resources("AWS::CloudWatch::Alarm")
    toml = collector_toml()
    for source in ("A", "B"):
        alarm = alarms[f"Source{source}SilentAlarm"]["Properties"]
        assert alarm["MetricName"] == "collector_session_datagrams_total"
        dims = {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
        assert dims == {"Fleet": "mirror-test", "session": f"source-{source.lower()}"}
        # the session label is the name the stack gives the session in the collector's config
        assert f'name = "source-{source.lower()}"' in toml
        assert (alarm["Period"] * alarm["EvaluationPeriods"]) == 15 * 60
        assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("LessThanThreshold", 1)
        # no series yet (never counted) says nothing; a silent source stays in alarm
        assert alarm["TreatMissingData"] == "ignore"


# ------------------------------------------------------------------------- 3. the filter follows AWS


def test_stack_config_follows_filter_a_in_aws() -> None:
    toml = collector_toml()
    aws = toml[toml.index("[aws]") :].split("\n[", 1)[0]
    assert re.search(r"^follow_filters = true$", aws, re.MULTILINE)
    assert 'filter_id = "tmf-0123456789abcdef0"' in toml
    statements = render().resources("AWS::IAM::Role")["CollectorRole"]["Properties"]["Policies"]
    actions = {
        a
        for p in statements
        for st in p["PolicyDocument"]["Statement"]
        for a in st.get("Action", [])
    }
    assert "ec2:DescribeTrafficMirrorFilters" in actions


# ------------------------------------------------------------------------- 4. resource order


@pytest.mark.parametrize(
    ("mode", "listener"),
    [
        ({"TargetType": "nlb"}, "vxlanlistener-id"),
        (GWLB, "genevelistener-id"),
        ({"TargetType": "eni"}, "none"),
    ],
    ids=["nlb", "gwlb-endpoint", "eni"],
)
def test_the_group_starts_after_the_listener_of_its_load_balancer(
    mode: dict[str, str], listener: str
) -> None:
    template = load_stack()
    assert template["Resources"]["CollectorGroup"]["DependsOn"] == "LoadBalancerReady"
    resolver = render(**mode)
    ready = resolver.resources("AWS::CloudFormation::WaitConditionHandle")["LoadBalancerReady"]
    assert resolver.resolve(ready["Metadata"]) == {"Listener": listener}


# ------------------------------------------------------------------------- 5. the spool's volume


@pytest.mark.parametrize(("size", "mount"), [("0", "/"), ("200", "/var/lib/collector")])
def test_spool_is_sized_from_its_volume_which_is_watched(size: str, mount: str) -> None:
    resolver = render(SpoolVolumeSize=size)
    data = resolver.resources("AWS::EC2::LaunchTemplate")["CollectorLaunchTemplate"]["Properties"]
    devices = {d["DeviceName"]: d["Ebs"] for d in data["LaunchTemplateData"]["BlockDeviceMappings"]}
    if size == "0":
        assert list(devices) == ["/dev/xvda"]
    else:
        assert devices["/dev/xvdb"]["VolumeSize"] == "200"
        assert devices["/dev/xvdb"]["Encrypted"] is True
    script = resolver.resolve({"Fn::Sub": user_data_source(load_stack())})
    assert f"SPOOL_MOUNT={mount}" in script
    assert ("spool_device='/dev/xvdb'" in script) == (size != "0")
    # every worker's share of the volume goes to the collector, which refuses one that cannot fit
    assert (
        'echo "COLLECTOR_KAFKA_SPOOL_MAX_BYTES=$spool_max_bytes" >> /etc/collector/collector.env'
        in script
    )
    assert script.index("spool_max_bytes=$(( spool_bytes / $(nproc) ))") < script.index(
        "COLLECTOR_KAFKA_SPOOL_MAX_BYTES"
    )
    alarm = resolver.resources("AWS::CloudWatch::Alarm")["SpoolVolumeFreeAlarm"]["Properties"]
    assert alarm["MetricName"] == "disk_used_percent"
    dims = {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
    assert dims == {"AutoScalingGroupName": "mirror-test-collectors", "path": mount}


def test_cloudwatch_agent_publishes_the_spool_volume_the_alarm_reads() -> None:
    agent = json.loads(
        (ROOT / "deploy" / "cloudwatch" / "amazon-cloudwatch-agent.json").read_text()
    )
    metrics = agent["metrics"]
    alarm = load_stack()["Resources"]["SpoolVolumeFreeAlarm"]["Properties"]
    assert metrics["namespace"] == alarm["Namespace"]
    assert metrics["metrics_collected"]["disk"]["measurement"] == ["used_percent"]
    assert metrics["metrics_collected"]["disk"]["resources"] == ["@SPOOL_MOUNT@"]
    assert [d["Name"] for d in alarm["Dimensions"]] in metrics["aggregation_dimensions"]
    assert metrics["append_dimensions"] == {"AutoScalingGroupName": "${aws:AutoScalingGroupName}"}
    setup = (ROOT / "deploy" / "image" / "collector-cloudwatch-setup").read_text()
    assert "s|@SPOOL_MOUNT@|${SPOOL_MOUNT:-/}|g" in setup


# ------------------------------------------------------------------------- 6. eni mode heals itself


@pytest.mark.parametrize(("mode", "after"), [("eni", "300"), ("nlb", ""), ("gwlb-endpoint", "")])
def test_only_an_eni_target_checks_its_own_health(mode: str, after: str) -> None:
    overrides = GWLB if mode == "gwlb-endpoint" else {"TargetType": mode}
    resolver = render(**overrides)
    script = resolver.resolve({"Fn::Sub": user_data_source(load_stack())})
    env = heredoc(script, "/etc/collector/lifecycle.env")
    assert f"REPLACE_UNHEALTHY_S={after}" in env.splitlines()
    group = resolver.resources("AWS::AutoScaling::AutoScalingGroup")["CollectorGroup"]
    # a load balancer's health check replaces an unhealthy collector; an ENI target has none
    assert group["Properties"]["HealthCheckType"] == ("EC2" if mode == "eni" else "ELB")
    role = resolver.resources("AWS::IAM::Role")["CollectorRole"]["Properties"]
    (lifecycle,) = [p for p in role["Policies"] if p["PolicyName"] == "lifecycle"]
    (statement,) = lifecycle["PolicyDocument"]["Statement"]
    assert "autoscaling:SetInstanceHealth" in statement["Action"]
    assert statement["Resource"].endswith("autoScalingGroupName/mirror-test-collectors")
