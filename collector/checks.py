"""The checks ``check-config``, ``run`` and a SIGHUP reload all make beyond the config's types.

It sits below both the command line and the supervisor, so neither imports the other to share it.
"""

from __future__ import annotations

import os
from pathlib import Path

from collector.config import Config, check_delivery_settings, parse_hostport
from collector.errors import ConfigError
from collector.io.sinks import make_sink
from collector.sessions import build_sessions


def validate(config: Config) -> None:
    """Addresses, sink spec, sessions and filters (with their AWS JSON); a ConfigError names the key."""
    bound = {key: parse_hostport(address, key) for key, address in config.listeners}
    if not bound:
        raise ConfigError("listen", "listen and geneve_listen are both off: nothing to receive")
    if len(bound) == 2 and bound["listen"][1] == bound["geneve_listen"][1]:
        # one port for both would put VXLAN and GENEVE datagrams in each other's sockets
        raise ConfigError("geneve_listen", f"port {bound['listen'][1]} is listen's port too")
    parse_hostport(config.health, "health")
    make_sink(config.sink, config)
    if config.sink.startswith("kafka://"):
        check_delivery_settings(config.kafka)
        check_spool_fits(config)
    build_sessions(config)
    if config.stop_timeout_s <= config.sink_flush_timeout_s:
        raise ConfigError(
            "stop_timeout_s",
            f"{config.stop_timeout_s} must exceed the sink's flush timeout "
            f"({config.sink_flush_timeout_s}): a stopping worker would be killed while it flushes",
        )


def check_spool_fits(config: Config) -> None:
    """Every worker's spool at its bound (``kafka.spool_max_bytes``) must fit on the volume of
    ``kafka.spool_dir``, counting what the spools already hold: a spool that cannot fit fills the
    disk under the collector (and whatever shares the volume) instead of dropping at its bound."""
    workers = config.workers or os.cpu_count() or 1
    need = workers * config.kafka.spool_max_bytes
    spool = Path(config.kafka.spool_dir)
    volume = spool
    while not volume.is_dir() and volume != volume.parent:
        volume = volume.parent
    try:
        stats = os.statvfs(volume)
    except OSError as exc:
        raise ConfigError("kafka.spool_dir", f"cannot read the volume of {spool}: {exc}") from exc
    free = stats.f_bavail * stats.f_frsize
    held = _bytes_under(spool)
    if need > free + held:
        raise ConfigError(
            "kafka.spool_max_bytes",
            f"{workers} workers x {config.kafka.spool_max_bytes} bytes = {need} bytes of spool do"
            f" not fit on the volume of {spool} ({free} bytes free, {held} in the spool already):"
            " lower kafka.spool_max_bytes or workers, or give the spool a larger volume",
        )


def _bytes_under(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                continue  # a segment deleted while we looked
    return total
