"""deploy/clickhouse/ run by a real ClickHouse engine in-process (chdb).

The JSON records of a replayed capture go in through the materialized view exactly as shipped;
every documented query runs and its sums must equal the sums computed from the records here.
chdb cannot run the Kafka engine (creating a Kafka table fails with "Shutdown was called" in
the embedded server), so the topic table is replaced by a Null-engine table with the same
columns, which fires the same view on insert; the Kafka statement itself is checked by
ClickHouse's parser. goflow2's path into ClickHouse (the Protobuf input format with the shipped
.proto, as goflow2's ClickHouse example reads its topic) is checked on a goflow2 file.
"""

from __future__ import annotations

import calendar
import ipaddress
import json
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from export_capture import build_capture, json_records, replay, write_config

chdb = pytest.importorskip("chdb")
from chdb import session as chdb_session  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "deploy" / "clickhouse" / "schema.sql"
QUERIES = ROOT / "deploy" / "clickhouse" / "queries.sql"
KAFKA_ENGINE = re.compile(r"ENGINE = Kafka\nSETTINGS\n(?:    .*\n)*?    .*;\n")
DAY_MS = 86_400_000


def statements(sql: str) -> list[str]:
    """The statements of a .sql file (comments dropped)."""
    out = []
    for chunk in re.split(r";\s*\n", sql):
        body = "\n".join(line for line in chunk.splitlines() if not line.startswith("--")).strip()
        if body:
            out.append(body)
    return out


