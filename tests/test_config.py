"""Configuration: TOML, then COLLECTOR_* environment, then overrides; errors name the dotted key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from collector.config import (
    Config,
    FlowsConfig,
    build_config,
    env_overrides,
    load_config,
    parse_hostport,
    resolve_path,
)
from collector.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "collector.toml"

FILE = """
workers = 2
sink = "file:/var/log/flows.jsonl"
log_format = "json"

[flows]
active_timeout_s = 30.0
inactive_timeout_s = 10.0
max_flows = 1000

[records]
format = "msgpack"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "collector.toml"
    path.write_text(FILE, encoding="utf-8")
    return path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "collector.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file_or_environment() -> None:
    config = load_config(None, environ={})
    assert config == Config()
    assert (config.flows.active_timeout_s, config.flows.inactive_timeout_s) == (60.0, 15.0)
    assert (config.listen, config.health, config.sink) == ("0.0.0.0:4789", "0.0.0.0:8080", "-")
    assert config.sessions == ()
    assert config.filters == {}


def test_file_values(config_file: Path) -> None:
    config = load_config(config_file, environ={})
    assert (config.workers, config.sink, config.log_format) == (
        2,
        "file:/var/log/flows.jsonl",
        "json",
    )
    assert config.flows == FlowsConfig(
        active_timeout_s=30.0, inactive_timeout_s=10.0, max_flows=1000
    )
    assert config.records.format == "msgpack"
    assert config.base_dir == str(config_file.parent.resolve())


def test_environment_beats_file_and_overrides_beat_both(config_file: Path) -> None:
    environ = {
        "COLLECTOR_WORKERS": "3",
        "COLLECTOR_FLOWS_ACTIVE_TIMEOUT_S": "45",
        "COLLECTOR_FLOWS_ACCEPT_UNKNOWN_VNI": "true",
        "COLLECTOR_RECORDS_FORMAT": "json",
        "COLLECTOR_SINK": "kafka://10.0.0.1:9092/flows",
        "HOME": "/root",  # not ours: ignored
        "COLLECTORX": "1",
    }
    config = load_config(
        config_file, environ=environ, overrides={"workers": 4, "sink": None, "log_format": None}
    )
    assert config.workers == 4  # override
    assert config.sink == "kafka://10.0.0.1:9092/flows"  # environment (override None = not given)
    assert config.log_format == "json"  # file
    assert config.flows.active_timeout_s == 45.0  # environment, in a section
    assert config.flows.inactive_timeout_s == 10.0  # the rest of the section from the file
    assert config.flows.max_flows == 1000
    assert config.flows.accept_unknown_vni is True
    assert config.records.format == "json"


def test_overrides_merge_into_sections(config_file: Path) -> None:
    config = load_config(
        config_file,
        environ={"COLLECTOR_FLOWS_MAX_FLOWS": "50"},
        overrides={"flows": {"max_flows": 7}},
    )
    assert (config.flows.max_flows, config.flows.active_timeout_s) == (7, 30.0)


@pytest.mark.parametrize(
    ("name", "value", "path", "expected"),
    [
        ("COLLECTOR_FLOWS_ACTIVE_TIMEOUT_S", "12.5", ("flows", "active_timeout_s"), 12.5),
        ("COLLECTOR_FLOWS_INACTIVE_TIMEOUT_S", "3", ("flows", "inactive_timeout_s"), 3.0),
        ("COLLECTOR_FLOWS_MAX_FLOWS", "1000", ("flows", "max_flows"), 1000),
        ("COLLECTOR_LISTEN", "127.0.0.1:14789", ("listen",), "127.0.0.1:14789"),
        ("COLLECTOR_DRAIN_S", "5", ("drain_s",), 5.0),
        ("COLLECTOR_KAFKA_LINGER_MS", "5", ("kafka", "linger_ms"), 5),
        ("COLLECTOR_KAFKA_ENABLE_IDEMPOTENCE", "false", ("kafka", "enable_idempotence"), False),
        ("COLLECTOR_RECORDS_EXPORTER", "edge-1", ("records", "exporter"), "edge-1"),
        ("COLLECTOR_AWS_ENRICH", "true", ("aws", "enrich"), True),
    ],
)
def test_environment_names(name: str, value: str, path: tuple[str, ...], expected: Any) -> None:
    config: Any = load_config(None, environ={name: value})
    for part in path:
        config = getattr(config, part)
    assert config == expected


def test_environment_mapping() -> None:
    assert env_overrides(
        {"COLLECTOR_FLOWS_ACTIVE_TIMEOUT_S": "1", "COLLECTOR_WORKERS": "2", "PATH": "/bin"}
    ) == {"flows": {"active_timeout_s": "1"}, "workers": "2"}


