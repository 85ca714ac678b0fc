"""The README is the operators' reference: every config key and drop reason must be in it."""

from __future__ import annotations

from pathlib import Path

import msgspec

from collector import config as cfg
from collector.records import FlowRecord
from collector.wire.drops import Drop

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_opens_with_the_two_commands() -> None:
    head = README[:600]
    assert "make run" in head
    assert "make test" in head


def test_every_config_key_is_documented() -> None:
    sections = {
        "": cfg.Config,
        "flows.": cfg.FlowsConfig,
        "records.": cfg.RecordsConfig,
        "kafka.": cfg.KafkaConfig,
        "aws.": cfg.AwsConfig,
    }
    missing = []
    for prefix, struct in sections.items():
        for field in msgspec.structs.fields(struct):
            if field.name in (
                "base_dir",
                "flows",
                "records",
                "kafka",
                "aws",
                "sessions",
                "filters",
            ):
                continue
            if f"`{prefix}{field.name}`" not in README:
                missing.append(prefix + field.name)
    for struct in (cfg.SessionConfig, cfg.FilterConfig, cfg.FilterRuleConfig):
        missing += [f.name for f in msgspec.structs.fields(struct) if f"`{f.name}`" not in README]
    assert not missing


def test_every_record_field_and_drop_reason_is_documented() -> None:
    for field in msgspec.structs.fields(FlowRecord):
        assert f"`{field.name}`" in README, field.name
    for reason in Drop:
        assert f"`{reason.label}`" in README, reason.label
