"""Client settings shared by the sink and ``collector tail``: setting checks, TLS, SASL, MSK IAM,
the connection probe, topic admin, and which Kafka errors waiting can fix.

Nothing here holds records; everything here talks to a broker only when asked to.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    IllegalSaslStateError,
    InvalidTimestampError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    PolicyViolationError,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    UnknownProducerId,
    UnknownTopicOrPartitionError,
    UnsupportedSaslMechanismError,
)
from aiokafka.errors import for_code as kafka_error_for_code
from aiokafka.protocol.metadata import MetadataRequest

from collector.config import KafkaConfig, check_delivery_settings
from collector.encoders import encoder_for
from collector.errors import ConfigError, SinkError
from collector.io.exporter_end import END_MARKER, ExporterEnd, encode_end, mark_published

log = logging.getLogger(__name__)

TOPIC_EXISTS = 36  # Kafka error code TOPIC_ALREADY_EXISTS
UNKNOWN_TOPIC = 3  # Kafka error code UNKNOWN_TOPIC_OR_PARTITION
MAX_MESSAGE_BYTES = "max.message.bytes"
DEFAULT_REPLICATION_FACTOR = "default.replication.factor"
DESCRIBE_ATTEMPTS = 10
DESCRIBE_RETRY_S = 0.2
BATCH_MARGIN_BYTES = 512
"""Batches stay this far below the topic's max.message.bytes (record-batch framing)."""
MIN_BATCH_BYTES = 1024
RECORD_BATCH_HEADER_BYTES = 61  # Kafka's record batch v2 header
AUTH_ERRORS = (
    SaslAuthenticationFailed,
    AuthenticationFailedError,
    UnsupportedSaslMechanismError,
    IllegalSaslStateError,
)
TOO_LARGE_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)
"""The batch is too large for the broker: smaller batches of the same records may pass."""
RECORD_ERRORS = (*TOO_LARGE_ERRORS, CorruptRecordException)
"""The broker rejects the batch for its content: retrying the same bytes cannot help."""
PERMANENT_ERRORS = (
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    PolicyViolationError,
    InvalidTimestampError,
)
"""The broker refuses these records for a reason waiting does not fix (see dead-lettering)."""
TOPIC_GONE_ERRORS = (UnknownTopicOrPartitionError,)
"""The topic disappeared mid-run (deleted); it is recreated when kafka.create_topic is on."""
PRODUCER_FATAL = (OutOfOrderSequenceNumber, ProducerFenced, UnknownProducerId)
"""The producer session is unusable; a new producer (new producer id) carries on."""
ACKS: dict[str, int | str] = {"all": "all", "1": 1, "0": 0}
COMPRESSIONS = ("lz4", "zstd", "gzip", "none")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "AWS_MSK_IAM")
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


def check_security(c: KafkaConfig) -> None:
    """Connection and security settings that cannot work, as ConfigErrors naming the key."""
    if c.security_protocol not in PROTOCOLS:
        raise ConfigError(
            "kafka.security_protocol",
            f"unknown protocol {c.security_protocol!r}; use one of {', '.join(PROTOCOLS)}",
        )
    sasl = c.security_protocol.startswith("SASL_")
    if sasl and c.sasl_mechanism is None:
        raise ConfigError("kafka.sasl_mechanism", f"{c.security_protocol} needs a SASL mechanism")
    if c.sasl_mechanism == "OAUTHBEARER":
        # aiokafka needs a token provider for OAUTHBEARER, and the only one this project has signs
        # MSK IAM tokens: say so instead of silently sending MSK tokens to another broker
        raise ConfigError(
            "kafka.sasl_mechanism",
            "OAUTHBEARER without a token provider is not supported;"
            " for Amazon MSK IAM authentication use AWS_MSK_IAM",
        )
    if c.sasl_mechanism is not None:
        if c.sasl_mechanism not in SASL_MECHANISMS:
            raise ConfigError(
                "kafka.sasl_mechanism",
                f"unknown mechanism {c.sasl_mechanism!r}; use one of {', '.join(SASL_MECHANISMS)}",
            )
        if not sasl:
            raise ConfigError(
                "kafka.security_protocol",
                f"SASL mechanism {c.sasl_mechanism} needs SASL_SSL or SASL_PLAINTEXT,"
                f" not {c.security_protocol}",
            )
        if c.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            if not c.sasl_username:
                raise ConfigError("kafka.sasl_username", f"{c.sasl_mechanism} needs a user")
            if not c.sasl_password:
                raise ConfigError("kafka.sasl_password", f"{c.sasl_mechanism} needs a password")
        elif c.security_protocol != "SASL_SSL":
            raise ConfigError("kafka.security_protocol", "MSK IAM authentication needs SASL_SSL")
    tls = c.security_protocol in ("SSL", "SASL_SSL")
    for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        path = getattr(c, key)
        if path is None:
            continue
        if not tls:
            raise ConfigError(
                f"kafka.{key}", f"is set but security_protocol is {c.security_protocol}"
            )
        if not os.access(path, os.R_OK):
            raise ConfigError(f"kafka.{key}", f"cannot read {path}")
    if c.tls_key_file and not c.tls_cert_file:
        raise ConfigError("kafka.tls_cert_file", "a client key needs its certificate")


