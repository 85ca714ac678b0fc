"""Records as msgpack maps (msgspec), the same keys as JSON. ``collector.records.decode`` reads
them back with ``fmt="msgpack"``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from collector.records import FlowRecord

CONTENT_TYPE = "application/msgpack"

encode: Callable[[FlowRecord], bytes] = msgspec.msgpack.Encoder().encode


def encoder(_: str | None = None) -> Callable[[FlowRecord], bytes]:
    """The value encoder (msgpack takes no options)."""
    return encode