def documented_queries() -> dict[str, str]:
    queries = {}
    for part in QUERIES.read_text().split("-- name: ")[1:]:
        name, body = part.split("\n", 1)
        queries[name.strip()] = statements(body)[0]
    return queries


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The capture's JSON records, moved by whole days to yesterday (inside the 30-day TTL); its
    filter records the flows it rejects, so the topic holds "reject" records too."""
    base = tmp_path_factory.mktemp("clickhouse")
    config = write_config(base / "c.toml", record_rejected=True)
    reference = json_records(build_capture(base / "mirror.pcap"), config)
    assert {r["action"] for r in reference} == {"accept", "reject"}
    days = (int(time.time() * 1000) - reference[0]["start_ms"]) // DAY_MS - 1
    for r in reference:
        r["start_ms"] += days * DAY_MS
        r["end_ms"] += days * DAY_MS
    return reference


class ClickHouse:
    def __init__(self, path: Path) -> None:
        self.session = chdb_session.Session(str(path))

    def run(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        result = self.session.query(sql, "JSONEachRow", params=params or {})
        return [json.loads(line) for line in str(result).splitlines() if line.strip()]

    def load(self, rows: list[dict[str, Any]], path: Path) -> None:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        self.session.query(f"INSERT INTO flows_kafka FROM INFILE '{path}' FORMAT JSONEachRow")


@pytest.fixture
def clickhouse(tmp_path: Path) -> ClickHouse:
    engine = ClickHouse(tmp_path / "ch")
    sql, replaced = KAFKA_ENGINE.subn("ENGINE = Null;\n", SCHEMA.read_text())
    assert replaced == 1 and "Kafka" not in "".join(statements(sql))
    for statement in statements(sql):
        engine.session.query(statement)
    return engine


def window(records: list[dict[str, Any]]) -> dict[str, str]:
    first = min(r["start_ms"] for r in records) // DAY_MS * DAY_MS
    fmt = "%Y-%m-%d %H:%M:%S"
    return {
        "from": time.strftime(fmt, time.gmtime(first / 1000)),
        "to": time.strftime(fmt, time.gmtime(first / 1000 + 2 * 86400)),
        "top": 1000,
    }


def plain(address: str) -> str:
    return str(ipaddress.ip_address(address))


def test_the_view_loads_every_record_with_addresses_as_ipv6(
    clickhouse: ClickHouse, records: list[dict[str, Any]], tmp_path: Path
) -> None:
    clickhouse.load(records, tmp_path / "records.jsonl")
    (totals,) = clickhouse.run("SELECT count() AS n, sum(bytes) AS b, sum(packets) AS p FROM flows")
    assert (int(totals["n"]), int(totals["b"]), int(totals["p"])) == (
        len(records),
        sum(r["bytes"] for r in records),
        sum(r["packets"] for r in records),
    )
    rows = clickhouse.run(
        "SELECT toString(src_addr) AS src, toTypeName(src_addr) AS t, session, interface_id, "
        "direction, toUnixTimestamp64Milli(start_time) AS start_ms, flow_id, sequence FROM flows"
    )
    assert {row["t"] for row in rows} == {"IPv6"}
    stored = sorted((row["sequence"], row["src"]) for row in rows)
    expected = []
    for r in records:
        address = ipaddress.ip_address(r["src_addr"])
        mapped = f"::ffff:{address}" if address.version == 4 else str(address)
        expected.append((r["sequence"], mapped))
    assert stored == sorted(expected)
    assert sorted((int(row["sequence"]), int(row["start_ms"]), row["flow_id"]) for row in rows) == (
        sorted((r["sequence"], r["start_ms"], r["flow_id"]) for r in records)
    )


def test_every_documented_query_sums_to_the_records(
    clickhouse: ClickHouse, records: list[dict[str, Any]], tmp_path: Path
) -> None:
    clickhouse.load(records, tmp_path / "records.jsonl")
    queries = documented_queries()
    assert set(queries) == {
        "top_talkers_per_eni_and_direction",
        "bytes_per_session_per_minute",
        "connections_by_flow_id",
        "records_missing_per_exporter",
        "flows_rejected_per_rule",
    }
    params = window(records)
    rejected: dict[tuple[str, str, int | None], list[Any]] = defaultdict(
        lambda: [0, 0, 0, set(), set()]
    )
    for r in records:
        if r["action"] == "reject":
            row = rejected[r["session"], r["direction"], r["filter_rule"]]
            row[0] += 1
            row[1] += r["packets"]
            row[2] += r["bytes"]
            row[3].add(plain(r["src_addr"]))
            row[4].add(plain(r["dst_addr"]))
    assert rejected  # the capture's UDP to 5353, rule 100

    talkers: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    minutes: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    connections: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for r in records:
        if r["action"] != "accept":  # traffic sums take kept flows only
            continue
        for table, key in (
            (talkers, (r["interface_id"], r["direction"], plain(r["src_addr"]))),
            (minutes, (r["session"], r["start_ms"] // 60_000 * 60)),
        ):
            table[key][0] += r["bytes"]
            table[key][1] += r["packets"]
            table[key][2] += 1
        c = connections[r["flow_id"]]
        c[0] += r["bytes"]
        c[1] += r["packets"]
        c[2] += 1
        c[3] += r["bytes"] if r["direction"] == "egress" else 0
        c[4] += r["bytes"] if r["direction"] == "ingress" else 0

    rows = clickhouse.run(queries["top_talkers_per_eni_and_direction"], params)
    got = {
        (row["interface_id"], row["direction"], row["source"]): [
            int(row["total_bytes"]),
            int(row["total_packets"]),
            int(row["flows"]),
        ]
        for row in rows
    }
    assert got == dict(talkers)
    # ordered by bytes within each (ENI, direction), and LIMIT BY cuts each group
    small = clickhouse.run(queries["top_talkers_per_eni_and_direction"], {**params, "top": 1})
    for row in small:
        group = [
            v[0] for k, v in talkers.items() if k[:2] == (row["interface_id"], row["direction"])
        ]
        assert int(row["total_bytes"]) == max(group)
    assert len(small) == len({k[:2] for k in talkers})

    rows = clickhouse.run(queries["bytes_per_session_per_minute"], params)
    got_minutes = {
        (row["session"], calendar.timegm(time.strptime(row["minute"], "%Y-%m-%d %H:%M:%S"))): [
            int(row["total_bytes"]),
            int(row["total_packets"]),
            int(row["flows"]),
        ]
        for row in rows
    }
    assert got_minutes == dict(minutes)
    assert len({m for _, m in minutes}) >= 3  # the capture spans several minutes

    rows = clickhouse.run(queries["connections_by_flow_id"], params)
    got_connections = {
        row["flow_id"]: [
            int(row["total_bytes"]),
            int(row["total_packets"]),
            int(row["records"]),
            int(row["egress_bytes"]),
            int(row["ingress_bytes"]),
        ]
        for row in rows
    }
    assert got_connections == dict(connections)
    both_ways = [c for c in got_connections.values() if c[3] and c[4]]
    assert both_ways  # connections seen in both directions are merged into one row

    rows = clickhouse.run(queries["records_missing_per_exporter"], params)
    assert [(row["exporter"], int(row["missing"]), int(row["duplicates"])) for row in rows] == [
        (records[0]["exporter"], 0, 0)
    ]
    assert int(rows[0]["received"]) == len(records)

    rows = clickhouse.run(queries["flows_rejected_per_rule"], params)
    got_rejected = {
        (row["session"], row["direction"], row["filter_rule"]): [
            int(row["flows"]),
            int(row["total_packets"]),
            int(row["total_bytes"]),
            int(row["sources"]),
            int(row["destinations"]),
        ]
        for row in rows
    }
    assert got_rejected == {
        key: [flows, packets, nbytes, len(sources), len(destinations)]
        for key, (flows, packets, nbytes, sources, destinations) in rejected.items()
    }


def test_sequence_gaps_and_duplicates_are_reported(
    clickhouse: ClickHouse, records: list[dict[str, Any]], tmp_path: Path
) -> None:
    delivered = [r for r in records if r["sequence"] not in (5, 6, 7)] + records[:2]
    clickhouse.load(delivered, tmp_path / "lossy.jsonl")
    (row,) = clickhouse.run(documented_queries()["records_missing_per_exporter"], window(records))
    assert (int(row["missing"]), int(row["duplicates"])) == (3, 2)


def test_the_ttl_drops_flows_older_than_30_days(
    clickhouse: ClickHouse, records: list[dict[str, Any]], tmp_path: Path
) -> None:
    old = [{**r, "start_ms": r["start_ms"] - 40 * DAY_MS} for r in records[:5]]
    clickhouse.load(old + records[5:], tmp_path / "mixed.jsonl")
    clickhouse.session.query("OPTIMIZE TABLE flows FINAL")
    (row,) = clickhouse.run("SELECT count() AS n FROM flows")
    assert int(row["n"]) == len(records) - 5


def test_the_kafka_statement_is_valid_clickhouse_sql(clickhouse: ClickHouse) -> None:
    (kafka,) = [s for s in statements(SCHEMA.read_text()) if "ENGINE = Kafka" in s]
    literal = kafka.replace("\\", "\\\\").replace("'", "\\'")
    (row,) = clickhouse.run(f"SELECT formatQuery('{literal}') AS f")
    assert "ENGINE = Kafka" in row["f"]
    assert "kafka_format = 'JSONEachRow'" in row["f"]


def test_goflow2_records_read_through_the_protobuf_format(
    tmp_path: Path, clickhouse: ClickHouse
) -> None:
    capture = build_capture(tmp_path / "mirror.pcap")
    reference = json_records(capture, write_config(tmp_path / "json.toml"))
    out = tmp_path / "flows.bin"
    config = write_config(tmp_path / "g.toml", '\n[records]\nformat = "goflow2"\n')
    replay(capture, config, "--sink", f"file:{out}")
    schema_dir = ROOT / "schema"
    rows = clickhouse.run(
        f"SELECT bytes, packets, proto, src_port, dst_port, sequence_num, "
        f"time_flow_start_ns FROM file('{out}', 'Protobuf') "
        f"SETTINGS format_schema = '{schema_dir}/goflow2-flow.proto:FlowMessage'"
    )
    columns = ("sequence_num", "bytes", "packets", "proto", "src_port", "dst_port")
    got = [(*(int(r[c]) for c in columns), int(r["time_flow_start_ns"])) for r in rows]
    fields = ("sequence", "bytes", "packets", "protocol", "src_port", "dst_port")
    assert got == [(*(r[f] for f in fields), r["start_ms"] * 1_000_000) for r in reference]


def test_records_without_the_action_field_are_accepted_flows(
    clickhouse: ClickHouse, records: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Records of collectors older than the action field (it is absent) load as accepted flows."""
    old = [{k: v for k, v in r.items() if k not in ("action", "filter_rule")} for r in records]
    clickhouse.load(old, tmp_path / "old.jsonl")
    rows = clickhouse.run("SELECT toString(action) AS a, count() AS n FROM flows GROUP BY a")
    assert [(row["a"], int(row["n"])) for row in rows] == [("accept", len(records))]
