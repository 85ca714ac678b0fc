-- The documented queries over deploy/clickhouse/schema.sql. Each starts with "-- name:" and
-- takes ClickHouse query parameters: clickhouse client --param_from='2026-12-01 00:00:00'
-- --param_to='2026-12-02 00:00:00' --param_top=10 --query "$(sed -n '/name: NAME/,/;/p' ...)".
-- IPv4 addresses are stored IPv4-mapped; the queries print them as plain IPv4. Traffic sums take
-- accepted flows only: 'reject' records (filters with record_rejected) describe what was not kept.

-- name: top_talkers_per_eni_and_direction
-- The sources sending the most bytes, per mirror-source ENI and direction.
SELECT
    interface_id,
    direction,
    replaceRegexpOne(toString(src_addr), '^::ffff:', '') AS source,
    sum(bytes) AS total_bytes,
    sum(packets) AS total_packets,
    count() AS flows
FROM flows
WHERE start_time >= {from:DateTime64(3, 'UTC')} AND start_time < {to:DateTime64(3, 'UTC')}
    AND action = 'accept'
GROUP BY interface_id, direction, src_addr
ORDER BY interface_id, direction, total_bytes DESC, source
LIMIT {top:UInt32} BY interface_id, direction;

-- name: bytes_per_session_per_minute
-- Traffic of each mirror session, minute by minute (by the flow's start).
SELECT
    session,
    toStartOfMinute(start_time) AS minute,
    sum(bytes) AS total_bytes,
    sum(packets) AS total_packets,
    count() AS flows
FROM flows
WHERE start_time >= {from:DateTime64(3, 'UTC')} AND start_time < {to:DateTime64(3, 'UTC')}
    AND action = 'accept'
GROUP BY session, minute
ORDER BY session, minute;

-- name: connections_by_flow_id
-- Both directions of a connection, from every collector and every timeout split, as one row.
SELECT
    flow_id,
    any(protocol) AS protocol,
    min(start_time) AS first_seen,
    max(end_time) AS last_seen,
    sumIf(bytes, direction = 'egress') AS egress_bytes,
    sumIf(bytes, direction = 'ingress') AS ingress_bytes,
    sum(bytes) AS total_bytes,
    sum(packets) AS total_packets,
    count() AS records,
    uniqExact(exporter) AS exporters,
    arraySort(groupUniqArray(interface_id)) AS interfaces
FROM flows
WHERE start_time >= {from:DateTime64(3, 'UTC')} AND start_time < {to:DateTime64(3, 'UTC')}
    AND action = 'accept'
GROUP BY flow_id
ORDER BY total_bytes DESC, flow_id
LIMIT {top:UInt32};

-- name: records_missing_per_exporter
-- Loss between the collector and ClickHouse: gaps in each exporter's sequence numbers
-- (duplicates from at-least-once delivery are counted once).
SELECT
    exporter,
    min(sequence) AS first_sequence,
    max(sequence) AS last_sequence,
    uniqExact(sequence) AS received,
    toInt64(max(sequence) - min(sequence) + 1) - toInt64(uniqExact(sequence)) AS missing,
    count() - uniqExact(sequence) AS duplicates
FROM flows
WHERE start_time >= {from:DateTime64(3, 'UTC')} AND start_time < {to:DateTime64(3, 'UTC')}
GROUP BY exporter
ORDER BY exporter;

-- name: flows_rejected_per_rule
-- What each session's filter turned away, per rule (filters with record_rejected = true): flows,
-- packets and bytes, and how many distinct sources and destinations. A NULL rule: no rule matched
-- (AWS semantics: a filter keeps only what a rule accepts).
SELECT
    session,
    direction,
    filter_rule,
    count() AS flows,
    sum(packets) AS total_packets,
    sum(bytes) AS total_bytes,
    uniqExact(src_addr) AS sources,
    uniqExact(dst_addr) AS destinations,
    min(start_time) AS first_seen,
    max(end_time) AS last_seen
FROM flows
WHERE start_time >= {from:DateTime64(3, 'UTC')} AND start_time < {to:DateTime64(3, 'UTC')}
    AND action = 'reject'
GROUP BY session, direction, filter_rule
ORDER BY session, direction, flows DESC, filter_rule;
