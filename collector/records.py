"""Flow records: the public schema consumers read, its JSON/msgpack round trip, its JSON Schema.

``FlowRecord`` is the contract of the Kafka topic and of the JSON-lines outputs. Fields are only ever
added (with defaults), never renamed or removed; ``schema_version`` changes if that ever has to break.
Consumers can ``from collector.records import FlowRecord, decode``. The value formats a sink writes
(JSON, msgpack, VPC flow-log lines, goflow2) and IPFIX are in ``collector.encoders``.
"""

from __future__ import annotations

import hashlib
import socket
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from collector.terms import (
    ACCEPT,
    ACTIONS,
    CLOSING_END_REASONS,
    DIRECTIONS,
    END_REASONS,
    Action,
    Direction,
    EndReason,
)

SCHEMA_VERSION = 1


class FlowRecord(msgspec.Struct, kw_only=True, gc=False):
    """One unidirectional flow as seen by one collector worker between start_ms and end_ms."""

    flow_id: Annotated[
        str,
        Meta(
            description=(
                "16 hex digits: a hash of (protocol, both endpoints) in canonical order, so both "
                "directions of one connection, from any session and any collector, share it. It is "
                "also the Kafka key."
            )
        ),
    ]
    exporter: Annotated[
        str,
        Meta(
            description=(
                "Which collector worker made the record: `HOST/wN/START_MS` (the worker incarnation; "
                "START_MS is its start, Unix ms)."
            )
        ),
    ]
    sequence: Annotated[
        int,
        Meta(
            description="1, 2, 3, ... per exporter: a gap means a lost record, a repeat a duplicate."
        ),
    ]
    vni: Annotated[
        int,
        Meta(description="VXLAN network identifier = the mirror session."),
    ]
    session: Annotated[
        str | None,
        Meta(description="Configured session name; null for VNIs accepted without configuration."),
    ]
    interface_id: Annotated[
        str | None,
        Meta(description="Mirror-source ENI id, when known."),
    ]
    direction: Annotated[
        Direction,
        Meta(description="Relative to the source ENI."),
    ]
    ip_version: Annotated[
        int,
        Meta(description="4 or 6."),
    ]
    protocol: Annotated[
        int,
        Meta(description="IANA protocol number of the inner packet."),
    ]
    src_addr: Annotated[
        str,
        Meta(description="Inner source address."),
    ]
    dst_addr: Annotated[
        str,
        Meta(description="Inner destination address."),
    ]
    src_port: Annotated[
        int,
        Meta(
            description="TCP/UDP source port; 0 for other protocols, later fragments and truncated headers."
        ),
    ]
    dst_port: Annotated[
        int,
        Meta(description="TCP/UDP destination port; 0 as for src_port."),
    ]
    icmp_type: Annotated[
        int | None,
        Meta(description="ICMP/ICMPv6 type; null for other protocols."),
    ] = None
    icmp_code: Annotated[
        int | None,
        Meta(description="ICMP/ICMPv6 code; null for other protocols."),
    ] = None
    packets: Annotated[
        int,
        Meta(description="Mirrored packets in the flow."),
    ]
    bytes: Annotated[
        int,
        Meta(
            description="Sum of the inner IP lengths (as sent on the wire, not as truncated by the session)."
        ),
    ]
    tcp_flags: Annotated[
        int,
        Meta(
            description=(
                "OR of the TCP flag bytes seen (FIN=1 SYN=2 RST=4 PSH=8 ACK=16 URG=32 ECE=64 "
                "CWR=128)."
            )
        ),
    ]
    start_ms: Annotated[
        int,
        Meta(description="Collector receive time of the first packet, Unix milliseconds."),
    ]
    end_ms: Annotated[
        int,
        Meta(description="Collector receive time of the last packet, Unix milliseconds."),
    ]
    end_reason: EndReason
    """Why the record was emitted."""
    instance_id: Annotated[
        str | None,
        Meta(description="EC2 instance of the source ENI."),
    ] = None
    subnet_id: Annotated[
        str | None,
        Meta(description="Subnet of the source ENI."),
    ] = None
    vpc_id: Annotated[
        str | None,
        Meta(description="VPC of the source ENI."),
    ] = None
    az_id: Annotated[
        str | None,
        Meta(description="Availability Zone id of the source ENI."),
    ] = None
    account_id: Annotated[
        str | None,
        Meta(description="Owner account of the source ENI."),
    ] = None
    region: Annotated[
        str | None,
        Meta(description="AWS Region."),
    ] = None
    gwlb_endpoint_id: Annotated[
        str | None,
        Meta(
            description=(
                "The Gateway Load Balancer endpoint (vpce-...) the mirrored traffic came through "
                "(GENEVE from a GWLB): which source VPC or account; null for VXLAN datagrams."
            )
        ),
    ] = None
    tags: Annotated[
        dict[str, str],
        Meta(description="Session tags from the configuration."),
    ] = msgspec.field(default_factory=dict)
    schema_version: Annotated[
        int,
        Meta(description="Version of this schema."),
    ] = SCHEMA_VERSION
    action: Annotated[
        Action,
        Meta(
            description=(
                "`accept`: a flow the session keeps. `reject`: a flow its filter did not keep, "
                "recorded because the filter has record_rejected; its packets are also counted "
                "as filter_reject drops, so sums of kept traffic take `accept` records only."
            )
        ),
    ] = ACCEPT
    filter_rule: Annotated[
        int | None,
        Meta(
            description=(
                "Rejected flows: the number of the filter rule that rejected the flow; null when "
                "no rule matched (a filter keeps only what a rule accepts). Null for accepted flows."
            )
        ),
    ] = None


