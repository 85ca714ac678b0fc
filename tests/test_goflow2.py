"""records.format = "goflow2" read back by the protobuf package from schema/goflow2-flow.proto.

protoc (Debian's protobuf-compiler) turns the .proto into a descriptor set at test time; the
protobuf package builds the message class from it, so nothing generated is committed and the
reader shares no code with the collector's hand-written encoder. Files hold length-delimited
messages back to back; each Kafka value is one length-delimited message (goflow2's -format=bin).
"""

from __future__ import annotations

import io
import ipaddress
import shutil
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest
from export_capture import build_capture, json_records, replay, write_config
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, proto
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka_fixtures import KafkaBroker, read_topic, unique_topic

from collector.encoders import goflow2
from collector.records import FlowRecord, decode

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "schema" / "goflow2-flow.proto"

pytestmark = pytest.mark.skipif(
    not shutil.which("protoc"), reason="protoc comes from make system-deps (protobuf-compiler)"
)


@pytest.fixture(scope="module")
def flow_message(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The FlowMessage class, built by the protobuf package from the shipped .proto."""
    out = tmp_path_factory.mktemp("proto") / "flow.desc"
    subprocess.run(
        ["protoc", f"--proto_path={PROTO.parent}", f"--descriptor_set_out={out}", PROTO.name],
        check=True,
    )
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("flowpb.FlowMessage"))


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("goflow2")
    pcap = build_capture(base / "mirror.pcap")
    return pcap, write_config(base / "json.toml"), write_config(base / "goflow2.toml", GOFLOW2)


GOFLOW2 = '\n[records]\nformat = "goflow2"\n'


def expected(r: dict[str, Any]) -> dict[str, Any]:
    """What the FlowMessage of a JSON record must hold (docs/integrations.md)."""
    return {
        "type": 0,
        "time_received_ns": r["end_ms"] * 1_000_000,
        "sequence_num": r["sequence"],
        "sampling_rate": 1,
        "sampler_address": b"",
        "time_flow_start_ns": r["start_ms"] * 1_000_000,
        "time_flow_end_ns": r["end_ms"] * 1_000_000,
        "bytes": r["bytes"],
        "packets": r["packets"],
        "src_addr": ipaddress.ip_address(r["src_addr"]).packed,
        "dst_addr": ipaddress.ip_address(r["dst_addr"]).packed,
        "etype": 0x0800 if r["ip_version"] == 4 else 0x86DD,
        "proto": r["protocol"],
        "src_port": r["src_port"],
        "dst_port": r["dst_port"],
        "tcp_flags": r["tcp_flags"],
        "icmp_type": r["icmp_type"] or 0,
        "icmp_code": r["icmp_code"] or 0,
        "observation_domain_id": r["vni"],
        "in_if": r["vni"] if r["direction"] == "egress" else 0,
        "out_if": r["vni"] if r["direction"] == "ingress" else 0,
        # RFC 7270's "Dropped: ACL deny" for flows the filter rejected (record_rejected)
        "forwarding_status": 129 if r.get("action") == "reject" else 0,
    }


def fields_of(message: Any) -> dict[str, Any]:
    return {name: getattr(message, name) for name in expected_keys()}


def expected_keys() -> list[str]:
    return list(expected(SAMPLE).keys())


SAMPLE = {
    "end_ms": 1,
    "start_ms": 1,
    "sequence": 1,
    "bytes": 1,
    "packets": 1,
    "src_addr": "10.0.0.1",
    "dst_addr": "10.0.0.2",
    "ip_version": 4,
    "protocol": 6,
    "src_port": 1,
    "dst_port": 2,
    "tcp_flags": 2,
    "icmp_type": None,
    "icmp_code": None,
    "vni": 1,
    "direction": "egress",
}


def read_delimited(data: bytes, cls: Any) -> list[Any]:
    stream = io.BytesIO(data)
    messages = []
    while stream.tell() < len(data):
        messages.append(proto.parse_length_prefixed(cls, stream))
    return messages


def test_a_goflow2_file_holds_every_record_of_the_json_replay(
    capture: tuple[Path, Path, Path], flow_message: Any, tmp_path: Path
) -> None:
    pcap, json_config, goflow2_config = capture
    reference = json_records(pcap, json_config)
    out = tmp_path / "flows.bin"
    replay(pcap, goflow2_config, "--sink", f"file:{out}")
    messages = read_delimited(out.read_bytes(), flow_message)
    assert [fields_of(m) for m in messages] == [expected(r) for r in reference]
    assert {(r["ip_version"], r["protocol"]) for r in reference} == {
        (4, 6),
        (4, 17),
        (4, 1),
        (6, 6),
        (6, 58),
    }


def test_reject_records_carry_forwarding_status_dropped_acl_deny(
    capture: tuple[Path, Path, Path], flow_message: Any, tmp_path: Path
) -> None:
    pcap = capture[0]
    reference = json_records(pcap, write_config(tmp_path / "j.toml", record_rejected=True))
    assert {r["action"] for r in reference} == {"accept", "reject"}
    config = write_config(tmp_path / "g.toml", GOFLOW2, record_rejected=True)
    out = tmp_path / "flows.bin"
    replay(pcap, config, "--sink", f"file:{out}")
    messages = read_delimited(out.read_bytes(), flow_message)
    assert [fields_of(m) for m in messages] == [expected(r) for r in reference]
    for r in reference:  # byte for byte what protobuf serializes, reject records included
        framed = io.BytesIO()
        proto.serialize_length_prefixed(flow_message(**expected(r)), framed)
        assert goflow2.encode(decode(msgspec.json.encode(r))) == framed.getvalue()


def test_stdout_replay_is_the_same_binary_stream(
    capture: tuple[Path, Path, Path], flow_message: Any, tmp_path: Path
) -> None:
    pcap, json_config, goflow2_config = capture
    out = tmp_path / "flows.bin"
    replay(pcap, goflow2_config, "--sink", f"file:{out}")
    assert replay(pcap, goflow2_config).stdout == out.read_bytes()
    assert len(read_delimited(out.read_bytes(), flow_message)) == len(
        json_records(pcap, json_config)
    )


def test_the_encoding_is_byte_for_byte_what_protobuf_serializes(
    capture: tuple[Path, Path, Path], flow_message: Any
) -> None:
    pcap, json_config, _ = capture
    for r in json_records(pcap, json_config):
        record = decode(msgspec.json.encode(r))
        reference = flow_message(**expected(r))
        framed = io.BytesIO()
        proto.serialize_length_prefixed(reference, framed)
        assert goflow2.encode(record) == framed.getvalue()
        assert goflow2.flow_message(record) == reference.SerializeToString(deterministic=True)


@settings(max_examples=300, deadline=None)
@given(
    ms=st.integers(min_value=0, max_value=(1 << 44)),
    count=st.integers(min_value=0, max_value=(1 << 63) - 1),
    sequence=st.integers(min_value=0, max_value=(1 << 40)),
    port=st.integers(min_value=0, max_value=65535),
    vni=st.integers(min_value=0, max_value=(1 << 24) - 1),
)
def test_varints_of_every_size_round_trip(
    flow_message: Any, ms: int, count: int, sequence: int, port: int, vni: int
) -> None:
    record = FlowRecord(
        flow_id="0123456789abcdef",
        exporter="e/w0/1",
        sequence=sequence,
        vni=vni,
        session=None,
        interface_id=None,
        direction="unknown",
        ip_version=6,
        protocol=17,
        src_addr="2001:db8::1",
        dst_addr="::ffff:10.0.0.1",
        src_port=port,
        dst_port=65535 - port,
        packets=count,
        bytes=count,
        tcp_flags=0,
        start_ms=ms,
        end_ms=ms,
        end_reason="shutdown",
    )
    (message,) = read_delimited(goflow2.encode(record), flow_message)
    assert (message.time_flow_start_ns, message.bytes) == (ms * 1_000_000, count)
    assert (message.sequence_num, message.src_port) == (sequence & 0xFFFFFFFF, port)
    assert message.observation_domain_id == vni


@pytest.mark.kafka
async def test_each_kafka_value_is_one_delimited_message_with_its_content_type(
    capture: tuple[Path, Path, Path],
    flow_message: Any,
    kafka_broker: KafkaBroker,
) -> None:
    pcap, json_config, goflow2_config = capture
    reference = json_records(pcap, json_config)
    topic = unique_topic("goflow2")
    replay(pcap, goflow2_config, "--sink", f"kafka://{kafka_broker.bootstrap}/{topic}")
    messages = await read_topic(kafka_broker.bootstrap, topic, len(reference))
    assert len(messages) == len(reference)
    decoded = []
    for m in messages:
        headers = dict(m.headers)
        assert headers["content-type"] == goflow2.CONTENT_TYPE.encode()
        (one,) = read_delimited(m.value, flow_message)
        decoded.append((int(headers["sequence"]), fields_of(one)))
    by_sequence = {r["sequence"]: expected(r) for r in reference}
    assert dict(decoded) == by_sequence
