"""One typed, frozen config tree (house rule 7): TOML file, then COLLECTOR_* environment, then CLI flags.

Every error names its key as a dotted path (``flows.active_timeout_s``, ``sessions[1].vni``) and the
command line turns it into exit status 2.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from collector.errors import ConfigError
from collector.terms import DEFAULT_FLOW_LOG_FORMAT

Seconds = Annotated[float, msgspec.Meta(ge=0)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]
Count = Annotated[int, msgspec.Meta(ge=1)]


class FilterRuleConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One mirror-filter rule, with the fields of AWS::EC2::TrafficMirrorFilterRule."""

    direction: str
    """``ingress`` or ``egress``, relative to the mirror-source ENI."""
    rule_number: int
    """Evaluated in ascending order within a direction; unique per direction (AWS: 1-32766)."""
    action: str
    """``accept`` or ``reject``."""
    source_cidr: str
    """Source CIDR block; same address family as ``destination_cidr``."""
    destination_cidr: str
    """Destination CIDR block."""
    protocol: int | None = None
    """IANA protocol number; absent means every protocol."""
    source_ports: str | int | None = None
    """``"N"`` or ``"N-M"`` (or N); only TCP and UDP packets can match a port range."""
    destination_ports: str | int | None = None
    """``"N"`` or ``"N-M"``; only TCP and UDP packets can match a port range."""
    description: str = ""
    """Free text, shown in error messages."""


class FilterConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A mirror filter: inline rules, or the output of ``aws ec2 describe-traffic-mirror-filters``."""

    rules: tuple[FilterRuleConfig, ...] = ()
    """Inline rules (``[[filters.NAME.rules]]``)."""
    aws_json: str | None = None
    """Path to a describe-traffic-mirror-filters JSON output (relative to the config file)."""
    filter_id: str | None = None
    """Which TrafficMirrorFilterId to take when ``aws_json`` holds several."""
    record_rejected: bool = False
    """Also emit records of the flows this filter does not keep (``action`` "reject", with the
    number of the rule that rejected them): what the filter turns away, per rule. Their packets
    still count as ``filter_reject`` drops."""


class SessionConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A traffic mirror session: one VNI = one source ENI."""

    vni: Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFF)]
    """The session's VirtualNetworkId (24 bits)."""
    name: str = ""
    """Name carried in every record (``session``); defaults to ``vni-N``."""
    interface_id: str | None = None
    """The mirror-source ENI id (eni-...)."""
    addresses: tuple[str, ...] = ()
    """The ENI's addresses, IPv4 and IPv6, as IPs or CIDRs; they tell ingress from egress."""
    filter: str | None = None
    """Name of a ``[filters.NAME]`` table; none keeps every packet."""
    instance_id: str | None = None
    """EC2 instance the ENI is attached to (record context)."""
    subnet_id: str | None = None
    """Subnet of the ENI (record context)."""
    vpc_id: str | None = None
    """VPC of the ENI (record context)."""
    az_id: str | None = None
    """Availability Zone id, e.g. use1-az1 (record context)."""
    account_id: str | None = None
    """Owner account of the ENI (record context)."""
    region: str | None = None
    """AWS Region (record context)."""
    tags: dict[str, str] = {}
    """Free-form tags copied into every record of the session."""


class FlowsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Flow table timeouts and bounds."""

    active_timeout_s: PositiveSeconds = 60.0
    """A flow still active this long after its first packet is emitted and restarted."""
    inactive_timeout_s: PositiveSeconds = 15.0
    """A flow without packets for this long is emitted."""
    max_flows: Count = 500_000
    """Flows per worker. Protects memory against floods of new 5-tuples: beyond it the oldest flows
    are emitted early (end_reason ``evicted``, max_flows/1024 of them at once) instead of the table
    growing. A flow costs about 230 bytes of resident memory (bench/memory.py)."""
    expire_interval_s: PositiveSeconds = 1.0
    """How often the live service looks for expired flows."""
    accept_unknown_vni: bool = False
    """With sessions configured, keep packets of VNIs no session names (as sessions without filter)."""


class RecordsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How records are named and encoded."""

    format: Literal["json", "msgpack", "vpc-flow-log", "goflow2"] = "json"
    """Encoding of each record for the sink."""
    vpc_flow_log_format: str = DEFAULT_FLOW_LOG_FORMAT
    """AWS custom-format string used by the ``vpc-flow-log`` format (default: AWS's v2 format)."""
    exporter: str = ""
    """Exporter name in records; empty means the host name. The worker index is appended."""


class KafkaConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Producer settings for ``kafka://`` sinks."""

    acks: Literal["all", "1", "0"] = "all"
    """Acknowledgements the broker must give before a record counts as delivered. ``1`` and ``0``
    need ``allow_unsafe_acks`` (and idempotence off); with ``0`` the broker acknowledges nothing,
    so no record is ever counted delivered: each is counted "sent, unacknowledged"
    (``collector_records_sent_unacknowledged_total``)."""
    enable_idempotence: bool = True
    """Idempotent producer: broker-side de-duplication of retried batches. Turning it off needs
    ``allow_unsafe_acks``."""
    allow_unsafe_acks: bool = False
    """Accept settings that can lose acknowledged records or store them twice: ``acks = "1"`` (a
    leader that fails before its followers copied a batch loses it) and ``enable_idempotence =
    false`` (retries can store a batch twice or out of order)."""
    compression: Literal["lz4", "zstd", "gzip", "none"] = "lz4"
    """Batch compression codec."""
    linger_ms: Annotated[int, msgspec.Meta(ge=0)] = 20
    """How long the producer waits to fill a batch."""
    max_batch_bytes: Count = 1_048_576
    """Largest producer batch per partition."""
    client_id: str = "vpc-mirror-collector"
    """Client id shown in broker logs and quotas."""
    topic_partitions: Count = 6
    """Partitions of the topic when the collector creates it."""
    topic_replication_factor: Count | None = None
    """Replication factor of the topic when the collector creates it; unset: the cluster's own
    ``default.replication.factor``. Either is checked against the number of brokers first."""
    create_topic: bool = True
    """Create a missing topic at start, and again when it is deleted while the collector runs
    (logged as a warning and counted); off: a deleted topic is an error, records are spooled."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """Transport security."""
    tls_ca_file: str | None = None
    """CA bundle for TLS."""
    tls_cert_file: str | None = None
    """Client certificate for mutual TLS."""
    tls_key_file: str | None = None
    """Client key for mutual TLS."""
    sasl_mechanism: (
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "AWS_MSK_IAM"] | None
    ) = None
    """SASL mechanism; AWS_MSK_IAM uses OAUTHBEARER with an MSK IAM token (optional extra)."""
    sasl_username: str | None = None
    """SASL user name."""
    sasl_password: str | None = None
    """SASL password; never logged."""
    aws_region: str | None = None
    """Region for MSK IAM tokens."""
    queue_records: Count = 100_000
    """In-memory records awaiting acknowledgement before they spill to the spool. Bounds memory
    when the broker is slow or down."""
    queue_bytes: Count = 134_217_728
    """In-memory bytes of records awaiting acknowledgement (keys and values; records not yet
    encoded are estimated from the recent average) before they spill to the spool. Bounds memory
    when records are large, whatever their count."""
    end_markers: bool = False
    """When a worker that did not shut down cleanly is replaced, publish an end marker naming its
    exporter and last sequence (content type application/vnd.vpc-mirror-collector.exporter-end+json)
    so ``collector tail`` reports its lost tail. Off: consumers that read every message as a record
    need no change."""
    wal: bool = False
    """Write-ahead: every record is appended to the spool before it is sent and removed once
    acknowledged, so a crash of the process (SIGKILL, OOM) loses no record the spool thread has
    written; a host crash can still lose what was not yet fsynced. Costs throughput (measured in
    README, "Delivery")."""
    spool_dir: str = "/var/lib/collector/spool"
    """Directory of the disk spool for undelivered records."""
    spool_max_bytes: Count = 1_073_741_824
    """Largest spool on disk; beyond it records are dropped and counted. Protects the disk."""
    connect_timeout_s: PositiveSeconds = 10.0
    """How long start-up waits for the broker before it reports a clear error."""
    flush_timeout_s: PositiveSeconds = 10.0
    """At shutdown, how long to wait for acknowledgements before spooling the rest."""
    require_broker_at_start: bool = False
    """Fail start-up when no broker answers within connect_timeout_s; off: start degraded and spool
    until one does (a fleet keeps taking traffic through a Kafka outage). Bad credentials, TLS
    errors and a topic that cannot be created always fail start-up."""
    request_timeout_ms: Annotated[int, msgspec.Meta(ge=1000)] = 30_000
    """How long the producer waits for a broker response before it retries a request."""
    spool_segment_bytes: Annotated[int, msgspec.Meta(ge=4096)] = 8_388_608
    """Size of one spool file. A file is fsynced when closed and deleted once every record in it is
    acknowledged, so after a crash at most one file of records is sent twice."""

    def __repr__(self) -> str:
        """Like the default, with the password masked: configs end up in logs and tracebacks."""
        fields = ", ".join(
            f"{name}={'***' if name == 'sasl_password' and value else repr(value)}"
            for name, value in msgspec.structs.asdict(self).items()
        )
        return f"KafkaConfig({fields})"

    def __rich_repr__(self) -> Any:
        """Rich's pretty printer, with the password masked as in ``__repr__``."""
        for name, value in msgspec.structs.asdict(self).items():
            yield name, "***" if name == "sasl_password" and value else value


class IpfixConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """IPFIX export for ``ipfix://`` (UDP) and ``ipfix+tcp://`` sinks (RFC 7011)."""

    observation_domain_id: Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)] = 1
    """Observation Domain ID in every message header; the worker index is added to it, so each
    worker (its own transport session and sequence numbers) is its own domain at the receiver."""
    mtu_bytes: Annotated[int, msgspec.Meta(ge=1280, le=65535)] = 1500
    """Path MTU to the collector: UDP messages stay within it minus the IP and UDP headers."""
    template_refresh_s: PositiveSeconds = 60.0
    """UDP: templates are sent again this often, so a restarted collector decodes data again."""
    max_datagrams_per_s: Annotated[int, msgspec.Meta(ge=0)] = 10_000
    """UDP: pacing per worker, so a burst (a big expiry pass, a replay) does not overrun the
    receiver's socket buffer; datagrams wait meanwhile (within queue_records). 0: no pacing."""
    enterprise_number: Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)] = 32473
    """Private Enterprise Number of the session/ENI/AWS elements (default: RFC 5612's number for
    documentation; use your organisation's); 0 exports IANA elements only."""
    queue_records: Count = 100_000
    """Records held in memory (TCP: while the collector is unreachable; UDP: waiting for the
    pacing); beyond it records are dropped and counted. Bounds memory."""
    connect_timeout_s: PositiveSeconds = 5.0
    """TCP connect and name-resolution timeout."""
    reconnect_max_s: PositiveSeconds = 30.0
    """TCP: longest wait between reconnect attempts (backoff doubles from 0.5 s)."""
    flush_timeout_s: PositiveSeconds = 10.0
    """At shutdown, how long a TCP exporter waits for its queue to drain before the rest is
    dropped and counted."""


class AwsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Enrichment of sessions from the EC2 API."""

    enrich: bool = False
    """Look sessions and ENIs up with the EC2 API (needs boto3 and instance-role permissions)."""
    region: str | None = None
    """Region of the EC2 API; default: the SDK's own resolution."""
    refresh_interval_s: PositiveSeconds = 300.0
    """How often the EC2 view is refreshed in the background."""
    follow_filters: bool = False
    """Re-read every ``[filters.NAME]`` that names a ``filter_id`` from the EC2 API
    (DescribeTrafficMirrorFilters) every ``filter_refresh_interval_s`` and apply a changed rule set
    through the reload path: a stack update that changes a filter reaches running collectors.
    Needs boto3 and ``ec2:DescribeTrafficMirrorFilters``."""
    filter_refresh_interval_s: PositiveSeconds = 60.0
    """How often followed filters are read from the EC2 API (one call per collector, not per
    worker)."""


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole configuration."""

    listen: str = "0.0.0.0:4789"  # a collector behind an NLB listens on all addresses
    """UDP address the workers receive VXLAN on (Network Load Balancer and ENI targets); ``""`` or
    ``off`` turns this listener off."""
    geneve_listen: str = "0.0.0.0:6081"
    """UDP address the workers receive GENEVE on (RFC 8926: what a Gateway Load Balancer sends its
    targets); ``""`` or ``off`` turns this listener off. At least one of the two must be on, and
    on ports of their own."""
    health: str = "0.0.0.0:8080"
    """HTTP address of /healthz and /metrics."""
    workers: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Worker processes; 0 means one per CPU."""
    sink: str = "-"
    """``-`` (stdout), ``file:PATH`` or ``kafka://HOST:PORT[,HOST:PORT]/TOPIC``."""
    log_format: Literal["text", "json"] = "text"
    """One line per event, plain or JSON."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level logged."""
    drain_s: Seconds = 0.0
    """After SIGTERM, keep ingesting this long (health already 503) while the NLB deregisters."""
    stop_timeout_s: PositiveSeconds = 25.0
    """After telling a worker to stop (SIGTERM plus drain_s), how long the supervisor waits for it
    to flush its flows and its sink and exit before killing it. Must exceed the sink's own flush
    timeout (``kafka.flush_timeout_s``, ``ipfix.flush_timeout_s``)."""
    recv_buffer_bytes: Count = 33_554_432
    """Receive buffer asked for each worker socket; the kernel caps it at net.core.rmem_max unless
    the collector may pass it (CAP_NET_ADMIN: SO_RCVBUFFORCE)."""
    max_datagram_bytes: Annotated[int, msgspec.Meta(ge=64, le=65535)] = 65535
    """Receive buffer per datagram; longer datagrams are cut by the kernel and count from the IP
    header anyway. Protects memory."""
    max_batch_datagrams: Count = 512
    """Datagrams read per turn of the event loop; timers and health run, then reading goes on at
    once while the socket holds data."""
    recv_mode: Literal["mmsg", "reader", "protocol"] = "mmsg"
    """Receive path: ``mmsg`` (recvmmsg batches; Linux), ``reader`` (recvfrom_into on readiness)
    or ``protocol`` (uvloop DatagramProtocol). See bench/ingest.py for what each costs."""
    recv_coalesce_ms: Annotated[float, msgspec.Meta(ge=0, le=100)] = 1.0
    """``mmsg``: after a read that drained the socket, read again this much later instead of waking
    per datagram (never while data waits). 0 wakes on every readiness event. The socket buffer must
    hold this much traffic."""
    max_loop_lag_s: PositiveSeconds = 5.0
    """A worker whose event loop lags more than this is reported unresponsive."""
    vxlan_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 4789
    """UDP port whose datagrams a pcap replay treats as VXLAN."""
    geneve_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 6081
    """UDP port whose datagrams a pcap replay treats as GENEVE from a Gateway Load Balancer."""
    flows: FlowsConfig = FlowsConfig()
    """Flow table settings."""
    records: RecordsConfig = RecordsConfig()
    """Record naming and encoding."""
    kafka: KafkaConfig = KafkaConfig()
    """Kafka producer settings."""
    aws: AwsConfig = AwsConfig()
    """EC2 API enrichment."""
    ipfix: IpfixConfig = IpfixConfig()
    """IPFIX export settings."""
    sessions: tuple[SessionConfig, ...] = ()
    """Mirror sessions by VNI; none configured accepts every VNI."""
    filters: dict[str, FilterConfig] = {}
    """Mirror filters by name."""
    base_dir: str = "."
    """Directory relative paths in the file are resolved against (set by the loader)."""

    @property
    def listeners(self) -> list[tuple[str, str]]:
        """The listeners that are on, as (config key, address): ``listen`` (VXLAN) first."""
        return [
            (key, address)
            for key, address in (("listen", self.listen), ("geneve_listen", self.geneve_listen))
            if listener_on(address)
        ]

    @property
    def sink_flush_timeout_s(self) -> float:
        """How long a stopping worker waits for its sink: the flush timeout of the sink's own
        section; stdout and file sinks write synchronously, so theirs is 0."""
        if self.sink.startswith("kafka://"):
            return self.kafka.flush_timeout_s
        if self.sink.startswith("ipfix"):
            return self.ipfix.flush_timeout_s
        return 0.0


LISTENER_OFF = frozenset({"", "off"})
GENEVE_LISTENER = "geneve_listen"  # the config key of the GENEVE listener (``listen``: VXLAN)


def listener_on(address: str) -> bool:
    """Whether a listener address turns the listener on (``""`` and ``off`` do not)."""
    return address.strip().lower() not in LISTENER_OFF


def check_delivery_settings(c: KafkaConfig) -> None:
    """Kafka settings that can lose records or store them twice are accepted only with
    ``kafka.allow_unsafe_acks``; a ConfigError names the key that asks for them."""
    if c.acks == "0" and not c.allow_unsafe_acks:
        raise ConfigError(
            "kafka.acks",
            "acks = '0': the broker acknowledges nothing, so a record lost on the way is lost"
            " uncounted and none can be counted delivered (only sent, unacknowledged); set"
            " kafka.allow_unsafe_acks = true (and enable_idempotence = false) to accept that",
        )
    if c.enable_idempotence and c.acks != "all":
        raise ConfigError(
            "kafka.acks",
            f"the idempotent producer needs acks = 'all', not {c.acks!r} (acks = '1' and '0'"
            " also need enable_idempotence = false and allow_unsafe_acks = true)",
        )
    if c.acks != "all" and not c.allow_unsafe_acks:
        raise ConfigError(
            "kafka.acks",
            f"acks = {c.acks!r}: a leader that fails before its followers copied a batch loses"
            " acknowledged records; set kafka.allow_unsafe_acks = true to accept that",
        )
    if not c.enable_idempotence and not c.allow_unsafe_acks:
        raise ConfigError(
            "kafka.enable_idempotence",
            "without the idempotent producer a retried batch can be stored twice or out of order;"
            " set kafka.allow_unsafe_acks = true to accept that",
        )