def check_producer_settings(c: KafkaConfig, records_format: str, flow_log_format: str) -> None:
    """Every producer setting mistake as a ConfigError naming the key, before any I/O."""
    if c.compression not in COMPRESSIONS:
        raise ConfigError(
            "kafka.compression",
            f"unknown compression {c.compression!r}; use one of {', '.join(COMPRESSIONS)}",
        )
    if c.compression in ("lz4", "zstd"):
        from aiokafka.codec import has_lz4, has_zstd  # noqa: PLC0415

        if not (has_lz4() if c.compression == "lz4" else has_zstd()):
            raise ConfigError(
                "kafka.compression",
                f"{c.compression} needs the cramjam package: pip install 'aiokafka[lz4,zstd]'",
            )
    if c.acks not in ACKS:
        raise ConfigError("kafka.acks", f"unknown acks {c.acks!r}; use all, 1 or 0")
    check_delivery_settings(c)
    check_security(c)
    try:
        encoder_for(records_format, flow_log_format)
    except (ValueError, ImportError) as exc:
        raise ConfigError("records.format", f"cannot encode records as {exc}") from exc


def is_retriable(exc: BaseException) -> bool:
    """Whether waiting (and trying again) can fix ``exc``."""
    if isinstance(exc, AUTH_ERRORS):
        return False
    if isinstance(exc, KafkaTimeoutError | KafkaConnectionError | OSError | TimeoutError):
        return True
    return bool(getattr(exc, "retriable", False))


def describe(exc: BaseException) -> str:
    """``ExceptionName: message`` without repeating the name."""
    text = str(exc)
    name = type(exc).__name__
    if not text or text == name:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


def msk_iam_token_provider(region: str | None) -> Any:
    """An aiokafka OAUTHBEARER token provider signing MSK IAM tokens (optional extra ``msk-iam``)."""
    try:
        signer = importlib.import_module("aws_msk_iam_sasl_signer")
    except ImportError as exc:
        raise ConfigError(
            "kafka.sasl_mechanism",
            "MSK IAM authentication needs the optional extra:"
            " pip install 'vpc-mirror-collector[msk-iam]'",
        ) from exc
    from aiokafka.abc import AbstractTokenProvider  # noqa: PLC0415

    resolved = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not resolved:
        raise ConfigError("kafka.aws_region", "MSK IAM authentication needs the AWS region")

    class MskIamTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
        """Signs a token with the instance's AWS credentials; reuses it until a minute before
        it expires (token() is called on every new connection)."""

        def __init__(self) -> None:
            self._token = ""
            self._expires_s = 0.0

        async def token(self) -> str:
            if time.time() > self._expires_s - 60:
                loop = asyncio.get_running_loop()
                token, expiry_ms = await loop.run_in_executor(
                    None, signer.MSKAuthTokenProvider.generate_auth_token, resolved
                )
                self._token, self._expires_s = str(token), float(expiry_ms) / 1000
            return self._token

    return MskIamTokenProvider()


