"""The Kafka sink: batched, idempotent, at-least-once publishing with a disk spool.

How a record travels::

    submit() -> pending (memory, O(1) per call) -> pump: encode, partition, BatchBuilder per partition
             -> producer.send_batch() -> broker ack -> counted delivered, forgotten
    broker slow or away -> pending spills to the spool (spool mode) -> replayed in order when the
             broker acknowledges again -> spool segment deleted after its last ack

Rules that give "at least once":
- a record leaves memory only when the broker acknowledged it, or when it is written to the spool;
- memory holds at most ``kafka.queue_records`` records (pending + in flight + awaiting a retry);
  beyond that, and whenever the broker has not acknowledged anything for ``STALL_S``, new records go
  to the spool, and while the spool holds anything new records go behind it (order is kept);
- at shutdown, ``flush`` waits for acknowledgements up to its timeout, then spools what is left;
  the next start sends the spool before anything new;
- only a full spool (``kafka.spool_max_bytes``) or a record the broker rejects for what it is
  (too large, corrupt) loses records, and both are counted.

Duplicates are possible only where a consumer can see them: a batch spooled at shutdown that the
broker had in fact received, and the acknowledged part of a spool segment replayed after a crash.
Both repeat (exporter, sequence) pairs. The idempotent producer removes the duplicates that
retries inside one producer session would otherwise make.

Partitioning: the key is ``flow_id``, 16 hex digits of a hash, so the partition is that number
modulo the partition count: every collector puts one connection on one partition, without the cost
of murmur2 in Python. (It is not the Java client's default partitioner.)

Broker unreachable at start: with ``kafka.require_broker_at_start`` off (the default for ``run``),
the sink starts degraded and spools until a broker answers: a collector fleet that boots during a
Kafka outage keeps taking mirrored traffic instead of crash-looping (and the NLB would fail open
anyway). ``check``-style callers set it on and get a clear error within ``connect_timeout_s``.
Bad credentials, TLS failures, a missing codec and a topic that may not be created fail start-up
in both modes: waiting cannot fix them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import ssl
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    UnknownProducerId,
    UnsupportedSaslMechanismError,
)
from aiokafka.errors import for_code as kafka_error_for_code
from aiokafka.protocol.metadata import MetadataRequest

from collector.config import KafkaConfig, RecordsConfig
from collector.errors import ConfigError, SinkError
from collector.io.sinks import SinkStatus
from collector.io.spool import Spool, SpoolError, SpoolLockedError
from collector.logs import RateLimiter
from collector.records import CONTENT_TYPES, FlowRecord, encoder_for

log = logging.getLogger(__name__)

STALL_S = 5.0
"""No acknowledgement for this long while batches are in flight: the broker is slow or away, so new
records go to the spool instead of piling up in memory."""
CYCLE_RECORDS = 8192
"""Records encoded per pump cycle without yielding: bounds how long the receive path waits."""
LINGER_FULL_RECORDS = 4096
"""Pending records that make a cycle worth starting before linger_ms is up."""
SPILL_SLICE_RECORDS = 8192
"""Records written to the spool per event-loop callback while spilling."""
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
LOG_EVERY_S = 10.0
"""Repeated warnings (drops, retries, reconnects) are logged at most this often, with a count."""
RECENT_S = 60.0
"""A drop or a permanent failure keeps the sink 'failed' in status() for this long."""
WATCH_INTERVAL_S = 0.5
MAX_LATENCY_OBSERVATIONS = 10_000
"""One per delivered batch, drained by status(); bounded in case nobody asks."""
CLOSE_TIMEOUT_S = 5.0
MAX_SPOOL_SLOTS = 256
"""Spool directories per topic (one per live worker process); bounds the search at start."""

LZ4_LEVEL = 0
"""lz4 frame level: 0 is lz4's fast mode (see use_fast_lz4)."""

_TOPIC_EXISTS = 36  # Kafka error code TOPIC_ALREADY_EXISTS
_AUTH_ERRORS = (
    SaslAuthenticationFailed,
    AuthenticationFailedError,
    UnsupportedSaslMechanismError,
    IllegalSaslStateError,
)
_RECORD_ERRORS = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    CorruptRecordException,
)
"""The broker rejects the batch for its content: retrying the same bytes cannot help."""
_PRODUCER_FATAL = (OutOfOrderSequenceNumber, ProducerFenced, UnknownProducerId)
"""The producer session is unusable; a new producer (new producer id) carries on."""
_ACKS: dict[str, int | str] = {"all": "all", "1": 1, "0": 0}
_COMPRESSIONS = ("lz4", "zstd", "gzip", "none")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "AWS_MSK_IAM")
_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


@dataclass(slots=True, eq=False)
class _Batch:
    """Records bound for one partition, kept (encoded) until the broker acknowledges them."""

    partition: int
    content_type: str
    first_s: float
    """Monotonic time the oldest record was submitted (latency)."""
    segment: int | None
    """Spool segment the records came from; None for records only held in memory."""
    keys: list[bytes] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    builder: Any = None
    sent_s: float = 0.0
    """When the producer took the batch; 0 while it is being built or handed over."""
    abandoned: bool = False
    """Written to the spool at flush time; a late acknowledgement no longer counts."""


class _RateLimited:
    """Log a recurring condition at most every LOG_EVERY_S, with how often it happened meanwhile."""

    def __init__(self) -> None:
        self._limiter = RateLimiter(LOG_EVERY_S)

    def __call__(self, key: str, level: int, message: str, *args: object, count: int = 1) -> None:
        total = self._limiter.check(key, time.monotonic(), count)
        if total is not None:
            log.log(level, message + " (%d since the last message)", *args, total)