__all__ = [
    "ACTIONS",
    "CLOSING_END_REASONS",
    "DIRECTIONS",
    "END_REASONS",
    "SCHEMA_VERSION",
    "Action",
    "Direction",
    "EndReason",
    "FlowRecord",
    "address_text",
    "decode",
    "encode",
    "endpoints_flow_id",
    "flow_id",
    "json_schema",
]


def address_text(packed: bytes) -> str:
    """Text form of a packed IPv4 or IPv6 address."""
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


# set up once (digest size, personalisation); each id copies it: cheaper than a new hash object
_FLOW_ID_HASH = hashlib.blake2b(digest_size=8, person=b"flow-id/v1")
_PROTOCOL_BYTE = tuple(bytes((p,)) for p in range(256))


def flow_id(protocol: int, src: bytes, src_port: int, dst: bytes, dst_port: int) -> str:
    """Direction-free connection id: both directions of one connection hash alike."""
    return endpoints_flow_id(
        protocol, src + src_port.to_bytes(2, "big"), dst + dst_port.to_bytes(2, "big")
    )


def endpoints_flow_id(protocol: int, a: bytes, b: bytes) -> str:
    """``flow_id`` of two endpoints given as packed address + 2-octet port each."""
    h = _FLOW_ID_HASH.copy()
    h.update(_PROTOCOL_BYTE[protocol] + (a + b if a <= b else b + a))
    return h.hexdigest()


_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()
_json_decoder = msgspec.json.Decoder(FlowRecord)
_msgpack_decoder = msgspec.msgpack.Decoder(FlowRecord)


def encode(record: FlowRecord, fmt: Literal["json", "msgpack"] = "json") -> bytes:
    """One record as JSON (no trailing newline) or msgpack."""
    return _json_encoder.encode(record) if fmt == "json" else _msgpack_encoder.encode(record)


def decode(data: bytes, fmt: Literal["json", "msgpack"] = "json") -> FlowRecord:
    """Parse one record; raises ``msgspec.ValidationError``/``DecodeError`` on a malformed one."""
    if fmt == "json":
        return _json_decoder.decode(data)
    return _msgpack_decoder.decode(data)


JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of FlowRecord, with the record's ``properties`` at the top level.

    msgspec puts the struct under ``$defs`` behind a top-level ``$ref``; consumers that read
    ``properties`` (or generate code from the schema) expect the object itself.
    """
    generated: dict[str, Any] = msgspec.json.schema(FlowRecord)
    defs: dict[str, Any] = dict(generated.get("$defs", {}))
    ref = generated.get("$ref", "")
    body = defs.pop(ref.rsplit("/", 1)[-1]) if ref.startswith("#/$defs/") else generated
    schema: dict[str, Any] = {"$schema": JSON_SCHEMA_DIALECT, **body}
    schema.pop("$defs", None)
    if defs:
        schema["$defs"] = defs
    return schema
