"""EC2 enrichment: moto's EC2 for the calls it implements, recorded AWS responses for the rest.

moto implements DescribeTrafficMirrorSessions, DescribeNetworkInterfaces and
DescribeAvailabilityZones, but returns everything in one page and no ``AvailabilityZoneId`` or
delegated prefixes on an ENI. Those shapes come from recorded responses under tests/data/aws/, fed
through botocore's Stubber (which also checks them against the EC2 service model).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from collector.config import AwsConfig, build_config
from collector.enrich import EnrichedSession, Enricher, ec2_client
from collector.errors import ConfigError
from collector.sessions import EGRESS, INGRESS, UNKNOWN, SessionMap, build_sessions

DATA = Path(__file__).parent / "data" / "aws"
NLB_ARN = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/net/collectors/50dc6c495c0c9188"


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # moto signs nothing real; keep any credentials of the machine out of the tests
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


class Account:
    """An EC2 account in moto with two mirrored ENIs behind an NLB target."""

    def __init__(self) -> None:
        ec2 = self.ec2 = boto3.client("ec2", region_name="us-east-1")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]
        self.vpc_id = vpc["VpcId"]
        subnet = ec2.create_subnet(
            VpcId=self.vpc_id, CidrBlock="10.0.1.0/24", AvailabilityZone="us-east-1b"
        )["Subnet"]
        self.subnet_id = subnet["SubnetId"]
        self.zone_id = ec2.describe_availability_zones(ZoneNames=["us-east-1b"])[
            "AvailabilityZones"
        ][0]["ZoneId"]
        self.web = ec2.create_network_interface(
            SubnetId=self.subnet_id,
            PrivateIpAddresses=[
                {"PrivateIpAddress": "10.0.1.10", "Primary": True},
                {"PrivateIpAddress": "10.0.1.11", "Primary": False},
            ],
            Ipv6Addresses=[{"Ipv6Address": "2600:1f18:1:2::10"}],
        )["NetworkInterface"]["NetworkInterfaceId"]
        self.spare = ec2.create_network_interface(
            SubnetId=self.subnet_id, PrivateIpAddress="10.0.1.20"
        )["NetworkInterface"]["NetworkInterfaceId"]
        image = ec2.describe_images()["Images"][0]["ImageId"]
        self.instance_id = ec2.run_instances(
            ImageId=image, MinCount=1, MaxCount=1, SubnetId=self.subnet_id
        )["Instances"][0]["InstanceId"]
        ec2.attach_network_interface(
            NetworkInterfaceId=self.web, InstanceId=self.instance_id, DeviceIndex=1
        )
        target = ec2.create_traffic_mirror_target(NetworkLoadBalancerArn=NLB_ARN)
        self.target_id = target["TrafficMirrorTarget"]["TrafficMirrorTargetId"]
        mirror_filter = ec2.create_traffic_mirror_filter(Description="all")
        self.filter_id = mirror_filter["TrafficMirrorFilter"]["TrafficMirrorFilterId"]
        self.web_session = self.session(self.web, 7001, name="web-a")
        self.spare_session = self.session(self.spare, 7002)

    def session(self, eni: str, vni: int, name: str | None = None) -> str:
        tags = [
            {"ResourceType": "traffic-mirror-session", "Tags": [{"Key": "Name", "Value": name}]}
        ]
        answer = self.ec2.create_traffic_mirror_session(
            NetworkInterfaceId=eni,
            TrafficMirrorTargetId=self.target_id,
            TrafficMirrorFilterId=self.filter_id,
            SessionNumber=1,
            VirtualNetworkId=vni,
            TagSpecifications=tags if name else [],
        )
        return str(answer["TrafficMirrorSession"]["TrafficMirrorSessionId"])


@pytest.fixture
def account(aws_env: None) -> Iterator[Account]:
    with mock_aws():
        yield Account()


def configured(toml_sessions: list[dict[str, Any]], **flows: Any) -> SessionMap:
    return build_sessions(build_config({"sessions": toml_sessions, "flows": flows}))


# -- moto --------------------------------------------------------------------------------------


def test_refresh_learns_sessions_enis_instance_and_az_id(account: Account) -> None:
    enricher = Enricher(AwsConfig(enrich=True, region="us-east-1"))
    view = enricher.refresh()
    assert set(view) == {7001, 7002}
    assert view[7001] == EnrichedSession(
        vni=7001,
        session_id=account.web_session,
        name="web-a",
        interface_id=account.web,
        addresses=("10.0.1.10", "10.0.1.11", "2600:1f18:1:2::10"),
        instance_id=account.instance_id,
        subnet_id=account.subnet_id,
        vpc_id=account.vpc_id,
        az_id=account.zone_id,
        account_id="123456789012",
        region="us-east-1",
    )
    spare = view[7002]
    assert spare.name == account.spare_session  # no Name tag: the session id
    assert spare.addresses == ("10.0.1.20",)
    assert spare.instance_id is None
    assert spare.az_id == account.zone_id
    assert (enricher.refreshes, enricher.failures) == (1, 0)


def test_apply_configured_values_win_learned_fill_gaps(account: Account) -> None:
    enricher = Enricher(AwsConfig(enrich=True, region="us-east-1"))
    sessions = configured(
        [{"vni": 7001, "name": "web", "account_id": "999999999999", "tags": {"team": "payments"}}]
    )
    merged = enricher.apply(sessions, enricher.refresh())
    web = merged.get(7001)
    assert web is not None
    assert web.name == "web"
    assert web.account_id == "999999999999"
    assert dict(web.tags) == {"team": "payments"}
    assert web.interface_id == account.web
    assert web.instance_id == account.instance_id
    assert (web.subnet_id, web.vpc_id, web.az_id, web.region) == (
        account.subnet_id,
        account.vpc_id,
        account.zone_id,
        "us-east-1",
    )
    # learned addresses decide the direction, secondary and IPv6 ones included
    assert web.direction(ip("10.0.1.11"), ip("10.9.9.9"), None) == EGRESS
    assert web.direction(ip("2600:1f18:9::1"), ip("2600:1f18:1:2::10"), None) == INGRESS
    assert web.direction(ip("10.9.9.8"), ip("10.9.9.9"), None) == UNKNOWN
    # a VNI only the API knows is a session now; configured sessions still drop strangers
    spare = merged.get(7002)
    assert spare is not None
    assert spare.name == account.spare_session
    assert spare.filter is None
    assert merged.get(4242) is None
    # the configured map itself is untouched
    assert sessions.get(7002) is None
    original = sessions.get(7001)
    assert original is not None
    assert original.networks == ()


def test_apply_keeps_configured_addresses_and_zero_config(account: Account) -> None:
    enricher = Enricher(AwsConfig(enrich=True))
    view = enricher.refresh()
    pinned = configured([{"vni": 7001, "addresses": ["10.0.1.10/32"]}])
    web = enricher.apply(pinned, view).get(7001)
    assert web is not None
    assert web.direction(ip("10.0.1.11"), ip("10.9.9.9"), None) == UNKNOWN
    assert web.instance_id == account.instance_id
    # zero-config: every VNI was accepted before enrichment and still is
    learned_only = enricher.apply(configured([]), view)
    assert learned_only.get(4242) is not None
    assert learned_only.get(7001) is not None
    assert learned_only.get(7001).name == "web-a"  # type: ignore[union-attr]


def test_apply_ignores_a_session_that_now_mirrors_another_eni(account: Account) -> None:
    enricher = Enricher(AwsConfig(enrich=True))
    sessions = configured([{"vni": 7001, "interface_id": "eni-0123456789abcdef0"}])
    web = enricher.apply(sessions, enricher.refresh()).get(7001)
    assert web is not None
    assert web.interface_id == "eni-0123456789abcdef0"
    assert web.networks == ()
    assert web.instance_id is None


def test_a_deleted_eni_keeps_the_session_without_details(account: Account) -> None:
    ec2 = account.ec2
    gone = ec2.create_network_interface(SubnetId=account.subnet_id, PrivateIpAddress="10.0.1.30")
    gone_id = gone["NetworkInterface"]["NetworkInterfaceId"]
    account.session(gone_id, 7003, name="gone")
    ec2.delete_network_interface(NetworkInterfaceId=gone_id)
    view = Enricher(AwsConfig(enrich=True)).refresh()
    assert view[7003].interface_id == gone_id
    assert view[7003].addresses == ()
    assert view[7003].account_id == "123456789012"
    assert view[7001].addresses[0] == "10.0.1.10"


def test_failure_keeps_the_last_good_view_and_is_counted(
    aws_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    with mock_aws():
        Account()
        enricher = Enricher(AwsConfig(enrich=True))
        good = enricher.refresh()
    assert set(good) == {7001, 7002}
    # nothing listens on port 1: a real connection failure, fast
    enricher.client = boto3.client(
        "ec2",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:1",
        config=botocore.config.Config(
            connect_timeout=5, read_timeout=5, retries={"total_max_attempts": 1}
        ),
    )
    with caplog.at_level(logging.WARNING, logger="collector.enrich"):
        assert enricher.refresh() is good
        assert enricher.refresh() is good
    assert (enricher.refreshes, enricher.failures) == (1, 2)
    assert "EndpointConnectionError" in enricher.last_error
    assert "keeping the last view (2 sessions)" in caplog.text


# -- recorded AWS responses ----------------------------------------------------------------------


def recorded(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


def recorded_client() -> Any:
    return boto3.client(
        "ec2",
        region_name="eu-west-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_recorded_pages_zone_ids_and_prefixes() -> None:
    client = recorded_client()
    page1 = recorded("describe-traffic-mirror-sessions.page1.json")
    with Stubber(client) as stub:
        stub.add_response("describe_traffic_mirror_sessions", page1, {})
        stub.add_response(
            "describe_traffic_mirror_sessions",
            recorded("describe-traffic-mirror-sessions.page2.json"),
            {"NextToken": page1["NextToken"]},
        )
        stub.add_response(
            "describe_network_interfaces",
            recorded("describe-network-interfaces.json"),
            {"Filters": [{"Name": "network-interface-id", "Values": ANY}]},
        )
        enricher = Enricher(AwsConfig(enrich=True), client=client)
        view = enricher.refresh()
        stub.assert_no_pending_responses()
    # AvailabilityZoneId came with the ENIs: no DescribeAvailabilityZones call was made
    assert (enricher.refreshes, enricher.failures) == (1, 0), enricher.last_error
    assert set(view) == {7001, 7002, 7003}
    web = view[7001]
    assert web.name == "web-a"
    assert web.addresses == (
        "10.20.1.10",
        "10.20.1.11",
        "2a05:d018:1:2300::10",
        "10.20.1.160/28",
        "2a05:d018:1:2300:8000::/80",
    )
    assert (web.instance_id, web.az_id, web.region) == (
        "i-0123456789abcdef0",
        "euw1-az3",
        "eu-west-1",
    )
    assert view[7002].instance_id is None
    assert view[7002].az_id == "euw1-az1"
    assert view[7003].name == "gone"
    assert view[7003].addresses == ()
    merged = enricher.apply(configured([]), view).get(7001)
    assert merged is not None
    # an address out of a delegated prefix (e.g. a container's) belongs to the ENI
    assert merged.direction(ip("10.20.1.170"), ip("1.1.1.1"), None) == EGRESS
    assert merged.direction(ip("1.1.1.1"), ip("2a05:d018:1:2300:8000::5"), None) == INGRESS


def test_recorded_unauthorized_operation_is_counted_not_raised() -> None:
    client = recorded_client()
    error = recorded("unauthorized-operation.json")
    with Stubber(client) as stub:
        stub.add_client_error(
            "describe_traffic_mirror_sessions",
            service_error_code=error["Code"],
            service_message=error["Message"],
            http_status_code=error["HttpStatusCode"],
        )
        enricher = Enricher(AwsConfig(enrich=True), client=client)
        assert enricher.refresh() == {}
    assert (enricher.refreshes, enricher.failures) == (0, 1)
    assert "UnauthorizedOperation" in enricher.last_error


def test_missing_boto3_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules is how Python itself spells "this module cannot be imported"
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ConfigError) as info:
        ec2_client(AwsConfig(enrich=True))
    assert info.value.key == "aws.enrich"
    assert "[aws]" in info.value.message


def test_no_region_anywhere_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # not on EC2: ask no metadata service
    with pytest.raises(ConfigError) as info:
        Enricher(AwsConfig(enrich=True))
    assert info.value.key == "aws.region"
