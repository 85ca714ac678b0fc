"""The checks ``check-config``, ``run`` and a SIGHUP reload all make beyond the config's types.

It sits below both the command line and the supervisor, so neither imports the other to share it.
"""

from __future__ import annotations

from collector.config import Config, check_delivery_settings, parse_hostport
from collector.errors import ConfigError
from collector.io.sinks import make_sink
from collector.sessions import build_sessions


def validate(config: Config) -> None:
    """Addresses, sink spec, sessions and filters (with their AWS JSON); a ConfigError names the key."""
    for key, address in config.listeners:
        parse_hostport(address, key)
    if not config.listeners:
        raise ConfigError("listen", "listen and geneve_listen are both off: nothing to receive")
    parse_hostport(config.health, "health")
    make_sink(config.sink, config)
    if config.sink.startswith("kafka://"):
        check_delivery_settings(config.kafka)
    build_sessions(config)
    if config.stop_timeout_s <= config.sink_flush_timeout_s:
        raise ConfigError(
            "stop_timeout_s",
            f"{config.stop_timeout_s} must exceed the sink's flush timeout "
            f"({config.sink_flush_timeout_s}): a stopping worker would be killed while it flushes",
        )
