"""The Gateway Load Balancer deployment: TargetType gwlb-endpoint in collector-stack.yaml and the
source side in another VPC or account (mirror-source-stack.yaml), checked on the parsed templates
rendered for the parameters an operator would pass (tests/cfn_template.py). cfn-lint and checkov
run on both templates in test_deploy.py / test_deploy_stack.py and ``make lint-deploy``."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.cfn_template import (
    EXAMPLE_PARAMETERS,
    ROOT,
    SOURCE_STACK,
    SUBNET_ATTRIBUTES,
    Resolver,
    heredoc,
    load_stack,
    parameter_defaults,
    user_data_source,
)
from tests.test_deploy_stack import egress_rules, ingress_rules, one, ports, render

GWLB = {
    "TargetType": "gwlb-endpoint",
    "SubnetACidr": "10.20.0.0/24",
    "SubnetBCidr": "10.20.1.0/24",
    "GwlbAllowedPrincipals": "arn:aws:iam::111111111111:root,arn:aws:iam::222222222222:root",
}
OWN_ACCOUNT = "arn:aws:iam::123456789012:root"

SOURCE_PARAMETERS = {
    "EndpointServiceName": "com.amazonaws.vpce.eu-west-1.vpce-svc-0123456789abcdef0",
    "VpcId": "vpc-0aaaaaaaaaaaaaaa1",
    "EndpointSubnet": "subnet-0ccccccccccccccc1",
    "SourceAEniId": "eni-0aaaaaaaaaaaaaaa1",
    "SourceAVni": "110001",
    "SourceBEniId": "eni-0aaaaaaaaaaaaaaa2",
    "SourceBVni": "110002",
}
SOURCE_ATTRIBUTES = {("EndpointSubnet", "VpcId"): "vpc-0aaaaaaaaaaaaaaa1"}


def render_source(**overrides: str) -> Resolver:
    template = load_stack(SOURCE_STACK)
    parameters = {**parameter_defaults(template), **SOURCE_PARAMETERS, **overrides}
    return Resolver(template, parameters, SOURCE_ATTRIBUTES)


def by_name(resolver: Resolver, kind: str) -> dict[str, dict[str, Any]]:
    return {name: r["Properties"] for name, r in resolver.resources(kind).items()}


def attributes(props: dict[str, Any], key: str) -> dict[str, str]:
    return {a["Key"]: str(a["Value"]) for a in props[key]}


def test_target_type_offers_the_three_targets_and_keeps_the_former_names() -> None:
    spec = load_stack()["Parameters"]["TargetType"]
    assert spec["Default"] == "nlb"
    assert set(spec["AllowedValues"]) == {
        "nlb",
        "eni",
        "gwlb-endpoint",
        "network-load-balancer",
        "network-interface",
    }
    # A stack deployed with a former name renders exactly what the new name renders.
    for old, new in (("network-load-balancer", "nlb"), ("network-interface", "eni")):
        assert render(TargetType=old).resources() == render(TargetType=new).resources()


def test_gateway_load_balancer_forwards_geneve_6081_health_checked_on_healthz() -> None:
    resolver = render(**GWLB)
    (lb,) = by_name(resolver, "AWS::ElasticLoadBalancingV2::LoadBalancer").values()
    assert lb["Type"] == "gateway"
    assert lb["Subnets"] == ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
    assert "SecurityGroups" not in lb  # a Gateway Load Balancer takes none
    assert attributes(lb, "LoadBalancerAttributes")["load_balancing.cross_zone.enabled"] == "true"

    (group,) = by_name(resolver, "AWS::ElasticLoadBalancingV2::TargetGroup").values()
    assert (group["Protocol"], group["Port"], group["TargetType"]) == ("GENEVE", 6081, "instance")
    assert (group["HealthCheckProtocol"], group["HealthCheckPort"], group["HealthCheckPath"]) == (
        "HTTP",
        "8080",
        "/healthz",
    )
    assert group["Matcher"] == {"HttpCode": "200"}
    target_attributes = attributes(group, "TargetGroupAttributes")
    assert target_attributes["deregistration_delay.timeout_seconds"] == "30"
    # AWS wants the two failover attributes set together; flows of a dead collector move on.
    assert target_attributes["target_failover.on_deregistration"] == "rebalance"
    assert target_attributes["target_failover.on_unhealthy"] == "rebalance"

    (listener,) = by_name(resolver, "AWS::ElasticLoadBalancingV2::Listener").values()
    assert listener["LoadBalancerArn"] == "gatewayloadbalancer-id"
    assert "Protocol" not in listener and "Port" not in listener
    assert listener["DefaultActions"] == [
        {"Type": "forward", "TargetGroupArn": "genevetargetgroup-id"}
    ]

    asg = one(resolver, "AWS::AutoScaling::AutoScalingGroup")
    assert asg["TargetGroupARNs"] == ["genevetargetgroup-id"]
    assert asg["HealthCheckType"] == "ELB"
    assert (asg["MinSize"], asg["MaxSize"]) == ("2", "6")
    assert set(by_name(resolver, "AWS::AutoScaling::ScalingPolicy")) == {
        "DatagramsTargetTracking",
        "CpuTargetTracking",
    }


def test_endpoint_service_endpoint_and_mirror_target_are_wired() -> None:
    resolver = render(**GWLB)
    service = one(resolver, "AWS::EC2::VPCEndpointService")
    assert service["GatewayLoadBalancerArns"] == ["gatewayloadbalancer-id"]
    assert service["AcceptanceRequired"] is False

    permissions = one(resolver, "AWS::EC2::VPCEndpointServicePermissions")
    assert permissions["ServiceId"] == "gwlbendpointservice-id"
    assert permissions["AllowedPrincipals"] == [
        OWN_ACCOUNT,
        "arn:aws:iam::111111111111:root",
        "arn:aws:iam::222222222222:root",
    ]
    # No consumer named: this account alone.
    alone = render(**{**GWLB, "GwlbAllowedPrincipals": ""})
    assert one(alone, "AWS::EC2::VPCEndpointServicePermissions")["AllowedPrincipals"] == [
        OWN_ACCOUNT
    ]

    endpoint = one(resolver, "AWS::EC2::VPCEndpoint")
    assert endpoint["VpcEndpointType"] == "GatewayLoadBalancer"
    assert endpoint["ServiceName"] == "com.amazonaws.vpce.eu-west-1.gwlbendpointservice-id"
    assert endpoint["SubnetIds"] == ["subnet-0aaaaaaaaaaaaaaaa"]
    assert endpoint["VpcId"] == "vpc-0123456789abcdef0"
    # The endpoint is created only once this account may use the service.
    assert (
        load_stack()["Resources"]["GwlbEndpoint"]["DependsOn"] == "GwlbEndpointServicePermissions"
    )

    target = one(resolver, "AWS::EC2::TrafficMirrorTarget")
    assert target["GatewayLoadBalancerEndpointId"] == "gwlbendpoint-id"
    assert "NetworkLoadBalancerArn" not in target and "NetworkInterfaceId" not in target
    for session in by_name(resolver, "AWS::EC2::TrafficMirrorSession").values():
        assert session["TrafficMirrorTargetId"] == "mirrortargetd-id"

    # The sessions wait for the GENEVE listener and the group, as they wait for the NLB's.
    ready = resolver.resources("AWS::CloudFormation::WaitConditionHandle")["MirrorTargetReady"]
    assert resolver.resolve(ready["Metadata"]) == {
        "Listener": "genevelistener-id",
        "Collectors": "collectorgroup-id",
    }
    outputs = load_stack()["Outputs"]
    assert resolver.resolve(outputs["EndpointServiceName"]["Value"]) == endpoint["ServiceName"]


def test_collectors_admit_geneve_and_health_checks_from_the_load_balancer_subnets_only() -> None:
    for subnet_c in ({}, {"SubnetC": "subnet-0cccccccccccccccc", "SubnetCCidr": "10.20.2.0/24"}):
        resolver = render(**GWLB, **subnet_c)
        cidrs = ["10.20.0.0/24", "10.20.1.0/24", *(subnet_c and ["10.20.2.0/24"])]
        inbound = ingress_rules(resolver, "CollectorSecurityGroup")
        assert sorted((ports(r), r["CidrIp"]) for r in inbound) == sorted(
            [(("udp", 6081, 6081), c) for c in cidrs] + [(("tcp", 8080, 8080), c) for c in cidrs]
        )
        # Nothing speaks VXLAN to the collectors here: it reaches them inside GENEVE.
        assert all(ports(r)[1] != 4789 for r in inbound)
        assert [ports(r) for r in egress_rules(resolver, "CollectorSecurityGroup")] == [
            ("tcp", 443, 443),
            ("tcp", 9092, 9098),
        ]
    # The NLB's security group, listener and target group are not created.
    resolver = render(**GWLB)
    assert "LoadBalancerSecurityGroup" not in resolver.resources()
    assert "VxlanListener" not in resolver.resources()
    assert "CollectorTargetGroup" not in resolver.resources()


def test_other_target_types_create_no_gateway_load_balancer() -> None:
    for mode in ("nlb", "eni"):
        resolver = render(TargetType=mode)
        for kind in (
            "AWS::EC2::VPCEndpointService",
            "AWS::EC2::VPCEndpointServicePermissions",
            "AWS::EC2::VPCEndpoint",
        ):
            assert not resolver.resources(kind), (mode, kind)
        assert "GENEVE" not in str(resolver.resources())


def test_alarms_watch_the_gateway_load_balancer() -> None:
    resolver = render(**GWLB)
    alarms = by_name(resolver, "AWS::CloudWatch::Alarm")
    for name in ("HealthyHostsBelowMinimumAlarm", "UnhealthyHostsAlarm"):
        assert alarms[name]["Namespace"] == "AWS/GatewayELB"
        dims = {d["Name"]: d["Value"] for d in alarms[name]["Dimensions"]}
        assert dims == {
            "TargetGroup": "genevetargetgroup-targetgroupfullname",
            "LoadBalancer": "gatewayloadbalancer-loadbalancerfullname",
        }
    assert alarms["GwlbNoProcessedBytesAlarm"]["MetricName"] == "ProcessedBytes"
    assert "NoActiveUdpFlowsAlarm" not in alarms  # an NLB metric


def test_collector_config_keeps_other_accounts_sessions() -> None:
    template = load_stack()
    gwlb = heredoc(
        render(**GWLB).resolve({"Fn::Sub": user_data_source(template)}),
        "/etc/collector/collector.toml",
    )
    assert re.search(r"^\[flows\]\n(#.*\n)?accept_unknown_vni = true$", gwlb, re.MULTILINE)
    script = render(**GWLB).resolve({"Fn::Sub": user_data_source(template)})
    assert "TARGET_GROUP_ARN=genevetargetgroup-id" in script
    nlb = heredoc(
        render().resolve({"Fn::Sub": user_data_source(template)}), "/etc/collector/collector.toml"
    )
    assert "accept_unknown_vni" not in nlb


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"SubnetACidr": ""}, "needs SubnetACidr and SubnetBCidr"),
        ({"SubnetBCidr": "10.20.0.0/24"}, "must differ"),
        ({"SubnetC": "subnet-0cccccccccccccccc"}, "SubnetCCidr exactly when SubnetC"),
        ({"SubnetCCidr": "10.20.2.0/24"}, "SubnetCCidr exactly when SubnetC"),
        ({"SubnetC": "subnet-0aaaaaaaaaaaaaaaa", "SubnetCCidr": "10.20.2.0/24"}, "third subnet"),
    ],
)
def test_rules_refuse_bad_gateway_parameters(overrides: dict[str, str], complaint: str) -> None:
    failed = render(**{**GWLB, **overrides}).failed_rules()
    assert any(complaint in m for m in failed), failed


def test_rules_accept_good_gateway_parameters_and_keep_cidrs_to_the_gateway() -> None:
    assert render(**GWLB).failed_rules() == []
    third = {"SubnetC": "subnet-0cccccccccccccccc", "SubnetCCidr": "10.20.2.0/24"}
    assert render(**GWLB, **third).failed_rules() == []
    failed = render(SubnetACidr="10.20.0.0/24").failed_rules()
    assert any("for TargetType gwlb-endpoint only" in m for m in failed), failed
    failed = render(SubnetC="subnet-0bbbbbbbbbbbbbbbb").failed_rules()
    assert any("third subnet" in m for m in failed), failed


# ------------------------------------------------------------------------- the source side


def test_source_stack_mirrors_to_an_endpoint_of_the_shared_service() -> None:
    resolver = render_source()
    assert resolver.failed_rules() == []
    endpoint = one(resolver, "AWS::EC2::VPCEndpoint")
    assert endpoint == {
        "VpcEndpointType": "GatewayLoadBalancer",
        "ServiceName": "com.amazonaws.vpce.eu-west-1.vpce-svc-0123456789abcdef0",
        "VpcId": "vpc-0aaaaaaaaaaaaaaa1",
        "SubnetIds": ["subnet-0ccccccccccccccc1"],
    }
    target = one(resolver, "AWS::EC2::TrafficMirrorTarget")
    assert target["GatewayLoadBalancerEndpointId"] == "gwlbendpoint-id"
    sessions = by_name(resolver, "AWS::EC2::TrafficMirrorSession")
    assert {
        name: (s["NetworkInterfaceId"], s["VirtualNetworkId"], s["PacketLength"])
        for name, s in sessions.items()
    } == {
        "MirrorSessionA": ("eni-0aaaaaaaaaaaaaaa1", "110001", "8446"),
        "MirrorSessionB": ("eni-0aaaaaaaaaaaaaaa2", "110002", "8446"),
    }
    for s in sessions.values():
        assert (s["TrafficMirrorTargetId"], s["TrafficMirrorFilterId"]) == (
            "mirrortarget-id",
            "mirrorfilter-id",
        )
    # The central stack's rule set: VXLAN itself rejected first, FilterCidr accepted at 100.
    rules = sorted(
        (r["TrafficDirection"], r["RuleNumber"], r["RuleAction"])
        for r in by_name(resolver, "AWS::EC2::TrafficMirrorFilterRule").values()
    )
    assert rules == [
        ("egress", 10, "reject"),
        ("egress", 100, "accept"),
        ("ingress", 10, "reject"),
        ("ingress", 100, "accept"),
    ]
    # One source only: no session B.
    single = render_source(SourceBEniId="")
    assert set(by_name(single, "AWS::EC2::TrafficMirrorSession")) == {"MirrorSessionA"}
    assert single.failed_rules() == []


def test_source_stack_takes_only_a_service_name_of_the_right_shape() -> None:
    spec = load_stack(SOURCE_STACK)["Parameters"]["EndpointServiceName"]
    pattern = re.compile(spec["AllowedPattern"])
    assert pattern.fullmatch(SOURCE_PARAMETERS["EndpointServiceName"])
    # The central stack's output is exactly what the parameter takes (service ids: 17 hex digits).
    central = load_stack()["Outputs"]["EndpointServiceName"]["Value"]["Fn::Sub"]
    assert pattern.fullmatch(
        central.replace("${AWS::Region}", "eu-west-1").replace(
            "${GwlbEndpointService}", "vpce-svc-0123456789abcdef0"
        )
    )
    assert not pattern.fullmatch("vpce-svc-0123456789abcdef0")
    assert spec["AllowedPattern"].startswith("^com")
    assert int(load_stack(SOURCE_STACK)["Parameters"]["PacketLength"]["MaxValue"]) == 8500 - 54


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"SourceBEniId": "eni-0aaaaaaaaaaaaaaa1"}, "different ENIs"),
        ({"SourceBVni": "110001"}, "different VNIs"),
    ],
)
def test_source_stack_rules(overrides: dict[str, str], complaint: str) -> None:
    failed = render_source(**overrides).failed_rules()
    assert any(complaint in m for m in failed), failed
    template = load_stack(SOURCE_STACK)
    parameters = {**parameter_defaults(template), **SOURCE_PARAMETERS}
    elsewhere = {("EndpointSubnet", "VpcId"): "vpc-0fffffffffffffff1"}
    assert any(
        "must be in VpcId" in m for m in Resolver(template, parameters, elsewhere).failed_rules()
    )


def test_runbook_walks_through_central_collection_with_two_source_accounts() -> None:
    runbook = (ROOT / "deploy" / "README.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for text in (runbook, readme):
        assert "gwlb-endpoint" in text
        assert "10 sources" in text
    assert "mirror-source-stack.yaml" in runbook
    assert "GwlbAllowedPrincipals" in runbook
    assert "EndpointServiceName" in runbook
    assert runbook.count("aws cloudformation deploy") >= 3
    # The example parameters of the central stack pass its rules.
    template = load_stack()
    parameters = {**parameter_defaults(template), **EXAMPLE_PARAMETERS, **GWLB}
    assert Resolver(template, parameters, SUBNET_ATTRIBUTES).failed_rules() == []
