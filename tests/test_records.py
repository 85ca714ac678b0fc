"""Records as the pipeline makes them survive JSON and msgpack, and flow_id is direction-free."""

from __future__ import annotations

import hashlib
import json

import msgspec
import pytest
from pipeline_support import T0, icmp, make_pipeline, packed, tcp, udp

from collector.records import END_REASONS, FlowRecord, address_text, decode, encode, flow_id

A, B = "10.0.1.10", "198.51.100.7"
A6, B6 = "2600:1f18:1234:5601::10", "2001:db8::7"

SETTINGS = {
    "sessions": [
        {
            "vni": 7,
            "name": "A",
            "interface_id": "eni-0a1b2c3d4e5f60001",
            "addresses": [A, A6],
            "instance_id": "i-0a1b2c3d4e5f60001",
            "vpc_id": "vpc-0a1b2c3d4e5f60001",
            "subnet_id": "subnet-0a1b2c3d4e5f60001",
            "az_id": "use1-az1",
            "account_id": "123456789012",
            "region": "us-east-1",
            "tags": {"team": "web", "env": "prod"},
        }
    ],
    "flows": {"accept_unknown_vni": True, "max_flows": 6, "active_timeout_s": 30},
}


def pipeline_records() -> list[FlowRecord]:
    """Records with every end reason, both families, ICMP, a session and a VNI without one."""
    pipeline = make_pipeline(SETTINGS, exporter="collector-a/w3/1764100000")
    records: list[FlowRecord] = []

    def feed(data: bytes, now: float) -> None:
        pipeline.feed(data, len(data), now, packed(A))

    feed(udp(7, A, B, 5353, 53), T0)  # inactive timeout
    feed(tcp(7, A, B, 40000, 443, "S"), T0)
    feed(tcp(7, A, B, 40000, 443, "FA"), T0 + 0.5)  # tcp_fin
    feed(tcp(7, B, A, 443, 40000, "RA"), T0 + 0.5)  # tcp_rst
    for i in range(31):
        feed(tcp(7, A6, B6, 50000, 8080, "A", payload=100), T0 + i)  # active timeout
    records += pipeline.expire(T0 + 30)
    for port in range(8):
        feed(udp(99, B, A, 1000 + port, 53), T0 + 31)  # unknown VNI, accepted; evictions
    feed(icmp(7, B, A, 3, 4), T0 + 31)
    feed(icmp(7, A6, B6), T0 + 31)
    records += pipeline.flush()
    return records


RECORDS = pipeline_records()


def test_the_sample_covers_every_end_reason_and_shape() -> None:
    assert {r.end_reason for r in RECORDS} == set(END_REASONS)
    assert {r.ip_version for r in RECORDS} == {4, 6}
    assert {r.session for r in RECORDS} == {"A", None}
    assert any(r.icmp_type is not None for r in RECORDS)


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_pipeline_records_round_trip(fmt: str) -> None:
    for record in RECORDS:
        data = encode(record, fmt)  # type: ignore[arg-type]
        assert decode(data, fmt) == record  # type: ignore[arg-type]


def test_json_is_one_line_with_the_contract_names() -> None:
    record = next(r for r in RECORDS if r.session == "A" and r.protocol == 6)
    line = encode(record)
    assert b"\n" not in line
    obj = json.loads(line)
    assert obj["session"] == "A"
    assert obj["interface_id"] == "eni-0a1b2c3d4e5f60001"
    assert obj["tags"] == {"team": "web", "env": "prod"}
    assert obj["exporter"] == "collector-a/w3/1764100000"
    assert obj["schema_version"] == 1
    assert isinstance(obj["bytes"], int)


def test_decoding_tolerates_fields_added_later_and_defaults_absent_optional_ones() -> None:
    """Fields are only ever added: an old consumer reads new records, a new one reads old records."""
    obj = json.loads(encode(RECORDS[0]))
    newer = {**obj, "pkt_src_aws_service": "S3", "traffic_path": 1}
    assert decode(json.dumps(newer).encode()) == RECORDS[0]
    older = {k: v for k, v in obj.items() if k not in {"tags", "region", "icmp_type", "icmp_code"}}
    decoded = decode(json.dumps(older).encode())
    assert (decoded.tags, decoded.region, decoded.icmp_type) == ({}, None, None)


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_decoding_garbage_raises_msgspec_errors(fmt: str) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode(b"\xc1not a record", fmt)  # type: ignore[arg-type]
    with pytest.raises(msgspec.ValidationError):
        obj = msgspec.to_builtins(RECORDS[0]) | {"end_reason": "tired"}
        decode(msgspec.json.encode(obj) if fmt == "json" else msgspec.msgpack.encode(obj), fmt)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("protocol", "a", "a_port", "b", "b_port"),
    [
        (6, A, 40000, B, 443),
        (17, A6, 5353, B6, 53),
        (1, A, 0, B, 0),
        (6, A, 443, A, 40000),  # one host talking to itself
    ],
)
def test_flow_id_is_direction_free(protocol: int, a: str, a_port: int, b: str, b_port: int) -> None:
    forward = flow_id(protocol, packed(a), a_port, packed(b), b_port)
    assert forward == flow_id(protocol, packed(b), b_port, packed(a), a_port)
    assert len(forward) == 16
    assert int(forward, 16) >= 0


def test_flow_id_separates_connections() -> None:
    ids = {
        flow_id(6, packed(A), 40000, packed(B), 443),
        flow_id(6, packed(A), 40001, packed(B), 443),
        flow_id(6, packed(A), 40000, packed(B), 444),
        flow_id(17, packed(A), 40000, packed(B), 443),
        flow_id(6, packed(A), 443, packed(B), 40000),  # same ports, swapped between the hosts
        flow_id(6, packed("10.0.1.11"), 40000, packed(B), 443),
        flow_id(6, packed(A6), 40000, packed(B6), 443),
    }
    assert len(ids) == 7


@pytest.mark.parametrize("address", [A, B, A6, B6, "::", "0.0.0.0", "::ffff:10.0.0.1"])
def test_address_text(address: str) -> None:
    assert address_text(packed(address)) == address


@pytest.mark.parametrize(
    ("protocol", "a", "a_port", "b", "b_port"),
    [(6, A, 40000, B, 443), (17, "2001:db8::1", 53, "2001:db8::2", 5353), (1, B, 0, A, 0)],
)
def test_flow_id_is_the_documented_hash_across_versions(
    protocol: int, a: str, a_port: int, b: str, b_port: int
) -> None:
    """BLAKE2b-64, personalised ``flow-id/v1``, over the protocol octet and both endpoints
    (address + port) in ascending order: collectors of every version give a connection one id."""
    ends = sorted((packed(a) + a_port.to_bytes(2, "big"), packed(b) + b_port.to_bytes(2, "big")))
    expected = hashlib.blake2b(
        bytes([protocol]) + ends[0] + ends[1], digest_size=8, person=b"flow-id/v1"
    ).hexdigest()
    assert flow_id(protocol, packed(a), a_port, packed(b), b_port) == expected