class _RepeatFilter(logging.Filter):
    """Pass one record per message template and logger every LOG_EVERY_S, noting how many were
    held back. aiokafka logs each failed reconnect and each retried batch, several times a second
    during a broker outage; the operator needs the first line and a count, not thousands."""

    def __init__(self) -> None:
        super().__init__()
        self._limiter = RateLimiter(LOG_EVERY_S)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        # templates: a bounded set from aiokafka's source
        total = self._limiter.check(f"{record.name}\0{record.msg}", time.monotonic())
        if total is None:
            return False
        if total > 1:
            record.msg = (
                f"{record.msg} [{total - 1} more like this in the last {LOG_EVERY_S:.0f} s]"
            )
        return True


_REPEAT_FILTER = _RepeatFilter()
_AIOKAFKA_LOGGERS = (
    "aiokafka",
    "aiokafka.conn",
    "aiokafka.cluster",
    "aiokafka.producer.producer",
    "aiokafka.producer.sender",
    "aiokafka.admin.client",
)


def quiet_aiokafka_repeats() -> None:
    """Rate-limit aiokafka's repeated warnings (idempotent; logger filters do not see records of
    child loggers, hence the list)."""
    for name in _AIOKAFKA_LOGGERS:
        logger = logging.getLogger(name)
        if _REPEAT_FILTER not in logger.filters:
            logger.addFilter(_REPEAT_FILTER)


def _key_hash(key: bytes) -> int:
    try:
        return int(key, 16)
    except ValueError:
        return zlib.crc32(key)