@pytest.mark.parametrize(
    "name",
    [
        "COLLECTOR_NOPE",
        "COLLECTOR_FLOWS_NOPE",
        "COLLECTOR_SESSIONS",
        "COLLECTOR_FILTERS",
        "COLLECTOR_BASE_DIR",
        "COLLECTOR_FLOWS",
    ],
)
def test_unknown_environment_variable_is_named(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={name: "1"})
    assert caught.value.key == name


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("COLLECTOR_FLOWS_ACTIVE_TIMEOUT_S", "soon", "flows.active_timeout_s"),
        ("COLLECTOR_FLOWS_ACTIVE_TIMEOUT_S", "0", "flows.active_timeout_s"),
        ("COLLECTOR_FLOWS_MAX_FLOWS", "lots", "flows.max_flows"),
        ("COLLECTOR_WORKERS", "-1", "workers"),
        ("COLLECTOR_RECORDS_FORMAT", "xml", "records.format"),
        ("COLLECTOR_KAFKA_ACKS", "some", "kafka.acks"),
    ],
)
def test_environment_value_of_the_wrong_type_names_the_key(name: str, value: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={name: value})
    assert caught.value.key == key


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("bogus = 1", "bogus"),
        ("[flows]\nbogus = 1", "flows.bogus"),
        ("[records]\nformat = 'json'\ncolour = 'red'", "records.colour"),
        ("[kafka]\nlinger = 5", "kafka.linger"),
        ("[[sessions]]\nvni = 1\n[[sessions]]\nvni = 2\nbogus = 1", "sessions[1].bogus"),
        ("[[sessions]]\nvni = 1\nfilters = 'f'", "sessions[0].filters"),
        ("workers = 'many'", "workers"),
        ("workers = true", "workers"),
        ("workers = -1", "workers"),
        ("drain_s = -1", "drain_s"),
        ("max_datagram_bytes = 10", "max_datagram_bytes"),
        ("vxlan_port = 0", "vxlan_port"),
        ("log_format = 'xml'", "log_format"),
        ("[flows]\nactive_timeout_s = 'soon'", "flows.active_timeout_s"),
        ("[flows]\nactive_timeout_s = 0", "flows.active_timeout_s"),
        ("[flows]\ninactive_timeout_s = -1", "flows.inactive_timeout_s"),
        ("[flows]\nmax_flows = 0", "flows.max_flows"),
        ("[flows]\nmax_flows = 1.5", "flows.max_flows"),
        ("[records]\nformat = 'xml'", "records.format"),
        ("[kafka]\ncompression = 'brotli'", "kafka.compression"),
        ("[[sessions]]\nvni = 16777216", "sessions[0].vni"),
        ("[[sessions]]\nvni = -1", "sessions[0].vni"),
        ("[[sessions]]\nvni = 1\naddresses = '10.0.0.1'", "sessions[0].addresses"),
        ("[[sessions]]\nvni = 1\naddresses = [1]", "sessions[0].addresses[0]"),
        ("sessions = 'all'", "sessions"),
        ("filters = []", "filters"),
    ],
)
def test_bad_file_values_name_the_dotted_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ={})
    assert caught.value.key == key
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[[sessions]]\nname = 'no vni'", "sessions[0].vni"),
        (
            "[[filters.web.rules]]\ndirection = 'ingress'\naction = 'accept'\n"
            "source_cidr = '0.0.0.0/0'\ndestination_cidr = '0.0.0.0/0'",
            "filters.web.rules[0].rule_number",
        ),
        ("[filters.web]\nbogus = 1", "filters.web.bogus"),
        ("[filters.web]\naws_json = 5", "filters.web.aws_json"),
        (
            "[[filters.web.rules]]\ndirection = 'ingress'\nrule_number = 'one'\naction = 'accept'\n"
            "source_cidr = '0.0.0.0/0'\ndestination_cidr = '0.0.0.0/0'",
            "filters.web.rules[0].rule_number",
        ),
        (
            "[[filters.web.rules]]\ndirection = 'ingress'\nrule_number = 1\naction = 'accept'\n"
            "source_cidr = '0.0.0.0/0'\ndestination_cidr = '0.0.0.0/0'\nports = '443'",
            "filters.web.rules[0].ports",
        ),
    ],
)
def test_keys_inside_filters_and_missing_keys_are_named(
    tmp_path: Path, text: str, key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ={})
    assert caught.value.key == key


def test_unreadable_or_malformed_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "missing.toml", environ={})
    assert caught.value.key == "config"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "workers = = 2"), environ={})
    assert caught.value.key == "config"
    assert "not valid TOML" in caught.value.message


def test_config_is_frozen() -> None:
    config = load_config(None, environ={})
    with pytest.raises(AttributeError):
        config.workers = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        config.flows.max_flows = 3  # type: ignore[misc]


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    config = load_config(write(sub, "workers = 1"), environ={})
    assert resolve_path(config, "filters.json") == sub.resolve() / "filters.json"
    assert resolve_path(config, "/abs/filters.json") == Path("/abs/filters.json")


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE, environ={})
    assert [s.name for s in config.sessions] == ["A", "B"]
    assert all(s.addresses and s.filter for s in config.sessions)
    assert len(config.filters["web"].rules) == 5
    assert config.filters["from-aws"].aws_json == "traffic-mirror-filters.json"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:4789", ("0.0.0.0", 4789)),
        ("[::]:8080", ("::", 8080)),
        ("collector.internal:9092", ("collector.internal", 9092)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text, "listen") == expected


@pytest.mark.parametrize("text", ["4789", ":4789", "host:", "host:port", "host:70000"])
def test_parse_hostport_errors_name_the_key(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_hostport(text, "health")
    assert caught.value.key == "health"


def test_build_config_from_a_mapping() -> None:
    data: dict[str, Any] = {"flows": {"max_flows": "10"}, "sessions": [{"vni": "7"}]}
    config = build_config(data)
    assert (config.flows.max_flows, config.sessions[0].vni) == (10, 7)


def test_a_single_port_may_be_an_integer(tmp_path: Path) -> None:
    text = (
        "[[filters.web.rules]]\ndirection = 'ingress'\nrule_number = 1\naction = 'accept'\n"
        "source_cidr = '0.0.0.0/0'\ndestination_cidr = '0.0.0.0/0'\ndestination_ports = 443"
    )
    config = load_config(write(tmp_path, text), environ={})
    assert config.filters["web"].rules[0].destination_ports == 443