def ssl_context(c: KafkaConfig) -> ssl.SSLContext | None:
    """The TLS context of ``[kafka]`` (None without TLS); unreadable files name their key."""
    if c.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    try:
        context = ssl.create_default_context(cafile=c.tls_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("kafka.tls_ca_file", f"cannot load {c.tls_ca_file}: {exc}") from exc
    if c.tls_cert_file:
        try:
            context.load_cert_chain(c.tls_cert_file, c.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                "kafka.tls_cert_file", f"cannot load {c.tls_cert_file}: {exc}"
            ) from exc
    return context


def client_kwargs(c: KafkaConfig, client_id: str | None = None) -> dict[str, Any]:
    """aiokafka connection and security arguments from ``[kafka]`` (producers, admin, consumers)."""
    check_security(c)
    kwargs: dict[str, Any] = {
        "client_id": client_id or c.client_id,
        "request_timeout_ms": c.request_timeout_ms,
        "security_protocol": c.security_protocol,
        "ssl_context": ssl_context(c),
    }
    if c.sasl_mechanism == "AWS_MSK_IAM":
        kwargs["sasl_mechanism"] = "OAUTHBEARER"
        kwargs["sasl_oauth_token_provider"] = msk_iam_token_provider(c.aws_region)
    elif c.sasl_mechanism is not None:
        kwargs["sasl_mechanism"] = c.sasl_mechanism
        kwargs["sasl_plain_username"] = c.sasl_username
        kwargs["sasl_plain_password"] = c.sasl_password
    return kwargs


def producer_kwargs(c: KafkaConfig, servers: list[str], client: dict[str, Any]) -> dict[str, Any]:
    """AIOKafkaProducer arguments: the sink builds (and lingers) batches itself."""
    return {
        **client,
        "bootstrap_servers": servers,
        "acks": ACKS[c.acks],
        "enable_idempotence": c.enable_idempotence,
        "compression_type": None if c.compression == "none" else c.compression,
        "max_batch_size": c.max_batch_bytes,
        "max_request_size": max(c.max_batch_bytes + 65536, 1_048_576),
        "linger_ms": 0,  # batches are closed before send_batch
    }


async def _probe_one(server: str, client: dict[str, Any], c: KafkaConfig) -> str:
    """Connect to one address and ask for metadata; returns "" when it answered, else what went
    wrong. Raises SinkError(retriable=False) for what waiting cannot fix (SASL, TLS)."""
    tls = c.security_protocol in ("SSL", "SASL_SSL")
    host, _, port = server.rpartition(":")
    try:
        conn = await create_conn(host, int(port), **client)
    except IllegalSaslStateError as exc:
        raise SinkError(
            f"Kafka at {server} does not expect SASL on this port ({describe(exc)});"
            f" check kafka.security_protocol ({c.security_protocol}) and the port",
            retriable=False,
        ) from exc
    except AUTH_ERRORS as exc:
        user = f" as {c.sasl_username!r}" if c.sasl_username else ""
        raise SinkError(
            f"Kafka at {server} rejected SASL {c.sasl_mechanism}"
            f" authentication{user}: {describe(exc)}",
            retriable=False,
        ) from exc
    except ssl.SSLError as exc:
        raise SinkError(
            f"TLS handshake with Kafka at {server} failed: {exc.reason or exc}", retriable=False
        ) from exc
    except ConnectionResetError as exc:
        hint = " during the TLS handshake: is it a TLS listener?" if tls else ""
        return f"{server}: connection reset{hint} ({describe(exc)})"
    except (OSError, KafkaError, TimeoutError) as exc:
        return f"{server}: {describe(exc)}"
    try:
        await conn.send(MetadataRequest([]))
    except (KafkaError, OSError, TimeoutError) as exc:
        return (
            f"{server}: connected, but the metadata request failed ({describe(exc)});"
            f" does the listener expect another protocol than {c.security_protocol}?"
        )
    finally:
        conn.close()
    return ""


async def probe(servers: list[str], client: dict[str, Any], c: KafkaConfig) -> list[str]:
    """Probe every bootstrap address at once and return those that answered (at least one), for
    the producer's and the admin client's bootstrap.

    Concurrent, because one address that accepts TCP and never answers (a hung broker, a
    blackholed port) would otherwise use up the whole connect timeout before the next is tried;
    and only the addresses that answered go to aiokafka, because its bootstrap tries the
    addresses one at a time in random order (``conn.collect_hosts`` shuffles them), each for up to
    ``request_timeout_ms``. The cluster metadata then names every broker anyway.
    The probe opens its own connection because aiokafka's bootstrap reports every failure as
    'Unable to bootstrap', and the operator needs to know refused vs. TLS vs. credentials vs. a
    listener that speaks another protocol. Raises SinkError: retriable when no address answered.
    """
    tasks = {asyncio.ensure_future(_probe_one(s, client, c)): s for s in servers}
    answered: list[str] = []
    problems: dict[str, str] = {}
    try:
        pending = set(tasks)
        while pending and not answered:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                problem = task.result()  # a SinkError (SASL, TLS) ends the probe at once
                if problem:
                    problems[tasks[task]] = problem
                else:
                    answered.append(tasks[task])
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if not answered:
        raise SinkError(
            f"cannot reach Kafka ({'; '.join(problems[s] for s in servers)})", retriable=True
        )
    return answered


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """What the sink learns about its topic at each connect."""

    created: bool
    """The topic was missing and the collector created it (at start, or after a deletion)."""
    max_message_bytes: int | None
    """The topic's ``max.message.bytes`` (the largest record batch the broker takes); None when
    the broker would not say (no DescribeConfigs permission)."""
    replication_factor: int | None = None
    """The replication factor the collector created the topic with (None: it existed)."""
    recreated: bool = False
    """The topic existed earlier in this process and was deleted meanwhile: created again."""


_topics_seen: set[str] = set()
"""Topics ``ensure_topic`` found or created in this process: one found missing later was deleted
while the collector ran (each worker process keeps its own)."""
_recreations: Counter[str] = Counter()


def topic_recreations(topic: str) -> int:
    """How often this process created ``topic`` again after it was deleted mid-run."""
    return _recreations[topic]


async def topic_exists(servers: list[str], client: dict[str, Any], topic: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=servers, **client)
    try:
        await admin.start()
        return topic in await admin.list_topics()
    finally:
        await admin.close()


async def ensure_topic(
    servers: list[str], client: dict[str, Any], topic: str, c: KafkaConfig
) -> TopicInfo:
    """Check that ``topic`` exists, creating it when ``kafka.create_topic`` allows, and read its
    ``max.message.bytes``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=servers, **client)
    factor: int | None = None
    deleted = False
    try:
        await admin.start()
        if topic not in await admin.list_topics():
            deleted = topic in _topics_seen
            factor = await _create_topic(admin, topic, c, deleted=deleted)
        _topics_seen.add(topic)
        limit = await _max_message_bytes(admin, topic)
    except (TopicAuthorizationFailedError, ClusterAuthorizationFailedError) as exc:
        raise SinkError(
            f"not allowed to look up or create topic {topic!r}: {describe(exc)}",
            retriable=False,
        ) from exc
    finally:
        await admin.close()
    if factor is None:
        return TopicInfo(False, limit)
    source = (
        "kafka.topic_replication_factor"
        if c.topic_replication_factor is not None
        else f"the cluster's {DEFAULT_REPLICATION_FACTOR}"
    )
    if deleted:
        _recreations[topic] += 1
        log.warning(
            "topic %r was deleted while the collector ran; created it again (%d partitions,"
            " replication factor %d from %s): records delivered before the deletion are gone"
            " from it (recreated %d times)",
            topic,
            c.topic_partitions,
            factor,
            source,
            _recreations[topic],
        )
    else:
        log.info(
            "created topic %r: %d partitions, replication factor %d (%s)",
            topic,
            c.topic_partitions,
            factor,
            source,
        )
    return TopicInfo(True, limit, factor, deleted)


async def _create_topic(
    admin: AIOKafkaAdminClient, topic: str, c: KafkaConfig, *, deleted: bool
) -> int:
    """Create the topic with the configured replication factor, or else the cluster's default
    (never a guess), checked against the brokers that are up; returns the factor used."""
    if not c.create_topic:
        what = "was deleted while the collector ran" if deleted else "does not exist"
        raise SinkError(
            f"topic {topic!r} {what} and kafka.create_topic is off;"
            f" create it with {c.topic_partitions} partitions (records are spooled meanwhile)",
            retriable=False,
        )
    brokers = [b["node_id"] for b in (await admin.describe_cluster())["brokers"]]
    if c.topic_replication_factor is not None:
        factor, source = c.topic_replication_factor, "kafka.topic_replication_factor"
    else:
        default = await _broker_config(admin, brokers, DEFAULT_REPLICATION_FACTOR)
        if default is None or not default.isdigit() or int(default) < 1:
            raise SinkError(
                f"cannot create topic {topic!r}: the cluster did not say its"
                f" {DEFAULT_REPLICATION_FACTOR} ({default!r}); set kafka.topic_replication_factor",
                retriable=False,
            )
        factor, source = int(default), f"the cluster's {DEFAULT_REPLICATION_FACTOR}"
    if factor > len(brokers):
        up = f"{len(brokers)} broker{'s' if len(brokers) != 1 else ''} up"
        raise SinkError(
            f"topic {topic!r} does not exist and could not be created with replication factor"
            f" {factor} ({source}): the cluster has {up}; set kafka.topic_replication_factor to"
            f" at most {len(brokers)} or create the topic",
            retriable=False,
        )
    response = await admin.create_topics([NewTopic(topic, c.topic_partitions, factor)])
    for item in response.topic_errors:
        code, message = item[1], item[2] if len(item) > 2 else None
        if code in (0, TOPIC_EXISTS):
            continue
        error = kafka_error_for_code(code)
        raise SinkError(
            f"topic {topic!r} does not exist and could not be created"
            f" ({c.topic_partitions} partitions, replication factor {factor} from {source}):"
            f" {error.__name__}{': ' + message if message else ''};"
            " create it or allow the collector to",
            retriable=False,
        )
    return factor


async def _broker_config(admin: AIOKafkaAdminClient, brokers: list[int], name: str) -> str | None:
    """One broker's value of a broker config (the cluster-wide default unless overridden per
    broker); None when no broker would say."""
    for broker in brokers:
        resource = ConfigResource(ConfigResourceType.BROKER, str(broker), {name: None})
        try:
            (response,) = await admin.describe_configs([resource])
        except KafkaError:
            continue
        for code, _message, _type, _name, entries in response.resources:
            if code != 0:
                continue
            for entry_name, value, *_ in entries:
                if entry_name == name and value is not None:
                    return str(value)
    return None


async def _max_message_bytes(admin: AIOKafkaAdminClient, topic: str) -> int | None:
    """``max.message.bytes`` of the topic; a topic created a moment ago may not be described
    yet (UNKNOWN_TOPIC_OR_PARTITION), so that is asked again briefly."""
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, {MAX_MESSAGE_BYTES: None})
    for _ in range(DESCRIBE_ATTEMPTS):
        try:
            (response,) = await admin.describe_configs([resource])
        except KafkaError:
            return None
        for code, _message, _type, _name, entries in response.resources:
            if code == UNKNOWN_TOPIC:
                break
            if code != 0:
                return None
            for name, value, *_ in entries:
                if name == MAX_MESSAGE_BYTES and str(value).isdigit():
                    return int(value)
            return None
        await asyncio.sleep(DESCRIBE_RETRY_S)
    return None


@dataclass(frozen=True, slots=True)
class OpenProducer:
    """A started producer for the topic and what the sink must know to use it."""

    producer: Any
    partitions: list[int]
    batch_bytes: int
    """Largest batch to build: kafka.max_batch_bytes, capped below the topic's limit."""