class KafkaSink:
    """``kafka://HOST:PORT[,HOST:PORT]/TOPIC``; see the module docstring for the guarantees."""

    def __init__(
        self,
        bootstrap: list[str],
        topic: str,
        config: KafkaConfig,
        records: RecordsConfig,
        *,
        spool_name: str | None = None,
    ) -> None:
        """``spool_name``: subdirectory of ``kafka.spool_dir`` for this sink; by default each sink
        claims the first free ``TOPIC/wN`` (see _open_spool)."""
        self.name = f"kafka://{','.join(bootstrap)}/{topic}"
        self._servers = list(bootstrap)
        self._topic = topic
        self._config = config
        self._records = records
        self._spool_name = spool_name
        self._spool_path = Path(config.spool_dir) / (spool_name or f"{topic}/w0")
        self._spool: Spool | None = None
        self._encode: Callable[[FlowRecord], bytes] | None = None
        self._content_type = CONTENT_TYPES.get(records.format, "application/octet-stream")
        self._headers: list[tuple[str, bytes]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

        # records in memory
        self._pending: deque[tuple[float, list[FlowRecord]]] = deque()
        self._pending_count = 0
        self._unacked: dict[_Batch, None] = {}  # insertion-ordered set: oldest first
        self._unacked_count = 0
        self._retry: deque[_Batch] = deque()
        self._retry_count = 0

        # counters (totals since start)
        self._delivered = 0
        self._retried = 0
        self._failed = 0
        self._dropped = 0
        self._failures = 0
        self._latencies: list[float] = []

        # state
        self._producer: Any = None
        self._retiring: Any = None  # a producer being replaced, until it is stopped
        self._producer_kwargs: dict[str, Any] = {}
        self._client: dict[str, Any] = {}  # connection settings, built once (token provider)
        self._tls = config.security_protocol in ("SSL", "SASL_SSL")
        self._partitions: list[int] = []
        self._connected = False
        self._connect_error = ""
        self._topic_checked = False
        self._spool_mode = False
        self._stalled = False
        self._busy_since = 0.0  # when batches last started waiting for acks after none did
        self._last_ack_s = 0.0
        self._flushing = False
        self._closed = False
        self._spill_scheduled = False
        self._backoff_s = BACKOFF_MIN_S
        self._retry_after = 0.0
        self._last_error = ""
        self._error = ""
        self._error_s = -RECENT_S
        self._dropped_s = -RECENT_S
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._connect_task: asyncio.Task[None] | None = None
        self._ratelimited = _RateLimited()

    def __repr__(self) -> str:
        return f"KafkaSink({self.name!r}, spool={str(self._spool_path)!r})"

    # -- settings ------------------------------------------------------------------------------

    def _validate(self) -> None:
        """Turn every setting mistake into a ConfigError naming the key, before any I/O."""
        c = self._config
        if c.compression not in _COMPRESSIONS:
            raise ConfigError(
                "kafka.compression",
                f"unknown compression {c.compression!r}; use one of {', '.join(_COMPRESSIONS)}",
            )
        if c.compression in ("lz4", "zstd"):
            from aiokafka.codec import has_lz4, has_zstd  # noqa: PLC0415

            if not (has_lz4() if c.compression == "lz4" else has_zstd()):
                raise ConfigError(
                    "kafka.compression",
                    f"{c.compression} needs the cramjam package: pip install 'aiokafka[lz4,zstd]'",
                )
        if c.acks not in _ACKS:
            raise ConfigError("kafka.acks", f"unknown acks {c.acks!r}; use all, 1 or 0")
        if c.enable_idempotence and c.acks != "all":
            raise ConfigError(
                "kafka.acks",
                "the idempotent producer needs acks = 'all' (or enable_idempotence off)",
            )
        if c.security_protocol not in _PROTOCOLS:
            raise ConfigError(
                "kafka.security_protocol",
                f"unknown protocol {c.security_protocol!r}; use one of {', '.join(_PROTOCOLS)}",
            )
        sasl = c.security_protocol.startswith("SASL_")
        if sasl and c.sasl_mechanism is None:
            raise ConfigError(
                "kafka.sasl_mechanism", f"{c.security_protocol} needs a SASL mechanism"
            )
        if c.sasl_mechanism is not None:
            if c.sasl_mechanism not in _SASL_MECHANISMS:
                raise ConfigError(
                    "kafka.sasl_mechanism",
                    f"unknown mechanism {c.sasl_mechanism!r};"
                    f" use one of {', '.join(_SASL_MECHANISMS)}",
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
                raise ConfigError(
                    "kafka.security_protocol", "MSK IAM authentication needs SASL_SSL"
                )
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
        try:
            self._encode = encoder_for(self._records.format, self._records.vpc_flow_log_format)
        except (ValueError, ImportError) as exc:
            raise ConfigError("records.format", f"cannot encode records as {exc}") from exc

    def _client_kwargs(self) -> dict[str, Any]:
        """Connection settings shared by the producer, the admin client and the probe."""
        return client_kwargs(self._config)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Validate, open the spool, connect and check the topic.

        Raises ConfigError for setting mistakes, SinkError(retriable=False) for what waiting cannot
        fix (authentication, TLS, topic), and SinkError(retriable=True) for an unreachable broker
        when ``require_broker_at_start`` is on; otherwise an unreachable broker starts degraded.
        """
        self._loop = asyncio.get_running_loop()
        self._validate()
        c = self._config
        if c.compression == "lz4":
            use_fast_lz4()
        quiet_aiokafka_repeats()
        self._client = client = self._client_kwargs()
        self._producer_kwargs = {
            **client,
            "bootstrap_servers": self._servers,
            "acks": _ACKS[c.acks],
            "enable_idempotence": c.enable_idempotence,
            "compression_type": None if c.compression == "none" else c.compression,
            "max_batch_size": c.max_batch_bytes,
            "max_request_size": max(c.max_batch_bytes + 65536, 1_048_576),
            "linger_ms": 0,  # batches are built (and lingered) here, closed before send_batch
        }
        self._headers = [("content-type", self._content_type.encode())]
        self._spool = spool = self._open_spool()
        for note in spool.counters.notes:
            log.warning("spool %s: %s", self._spool_path, note)
        if not spool.is_empty():
            self._spool_mode = True
            log.info(
                "spool %s holds %d bytes from an earlier run; they are sent first",
                self._spool_path,
                spool.size_bytes,
            )
        try:
            await self._connect()
        except SinkError as exc:
            if not exc.retriable or c.require_broker_at_start:
                spool.close()
                self._spool = None
                raise
            self._connect_error = str(exc)
            self._spool_mode = True
            log.warning(
                "%s; starting degraded: records go to the spool %s until a broker answers",
                exc,
                self._spool_path,
            )
            self._connect_task = asyncio.create_task(self._connect_loop(), name="kafka-connect")
        except BaseException:
            spool.close()
            self._spool = None
            raise
        self._tasks = [
            asyncio.create_task(self._pump(), name="kafka-pump"),
            asyncio.create_task(self._watch(), name="kafka-watch"),
        ]

    def _open_spool(self) -> Spool:
        """The spool named by ``spool_name``, or else the first free slot ``TOPIC/wN``: worker
        processes each claim one (a slot is locked while its process lives), and a restarted
        fleet claims, and so replays, the same slots."""
        c = self._config
        if self._spool_name is not None:
            candidates = [self._spool_path]
        else:
            base = Path(c.spool_dir) / self._topic
            candidates = [base / f"w{slot}" for slot in range(MAX_SPOOL_SLOTS)]
        for path in candidates:
            spool = Spool(path, max_bytes=c.spool_max_bytes, segment_bytes=c.spool_segment_bytes)
            try:
                spool.open()
            except SpoolLockedError as exc:
                if len(candidates) == 1:
                    raise ConfigError("kafka.spool_dir", str(exc)) from exc
                continue
            except SpoolError as exc:
                raise ConfigError("kafka.spool_dir", str(exc)) from exc
            self._spool_path = path
            return spool
        raise ConfigError(
            "kafka.spool_dir",
            f"all {MAX_SPOOL_SLOTS} spool slots under {candidates[0].parent} are in use",
        )

    async def _connect(self) -> None:
        """One bounded attempt: probe, start a producer, check the topic."""
        c = self._config
        producer = AIOKafkaProducer(**self._producer_kwargs)
        try:
            async with asyncio.timeout(c.connect_timeout_s):
                await self._probe()
                await producer.start()
                if not self._topic_checked:
                    await self._ensure_topic()
                    self._topic_checked = True
                partitions = await producer.partitions_for(self._topic)
        except BaseException as exc:
            await self._stop_producer(producer)
            if isinstance(exc, TimeoutError):
                raise SinkError(
                    f"Kafka at {','.join(self._servers)} did not answer within"
                    f" {c.connect_timeout_s:g} s",
                    retriable=True,
                ) from exc
            if isinstance(exc, KafkaError):
                raise SinkError(
                    f"Kafka at {','.join(self._servers)}: {_describe(exc)}",
                    retriable=_is_retriable(exc),
                ) from exc
            raise
        self._producer = producer
        self._partitions = sorted(partitions)
        self._connected = True
        self._stalled = False
        self._last_ack_s = time.monotonic()
        self._connect_error = ""
        self._wake.set()
        log.info(
            "publishing to %s (%d partitions, acks=%s, %s)",
            self.name,
            len(self._partitions),
            c.acks,
            c.compression,
        )

    async def _probe(self) -> None:
        """Open one connection ourselves and ask for metadata: aiokafka's bootstrap reports every
        failure as 'Unable to bootstrap', and the operator needs to know refused vs. TLS vs.
        credentials vs. a listener that speaks another protocol."""
        c = self._config
        problems: list[str] = []
        for server in self._servers:
            host, _, port = server.rpartition(":")
            try:
                conn = await create_conn(host, int(port), **self._client)
            except IllegalSaslStateError as exc:
                raise SinkError(
                    f"Kafka at {server} does not expect SASL on this port ({_describe(exc)});"
                    f" check kafka.security_protocol ({c.security_protocol}) and the port",
                    retriable=False,
                ) from exc
            except _AUTH_ERRORS as exc:
                user = f" as {c.sasl_username!r}" if c.sasl_username else ""
                raise SinkError(
                    f"Kafka at {server} rejected SASL {c.sasl_mechanism}"
                    f" authentication{user}: {_describe(exc)}",
                    retriable=False,
                ) from exc
            except ssl.SSLError as exc:
                raise SinkError(
                    f"TLS handshake with Kafka at {server} failed: {exc.reason or exc}",
                    retriable=False,
                ) from exc
            except ConnectionResetError as exc:
                hint = " during the TLS handshake: is it a TLS listener?" if self._tls else ""
                problems.append(f"{server}: connection reset{hint} ({_describe(exc)})")
                continue
            except (OSError, KafkaError, TimeoutError) as exc:
                problems.append(f"{server}: {_describe(exc)}")
                continue
            try:
                await conn.send(MetadataRequest([]))
            except (KafkaError, OSError, TimeoutError) as exc:
                problems.append(
                    f"{server}: connected, but the metadata request failed ({_describe(exc)});"
                    f" does the listener expect another protocol than {c.security_protocol}?"
                )
                continue
            finally:
                conn.close()
            return
        raise SinkError(f"cannot reach Kafka ({'; '.join(problems)})", retriable=True)

    async def _ensure_topic(self) -> None:
        c = self._config
        admin = AIOKafkaAdminClient(bootstrap_servers=self._servers, **self._client)
        try:
            await admin.start()
            if self._topic in await admin.list_topics():
                return
            if not c.create_topic:
                raise SinkError(
                    f"topic {self._topic!r} does not exist and kafka.create_topic is off;"
                    f" create it with {c.topic_partitions} partitions",
                    retriable=False,
                )
            response = await admin.create_topics(
                [NewTopic(self._topic, c.topic_partitions, c.topic_replication_factor)]
            )
            for item in response.topic_errors:
                code, message = item[1], item[2] if len(item) > 2 else None
                if code in (0, _TOPIC_EXISTS):
                    continue
                error = kafka_error_for_code(code)
                raise SinkError(
                    f"topic {self._topic!r} does not exist and could not be created"
                    f" ({c.topic_partitions} partitions, replication factor"
                    f" {c.topic_replication_factor}): {error.__name__}"
                    f"{': ' + message if message else ''}; create it or allow the collector to",
                    retriable=False,
                )
            log.info(
                "created topic %r: %d partitions, replication factor %d",
                self._topic,
                c.topic_partitions,
                c.topic_replication_factor,
            )
        except (TopicAuthorizationFailedError, ClusterAuthorizationFailedError) as exc:
            raise SinkError(
                f"not allowed to look up or create topic {self._topic!r}: {_describe(exc)}",
                retriable=False,
            ) from exc
        finally:
            await admin.close()

    async def _connect_loop(self) -> None:
        backoff = BACKOFF_MIN_S
        outage = self._connect_error or "a producer reset"
        while not self._connected and not self._closed:
            await asyncio.sleep(backoff)
            try:
                await self._connect()
            except SinkError as exc:
                self._connect_error = str(exc)
                self._failures += 1
                if not exc.retriable:
                    self._set_error(str(exc))
                self._ratelimited("connect", logging.WARNING, "%s; retrying", exc)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            else:
                log.info("Kafka answers again after: %s", outage)

    async def _stop_producer(self, producer: Any, *, graceful: bool = True) -> None:
        """Stop a producer within a bound.

        Graceful: aiokafka's stop(), which waits for the batches it holds (acked or failed, each
        reaches our callbacks). With the broker gone that never ends, so then, or after
        CLOSE_TIMEOUT_S, the producer is dropped instead: its sender task is cancelled and its
        connections closed; the batches it still held are taken back by _take_back_unacked.
        (Failing them inside aiokafka trips over its own bookkeeping of retried batches.)
        """
        if graceful:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await producer.stop()
            except TimeoutError:
                reason = f"no answer within {CLOSE_TIMEOUT_S:g} s"
            except Exception as exc:  # a broken sender raises on the way out
                reason = _describe(exc)
            else:
                return
            log.warning("the Kafka producer did not stop cleanly (%s); dropping it", reason)
        sender_task = getattr(getattr(producer, "_sender", None), "sender_task", None)
        if sender_task is not None and not sender_task.done():
            sender_task.cancel()
            await asyncio.wait([sender_task], timeout=CLOSE_TIMEOUT_S)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await producer.client.close()
        producer._closed = True  # connections are closed; tells aiokafka's __del__ so

    def _take_back_unacked(self) -> None:
        """After a producer is gone, every batch it did not finish is retried by the next one
        (the old object is marked abandoned so a late callback cannot count it twice)."""
        for batch in list(self._unacked):
            if batch.abandoned:
                continue
            batch.abandoned = True
            del self._unacked[batch]
            count = len(batch.values)
            self._unacked_count -= count
            self._retried += count
            self._retry_count += count
            self._retry.append(
                _Batch(
                    batch.partition,
                    batch.content_type,
                    batch.first_s,
                    batch.segment,
                    keys=batch.keys,
                    values=batch.values,
                )
            )

    def _reset_producer(self, reason: str, *, graceful: bool = True) -> None:
        """Replace the producer: its session broke (fenced, sequence error; graceful) or the
        broker is gone (not graceful: aiokafka would retry its metadata in a tight loop, so the
        connect loop takes over, with a backoff)."""
        if not self._connected or self._closed:
            return
        log.warning("restarting the Kafka producer: %s", reason)
        self._connected = False
        self._connect_error = reason
        producer, self._producer = self._producer, None
        self._retiring = producer

        async def reset() -> None:
            # the pump may be waiting inside send_batch of the old producer: restart it
            pump = self._tasks[0]
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            await self._stop_producer(producer, graceful=graceful)
            self._retiring = None
            self._take_back_unacked()
            self._tasks[0] = asyncio.create_task(self._pump(), name="kafka-pump")
            await self._connect_loop()

        self._connect_task = asyncio.create_task(reset(), name="kafka-reset")

    async def flush(self, timeout_s: float) -> None:
        """Wait for acknowledgements up to ``timeout_s``, then spool whatever is still in memory.
        Returns early when the broker is away: waiting would only delay shutdown."""
        deadline = time.monotonic() + timeout_s
        self._flushing = True
        self._wake.set()
        try:
            while self._memory_records() and self._connected and not self._stalled:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, WATCH_INTERVAL_S)):
                        await self._wake.wait()
            if self._memory_records():
                self._spool_memory()
            if self._spool is not None:
                self._spool.rotate()  # fsync: what was spooled survives a crash from here on
        finally:
            self._flushing = False

    async def close(self) -> None:
        """Spool what is left in memory, stop the tasks and the producer, release the spool."""
        if self._closed:
            return
        self._spool_memory()
        self._closed = True
        tasks = [*self._tasks, *([self._connect_task] if self._connect_task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._retiring is not None:  # close() interrupted a reset
            retiring, self._retiring = self._retiring, None
            await self._stop_producer(retiring, graceful=False)
        if self._producer is not None:
            producer, self._producer = self._producer, None
            graceful = self._connected and not self._stalled
            self._connected = False
            await self._stop_producer(producer, graceful=graceful)
        if self._spool is not None:
            self._spool.close()
        log.info(
            "closed %s: %d delivered, %d dropped, %d failed, %d bytes left in the spool",
            self.name,
            self._delivered,
            self._dropped,
            self._failed,
            self._spool.size_bytes if self._spool else 0,
        )

    # -- intake --------------------------------------------------------------------------------

    def submit(self, records: list[FlowRecord]) -> None:
        """O(1) per call on the receive path: queue the list, wake the pump."""
        if not records:
            return
        if self._closed:
            self._drop(len(records), "the sink is closed")
            return
        self._pending.append((time.monotonic(), records))
        self._pending_count += len(records)
        if self._spool_mode or self._memory_records() > self._config.queue_records:
            self._schedule_spill()
        self._wake.set()

    def _memory_records(self) -> int:
        return self._pending_count + self._unacked_count + self._retry_count

    def _schedule_spill(self) -> None:
        if not self._spill_scheduled and self._loop is not None:
            self._spill_scheduled = True
            self._loop.call_soon(self._spill)

    def _spill(self) -> None:
        """Move pending records to the spool, a slice per loop callback."""
        self._spill_scheduled = False
        if not self._pending or self._closed:
            return
        self._spool_mode = True
        self._spill_records(SPILL_SLICE_RECORDS)
        if self._pending:
            self._schedule_spill()

    def _spill_records(self, limit: int) -> None:
        _, records = self._take_pending(limit)
        if records:
            assert self._encode is not None
            encode = self._encode
            self._to_spool(
                self._content_type,
                [r.flow_id.encode() for r in records],
                [encode(r) for r in records],
            )

    def _take_pending(self, limit: int) -> tuple[float, list[FlowRecord]]:
        taken: list[FlowRecord] = []
        first_s = 0.0
        pending = self._pending
        while pending and len(taken) < limit:
            submitted, records = pending[0]
            if not taken:
                first_s = submitted
            need = limit - len(taken)
            if len(records) <= need:
                pending.popleft()
                taken.extend(records)
            else:
                taken.extend(records[:need])
                pending[0] = (submitted, records[need:])
        self._pending_count -= len(taken)
        return first_s, taken

    def _to_spool(self, content_type: str, keys: list[bytes], values: list[bytes]) -> None:
        if self._spool is None:
            self._drop(len(values), "no spool is open")
            return
        try:
            written = self._spool.append(content_type, keys, values)
        except OSError as exc:
            written = 0
            self._set_error(f"cannot write the spool {self._spool_path}: {exc.strerror}")
        if written < len(values):
            self._drop(
                len(values) - written,
                f"the spool is full ({self._spool.size_bytes} of"
                f" {self._config.spool_max_bytes} bytes)",
            )

    def _drop(self, count: int, why: str) -> None:
        self._dropped += count
        self._dropped_s = time.monotonic()
        self._ratelimited("drop", logging.ERROR, "dropped %d records: %s", count, why, count=count)

    def _spool_memory(self) -> None:
        """Everything held only in memory goes to the spool: in-flight batches (abandoned: a late
        ack is not counted), retries, then pending. Spool-origin batches are still on disk."""
        inflight = [b for b in self._unacked if b.segment is None and not b.abandoned]
        for batch in inflight:
            batch.abandoned = True
            del self._unacked[batch]
            self._unacked_count -= len(batch.values)
            self._to_spool(batch.content_type, batch.keys, batch.values)
        keep: deque[_Batch] = deque()
        for batch in self._retry:
            if batch.segment is None:
                self._to_spool(batch.content_type, batch.keys, batch.values)
                self._retry_count -= len(batch.values)
            else:
                keep.append(batch)
        self._retry = keep
        while self._pending:
            self._spill_records(SPILL_SLICE_RECORDS)

    # -- delivery ------------------------------------------------------------------------------

    async def _pump(self) -> None:
        while True:
            try:
                batches = await self._next_batches()
                if batches:
                    await self._dispatch(batches)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop delivery for good
                log.exception("Kafka delivery loop error; continuing")
                self._failures += 1
                await asyncio.sleep(BACKOFF_MAX_S)

    async def _next_batches(self) -> list[_Batch]:
        """Wait until sending makes sense, then build the next batches: retries first, then the
        spool (in spool mode) or pending records."""
        while True:
            self._wake.clear()
            wait_s: float | None = None
            now = time.monotonic()
            room = self._config.queue_records - self._unacked_count
            if not self._connected or not self._partitions:
                wait_s = None
            elif self._retry:  # retries go out even while stalled: they probe for the broker
                if now < self._retry_after:
                    wait_s = self._retry_after - now
                else:
                    return self._rebuild_retries(max(room, 1))
            elif self._stalled or room <= 0:
                wait_s = WATCH_INTERVAL_S if self._stalled else None
            elif self._spool_mode:
                batches = self._from_spool(room)
                if batches or self._spool_mode:
                    return batches
                continue  # spool drained: carry on with pending
            elif self._pending:
                linger_s = self._config.linger_ms / 1000
                oldest = self._pending[0][0]
                if (
                    self._pending_count >= LINGER_FULL_RECORDS
                    or self._flushing
                    or now - oldest >= linger_s
                ):
                    return self._from_pending(min(room, CYCLE_RECORDS))
                wait_s = oldest + linger_s - now
            if wait_s is None:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._wake.wait()

    def _from_pending(self, limit: int) -> list[_Batch]:
        first_s, records = self._take_pending(limit)
        assert self._encode is not None
        encode = self._encode
        flow_ids = [r.flow_id for r in records]
        keys = [f.encode() for f in flow_ids]
        try:  # flow_id is 16 hex digits of a hash: the number itself spreads keys evenly
            hashes = [int(f, 16) for f in flow_ids]
        except ValueError:
            hashes = [_key_hash(k) for k in keys]
        values = [encode(r) for r in records]
        partitions = self._partitions
        count = len(partitions)
        chosen = [partitions[h % count] for h in hashes]
        batches = self._fill(keys, values, chosen, self._content_type, first_s, None, self._headers)
        return self._track(batches)

    def _fill(
        self,
        keys: list[bytes],
        values: list[bytes],
        chosen: list[int],
        content_type: str,
        first_s: float,
        segment: int | None,
        headers: list[tuple[str, bytes]],
    ) -> list[_Batch]:
        """Append records to one BatchBuilder per partition (a new one when it is full)."""
        open_batches: dict[int, _Batch] = {}
        out: list[_Batch] = []
        timestamp_ms = int(time.time() * 1000)
        new_batch = self._new_batch
        for key, value, partition in zip(keys, values, chosen, strict=True):
            batch = open_batches.get(partition)
            if batch is None:
                batch = open_batches[partition] = new_batch(
                    partition, content_type, first_s, segment
                )
                out.append(batch)
            if (
                batch.builder.append(timestamp=timestamp_ms, key=key, value=value, headers=headers)
                is None
            ):
                batch = open_batches[partition] = new_batch(
                    partition, content_type, first_s, segment
                )
                out.append(batch)
                batch.builder.append(timestamp=timestamp_ms, key=key, value=value, headers=headers)
            batch.keys.append(key)
            batch.values.append(value)
        return out

    def _from_spool(self, room: int) -> list[_Batch]:
        """The next spooled records, in order; leaves spool mode when the spool has nothing unread
        (what is in flight from it is acknowledged or retried as usual)."""
        assert self._spool is not None
        while self._pending:  # pending records are newer than the spool: they queue behind it
            self._spill_records(SPILL_SLICE_RECORDS)
        limit = min(room, CYCLE_RECORDS)
        chunk = self._spool.read(limit)
        if chunk is None and self._spool.rotate():
            chunk = self._spool.read(limit)
        if chunk is None:
            self._spool_mode = False
            log.info("spool replay done; publishing directly again")
            return []
        first_s = time.monotonic() - max(0.0, time.time() - chunk.created_s)
        headers = [("content-type", chunk.content_type.encode())]
        out = self._batches_for(
            chunk.keys, chunk.values, chunk.content_type, first_s, chunk.segment, headers
        )
        return self._track(out)

    def _rebuild_retries(self, room: int) -> list[_Batch]:
        out: list[_Batch] = []
        taken = 0
        while self._retry and (taken < room or not out):
            old = self._retry.popleft()
            self._retry_count -= len(old.values)
            taken += len(old.values)
            headers = [("content-type", old.content_type.encode())]
            out.extend(
                self._batches_for(
                    old.keys,
                    old.values,
                    old.content_type,
                    old.first_s,
                    old.segment,
                    headers,
                    partition=old.partition if old.partition in self._partitions else None,
                )
            )
        return self._track(out)

    def _batches_for(
        self,
        keys: list[bytes],
        values: list[bytes],
        content_type: str,
        first_s: float,
        segment: int | None,
        headers: list[tuple[str, bytes]],
        *,
        partition: int | None = None,
    ) -> list[_Batch]:
        if partition is not None:
            chosen = [partition] * len(keys)
        else:
            partitions = self._partitions
            count = len(partitions)
            chosen = [partitions[_key_hash(k) % count] for k in keys]
        return self._fill(keys, values, chosen, content_type, first_s, segment, headers)

    def _new_batch(
        self, partition: int, content_type: str, first_s: float, segment: int | None = None
    ) -> _Batch:
        return _Batch(
            partition, content_type, first_s, segment, builder=self._producer.create_batch()
        )

    def _track(self, batches: list[_Batch]) -> list[_Batch]:
        for batch in batches:
            batch.builder.close()
            self._unacked[batch] = None
            self._unacked_count += len(batch.values)
        return batches

    async def _dispatch(self, batches: list[_Batch]) -> None:
        """Hand batches to the producer: partitions side by side, each partition in order."""
        by_partition: dict[int, list[_Batch]] = {}
        for batch in batches:
            by_partition.setdefault(batch.partition, []).append(batch)
        await asyncio.gather(*(self._send_in_order(group) for group in by_partition.values()))

    async def _send_in_order(self, batches: list[_Batch]) -> None:
        producer = self._producer
        for i, batch in enumerate(batches):
            if batch.abandoned:
                continue
            try:
                future = await producer.send_batch(
                    batch.builder, self._topic, partition=batch.partition
                )
            except Exception as exc:  # not handed over: this batch and the rest retry, in order
                for rest in batches[i:]:
                    if not rest.abandoned:
                        self._on_failure(rest, exc)
                return
            batch.sent_s = time.monotonic()
            future.add_done_callback(partial(self._on_done, batch))

    def _on_done(self, batch: _Batch, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            exc: BaseException | None = KafkaConnectionError("delivery cancelled")
        else:
            exc = future.exception()
        if batch.abandoned:
            return
        if exc is not None:
            self._on_failure(batch, exc)
            return
        del self._unacked[batch]
        count = len(batch.values)
        self._unacked_count -= count
        self._delivered += count
        self._last_ack_s = time.monotonic()
        if self._stalled:
            self._stalled = False
            log.info("Kafka acknowledges again")
        if len(self._latencies) < MAX_LATENCY_OBSERVATIONS:
            self._latencies.append(time.monotonic() - batch.first_s)
        if batch.segment is not None and self._spool is not None:
            self._spool.ack(batch.segment, count)
        self._backoff_s = BACKOFF_MIN_S
        self._wake.set()

    def _on_failure(self, batch: _Batch, exc: BaseException) -> None:
        if batch in self._unacked:
            del self._unacked[batch]
            self._unacked_count -= len(batch.values)
        count = len(batch.values)
        self._failures += 1
        self._last_error = _describe(exc)
        if isinstance(exc, _RECORD_ERRORS):
            self._failed += count
            self._set_error(f"the broker rejected {count} records: {self._last_error}")
            self._ratelimited(
                "rejected",
                logging.ERROR,
                "the broker rejected a batch of %d records for good: %s",
                count,
                self._last_error,
            )
            if batch.segment is not None and self._spool is not None:
                self._spool.ack(batch.segment, count)
        else:
            self._retried += count
            self._retry.append(batch)
            self._retry_count += count
            now = time.monotonic()
            self._retry_after = max(self._retry_after, now + self._backoff_s)
            self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
            if isinstance(exc, TopicAuthorizationFailedError | ClusterAuthorizationFailedError):
                self._set_error(f"not allowed to write to {self._topic!r}: {self._last_error}")
            self._ratelimited(
                "retry",
                logging.WARNING,
                "Kafka did not take %d records (%s); retrying",
                count,
                self._last_error,
                count=count,
            )
            if isinstance(exc, _PRODUCER_FATAL) or self._producer_broken():
                self._reset_producer(self._last_error)
        if self._memory_records() > self._config.queue_records:
            self._schedule_spill()
        self._wake.set()

    def _producer_broken(self) -> bool:
        sender = getattr(self._producer, "_sender", None)
        task = getattr(sender, "sender_task", None)
        return task is not None and task.done()

    async def _watch(self) -> None:
        """Notice a broker that stopped acknowledging (aiokafka retries in-flight batches of an
        idempotent producer forever, silently) and route new records to the spool meanwhile.
        Stalled: batches wait for acknowledgement (or a retry) and nothing was acknowledged for
        STALL_S since they started waiting. Only an acknowledgement ends it."""
        busy = False
        probed_s = 0.0
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = time.monotonic()
            waiting = bool(self._retry) or any(b.sent_s for b in self._unacked)
            if not waiting:
                busy = False
                continue
            if not busy:
                busy, self._busy_since = True, now
            quiet_s = now - max(self._busy_since, self._last_ack_s)
            if quiet_s > STALL_S and not self._stalled and self._connected:
                self._stalled = True
                self._spool_mode = True
                self._schedule_spill()
                log.warning(
                    "Kafka has not acknowledged anything for %.0f s; spooling new records to %s",
                    quiet_s,
                    self._spool_path,
                )
            if self._stalled and self._connected and now - probed_s > STALL_S:
                probed_s = now
                await self._probe_while_stalled()

    async def _probe_while_stalled(self) -> None:
        """A stalled broker that refuses connections is gone: replace the producer (see
        _reset_producer). One that answers is only slow: keep waiting for its acks."""
        try:
            async with asyncio.timeout(self._config.connect_timeout_s):
                await self._probe()
        except (SinkError, TimeoutError) as exc:
            if self._stalled and self._connected:
                self._reset_producer(f"Kafka is unreachable ({exc})", graceful=False)

    # -- status --------------------------------------------------------------------------------

    def _set_error(self, message: str) -> None:
        self._error = message
        self._error_s = time.monotonic()

    def status(self) -> SinkStatus:
        """State, detail and counters; hands over (and forgets) the latency observations."""
        now = time.monotonic()
        spool_bytes = self._spool.size_bytes if self._spool is not None else 0
        state: Literal["ok", "degraded", "failed"] = "ok"
        detail = ""
        if now - self._dropped_s < RECENT_S:
            state, detail = "failed", f"dropping records: spool full ({spool_bytes} bytes)"
        elif self._error and now - self._error_s < RECENT_S:
            state, detail = "failed", self._error
        elif not self._connected:
            state = "degraded"
            detail = f"{self._connect_error or 'not connected'}; spooling ({spool_bytes} bytes)"
        elif self._stalled:
            state = "degraded"
            detail = f"Kafka is not acknowledging; spooling ({spool_bytes} bytes)"
        elif self._spool_mode or spool_bytes:
            state, detail = "degraded", f"replaying the spool ({spool_bytes} bytes)"
        elif self._retry:
            state, detail = "degraded", f"retrying {self._retry_count} records: {self._last_error}"
        observations, self._latencies = self._latencies, []
        return SinkStatus(
            state=state,
            detail=detail,
            queue_records=self._memory_records(),
            spool_bytes=spool_bytes,
            delivered=self._delivered,
            retried=self._retried,
            failed=self._failed,
            dropped=self._dropped,
            failures=self._failures,
            latency_observations=observations,
        )

    @property
    def spool_skipped_bytes(self) -> int:
        """Bytes of torn or corrupt spool data skipped since start (crash leftovers)."""
        return self._spool.counters.skipped_bytes if self._spool is not None else 0

    @property
    def spool_corrupt_segments(self) -> int:
        """Spool segments found torn or corrupt since start."""
        return self._spool.counters.corrupt_segments if self._spool is not None else 0


def use_fast_lz4() -> None:
    """Make aiokafka compress lz4 batches in lz4's fast mode instead of level 9 (LZ4HC).

    Since 0.11 aiokafka compresses lz4 at level 9 with no setting to change it (aio-libs/aiokafka
    issue 1028). Measured here on 200 kB of records: 3.5 ms at level 9, 0.2 ms in fast mode, for
    batches 13 % larger; at level 9 compression alone costs 2.3 us per record, a third of the
    budget of 150k records/s on one core. Brokers decompress either the same way. The replacement
    is process-wide and idempotent; it covers the Cython and the pure-Python record builders.
    """
    cramjam = importlib.import_module("cramjam")  # aiokafka's codec library (extra lz4/zstd)

    def lz4_encode(payload: Any, level: int = LZ4_LEVEL) -> bytes:
        # Kafka's lz4 framing: independent blocks, no content checksum (KIP-57)
        compressor = cramjam.lz4.Compressor(level=level, content_checksum=False, block_linked=False)
        compressor.compress(payload)
        return bytes(compressor.finish())

    for name in (
        "aiokafka.codec",
        "aiokafka.record.default_records",
        "aiokafka.record._crecords.default_records",
    ):
        with contextlib.suppress(ImportError):
            module = importlib.import_module(name)
            if getattr(module, "lz4_encode", None) is not None:
                setattr(module, "lz4_encode", lz4_encode)  # noqa: B010 - a module global


def _is_retriable(exc: BaseException) -> bool:
    if isinstance(exc, _AUTH_ERRORS):
        return False
    if isinstance(exc, KafkaTimeoutError | KafkaConnectionError | OSError | TimeoutError):
        return True
    return bool(getattr(exc, "retriable", False))


def _describe(exc: BaseException) -> str:
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
    kwargs: dict[str, Any] = {
        "client_id": client_id or c.client_id,
        "request_timeout_ms": c.request_timeout_ms,
        "security_protocol": c.security_protocol,
        "ssl_context": ssl_context(c),
    }
    if c.sasl_mechanism in ("OAUTHBEARER", "AWS_MSK_IAM"):
        kwargs["sasl_mechanism"] = "OAUTHBEARER"
        kwargs["sasl_oauth_token_provider"] = msk_iam_token_provider(c.aws_region)
    elif c.sasl_mechanism is not None:
        kwargs["sasl_mechanism"] = c.sasl_mechanism
        kwargs["sasl_plain_username"] = c.sasl_username
        kwargs["sasl_plain_password"] = c.sasl_password
    return kwargs
