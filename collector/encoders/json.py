"""Records as JSON objects (msgspec): the topic's default value format, one object per line in
files and on stdout. ``collector.records.decode`` reads them back."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from collector.records import FlowRecord

CONTENT_TYPE = "application/json"

encode: Callable[[FlowRecord], bytes] = msgspec.json.Encoder().encode


def encoder(_: str | None = None) -> Callable[[FlowRecord], bytes]:
    """The value encoder (JSON takes no options)."""
    return encode
