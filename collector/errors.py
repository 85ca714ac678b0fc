"""The project's error types, split by who is at fault (house rule 6).

Peers' garbage (``DecodeError``) never reaches an operator as an exception: the receive path turns it
into a counted drop. Operator mistakes (``ConfigError``) stop the program with exit status 2 and a
one-line message naming the offending key. Sink failures say whether retrying can help.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotation only: wire imports this module
    from collector.wire.drops import Drop


class CollectorError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(CollectorError):
    """A setting is missing, malformed or inconsistent; ``key`` names it (dotted path)."""

    exit_status = 2

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class DecodeError(CollectorError):
    """A datagram could not be decoded; ``reason`` is a ``collector.wire.Drop`` member."""

    def __init__(self, reason: Drop) -> None:
        self.reason = reason
        super().__init__(f"undecodable datagram: {reason.label}")


class SinkError(CollectorError):
    """Records could not be handed to the sink; ``retriable`` tells whether trying again may help."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable
