"""What the Kafka sink makes of a broker's refusal: which errors waiting fixes, how long an error
it does not know is tried, and which topic names Kafka refuses outright (checked at start)."""

from __future__ import annotations

import re

from collector.errors import ConfigError
from collector.io.kafka import client

TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]+")
MAX_TOPIC_LENGTH = 249  # Kafka's limit on a topic name
UNKNOWN_ERROR_ATTEMPTS = 5
"""Attempts at a batch the broker refuses with an error the sink does not know (neither known
retriable nor known permanent): then it goes to the dead-letter spool, so it cannot block what
follows it forever. With the retry backoff that is about 6 s."""


def check_topic_name(topic: str) -> None:
    """A name every Produce would answer INVALID_TOPIC_EXCEPTION for: a ConfigError at start."""
    if topic.startswith("__"):
        raise ConfigError("sink", f"topic {topic!r} is one of Kafka's internal topics (__*)")
    if len(topic) > MAX_TOPIC_LENGTH or topic in (".", "..") or not TOPIC_NAME.fullmatch(topic):
        raise ConfigError(
            "sink",
            f"topic {topic!r} is not a name Kafka takes: 1 to {MAX_TOPIC_LENGTH} of"
            " a-z A-Z 0-9 . _ -, not '.' or '..'",
        )


def known_retriable(exc: BaseException) -> bool:
    """Errors waiting fixes, retried without a bound (the sink spools meanwhile: see _watch):
    the network, timeouts, a leader moving, a producer session or topic to replace."""
    return isinstance(
        exc, (*client.TOPIC_GONE_ERRORS, *client.PRODUCER_FATAL)
    ) or client.is_retriable(exc)
