-- ClickHouse tables for the collector's Kafka topic (JSON records, the default records.format).
-- Apply with: clickhouse client --multiquery < deploy/clickhouse/schema.sql
-- Edit kafka_broker_list and kafka_topic_list first. See deploy/clickhouse/README.md.

-- 1. The topic. One JSON record per message; fields the collector adds later are skipped until
--    you add them here (records only ever gain fields). Broken messages are skipped (up to
--    kafka_skip_broken_messages per block) rather than stopping the consumer.
CREATE TABLE IF NOT EXISTS flows_kafka
(
    flow_id String,
    exporter String,
    sequence UInt64,
    vni UInt32,
    session Nullable(String),
    interface_id Nullable(String),
    direction String,
    ip_version UInt8,
    protocol UInt8,
    src_addr String,
    dst_addr String,
    src_port UInt16,
    dst_port UInt16,
    icmp_type Nullable(UInt8),
    icmp_code Nullable(UInt8),
    packets UInt64,
    bytes UInt64,
    tcp_flags UInt8,
    start_ms UInt64,
    end_ms UInt64,
    end_reason String,
    instance_id Nullable(String),
    subnet_id Nullable(String),
    vpc_id Nullable(String),
    az_id Nullable(String),
    account_id Nullable(String),
    region Nullable(String),
    tags Map(String, String),
    schema_version UInt8,
    action String,
    filter_rule Nullable(UInt16)
)
ENGINE = Kafka
SETTINGS
    kafka_broker_list = 'kafka-1:9092,kafka-2:9092',
    kafka_topic_list = 'flows',
    kafka_group_name = 'clickhouse-flows',
    kafka_format = 'JSONEachRow',
    kafka_num_consumers = 1,
    kafka_skip_broken_messages = 100,
    input_format_skip_unknown_fields = 1;

-- 2. The flows. Partitioned by day (the TTL drops whole days), ordered for the documented
--    queries: they filter or group by ENI and direction over a time range, so those lead the key,
--    then the minute. Addresses are IPv6, IPv4 ones mapped (::ffff:10.0.1.25), so one column
--    holds both families and sorts and compares correctly; the queries print IPv4 without the
--    prefix. Null strings become '' (LowCardinality keeps repeated ENI/session names cheap).
CREATE TABLE IF NOT EXISTS flows
(
    start_time DateTime64(3, 'UTC'),
    end_time DateTime64(3, 'UTC'),
    interface_id LowCardinality(String),
    session LowCardinality(String),
    direction Enum8('unknown' = 0, 'ingress' = 1, 'egress' = 2),
    vni UInt32,
    ip_version UInt8,
    protocol UInt8,
    src_addr IPv6,
    dst_addr IPv6,
    src_port UInt16,
    dst_port UInt16,
    icmp_type Nullable(UInt8),
    icmp_code Nullable(UInt8),
    packets UInt64,
    bytes UInt64,
    tcp_flags UInt8,
    end_reason LowCardinality(String),
    flow_id FixedString(16),
    exporter LowCardinality(String),
    sequence UInt64,
    instance_id LowCardinality(String),
    subnet_id LowCardinality(String),
    vpc_id LowCardinality(String),
    az_id LowCardinality(String),
    account_id LowCardinality(String),
    region LowCardinality(String),
    tags Map(LowCardinality(String), String),
    -- 'reject': a flow the session's filter turned away (filters with record_rejected), with the
    -- rule that did (NULL: no rule matched). Its packets were not kept: traffic sums take 'accept'.
    action Enum8('accept' = 1, 'reject' = 2),
    filter_rule Nullable(UInt16),
    -- merging a connection by flow_id reads only the granules that can hold it
    INDEX flow_id_bloom flow_id TYPE bloom_filter GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toDate(start_time)
ORDER BY (interface_id, direction, toStartOfMinute(start_time), src_addr)
TTL toDateTime(start_time) + INTERVAL 30 DAY DELETE
SETTINGS ttl_only_drop_parts = 1;

-- 3. Topic -> flows, converting as it goes: Unix ms to DateTime64, text addresses to IPv6
--    (toIPv6 maps IPv4), nulls to ''; records of collectors older than the action field (no
--    action: '') are accepted flows.
CREATE MATERIALIZED VIEW IF NOT EXISTS flows_from_kafka TO flows AS
SELECT
    fromUnixTimestamp64Milli(toInt64(k.start_ms), 'UTC') AS start_time,
    fromUnixTimestamp64Milli(toInt64(k.end_ms), 'UTC') AS end_time,
    ifNull(k.interface_id, '') AS interface_id,
    ifNull(k.session, '') AS session,
    CAST(k.direction, 'Enum8(\'unknown\' = 0, \'ingress\' = 1, \'egress\' = 2)') AS direction,
    k.vni AS vni,
    k.ip_version AS ip_version,
    k.protocol AS protocol,
    toIPv6(k.src_addr) AS src_addr,
    toIPv6(k.dst_addr) AS dst_addr,
    k.src_port AS src_port,
    k.dst_port AS dst_port,
    k.icmp_type AS icmp_type,
    k.icmp_code AS icmp_code,
    k.packets AS packets,
    k.bytes AS bytes,
    k.tcp_flags AS tcp_flags,
    k.end_reason AS end_reason,
    toFixedString(k.flow_id, 16) AS flow_id,
    k.exporter AS exporter,
    k.sequence AS sequence,
    ifNull(k.instance_id, '') AS instance_id,
    ifNull(k.subnet_id, '') AS subnet_id,
    ifNull(k.vpc_id, '') AS vpc_id,
    ifNull(k.az_id, '') AS az_id,
    ifNull(k.account_id, '') AS account_id,
    ifNull(k.region, '') AS region,
    k.tags AS tags,
    CAST(if(k.action = '', 'accept', k.action), 'Enum8(\'accept\' = 1, \'reject\' = 2)') AS action,
    k.filter_rule AS filter_rule
FROM flows_kafka AS k;