ENV_PREFIX = "COLLECTOR_"
# Variables of the build and of the test run, not settings: which modules load compiled
# (collector/__init__.py, setup.py) and whether the test run insists on the compiled build.
BUILD_VARIABLES = frozenset(
    {"COLLECTOR_PURE_PYTHON", "COLLECTOR_BUILD_PURE", "COLLECTOR_REQUIRE_COMPILED"}
)
_SECTIONS = ("flows", "records", "kafka", "aws", "ipfix")
_PATH_RE = re.compile(r"at `\$(.*)`")


def _scalar_fields(struct_type: type[msgspec.Struct]) -> set[str]:
    return {f.name for f in msgspec.structs.fields(struct_type)}


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Map ``COLLECTOR_KEY`` and ``COLLECTOR_SECTION_KEY`` variables onto the config tree."""
    top = _scalar_fields(Config) - {"sessions", "filters", "base_dir", *_SECTIONS}
    sections = {
        "flows": _scalar_fields(FlowsConfig),
        "records": _scalar_fields(RecordsConfig),
        "kafka": _scalar_fields(KafkaConfig),
        "aws": _scalar_fields(AwsConfig),
        "ipfix": _scalar_fields(IpfixConfig),
    }
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in BUILD_VARIABLES:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in top:
            out[key] = value
            continue
        for section, fields in sections.items():
            prefix = section + "_"
            if key.startswith(prefix) and key[len(prefix) :] in fields:
                out.setdefault(section, {})[key[len(prefix) :]] = value
                break
        else:
            raise ConfigError(name, "unknown environment setting")
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _key_from_validation(error: msgspec.ValidationError) -> str:
    match = _PATH_RE.search(str(error))
    if not match:
        return "config"
    path = match.group(1).lstrip(".")
    return path or "config"


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML config file; unreadable or malformed files are a ConfigError on ``config``."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {os.fspath(path)}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{os.fspath(path)} is not valid TOML: {exc}") from exc


def _convert(data: Any, target: type[Any], prefix: str) -> Any:
    """msgspec.convert with errors turned into ConfigError naming the dotted key under ``prefix``."""
    try:
        # strict=False lets environment strings ("60", "true") fill numeric and boolean keys
        return msgspec.convert(data, target, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc).split(" - at ")[0]
        path = _key_from_validation(exc)
        path = "" if path == "config" else path
        if message.startswith(("Object contains unknown field", "Object missing required field")):
            field = message.split("`")[1]
            path = f"{path}.{field}" if path else field
            message = "unknown key" if "unknown" in message else "missing required key"
        if prefix:
            path = f"{prefix}.{path}" if path and not path.startswith("[") else prefix + path
        raise ConfigError(path or "config", message) from exc


def build_config(data: Mapping[str, Any]) -> Config:
    """Validate a plain mapping into a Config; errors name the offending key."""
    data = dict(data)
    raw_filters = data.pop("filters", {})
    if not isinstance(raw_filters, Mapping):
        raise ConfigError("filters", "expected a table of [filters.NAME] tables")
    config: Config = _convert(data, Config, "")
    # each filter on its own: msgspec's error paths do not name dictionary keys
    filters = {
        str(name): _convert(value, FilterConfig, f"filters.{name}")
        for name, value in raw_filters.items()
    }
    return msgspec.structs.replace(config, filters=filters)


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """File, then environment, then explicit overrides (CLI flags); later wins."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_toml(path)
        data["base_dir"] = str(Path(path).resolve().parent)
    data = _merge(data, env_overrides(os.environ if environ is None else environ))
    if overrides:
        data = _merge(data, {k: v for k, v in overrides.items() if v is not None})
    return build_config(data)


def resolve_path(config: Config, path: str) -> Path:
    """A path from the config file, relative to the file's directory."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else Path(config.base_dir) / candidate


def parse_hostport(text: str, key: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); a ConfigError naming ``key`` otherwise."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"{text!r} is not HOST:PORT")
    return host, int(port)