async def open_producer(
    servers: list[str],
    client: dict[str, Any],
    producer_kwargs: dict[str, Any],
    topic: str,
    c: KafkaConfig,
    stop: Callable[[Any], Awaitable[None]],
) -> OpenProducer:
    """One attempt bounded by ``connect_timeout_s``: probe, check the topic (create it, read its
    batch limit), start a producer whose batches stay under that limit. ``stop`` disposes of a
    producer that started but cannot be used. Raises SinkError (retriable or not)."""
    producer: Any = None
    try:
        async with asyncio.timeout(c.connect_timeout_s):
            answering = await probe(servers, client, c)
            info = await ensure_topic(answering, client, topic, c)
            batch_bytes = c.max_batch_bytes
            if info.max_message_bytes is not None:
                # the broker refuses a record batch above the topic's max.message.bytes
                batch_bytes = max(
                    MIN_BATCH_BYTES, min(batch_bytes, info.max_message_bytes - BATCH_MARGIN_BYTES)
                )
            producer = AIOKafkaProducer(
                **{**producer_kwargs, "bootstrap_servers": answering, "max_batch_size": batch_bytes}
            )
            await producer.start()
            partitions = await producer.partitions_for(topic)
    except BaseException as exc:
        if producer is not None:
            await stop(producer)
        if isinstance(exc, TimeoutError):
            raise SinkError(
                f"Kafka at {','.join(servers)} did not answer within {c.connect_timeout_s:g} s",
                retriable=True,
            ) from exc
        if isinstance(exc, KafkaError):
            raise SinkError(
                f"Kafka at {','.join(servers)}: {describe(exc)}", retriable=is_retriable(exc)
            ) from exc
        raise
    return OpenProducer(producer, sorted(partitions), batch_bytes)


async def publish_end_marker(producer: Any, topic: str, end: ExporterEnd) -> bool:
    """Publish an exporter's end marker (see collector.io.exporter_end); False when the broker did
    not take it (the caller tries again at the next connect; the slot's ENDS file keeps it for the
    next process meanwhile). Once the broker took it, it leaves that file."""
    headers = [
        ("content-type", END_MARKER.encode()),
        ("exporter", end.exporter.encode()),
        ("sequence", b"%d" % end.last_sequence),
    ]
    try:
        await producer.send_and_wait(
            topic, encode_end(end), key=end.exporter.encode(), headers=headers
        )
    except (KafkaError, OSError) as exc:
        log.warning("end marker for %s not published yet: %s", end.exporter, describe(exc))
        return False
    mark_published(end)
    log.warning(
        "%s ended without a clean shutdown at sequence %d; published its end marker",
        end.exporter,
        end.last_sequence,
    )
    return True
