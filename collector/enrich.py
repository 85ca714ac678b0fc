"""Sessions learned from the EC2 API: VNI -> mirror session -> source ENI -> addresses and context.

``[aws] enrich = true`` turns it on. The service calls ``Enricher.refresh`` in a thread every
``aws.refresh_interval_s`` (it blocks on the network) and swaps in ``Enricher.apply(configured,
view)`` as the worker's session map. Nothing here touches the packet path.

Calls, all read-only (the instance role needs ``ec2:DescribeTrafficMirrorSessions``,
``ec2:DescribeNetworkInterfaces`` and ``ec2:DescribeAvailabilityZones``):

* DescribeTrafficMirrorSessions, paginated: VirtualNetworkId -> session id, source ENI, owner, tags;
* DescribeNetworkInterfaces filtered by ``network-interface-id`` (a deleted ENI is simply absent,
  where ``NetworkInterfaceIds`` would fail the whole call): private IPv4 addresses (primary first),
  IPv6 addresses, delegated prefixes, the attached instance, subnet, VPC, AZ and owner account;
* DescribeAvailabilityZones, only when an ENI carries its AZ name but not ``AvailabilityZoneId``.

A failed refresh keeps the last good view, logs one line and counts ``failures``; it never raises.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from collector.config import AwsConfig
from collector.errors import ConfigError
from collector.sessions import Session, SessionMap, parse_networks

log = logging.getLogger(__name__)

ENI_FILTER_VALUES = 200
"""ENI ids per DescribeNetworkInterfaces call (one filter's values are limited)."""


@dataclass(frozen=True)
class EnrichedSession:
    """What the EC2 API says about one mirror session and its source ENI."""

    vni: int
    session_id: str
    name: str
    """The session's ``Name`` tag, else its id."""
    interface_id: str | None
    addresses: tuple[str, ...] = ()
    """Primary private IPv4 first, then secondary IPv4, IPv6, and delegated prefixes (CIDRs)."""
    instance_id: str | None = None
    subnet_id: str | None = None
    vpc_id: str | None = None
    az_id: str | None = None
    account_id: str | None = None
    region: str | None = None


def ec2_client(aws: AwsConfig) -> Any:
    """A boto3 EC2 client for ``[aws]``; a ConfigError when the optional extra is missing."""
    try:
        # optional extra, only with [aws] enrich = true; imported by name so mypy needs no stubs
        boto3 = importlib.import_module("boto3")
    except ImportError as exc:
        raise ConfigError(
            "aws.enrich",
            "EC2 enrichment needs boto3: pip install 'vpc-mirror-collector[aws]'",
        ) from exc
    exceptions = importlib.import_module("botocore.exceptions")
    try:
        return boto3.client("ec2", region_name=aws.region)
    except exceptions.NoRegionError as exc:
        raise ConfigError(
            "aws.region", "no AWS region: set aws.region (or AWS_REGION), or run on EC2"
        ) from exc


class Enricher:
    """Keeps the last good EC2 view and merges it into the configured sessions."""

    def __init__(self, aws: AwsConfig, client: Any = None) -> None:
        self.aws = aws
        self.client = client if client is not None else ec2_client(aws)
        self.view: dict[int, EnrichedSession] = {}
        self.refreshes = 0
        """Successful refreshes."""
        self.failures = 0
        """Failed refreshes (the last good view stayed in use)."""
        self.last_error = ""
        self._zone_ids: dict[str, str] = {}

    # -- refresh (blocking, runs in a thread) ----------------------------------------------------

    def refresh(self) -> dict[int, EnrichedSession]:
        """Fetch a new view; on any failure keep (and return) the last good one."""
        try:
            view = self._fetch()
        except Exception as exc:  # the refresh loop must survive whatever the SDK raises
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "EC2 enrichment refresh failed, keeping the last view (%d sessions): %s",
                len(self.view),
                self.last_error,
            )
            return self.view
        self.view = view
        self.refreshes += 1
        self.last_error = ""
        return view

    def _fetch(self) -> dict[int, EnrichedSession]:
        region = self.client.meta.region_name
        sessions = list(self._mirror_sessions())
        enis = self._network_interfaces({s["NetworkInterfaceId"] for s in sessions})
        view: dict[int, EnrichedSession] = {}
        for s in sessions:
            vni = s.get("VirtualNetworkId")
            if vni is None:
                continue
            eni_id = s.get("NetworkInterfaceId")
            eni = enis.get(eni_id) if eni_id else None
            tags = {t["Key"]: t["Value"] for t in s.get("Tags") or ()}
            name = tags.get("Name") or s["TrafficMirrorSessionId"]
            if eni is None:
                view[vni] = EnrichedSession(
                    vni=vni,
                    session_id=s["TrafficMirrorSessionId"],
                    name=name,
                    interface_id=eni_id,
                    account_id=s.get("OwnerId"),
                    region=region,
                )
                continue
            view[vni] = EnrichedSession(
                vni=vni,
                session_id=s["TrafficMirrorSessionId"],
                name=name,
                interface_id=eni_id,
                addresses=_addresses(eni),
                instance_id=(eni.get("Attachment") or {}).get("InstanceId"),
                subnet_id=eni.get("SubnetId"),
                vpc_id=eni.get("VpcId"),
                az_id=self._zone_id(eni),
                account_id=eni.get("OwnerId") or s.get("OwnerId"),
                region=region,
            )
        return view

    def _mirror_sessions(self) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("describe_traffic_mirror_sessions")
        for page in paginator.paginate():
            yield from page.get("TrafficMirrorSessions") or ()

    def _network_interfaces(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = sorted(ids)
        found: dict[str, dict[str, Any]] = {}
        paginator = self.client.get_paginator("describe_network_interfaces")
        for start in range(0, len(wanted), ENI_FILTER_VALUES):
            chunk = wanted[start : start + ENI_FILTER_VALUES]
            pages = paginator.paginate(Filters=[{"Name": "network-interface-id", "Values": chunk}])
            for page in pages:
                for eni in page.get("NetworkInterfaces") or ():
                    found[eni["NetworkInterfaceId"]] = eni
        return found

    def _zone_id(self, eni: Mapping[str, Any]) -> str | None:
        zone_id = eni.get("AvailabilityZoneId")
        if zone_id:
            return str(zone_id)
        zone = eni.get("AvailabilityZone")
        if not zone:
            return None
        if zone not in self._zone_ids:
            # zone names map to different physical zones per account; the id is the stable name
            answer = self.client.describe_availability_zones(
                ZoneNames=[zone], AllAvailabilityZones=True
            )
            for z in answer.get("AvailabilityZones") or ():
                self._zone_ids[z["ZoneName"]] = z["ZoneId"]
        return self._zone_ids.get(zone)

    # -- apply (cheap, on the service's loop) ----------------------------------------------------

    def apply(self, sessions: SessionMap, view: Mapping[int, EnrichedSession]) -> SessionMap:
        """``apply_view(sessions, view)``: the configured sessions with the learned view merged in."""
        return apply_view(sessions, view)


def apply_view(sessions: SessionMap, view: Mapping[int, EnrichedSession]) -> SessionMap:
    """A new SessionMap: configured values win, learned values fill the gaps.

    A configured session whose ``interface_id`` names another ENI than the API's session keeps
    only its own values (the learned ENI's addresses would describe the wrong interface).
    Learned VNIs nobody configured become sessions without a filter (AWS's filter applies).
    Needs no client: each worker refreshes its own view in a thread and applies it (worker.py).
    """
    out: list[Session] = []
    for vni, configured in sessions.by_vni.items():
        learned = view.get(vni)
        if learned is None or (
            configured.interface_id is not None
            and learned.interface_id is not None
            and configured.interface_id != learned.interface_id
        ):
            out.append(configured)
            continue
        out.append(
            replace(
                configured,
                interface_id=configured.interface_id or learned.interface_id,
                networks=configured.networks or _networks(learned),
                instance_id=configured.instance_id or learned.instance_id,
                subnet_id=configured.subnet_id or learned.subnet_id,
                vpc_id=configured.vpc_id or learned.vpc_id,
                az_id=configured.az_id or learned.az_id,
                account_id=configured.account_id or learned.account_id,
                region=configured.region or learned.region,
            )
        )
    for vni, learned in view.items():
        if vni in sessions.by_vni:
            continue
        out.append(
            Session(
                vni=vni,
                name=learned.name,
                interface_id=learned.interface_id,
                networks=_networks(learned),
                instance_id=learned.instance_id,
                subnet_id=learned.subnet_id,
                vpc_id=learned.vpc_id,
                az_id=learned.az_id,
                account_id=learned.account_id,
                region=learned.region,
            )
        )
    # keep the zero-config promise: a map that accepted every VNI still does
    return SessionMap(out, accept_unknown=sessions.accept_unknown)


def _addresses(eni: Mapping[str, Any]) -> tuple[str, ...]:
    primary = eni.get("PrivateIpAddress")
    out: list[str] = [primary] if primary else []
    for item in eni.get("PrivateIpAddresses") or ():
        address = item.get("PrivateIpAddress")
        if address and address not in out:
            out.append(address)
    for item in eni.get("Ipv6Addresses") or ():
        address = item.get("Ipv6Address")
        if address and address not in out:
            out.append(address)
    out.extend(p["Ipv4Prefix"] for p in eni.get("Ipv4Prefixes") or () if p.get("Ipv4Prefix"))
    out.extend(p["Ipv6Prefix"] for p in eni.get("Ipv6Prefixes") or () if p.get("Ipv6Prefix"))
    return tuple(out)


def _networks(learned: EnrichedSession) -> tuple[tuple[int, int, int], ...]:
    try:
        return parse_networks(learned.addresses, f"aws.sessions[vni={learned.vni}].addresses")
    except ConfigError:
        log.warning(
            "EC2 returned an unparsable address for VNI %d: %r", learned.vni, learned.addresses
        )
        return ()
