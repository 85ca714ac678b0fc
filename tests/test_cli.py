"""The command line as operators run it: `python -m collector check-config` and `schema`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from flow_samples import CONTRACT_FIELDS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "examples" / "collector.toml"
AWS_JSON = ROOT / "tests" / "data" / "aws" / "describe-traffic-mirror-filters.json"


def collector(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, **(env or {})},
        timeout=60,
        check=False,
    )


def test_check_config_accepts_the_example() -> None:
    result = collector("check-config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{EXAMPLE}: ok (2 sessions, 2 filters)"
    assert result.stderr == ""


def test_check_config_accepts_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("", encoding="utf-8")
    result = collector("check-config", str(path))
    assert result.returncode == 0, result.stderr


RULE = """
[[filters.web.rules]]
direction = "ingress"
rule_number = 100
action = "accept"
source_cidr = "0.0.0.0/0"
destination_cidr = "0.0.0.0/0"
"""

BAD_FILES = {
    "unknown top-level key": ("bogus = 1", "bogus"),
    "unknown section key": ("[flows]\nactive_timeout = 60", "flows.active_timeout"),
    "wrong type": ("[flows]\nactive_timeout_s = 'a minute'", "flows.active_timeout_s"),
    "out of range": ("[flows]\nmax_flows = 0", "flows.max_flows"),
    "not TOML": ("[flows\nmax_flows = 1", "config"),
    "bad sink": ("sink = 'syslog'", "sink"),
    "bad listen address": ("listen = '4789'", "listen"),
    "bad health address": ("health = 'localhost:http'", "health"),
    "stop timeout within the Kafka flush": (
        "sink = 'kafka://127.0.0.1:9092/flows'\nstop_timeout_s = 10\n[kafka]\nflush_timeout_s = 10",
        "stop_timeout_s",
    ),
    "VNI too large": ("[[sessions]]\nvni = 16777216", "sessions[0].vni"),
    "duplicate VNI": ("[[sessions]]\nvni = 7\n[[sessions]]\nvni = 7", "sessions[1].vni"),
    "bad address": (
        "[[sessions]]\nvni = 7\naddresses = ['10.0.0.5', '10.0.0.0/33']",
        "sessions[0].addresses[1]",
    ),
    "unknown filter": ("[[sessions]]\nvni = 7\nfilter = 'web'", "sessions[0].filter"),
    "bad rule action": (RULE.replace('"accept"', '"drop"'), "filters.web.rules[0].action"),
    "rule number 0": (RULE.replace("100", "0"), "filters.web.rules[0].rule_number"),
    "rule number 32767": (RULE.replace("100", "32767"), "filters.web.rules[0].rule_number"),
    "duplicate rule number": (RULE + RULE, "filters.web.rules[1].rule_number"),
    "bad port range": (
        RULE + 'protocol = 6\ndestination_ports = "5-3"\n',
        "filters.web.rules[0].destination_ports",
    ),
    "protocol 300": (RULE + "protocol = 300\n", "filters.web.rules[0].protocol"),
    "mixed families": (
        RULE.replace('destination_cidr = "0.0.0.0/0"', 'destination_cidr = "::/0"'),
        "filters.web.rules[0].destination_cidr",
    ),
    "missing AWS JSON": ("[filters.web]\naws_json = 'nowhere.json'", "filters.web.aws_json"),
    "AWS JSON with several filters": (
        f"[filters.web]\naws_json = '{AWS_JSON}'",
        "filters.web.filter_id",
    ),
    "unknown filter_id": (
        f"[filters.web]\naws_json = '{AWS_JSON}'\nfilter_id = 'tmf-0000'",
        "filters.web.filter_id",
    ),
}


@pytest.mark.parametrize(("text", "key"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_check_config_rejects_bad_files_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "collector.toml"
    path.write_text(text, encoding="utf-8")
    result = collector("check-config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"collector: config error: {key}: "), lines[0]


def test_check_config_names_the_bad_rule_of_an_aws_json_file(tmp_path: Path) -> None:
    document = json.loads(AWS_JSON.read_text(encoding="utf-8"))
    rule = document["TrafficMirrorFilters"][0]["EgressFilterRules"][0]
    rule["DestinationPortRange"] = {"FromPort": 70000, "ToPort": 70000}
    (tmp_path / "filters.json").write_text(json.dumps(document), encoding="utf-8")
    path = tmp_path / "collector.toml"
    path.write_text(
        "[filters.web]\naws_json = 'filters.json'\nfilter_id = 'tmf-0a1b2c3d4e5f60001'\n",
        encoding="utf-8",
    )
    result = collector("check-config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(
        "collector: config error: "
        "filters.web.aws_json[tmfr-0a1b2c3d4e5f62001].DestinationPortRange: "
    )
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "document",
    ["[1, 2]", '{"TrafficMirrorFilters": [{"IngressFilterRules": [7]}]}', "{"],
    ids=["array", "rule-not-object", "not-json"],
)
def test_check_config_never_shows_a_traceback_for_odd_aws_json(
    tmp_path: Path, document: str
) -> None:
    (tmp_path / "filters.json").write_text(document, encoding="utf-8")
    path = tmp_path / "collector.toml"
    path.write_text("[filters.web]\naws_json = 'filters.json'\n", encoding="utf-8")
    result = collector("check-config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith("collector: config error: filters.web.aws_json")
    assert result.stderr.count("\n") == 1


def test_check_config_of_a_missing_file() -> None:
    result = collector("check-config", str(ROOT / "no-such-file.toml"))
    assert result.returncode == 2
    assert result.stderr.startswith("collector: config error: config: cannot read ")
    assert result.stderr.count("\n") == 1


def test_check_config_reads_the_environment_too() -> None:
    result = collector(
        "check-config", str(EXAMPLE), env={"COLLECTOR_FLOWS_INACTIVE_TIMEOUT_S": "never"}
    )
    assert result.returncode == 2
    assert result.stderr.startswith("collector: config error: flows.inactive_timeout_s: ")
    result = collector("check-config", str(EXAMPLE), env={"COLLECTOR_COLOUR": "blue"})
    assert result.returncode == 2
    assert result.stderr.startswith("collector: config error: COLLECTOR_COLOUR: ")
    result = collector("check-config", str(EXAMPLE), env={"COLLECTOR_FLOWS_MAX_FLOWS": "1000"})
    assert result.returncode == 0, result.stderr


def test_schema_prints_a_json_schema_of_the_record() -> None:
    result = collector("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object"
    assert set(schema["properties"]) >= CONTRACT_FIELDS
    assert set(schema["required"]) >= CONTRACT_FIELDS


def test_replayed_records_of_the_example_config_validate_against_the_printed_schema() -> None:
    schema = json.loads(collector("schema").stdout)
    validator = jsonschema.Draft202012Validator(schema)
    result = collector("replay", "tests/data/demo.pcap", "--config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records
    for record in records:
        validator.validate(record)
    assert {(r["session"], r["direction"]) for r in records} == {("A", "egress")}
    assert [r["sequence"] for r in records] == list(range(1, len(records) + 1))
