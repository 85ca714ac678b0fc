"""Kafka settings a user can trust: unsafe acknowledgement settings only when asked for by name,
idempotence never off by accident, a created topic replicated as the cluster says (never 1 behind
the user's back), and a topic deleted mid-run recreated only when allowed, logged and counted.

Config errors go through ``python -m collector check-config`` (exit 2, the key named, no
traceback); topic creation runs against the real local broker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from kafka_fixtures import ROOT, KafkaBroker, describe_topic, make_records, read_topic, unique_topic

from collector.config import KafkaConfig, RecordsConfig
from collector.errors import ConfigError, SinkError
from collector.io.kafka import KafkaSink, client


def check_config(tmp_path: Path, kafka: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "collector.toml"
    path.write_text(f"sink = 'kafka://127.0.0.1:9092/flows'\n[kafka]\n{kafka}\n", encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    return subprocess.run(
        [sys.executable, "-m", "collector", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean,
        timeout=60,
        check=False,
    )


UNSAFE = {
    "acks-1": ("acks = '1'\nenable_idempotence = false", "kafka.acks", "allow_unsafe_acks"),
    "acks-0": ("acks = '0'\nenable_idempotence = false", "kafka.acks", "allow_unsafe_acks"),
    "acks-0-idempotent": ("acks = '0'\nallow_unsafe_acks = true", "kafka.acks", "idempotent"),
    "idempotence-off": (
        "enable_idempotence = false",
        "kafka.enable_idempotence",
        "allow_unsafe_acks",
    ),
    "acks-1-idempotent": ("acks = '1'\nallow_unsafe_acks = true", "kafka.acks", "idempotent"),
}


@pytest.mark.parametrize(("kafka", "key", "text"), UNSAFE.values(), ids=UNSAFE.keys())
def test_unsafe_delivery_settings_are_config_errors_naming_the_key(
    tmp_path: Path, kafka: str, key: str, text: str
) -> None:
    result = check_config(tmp_path, kafka)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"collector: config error: {key}: "), line
    assert text in line


@pytest.mark.parametrize(
    "kafka",
    [
        "acks = '1'\nenable_idempotence = false\nallow_unsafe_acks = true",
        "acks = '0'\nenable_idempotence = false\nallow_unsafe_acks = true",
        "enable_idempotence = false\nallow_unsafe_acks = true",
        "",
    ],
)
def test_unsafe_settings_pass_when_asked_for_by_name(tmp_path: Path, kafka: str) -> None:
    result = check_config(tmp_path, kafka)
    assert result.returncode == 0, result.stderr
    settings: dict[str, Any] = {
        line.split(" = ")[0]: line.split(" = ")[1].strip("'") == "true"
        if line.endswith(("true", "false"))
        else line.split(" = ")[1].strip("'")
        for line in kafka.splitlines()
    }
    client.check_producer_settings(KafkaConfig(**settings), "json", "")


def test_the_sink_refuses_unsafe_settings_at_start_too() -> None:
    with pytest.raises(ConfigError) as caught:
        client.check_producer_settings(KafkaConfig(enable_idempotence=False), "json", "")
    assert caught.value.key == "kafka.enable_idempotence"


# -- topic creation against the real broker -----------------------------------------------------


async def broker_default_replication(bootstrap: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        broker = str(cluster["brokers"][0]["node_id"])
        resource = ConfigResource(
            ConfigResourceType.BROKER, broker, {"default.replication.factor": None}
        )
        (response,) = await admin.describe_configs([resource])
        ((_code, _message, _type, _name, entries),) = response.resources
        return int(
            next(value for name, value, *_ in entries if name == "default.replication.factor")
        )
    finally:
        await admin.close()


async def delete_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


def test_the_replication_factor_is_the_clusters_unless_configured() -> None:
    assert KafkaConfig().topic_replication_factor is None


async def test_a_created_topic_gets_the_clusters_default_replication_factor(
    kafka_broker: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique_topic("settings-rf")
    caplog.set_level(logging.INFO, logger="collector.io.kafka.client")
    info = await client.ensure_topic([kafka_broker.bootstrap], {}, topic, KafkaConfig())
    assert info.created
    default = await broker_default_replication(kafka_broker.bootstrap)
    description = await describe_topic(kafka_broker.bootstrap, topic)
    assert {len(p["replicas"]) for p in description["partitions"]} == {default}
    assert info.replication_factor == default
    assert any(
        f"replication factor {default} (the cluster's default.replication.factor)" in r.message
        for r in caplog.records
    ), [r.message for r in caplog.records]


async def test_a_replication_factor_above_the_broker_count_names_the_key(
    kafka_broker: KafkaBroker,
) -> None:
    topic = unique_topic("settings-rf3")
    config = KafkaConfig(topic_replication_factor=3)
    with pytest.raises(SinkError) as caught:
        await client.ensure_topic([kafka_broker.bootstrap], {}, topic, config)
    assert not caught.value.retriable
    assert "kafka.topic_replication_factor" in str(caught.value)
    assert "1 broker" in str(caught.value)
    assert topic not in await client_topics(kafka_broker.bootstrap)


async def client_topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


async def test_a_topic_deleted_mid_run_is_recreated_only_when_allowed_logged_and_counted(
    kafka_broker: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """ensure_topic is what the sink runs at every connect: the first creation is the start, a
    second one means the topic was deleted while the collector ran."""
    servers = [kafka_broker.bootstrap]
    topic = unique_topic("settings-recreate")
    caplog.set_level(logging.INFO, logger="collector.io.kafka.client")
    assert (await client.ensure_topic(servers, {}, topic, KafkaConfig())).created
    assert client.topic_recreations(topic) == 0
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)

    await delete_topic(kafka_broker.bootstrap, topic)
    await wait_until_gone(kafka_broker.bootstrap, topic)
    with pytest.raises(SinkError, match=r"kafka\.create_topic is off") as caught:
        await client.ensure_topic(servers, {}, topic, KafkaConfig(create_topic=False))
    assert not caught.value.retriable
    assert client.topic_recreations(topic) == 0
    assert topic not in await client_topics(kafka_broker.bootstrap)

    info = await client.ensure_topic(servers, {}, topic, KafkaConfig())
    assert info.created
    assert client.topic_recreations(topic) == 1
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"topic {topic!r} was deleted while the collector ran" in w for w in warnings), (
        warnings
    )


async def wait_until_gone(bootstrap: str, topic: str) -> None:
    for _ in range(100):
        if topic not in await client_topics(bootstrap):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"topic {topic} was not deleted")


async def test_acks_0_counts_records_sent_never_delivered(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """With acks = 0 (allowed by name) the broker answers nothing: every record the producer wrote
    is counted sent, unacknowledged, none delivered; the identity holds with it in delivered's
    place, and (on a healthy broker) the records are in the topic."""
    topic = unique_topic("settings-acks0")
    config = KafkaConfig(
        spool_dir=str(tmp_path / "spool"),
        acks="0",
        enable_idempotence=False,
        allow_unsafe_acks=True,
        linger_ms=5,
        connect_timeout_s=15.0,
    )
    sink = KafkaSink([kafka_broker.bootstrap], topic, config, RecordsConfig())
    await sink.start()
    records = make_records(5_000, "acks0/w0/1")
    for first in range(0, len(records), 500):
        sink.submit(records[first : first + 500])
        await asyncio.sleep(0)
    await sink.flush(60)
    status = sink.status()
    await sink.close()
    assert status.delivered == 0
    assert status.sent_unacknowledged == len(records)
    assert (status.failed, status.dropped, status.dead_lettered, status.queue_records) == (
        0,
        0,
        0,
        0,
    )
    messages = await read_topic(kafka_broker.bootstrap, topic, len(records))
    assert len(messages) == len(records)
