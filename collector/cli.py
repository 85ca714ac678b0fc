"""Command line: run, replay, check-config, schema, tail."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from collector import __version__
from collector.config import load_config
from collector.errors import CollectorError, ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="collector",
        description="AWS VPC Traffic Mirroring collector: VXLAN in, flow records out.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="receive VXLAN on UDP and publish flow records")
    run.add_argument("--config", metavar="FILE", help="TOML config file")
    run.add_argument(
        "--listen", metavar="HOST:PORT", help="UDP address for VXLAN (0.0.0.0:4789; off: none)"
    )
    run.add_argument(
        "--geneve-listen",
        metavar="HOST:PORT",
        help="UDP address for GENEVE from a Gateway Load Balancer (0.0.0.0:6081; off: none)",
    )
    run.add_argument("--health", metavar="HOST:PORT", help="HTTP health/metrics (0.0.0.0:8080)")
    run.add_argument("--workers", type=int, metavar="N", help="worker processes (0 = one per CPU)")
    run.add_argument(
        "--sink",
        metavar="SPEC",
        help="- | file:PATH | kafka://HOST:PORT/TOPIC | ipfix://HOST:PORT | ipfix+tcp://HOST:PORT",
    )
    run.add_argument("--log-format", choices=("text", "json"), help="log line format")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    run.add_argument("--drain-s", type=float, metavar="S", help="keep ingesting after SIGTERM")

    replay = sub.add_parser("replay", help="run a pcap/pcapng capture through the pipeline")
    replay.add_argument("capture", metavar="CAPTURE")
    replay.add_argument("--config", metavar="FILE", help="TOML config file")
    replay.add_argument(
        "--sink",
        metavar="SPEC",
        default="-",
        help="- | file:PATH | kafka://HOST:PORT/TOPIC | ipfix://HOST:PORT | ipfix+tcp://HOST:PORT",
    )

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file", metavar="FILE")

    sub.add_parser("schema", help="print the JSON Schema of the flow record")

    tail = sub.add_parser("tail", help="read records from a Kafka topic and print them")
    tail.add_argument("spec", metavar="kafka://HOST:PORT/TOPIC")
    tail.add_argument("--format", choices=("table", "json", "vpc-flow-log"), default="table")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--config", metavar="FILE", help="TOML config file (Kafka security settings)")
    tail.add_argument("--max-records", type=int, metavar="N", help="stop after N records")
    tail.add_argument("--timeout-s", type=float, metavar="S", help="stop after S idle seconds")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "listen": getattr(args, "listen", None),
        "geneve_listen": getattr(args, "geneve_listen", None),
        "health": getattr(args, "health", None),
        "workers": getattr(args, "workers", None),
        "sink": getattr(args, "sink", None),
        "log_format": getattr(args, "log_format", None),
        "log_level": getattr(args, "log_level", None),
        "drain_s": getattr(args, "drain_s", None),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"collector: config error: {exc}", file=sys.stderr)
        return ConfigError.exit_status
    except CollectorError as exc:
        print(f"collector: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `collector schema | head`: the reader left, nothing is wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "schema":
        from collector.records import json_schema  # noqa: PLC0415

        print(json.dumps(json_schema(), indent=2, sort_keys=True))
        return 0
    if args.command == "check-config":
        from collector.checks import validate  # noqa: PLC0415

        config = load_config(args.file)
        validate(config)
        print(f"{args.file}: ok ({len(config.sessions)} sessions, {len(config.filters)} filters)")
        return 0
    if args.command == "replay":
        from collector.replay import run_replay  # noqa: PLC0415

        config = load_config(args.config)
        from collector.sessions import build_sessions  # noqa: PLC0415

        build_sessions(config)
        return run_replay(args.capture, config, sink_spec=args.sink)
    if args.command == "tail":
        from collector.tail import run_tail  # noqa: PLC0415

        config = load_config(args.config)
        return run_tail(args, config)
    config = load_config(args.config, overrides=_overrides(args))
    from collector.checks import validate  # noqa: PLC0415 - keep `schema` import-light

    validate(config)
    from collector.service import run_service  # noqa: PLC0415

    return run_service(config, config_path=args.config, overrides=_overrides(args))
