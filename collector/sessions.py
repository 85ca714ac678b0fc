"""Mirror sessions: VNI -> source ENI, its addresses, its filter and its AWS context; direction."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, cast

from collector.config import Config
from collector.errors import ConfigError
from collector.filter import MirrorFilter, load_filter
from collector.terms import EGRESS, INGRESS, UNKNOWN, Direction

AWS_CONTEXT_FIELDS = (
    "instance_id",
    "subnet_id",
    "vpc_id",
    "az_id",
    "account_id",
    "region",
    "gwlb_endpoint_id",
)


class OptionalFields(TypedDict, total=False):
    """FlowRecord fields with defaults: a session's AWS context, and per flow ICMP and tags."""

    instance_id: str
    subnet_id: str
    vpc_id: str
    az_id: str
    account_id: str
    region: str
    gwlb_endpoint_id: str
    icmp_type: int
    icmp_code: int
    tags: dict[str, str]


Network = tuple[int, int, int]  # (network as int, mask as int, family 4|6)
# Sessions made up for VNIs no session names (zero-config or accept_unknown_vni) are cached; VNIs
# are chosen by whoever sends datagrams (2**24 of them), so the cache is bounded.
MAX_ANONYMOUS_SESSIONS = 4096


def parse_networks(values: Iterable[str], key: str) -> tuple[Network, ...]:
    """IPs or CIDRs (either family) as (network, mask, family) triples."""
    out = []
    for index, text in enumerate(values):
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise ConfigError(f"{key}[{index}]", f"{text!r} is not an IP address or CIDR") from exc
        out.append((int(net.network_address), int(net.netmask), net.version))
    return tuple(out)


def _contains(networks: tuple[Network, ...], address: bytes) -> bool:
    value = int.from_bytes(address, "big")
    family = 4 if len(address) == 4 else 6
    return any(f == family and value & mask == net for net, mask, f in networks)


@dataclass(frozen=True)
class Session:
    """One mirror session as the collector sees it."""

    vni: int
    name: str | None
    interface_id: str | None = None
    networks: tuple[Network, ...] = ()
    filter: MirrorFilter | None = None
    instance_id: str | None = None
    subnet_id: str | None = None
    vpc_id: str | None = None
    az_id: str | None = None
    account_id: str | None = None
    region: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    gwlb_endpoint_id: str | None = None
    """The GWLB endpoint (vpce-...) this session's traffic came through, on the GENEVE path: the
    pipeline derives one session per endpoint from the configured one."""
    record_context: OptionalFields = field(init=False, repr=False, compare=False)
    """The AWS context fields records of this session carry, the unset ones left out: a record is
    built once per flow, and every keyword left to its default makes that cheaper."""

    def __post_init__(self) -> None:
        values = {name: getattr(self, name) for name in AWS_CONTEXT_FIELDS}
        context = cast(OptionalFields, {k: v for k, v in values.items() if v is not None})
        object.__setattr__(self, "record_context", context)  # frozen: set once, here

    def direction(self, src: bytes, dst: bytes, outer_src: bytes | None) -> Direction:
        """Egress when the inner source is the ENI, ingress when the destination is, else unknown.

        Configured addresses decide first; otherwise the outer source IP, which AWS sets to the
        source ENI's primary private IPv4 address, stands in for the ENI. For GENEVE from a
        Gateway Load Balancer the pipeline passes the mirror datagram's source here, never the
        GWLB's address the datagram came from.
        """
        if self.networks:
            if _contains(self.networks, src):
                return EGRESS
            if _contains(self.networks, dst):
                return INGRESS
        if outer_src is not None:
            if src == outer_src:
                return EGRESS
            if dst == outer_src:
                return INGRESS
        return UNKNOWN


class SessionMap:
    """VNI lookup. With no sessions configured every VNI is accepted, unfiltered (zero-config)."""

    def __init__(self, sessions: Iterable[Session], *, accept_unknown: bool) -> None:
        self.by_vni = {s.vni: s for s in sessions}
        self.accept_unknown = accept_unknown or not self.by_vni
        self._anonymous: dict[int, Session] = {}

    def get(self, vni: int) -> Session | None:
        """The session of ``vni``; None when the VNI is unknown and must be dropped."""
        found = self.by_vni.get(vni)
        if found is not None:
            return found
        if not self.accept_unknown:
            return None
        anonymous = self._anonymous
        found = anonymous.get(vni)
        if found is None:
            if len(anonymous) >= MAX_ANONYMOUS_SESSIONS:
                anonymous.clear()
            found = anonymous[vni] = Session(vni=vni, name=None)
        return found


def build_sessions(config: Config) -> SessionMap:
    """Compile sessions and their filters; errors name the key."""
    base = Path(config.base_dir)
    filters: dict[str, MirrorFilter] = {
        name: load_filter(name, fc, base) for name, fc in config.filters.items()
    }
    sessions = []
    seen: dict[int, int] = {}
    for index, sc in enumerate(config.sessions):
        key = f"sessions[{index}]"
        if sc.vni in seen:
            raise ConfigError(
                f"{key}.vni", f"VNI {sc.vni} is also used by sessions[{seen[sc.vni]}]"
            )
        seen[sc.vni] = index
        mirror_filter = None
        if sc.filter is not None:
            mirror_filter = filters.get(sc.filter)
            if mirror_filter is None:
                raise ConfigError(f"{key}.filter", f"no [filters.{sc.filter}] table")
        sessions.append(
            Session(
                vni=sc.vni,
                name=sc.name or f"vni-{sc.vni}",
                interface_id=sc.interface_id,
                networks=parse_networks(sc.addresses, f"{key}.addresses"),
                filter=mirror_filter,
                instance_id=sc.instance_id,
                subnet_id=sc.subnet_id,
                vpc_id=sc.vpc_id,
                az_id=sc.az_id,
                account_id=sc.account_id,
                region=sc.region,
                tags=dict(sc.tags),
            )
        )
    return SessionMap(sessions, accept_unknown=config.flows.accept_unknown_vni)
