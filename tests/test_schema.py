"""The committed JSON Schema is the code's schema, and real records validate against it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from flow_samples import CONTRACT_FIELDS, make_record

from collector.records import FlowRecord, decode, encode, json_schema

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "schema" / "flow-record.schema.json"
DEMO = ROOT / "tests" / "data" / "demo.pcap"


def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_committed_schema_equals_the_generated_one() -> None:
    # regenerate with: python -m collector schema > schema/flow-record.schema.json
    generated = subprocess.run(
        [sys.executable, "-m", "collector", "schema"],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema()
    assert SCHEMA_FILE.read_text() == generated


def test_schema_names_every_record_field_and_the_contract_fields_are_required() -> None:
    schema = json_schema()
    body = schema
    assert set(body["properties"]) == set(FlowRecord.__struct_fields__)
    contract = CONTRACT_FIELDS
    assert contract <= set(body["required"])


def _replay(tmp_path: Path, config: str | None) -> list[dict[str, Any]]:
    args = [sys.executable, "-m", "collector", "replay", str(DEMO)]
    if config is not None:
        path = tmp_path / "collector.toml"
        path.write_text(config)
        args += ["--config", str(path)]
    out = subprocess.run(args, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return [json.loads(line) for line in out.splitlines()]


CONTEXT_CONFIG = """
[[sessions]]
vni = 7
name = "web-1"
interface_id = "eni-0123456789abcdef0"
addresses = ["10.0.0.5"]
instance_id = "i-0a1b2c3d4e5f67890"
subnet_id = "subnet-0123456789abcdef0"
vpc_id = "vpc-0fedcba9876543210"
az_id = "use1-az4"
account_id = "123456789012"
region = "us-east-1"
tags = { team = "payments", env = "prod" }
"""


@pytest.mark.parametrize("config", [None, CONTEXT_CONFIG], ids=["zero-config", "with-context"])
def test_replayed_records_validate(tmp_path: Path, config: str | None) -> None:
    validator = _validator()
    records = _replay(tmp_path, config)
    assert records
    for record in records:
        validator.validate(record)
        assert decode(json.dumps(record).encode()) == msgspec.convert(record, FlowRecord)
    if config is not None:
        assert {r["session"] for r in records} == {"web-1"}
        assert all(r["tags"] == {"team": "payments", "env": "prod"} for r in records)
        assert all(r["az_id"] == "use1-az4" for r in records)


def test_encoded_records_validate_and_round_trip() -> None:
    validator = _validator()
    for record in (
        make_record(),
        make_record(protocol=1, src_port=0, dst_port=0, icmp_type=3, icmp_code=4, tcp_flags=0),
        make_record(
            ip_version=6,
            src_addr="2600:1f18:aaaa::10",
            dst_addr="fe80::1",
            direction="unknown",
            session=None,
            interface_id=None,
            tags={"k": "v"},
        ),
    ):
        validator.validate(json.loads(encode(record)))
        assert decode(encode(record)) == record
        assert decode(encode(record, "msgpack"), "msgpack") == record


@pytest.mark.parametrize(
    "change",
    [
        {"direction": "sideways"},
        {"end_reason": "bored"},
        {"packets": "many"},
        {"tags": {"k": 1}},
        {"flow_id": None},
    ],
)
def test_malformed_records_are_rejected_by_schema_and_decoder(change: dict[str, Any]) -> None:
    validator = _validator()
    data = json.loads(encode(make_record())) | change
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(data)
    with pytest.raises(msgspec.ValidationError):
        decode(json.dumps(data).encode())


def test_missing_required_field_is_rejected() -> None:
    data = json.loads(encode(make_record()))
    del data["sequence"]
    with pytest.raises(jsonschema.ValidationError):
        _validator().validate(data)
