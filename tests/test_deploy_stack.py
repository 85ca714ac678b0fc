"""Facts of the CloudFormation stack, checked on the parsed template rendered for the parameter
sets an operator would pass (tests/cfn_template.py): each one is a trap an AWS operator would hit
on day one, or something ops expect from a deployment (issue: ops-grade deployment)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.cfn_template import (
    EXAMPLE_PARAMETERS,
    ROOT,
    SOURCE_STACK,
    SUBNET_ATTRIBUTES,
    Resolver,
    load_stack,
    parameter_defaults,
    user_data_source,
)

RUNBOOK = ROOT / "deploy" / "README.md"
READY = ROOT / "deploy" / "image" / "collector-ready"
NLB = {"TargetType": "network-load-balancer"}
ENI = {"TargetType": "network-interface"}
# The GWLB target with a spool volume of its own: the longest user data the stack renders.
GWLB_SPOOL = {
    "TargetType": "gwlb-endpoint",
    "SubnetACidr": "10.20.0.0/24",
    "SubnetBCidr": "10.20.1.0/24",
    "SpoolVolumeSize": "100",
}


def render(**overrides: str) -> Resolver:
    template = load_stack()
    parameters = {**parameter_defaults(template), **EXAMPLE_PARAMETERS, **overrides}
    return Resolver(template, parameters, SUBNET_ATTRIBUTES)


def one(resolver: Resolver, kind: str) -> dict[str, Any]:
    (resource,) = resolver.resources(kind).values()
    return resource["Properties"]


def _rules(resolver: Resolver, group: str, direction: str) -> list[dict[str, Any]]:
    """Every rule of a security group in one direction, inline or as a resource of its own."""
    rules = []
    for name, resource in resolver.resources().items():
        props = resource["Properties"]
        if resource["Type"] == "AWS::EC2::SecurityGroup" and name == group:
            rules += props.get(f"SecurityGroup{direction}", [])
        if (
            resource["Type"] == f"AWS::EC2::SecurityGroup{direction}"
            and props["GroupId"] == f"{group.lower()}-id"
        ):
            rules.append(props)
    return rules


def ingress_rules(resolver: Resolver, group: str) -> list[dict[str, Any]]:
    return _rules(resolver, group, "Ingress")


def egress_rules(resolver: Resolver, group: str) -> list[dict[str, Any]]:
    return _rules(resolver, group, "Egress")


def ports(rule: dict[str, Any]) -> tuple[str, int, int]:
    return rule["IpProtocol"], int(rule["FromPort"]), int(rule["ToPort"])


def duration_s(iso: str) -> int:
    match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?", iso)
    assert match, iso
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


# ------------------------------------------------------------------------- 1. rollback


def test_a_failed_first_deploy_can_roll_back() -> None:
    template = load_stack()
    assert template["Parameters"]["LoadBalancerDeletionProtection"]["Default"] == "false"
    attributes = {
        a["Key"]: a["Value"]
        for a in one(render(), "AWS::ElasticLoadBalancingV2::LoadBalancer")[
            "LoadBalancerAttributes"
        ]
    }
    assert attributes["deletion_protection.enabled"] == "false"
    assert attributes["load_balancing.cross_zone.enabled"] == "true"
    assert (
        "ROLLBACK_FAILED" in template["Parameters"]["LoadBalancerDeletionProtection"]["Description"]
    )


# ------------------------------------------------------------------------- 2. security groups


def test_load_balancer_is_created_with_its_security_group() -> None:
    resolver = render(**NLB)
    nlb = one(resolver, "AWS::ElasticLoadBalancingV2::LoadBalancer")
    assert nlb["SecurityGroups"] == ["loadbalancersecuritygroup-id"]
    assert nlb["EnforceSecurityGroupInboundRulesOnPrivateLinkTraffic"] == "on"
    inbound = ingress_rules(resolver, "LoadBalancerSecurityGroup")
    assert sorted((ports(r), r["CidrIp"]) for r in inbound) == [
        (("udp", 4789, 4789), "10.0.1.17/32"),
        (("udp", 4789, 4789), "10.0.2.31/32"),
    ]
    # Health checks obey the outbound rules: VXLAN and health checks to the collectors only.
    outbound = egress_rules(resolver, "LoadBalancerSecurityGroup")
    assert sorted((ports(r), r["DestinationSecurityGroupId"]) for r in outbound) == [
        (("tcp", 8080, 8080), "collectorsecuritygroup-id"),
        (("udp", 4789, 4789), "collectorsecuritygroup-id"),
    ]


def test_collectors_admit_only_the_load_balancer_and_a_named_scraper() -> None:
    template = load_stack()
    assert "VpcCidr" not in template["Parameters"]
    for scraper in ("", "sg-0fedcba9876543210"):
        resolver = render(**NLB, MetricsScraperSecurityGroupId=scraper)
        inbound = ingress_rules(resolver, "CollectorSecurityGroup")
        assert all("CidrIp" not in rule for rule in inbound), "no address range reaches a collector"
        sources = sorted((ports(r), r["SourceSecurityGroupId"]) for r in inbound)
        expected = [
            (("tcp", 8080, 8080), "loadbalancersecuritygroup-id"),
            (("udp", 4789, 4789), "loadbalancersecuritygroup-id"),
        ]
        if scraper:
            expected.insert(0, (("tcp", 8080, 8080), scraper))
        assert sources == sorted(expected)


def test_network_interface_target_admits_the_sources_cidrs() -> None:
    resolver = render(**ENI)
    inbound = ingress_rules(resolver, "CollectorSecurityGroup")
    assert sorted((ports(r), r["CidrIp"]) for r in inbound) == [
        (("udp", 4789, 4789), "10.0.1.17/32"),
        (("udp", 4789, 4789), "10.0.2.31/32"),
    ]
    # Sources sharing one CIDR: one rule (AWS refuses a duplicate).
    shared = render(**ENI, SourceBCidr="10.0.1.17/32")
    assert len(ingress_rules(shared, "CollectorSecurityGroup")) == 1


# ------------------------------------------------------------------------- 3. boot


def test_launch_hook_keeps_a_booting_instance_out_of_service_until_healthz() -> None:
    resolver = render(**NLB)
    group = one(resolver, "AWS::AutoScaling::AutoScalingGroup")
    hooks = {h["LifecycleTransition"]: h for h in group["LifecycleHookSpecificationList"]}
    launch = hooks["autoscaling:EC2_INSTANCE_LAUNCHING"]
    assert launch["LifecycleHookName"] == "collector-launch"
    assert launch["DefaultResult"] == "ABANDON"
    terminate = hooks["autoscaling:EC2_INSTANCE_TERMINATING"]
    assert terminate["LifecycleHookName"] == "collector-drain"

    # collector-ready completes the launch action with CONTINUE only after /healthz answered 200.
    ready = READY.read_text()
    healthz = ready.index('while code=$(healthz); [ "$code" != 200 ]; do')
    assert ready.index("hook CONTINUE") > healthz
    assert '--lifecycle-hook-name "$LAUNCH_HOOK_NAME"' in ready
    assert ready.index("signal 0") > ready.index("describe-target-health")
    script = resolver.resolve({"Fn::Sub": user_data_source(load_stack())})
    assert "LAUNCH_HOOK_NAME=collector-launch" in script
    assert script.rstrip().endswith("exec /opt/collector/bin/collector-ready")
    assert "--lifecycle-action-result ABANDON" in script


def test_timeouts_are_sized_to_the_boot() -> None:
    template = load_stack()
    resource = template["Resources"]["CollectorGroup"]
    resolver = render(**NLB)
    group = one(resolver, "AWS::AutoScaling::AutoScalingGroup")
    target_group = one(resolver, "AWS::ElasticLoadBalancingV2::TargetGroup")
    launch = next(
        h
        for h in group["LifecycleHookSpecificationList"]
        if h["LifecycleHookName"] == "collector-launch"
    )
    ready = READY.read_text()
    ready_timeout = int(re.search(r"READY_TIMEOUT_S \|\| echo (\d+)", ready).group(1))
    target_timeout = int(re.search(r"TARGET_TIMEOUT_S \|\| echo (\d+)", ready).group(1))
    # The hook outlasts collector-ready's own wait for /healthz (which then abandons by itself).
    assert int(launch["HeartbeatTimeout"]) > ready_timeout
    # The grace period starts once the hook is complete: it covers the load balancer's
    # registration and HealthyThresholdCount healthy checks, not the install.
    first_healthy = int(target_group["HealthyThresholdCount"]) * int(
        target_group["HealthCheckIntervalSeconds"]
    )
    assert first_healthy < int(group["HealthCheckGracePeriod"]) <= target_timeout
    # CloudFormation waits for the hook and for the load balancer's verdict.
    creation = duration_s(resource["CreationPolicy"]["ResourceSignal"]["Timeout"])
    pause = duration_s(resource["UpdatePolicy"]["AutoScalingRollingUpdate"]["PauseTime"])
    assert min(creation, pause) >= int(launch["HeartbeatTimeout"]) + target_timeout


def test_baked_image_boots_without_installing() -> None:
    plain = render(BakeImage="false")
    assert not plain.resources("AWS::ImageBuilder::Image")
    image = one(plain, "AWS::EC2::LaunchTemplate")["LaunchTemplateData"]["ImageId"]
    assert (
        image
        == "{{resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64}}"
    )

    baked = render(BakeImage="true")
    assert (
        one(baked, "AWS::EC2::LaunchTemplate")["LaunchTemplateData"]["ImageId"]
        == "collectorimage-imageid"
    )
    recipe = one(baked, "AWS::ImageBuilder::ImageRecipe")
    assert (
        recipe["ParentImage"]
        == "ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
    )
    component = one(baked, "AWS::ImageBuilder::Component")
    assert "/root/collector-bundle/install-collector" in component["Data"]
    assert "sha256sum --check --strict" in component["Data"]
    assert one(baked, "AWS::ImageBuilder::Image")["ImageRecipeArn"] == "collectorimagerecipe-id"
    arm = render(BakeImage="true", Architecture="arm64", InstanceType="c7g.large")
    assert one(arm, "AWS::ImageBuilder::ImageRecipe")["ParentImage"].endswith(
        "kernel-default-arm64"
    )
    # An image baked elsewhere is booted as given.
    other = render(ImageId="ami-0123456789abcdef0", BundleS3Uri="", BundleSha256="")
    assert (
        one(other, "AWS::EC2::LaunchTemplate")["LaunchTemplateData"]["ImageId"]
        == "ami-0123456789abcdef0"
    )
    assert not other.failed_rules()


# ------------------------------------------------------------------------- 4. rolling updates


def test_rolling_updates_suspend_what_aws_recommends() -> None:
    update = load_stack()["Resources"]["CollectorGroup"]["UpdatePolicy"]["AutoScalingRollingUpdate"]
    assert update["SuspendProcesses"] == [
        "HealthCheck",
        "ReplaceUnhealthy",
        "AZRebalance",
        "AlarmNotification",
        "ScheduledActions",
    ]
    assert update["WaitOnResourceSignals"] is True
    assert update["MaxBatchSize"] == 1


# ------------------------------------------------------------------------- 5. session numbers


def test_one_session_number_per_source_with_precedence_explained() -> None:
    template = load_stack()
    parameters = template["Parameters"]
    assert "SessionNumber" not in parameters
    for source in ("A", "B"):
        spec = parameters[f"Source{source}SessionNumber"]
        assert (spec["MinValue"], spec["MaxValue"]) == (1, 32766)
    assert "lowest-numbered session" in parameters["SourceASessionNumber"]["Description"]
    resolver = render(SourceASessionNumber="3", SourceBSessionNumber="7")
    sessions = resolver.resources("AWS::EC2::TrafficMirrorSession")
    assert sessions["MirrorSessionA"]["Properties"]["SessionNumber"] == "3"
    assert sessions["MirrorSessionB"]["Properties"]["SessionNumber"] == "7"
    runbook = RUNBOOK.read_text()
    assert "SourceASessionNumber" in runbook
    assert "lowest-numbered" in runbook


# ------------------------------------------------------------------------- 6. packet length


def test_packet_length_keeps_the_transport_header() -> None:
    spec = load_stack()["Parameters"]["PacketLength"]
    assert (spec["MinValue"], spec["MaxValue"], spec["Default"]) == (64, 8500, 8500)
    assert "8446" in spec["Description"]
    assert "8446" in RUNBOOK.read_text()


# ------------------------------------------------------------------------- 7. Kafka network


def test_kafka_rules_reference_the_brokers_security_group() -> None:
    resolver = render()
    kafka = [
        r
        for r in egress_rules(resolver, "CollectorSecurityGroup")
        if ports(r) == ("tcp", 9092, 9098)
    ]
    assert kafka == [{**kafka[0], "DestinationSecurityGroupId": "sg-0123456789abcdef0"}]
    assert "CidrIp" not in kafka[0]
    (broker,) = resolver.resources("AWS::EC2::SecurityGroupIngress").values() and [
        r["Properties"]
        for r in resolver.resources("AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == "sg-0123456789abcdef0"
    ]
    assert ports(broker) == ("tcp", 9092, 9098)
    assert broker["SourceSecurityGroupId"] == "collectorsecuritygroup-id"
    # Everything else the collectors send is HTTPS (AWS APIs, repositories).
    others = [ports(r) for r in egress_rules(resolver, "CollectorSecurityGroup") if r not in kafka]
    assert others == [("tcp", 443, 443)]

    by_cidr = render(KafkaBrokerSecurityGroupId="", KafkaBrokerCidr="172.16.0.0/16")
    kafka = [
        r
        for r in egress_rules(by_cidr, "CollectorSecurityGroup")
        if ports(r) == ("tcp", 9092, 9098)
    ]
    assert [r["CidrIp"] for r in kafka] == ["172.16.0.0/16"]
    assert not by_cidr.failed_rules()
    assert render(KafkaBrokerSecurityGroupId="").failed_rules()
    assert render(KafkaBrokerCidr="172.16.0.0/16").failed_rules()


# ------------------------------------------------------------------------- 8. parameter checks


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"FleetMin": "3", "FleetMax": "3"}, "FleetMax must be above FleetMin"),
        ({"FleetMin": "4", "FleetMax": "2"}, "FleetMax must be above FleetMin"),
        ({"FleetMin": "2", "FleetMax": "6", "FleetDesired": "1"}, "at least FleetMin"),
        ({"FleetMin": "2", "FleetMax": "6", "FleetDesired": "7"}, "at most FleetMax"),
        ({"Architecture": "arm64", "InstanceType": "c5.large"}, "Graviton instance type"),
        ({"Architecture": "x86_64", "InstanceType": "c7g.large"}, "needs Architecture arm64"),
        ({"SourceBEniId": "eni-0123456789abcdef0"}, "different ENIs"),
        ({"SourceBVni": "4001"}, "different VNIs"),
        ({"BundleS3Uri": ""}, "BundleS3Uri is needed"),
        ({"BakeImage": "true", "ImageId": "ami-0123456789abcdef0"}, "leave ImageId empty"),
    ],
)
def test_rules_refuse_bad_parameters(overrides: dict[str, str], complaint: str) -> None:
    failed = render(**overrides).failed_rules()
    assert any(complaint in message for message in failed), failed


def test_rules_refuse_two_subnets_in_one_zone() -> None:
    template = load_stack()
    parameters = {**parameter_defaults(template), **EXAMPLE_PARAMETERS}
    same_zone = {**SUBNET_ATTRIBUTES, ("SubnetB", "AvailabilityZone"): "eu-west-1a"}
    failed = Resolver(template, parameters, same_zone).failed_rules()
    assert any("different Availability Zones" in m for m in failed), failed
    other_vpc = {**SUBNET_ATTRIBUTES, ("SubnetB", "VpcId"): "vpc-0fedcba9876543210"}
    assert any(
        "must be in VpcId" in m for m in Resolver(template, parameters, other_vpc).failed_rules()
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"FleetMin": "1", "FleetMax": "2", "FleetDesired": "2"},
        {"FleetMin": "10", "FleetMax": "20", "FleetDesired": "15"},
        {"Architecture": "arm64", "InstanceType": "c7gn.xlarge"},
        {**ENI},
    ],
)
def test_rules_accept_good_parameters(overrides: dict[str, str]) -> None:
    assert render(**overrides).failed_rules() == []


def test_every_fleet_size_the_parameters_allow_has_a_rule() -> None:
    template = load_stack()
    mins = template["Parameters"]["FleetMin"]["AllowedValues"]
    maxes = template["Parameters"]["FleetMax"]["AllowedValues"]
    for low in mins:
        for high in maxes:
            failed = render(FleetMin=str(low), FleetMax=str(high)).failed_rules()
            assert (int(low) >= int(high)) == any("above FleetMin" in m for m in failed), (
                low,
                high,
            )


# ------------------------------------------------------------------------- ENI target


def test_network_interface_target_is_one_collector_with_the_same_filter_and_sessions() -> None:
    resolver = render(**ENI)
    assert not resolver.resources("AWS::ElasticLoadBalancingV2::LoadBalancer")
    assert not resolver.resources("AWS::ElasticLoadBalancingV2::TargetGroup")
    assert not resolver.resources("AWS::AutoScaling::ScalingPolicy")
    target = one(resolver, "AWS::EC2::TrafficMirrorTarget")
    assert target == {**target, "NetworkInterfaceId": "collectortargeteni-id"}
    assert "NetworkLoadBalancerArn" not in target
    group = one(resolver, "AWS::AutoScaling::AutoScalingGroup")
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (1, 1, 1)
    assert group["VPCZoneIdentifier"] == ["subnet-0aaaaaaaaaaaaaaaa"]
    assert group["HealthCheckType"] == "EC2"
    assert "TargetGroupARNs" not in group
    assert one(resolver, "AWS::EC2::NetworkInterface")["SubnetId"] == "subnet-0aaaaaaaaaaaaaaaa"
    # The replacement must attach the ENI the old instance holds: the old one leaves first.
    update = load_stack()["Resources"]["CollectorGroup"]["UpdatePolicy"]["AutoScalingRollingUpdate"]
    assert resolver.resolve(update["MinInstancesInService"]) == 0
    script = resolver.resolve({"Fn::Sub": user_data_source(load_stack())})
    assert "TARGET_ENI=collectortargeteni-id" in script
    assert "attach-network-interface" in READY.read_text()
    for name in ("MirrorSessionA", "MirrorSessionB"):
        props = resolver.resources("AWS::EC2::TrafficMirrorSession")[name]["Properties"]
        assert props["TrafficMirrorTargetId"] == "mirrortargetd-id"
        assert props["TrafficMirrorFilterId"] == "tmf-0123456789abcdef0"
    nlb = render(**NLB)
    assert nlb.resources("AWS::ElasticLoadBalancingV2::LoadBalancer")
    assert one(nlb, "AWS::EC2::TrafficMirrorTarget")["NetworkLoadBalancerArn"] == "loadbalancer-id"
    runbook = RUNBOOK.read_text()
    assert "network-interface" in runbook
    assert "truncated" in runbook


def test_sessions_wait_for_the_target_in_both_modes() -> None:
    template = load_stack()
    for mode in (NLB, ENI):
        resolver = render(**mode)
        ready = resolver.resources("AWS::CloudFormation::WaitConditionHandle")["MirrorTargetReady"]
        metadata = resolver.resolve(ready["Metadata"])
        assert metadata["Collectors"] == "collectorgroup-id"
        assert metadata["Listener"] == ("vxlanlistener-id" if mode is NLB else "none")
    for name in ("MirrorSessionA", "MirrorSessionB"):
        assert template["Resources"][name]["DependsOn"] == "MirrorTargetReady"


# ------------------------------------------------------------------------- alarms, scaling, outputs


def _alarm_metrics(resolver: Resolver) -> set[tuple[str, str]]:
    metrics = set()
    for resource in resolver.resources("AWS::CloudWatch::Alarm").values():
        props = resource["Properties"]
        assert props["AlarmActions"] == ["alarmtopic-id"]
        if "MetricName" in props:
            metrics.add((props["Namespace"], props["MetricName"]))
        for query in props.get("Metrics", []):
            if "MetricStat" in query:
                metric = query["MetricStat"]["Metric"]
                metrics.add((metric["Namespace"], metric["MetricName"]))
    return metrics


def test_alarms_cover_what_ops_watch() -> None:
    metrics = _alarm_metrics(render(**NLB))
    assert {
        ("AWS/NetworkELB", "HealthyHostCount"),
        ("AWS/NetworkELB", "UnHealthyHostCount"),
        ("AWS/NetworkELB", "ProcessedPackets"),
        ("AWS/NetworkELB", "ActiveFlowCount_UDP"),
        ("AWS/EC2", "NetworkPacketsSkipMirrorIn"),
        ("AWS/EC2", "NetworkPacketsSkipMirrorOut"),
        ("AWS/EC2", "NetworkSkipMirrorIn"),
        ("AWS/EC2", "NetworkSkipMirrorOut"),
        ("VpcMirrorCollector", "collector_datagrams_received_total"),
        ("VpcMirrorCollector", "collector_kernel_drops_total"),
    } <= metrics
    resolver = render(**NLB)
    healthy = resolver.resources("AWS::CloudWatch::Alarm")["HealthyHostsBelowMinimumAlarm"][
        "Properties"
    ]
    assert healthy["Threshold"] == "2"
    assert healthy["ComparisonOperator"] == "LessThanThreshold"
    group = one(resolver, "AWS::AutoScaling::AutoScalingGroup")
    (notification,) = group["NotificationConfigurations"]
    assert notification["TopicARN"] == "alarmtopic-id"
    assert "autoscaling:EC2_INSTANCE_LAUNCH_ERROR" in notification["NotificationTypes"]
    # Without the sources' instance ids there is nothing to watch on them.
    quiet = render(**NLB, SourceAInstanceId="")
    assert "SourceASkipMirrorAlarm" not in quiet.resources("AWS::CloudWatch::Alarm")
    # Where they apply: a network-interface target has no load balancer metrics.
    eni = _alarm_metrics(render(**ENI))
    assert not {m for m in eni if m[0] == "AWS/NetworkELB"}
    assert ("VpcMirrorCollector", "collector_healthy") in eni
    topic = one(resolver, "AWS::SNS::Topic")
    assert topic["KmsMasterKeyId"] == "opskey-id"
    assert (
        one(render(AlarmEmail="ops@example.com"), "AWS::SNS::Subscription")["Endpoint"]
        == "ops@example.com"
    )


def test_scaling_tracks_datagrams_per_collector() -> None:
    policies = render(**NLB).resources("AWS::AutoScaling::ScalingPolicy")
    datagrams = policies["DatagramsTargetTracking"]["Properties"]["TargetTrackingConfiguration"]
    assert datagrams["TargetValue"] == "200000"
    queries = {q["Id"]: q for q in datagrams["CustomizedMetricSpecification"]["Metrics"]}
    stat = queries["datagrams"]["MetricStat"]
    assert stat["Stat"] == "Average"
    assert stat["Metric"]["MetricName"] == "collector_datagrams_received_total"
    assert stat["Metric"]["Dimensions"] == [{"Name": "Fleet", "Value": "mirror-test"}]
    # The agent publishes the counter's delta per 60 s scrape: per second is that over 60.
    assert queries["per_second"]["Expression"] == "datagrams / 60"
    assert (
        "scrape_interval: 60s" in (ROOT / "deploy" / "cloudwatch" / "prometheus.yaml").read_text()
    )
    assert "CpuTargetTracking" in policies


def test_outputs_name_the_role_and_the_load_balancers_security_group() -> None:
    outputs = load_stack()["Outputs"]
    assert outputs["CollectorRoleArn"]["Value"] == {"Fn::GetAtt": ["CollectorRole", "Arn"]}
    assert outputs["LoadBalancerSecurityGroupId"]["Value"] == {"Ref": "LoadBalancerSecurityGroup"}
    assert outputs["AlarmTopicArn"]["Value"] == {"Ref": "AlarmTopic"}
    for name, output in outputs.items():
        assert output.get("Description"), name


# ------------------------------------------------------------------------- 9. runbook


def test_runbook_corrections() -> None:
    runbook = " ".join(RUNBOOK.read_text().split())
    assert "any Nitro" not in runbook
    assert "Nitro instance type" not in runbook
    for endpoint in (
        "com.amazonaws.REGION.cloudformation",
        "com.amazonaws.REGION.s3",
        "com.amazonaws.REGION.ssm",
    ):
        assert endpoint in runbook, endpoint
    for heading in ("### A failed first deploy", "### Rolling back a bad bundle"):
        assert heading in runbook
    assert "sysctl.d/90-collector.conf" in runbook
    # The scale-in text says what drain_s does and does not do.
    assert "waits for the delay to end before" in runbook
    assert "containers inherit the host's ceiling" in runbook


# ------------------------------------------------------------------------- the boot script


@pytest.mark.parametrize(
    "overrides",
    [
        NLB,
        ENI,
        {
            "KafkaAuth": "sasl-scram",
            "KafkaScramSecretArn": (
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:AmazonMSK_collector-AbCdEf"
            ),
        },
        GWLB_SPOOL,
    ],
    ids=["nlb", "eni", "scram", "gwlb-spool-volume"],
)
def test_user_data_is_valid_bash_within_the_ec2_limit(
    overrides: dict[str, str], tmp_path: Path
) -> None:
    resolver = render(**overrides)
    script = resolver.resolve({"Fn::Sub": user_data_source(load_stack())})
    # EC2 takes at most 16 KB of user data before base64.
    assert len(script.encode()) <= 16384
    path = tmp_path / "user-data"
    path.write_text(script)
    checked = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    assert script.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in script


SCRIPTS = [
    ROOT / "deploy" / "image" / name
    for name in (
        "install-collector",
        "collector-ready",
        "collector-cloudwatch-setup",
        "build-bundle",
    )
] + [ROOT / "deploy" / "systemd" / "collector-lifecycle"]


def test_boot_scripts_and_user_data_pass_shellcheck(tmp_path: Path) -> None:
    rendered = []
    for mode in (NLB, ENI, GWLB_SPOOL):
        script = render(
            **mode,
            KafkaAuth="sasl-scram",
            KafkaScramSecretArn=(
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:AmazonMSK_collector-AbCdEf"
            ),
        ).resolve({"Fn::Sub": user_data_source(load_stack())})
        path = tmp_path / f"user-data-{mode['TargetType']}"
        path.write_text(script)
        rendered.append(path)
    result = subprocess.run(
        ["shellcheck", "--severity=info", *map(str, SCRIPTS + rendered)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _checkov_skips(template: dict[str, Any]) -> dict[tuple[str, str], str]:
    skips = {}
    for name, resource in template["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            skips[(skip["id"], name)] = skip.get("comment", "")
    return skips


def test_checkov_passes_and_every_skip_is_justified_and_used() -> None:
    checkov = ROOT / ".cache" / "checkov" / "bin" / "checkov"
    assert checkov.exists(), "run `make lint-deploy` (it installs checkov into .cache/checkov)"
    result = subprocess.run(
        [
            str(checkov),
            "--skip-download",
            "--framework",
            "cloudformation",
            "-o",
            "json",
            "-f",
            str(ROOT / "deploy" / "cloudformation" / "collector-stack.yaml"),
            "-f",
            str(SOURCE_STACK),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={"BC_SKIP_MAPPING": "TRUE", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    report = json.loads(result.stdout)
    # both templates parsed; checkov has checks for none of the source stack's resource types
    # (endpoint, mirror target, filter, rules, sessions), so it needs no skip either
    assert report["summary"]["parsing_errors"] == 0
    assert not _checkov_skips(load_stack(SOURCE_STACK)), "the source stack needs no skip"
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert result.returncode == 0, failed
    assert not failed
    skips = _checkov_skips(load_stack())
    assert skips
    for (check, resource), comment in skips.items():
        assert len(comment.split()) >= 10, f"{check} on {resource}: say why it is skipped"
    skipped = {
        (c["check_id"], c["resource"].rsplit(".", 1)[-1])
        for c in report["results"]["skipped_checks"]
    }
    assert skipped == set(skips), "a skip in the template that checkov no longer raises: remove it"
