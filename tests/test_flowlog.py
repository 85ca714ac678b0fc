"""VPC Flow Logs compatible lines: format parsing, AWS semantics, and what flow-log readers see."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from flow_samples import make_record
from hypothesis import given
from hypothesis import strategies as st

from collector.encoders import encoder_for
from collector.encoders.flowlog import DEFAULT_FORMAT, FIELDS, FlowLogFormat, aws_tcp_flags
from collector.errors import ConfigError
from collector.records import FlowRecord, decode

V3_TO_V5 = (
    "${version} ${vpc-id} ${subnet-id} ${instance-id} ${interface-id} ${account-id} ${type} "
    "${srcaddr} ${dstaddr} ${srcport} ${dstport} ${pkt-srcaddr} ${pkt-dstaddr} ${protocol} "
    "${bytes} ${packets} ${start} ${end} ${action} ${tcp-flags} ${log-status} ${region} ${az-id} "
    "${sublocation-type} ${sublocation-id} ${pkt-src-aws-service} ${pkt-dst-aws-service} "
    "${flow-direction} ${traffic-path}"
)


def read_flow_log(header: str, line: str) -> dict[str, str]:
    """The way flow-log tools read a plain-text line: split on single spaces, zip with the header."""
    names = header.split(" ")
    values = line.split(" ")
    assert len(values) == len(names), (names, values)
    return dict(zip(names, values, strict=True))


def test_default_format_is_awss_v2_default() -> None:
    fmt = FlowLogFormat.parse(None)
    assert fmt.fields == (
        "version",
        "account-id",
        "interface-id",
        "srcaddr",
        "dstaddr",
        "srcport",
        "dstport",
        "protocol",
        "packets",
        "bytes",
        "start",
        "end",
        "action",
        "log-status",
    )
    assert fmt.version == 2
    assert FlowLogFormat.parse("  ") == fmt
    assert FlowLogFormat.parse(DEFAULT_FORMAT) == fmt


def test_record_matches_awss_documented_example_line() -> None:
    # the accepted SSH flow of AWS's flow-log record examples, field for field
    record = make_record(start_ms=1418530010_000, end_ms=1418530070_000)
    assert FlowLogFormat.parse(None).encode(record) == (
        b"2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 "
        b"1418530010 1418530070 ACCEPT OK"
    )


def test_config_default_equals_aws_default() -> None:
    from collector.config import RecordsConfig

    assert RecordsConfig().vpc_flow_log_format == DEFAULT_FORMAT


@pytest.mark.parametrize(
    ("fmt", "version"),
    [
        ("${srcaddr} ${dstaddr}", 2),
        ("${version} ${srcaddr} ${tcp-flags}", 3),
        ("${version} ${az-id} ${vpc-id}", 4),
        ("${flow-direction} ${version}", 5),
        (V3_TO_V5, 5),
        ("${version} ${ecs-cluster-name}", 7),
        ("${version} ${reject-reason}", 8),
    ],
)
def test_version_is_the_highest_version_of_the_chosen_fields(fmt: str, version: int) -> None:
    parsed = FlowLogFormat.parse(fmt)
    assert parsed.version == version
    if "version" in parsed.fields:
        values = read_flow_log(parsed.header, parsed.encode(make_record()).decode())
        assert values["version"] == str(version)


@pytest.mark.parametrize(
    ("fmt", "needle"),
    [
        ("${version} ${srcaddr} ${bogus-field}", "${bogus-field}"),
        ("${version} ${src-addr}", "${src-addr}"),
        ("${version} srcaddr", "'srcaddr'"),
        ("${version}${srcaddr}", "'${version}${srcaddr}'"),
        ("${version} ${srcaddr", "'${srcaddr'"),
    ],
)
def test_bad_format_is_a_config_error_naming_the_field(fmt: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        FlowLogFormat.parse(fmt)
    assert info.value.key == "records.vpc_flow_log_format"
    assert needle in info.value.message


def test_bad_format_fails_when_the_encoder_is_built() -> None:
    with pytest.raises(ConfigError) as info:
        encoder_for("vpc-flow-log", "${version} ${nope}")
    assert info.value.key == "records.vpc_flow_log_format"


def test_times_are_unix_seconds_start_floored_end_ceiled() -> None:
    fmt = FlowLogFormat.parse("${start} ${end}")
    assert fmt.encode(make_record(start_ms=1_700_000_000_999, end_ms=1_700_000_001_001)) == (
        b"1700000000 1700000002"
    )
    assert fmt.encode(make_record(start_ms=1_700_000_000_000, end_ms=1_700_000_000_000)) == (
        b"1700000000 1700000000"
    )


@pytest.mark.parametrize(
    ("ours", "aws"),
    [
        (0x02, 2),  # SYN
        (0x12, 18),  # SYN-ACK
        (0x02 | 0x10 | 0x08, 18),  # a client flow: SYN, then ACK/PSH data (see docs: OR of flags)
        (0x10, 0),  # ACK alone is not reported
        (0x18, 0),  # PSH-ACK: data only
        (0x11 | 0x08, 1),  # FIN-ACK with data: FIN
        (0x12 | 0x01 | 0x08, 19),  # SYN-ACK and FIN in one short flow
        (0x03, 3),  # SYN and FIN
        (0x14, 4),  # RST-ACK: RST
        (0xFF, 23),  # every bit: SYN-ACK, FIN, RST; PSH URG ECE CWR dropped
        (0x20 | 0x40 | 0x80 | 0x08, 0),  # URG ECE CWR PSH: nothing AWS reports
    ],
)
def test_tcp_flags_as_aws_reports_them(ours: int, aws: int) -> None:
    assert aws_tcp_flags(ours) == aws
    line = FlowLogFormat.parse("${tcp-flags}").encode(make_record(tcp_flags=ours))
    assert line == str(aws).encode()


def test_non_tcp_flows_report_zero_tcp_flags_and_ports() -> None:
    fmt = FlowLogFormat.parse("${protocol} ${srcport} ${dstport} ${tcp-flags}")
    icmp = make_record(protocol=1, src_port=0, dst_port=0, tcp_flags=0, icmp_type=8, icmp_code=0)
    assert fmt.encode(icmp) == b"1 0 0 0"
    udp = make_record(protocol=17, src_port=53000, dst_port=53, tcp_flags=0)
    assert fmt.encode(udp) == b"17 53000 53 0"


def test_unknown_context_is_a_dash() -> None:
    fmt = FlowLogFormat.parse(V3_TO_V5)
    bare = make_record(
        interface_id=None,
        account_id=None,
        instance_id=None,
        subnet_id=None,
        vpc_id=None,
        az_id=None,
        region=None,
        session=None,
        direction="unknown",
    )
    values = read_flow_log(fmt.header, fmt.encode(bare).decode())
    for name in (
        "vpc-id",
        "subnet-id",
        "instance-id",
        "interface-id",
        "account-id",
        "region",
        "az-id",
        "sublocation-type",
        "sublocation-id",
        "pkt-src-aws-service",
        "pkt-dst-aws-service",
        "flow-direction",
        "traffic-path",
    ):
        assert values[name] == "-", name
    assert values["action"] == "ACCEPT"
    assert values["log-status"] == "OK"


def test_v5_line_read_back_by_a_space_splitting_reader() -> None:
    fmt = FlowLogFormat.parse(V3_TO_V5)
    record = make_record(
        ip_version=6,
        src_addr="2600:1f18:aaaa::10",
        dst_addr="2600:1f18:bbbb::20",
        src_port=443,
        dst_port=51000,
        direction="egress",
        tcp_flags=0x12 | 0x08,
        start_ms=1_700_000_000_250,
        end_ms=1_700_000_059_750,
    )
    values = read_flow_log(fmt.header, fmt.encode(record).decode())
    assert values == {
        "version": "5",
        "vpc-id": "vpc-0fedcba9876543210",
        "subnet-id": "subnet-0123456789abcdef0",
        "instance-id": "i-0a1b2c3d4e5f67890",
        "interface-id": "eni-1235b8ca123456789",
        "account-id": "123456789010",
        "type": "IPv6",
        "srcaddr": "2600:1f18:aaaa::10",
        "dstaddr": "2600:1f18:bbbb::20",
        "srcport": "443",
        "dstport": "51000",
        "pkt-srcaddr": "2600:1f18:aaaa::10",
        "pkt-dstaddr": "2600:1f18:bbbb::20",
        "protocol": "6",
        "bytes": "4249",
        "packets": "20",
        "start": "1700000000",
        "end": "1700000060",
        "action": "ACCEPT",
        "tcp-flags": "18",
        "log-status": "OK",
        "region": "us-east-1",
        "az-id": "use1-az4",
        "sublocation-type": "-",
        "sublocation-id": "-",
        "pkt-src-aws-service": "-",
        "pkt-dst-aws-service": "-",
        "flow-direction": "egress",
        "traffic-path": "-",
    }


def test_every_field_is_accepted_in_any_order() -> None:
    names = list(FIELDS)[::-1]
    fmt = FlowLogFormat.parse(" ".join(f"${{{n}}}" for n in names))
    assert fmt.fields == tuple(names)
    values = read_flow_log(fmt.header, fmt.encode(make_record()).decode())
    assert values["version"] == "8"
    assert all(values[n] == "-" for n in names if n.startswith("ecs-"))


def test_encoder_for_vpc_flow_log_uses_the_format() -> None:
    encode = encoder_for("vpc-flow-log", "${srcaddr} ${dstaddr} ${packets}")
    assert encode(make_record()) == b"172.31.16.139 172.31.16.21 20"
    default = encoder_for("vpc-flow-log", None)
    assert default(make_record()).startswith(b"2 123456789010 ")


_ids = st.none() | st.text(min_size=1, max_size=20)


@given(
    account=_ids,
    vpc=_ids,
    region=_ids,
    flags=st.integers(0, 255),
    protocol=st.integers(0, 255),
    start=st.integers(0, 2**41),
    length=st.integers(0, 10**9),
)
def test_every_line_has_one_value_per_field(
    account: str | None,
    vpc: str | None,
    region: str | None,
    flags: int,
    protocol: int,
    start: int,
    length: int,
) -> None:
    fmt = FlowLogFormat.parse(V3_TO_V5)
    record: FlowRecord = make_record(
        account_id=account,
        vpc_id=vpc,
        region=region,
        tcp_flags=flags,
        protocol=protocol,
        start_ms=start,
        end_ms=start + length,
    )
    line = fmt.encode(record).decode()
    assert len(line.split()) == len(fmt.fields)  # whichever whitespace a reader splits on
    values = read_flow_log(fmt.header, line)
    assert int(values["start"]) <= int(values["end"])
    assert int(values["start"]) * 1000 <= record.start_ms
    assert int(values["end"]) * 1000 >= record.end_ms


def test_replay_writes_flow_log_lines_through_the_stdout_sink(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    fmt = "${version} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} "
    fmt += "${packets} ${bytes} ${start} ${end} ${tcp-flags} ${flow-direction} ${az-id}"
    config = tmp_path / "collector.toml"
    config.write_text(
        f'[records]\nformat = "vpc-flow-log"\nvpc_flow_log_format = "{fmt}"\n'
        '[[sessions]]\nvni = 7\ninterface_id = "eni-0123456789abcdef0"\naz_id = "use1-az4"\n'
    )

    def replay(*extra: str) -> list[str]:
        args = [sys.executable, "-m", "collector", "replay", str(root / "tests/data/demo.pcap")]
        done = subprocess.run([*args, *extra], check=True, capture_output=True, text=True, cwd=root)
        return done.stdout.splitlines()

    lines = replay("--config", str(config))
    json_config = tmp_path / "json.toml"
    json_config.write_text(config.read_text().replace('format = "vpc-flow-log"', 'format = "json"'))
    records = [decode(line.encode()) for line in replay("--config", str(json_config))]
    parsed = FlowLogFormat.parse(fmt)
    assert lines == [parsed.encode(r).decode() for r in records]
    header = parsed.header
    for line in lines:
        values = read_flow_log(header, line)
        assert values["version"] == "5"
        assert values["interface-id"] == "eni-0123456789abcdef0"
        assert values["az-id"] == "use1-az4"
        assert int(values["start"]) <= int(values["end"])
