"""Record encoders, one module per format, and the registry of ``records.format`` values.

The sinks (stdout, file, Kafka), replay and the CLI look a format up here: its value encoder, the
content type the Kafka sink puts in each message's headers and what follows each record in a file.
Adding a format is its module (``CONTENT_TYPE`` and ``encoder(vpc_flow_log_format)``) and one line
in ``FORMATS``. IPFIX is not a value format: its sinks pack batches of records into messages
(``collector.encoders.ipfix.MessageEncoder``) whatever ``records.format`` says.

``collector.records`` (the record and its decoder) imports none of these modules; goflow2 and
ipfix import it for FlowRecord's field order.

goflow2 and ipfix are compiled by Cython (pure Python mode, their types in the .pxd beside them)
where the machine has a compiler. Each has two fast paths, each the fast one for its build, and
``COMPILED`` picks it: table lookups and struct calls interpreted, each field written in place
compiled. The tests hold both paths, in either build, to the readable reference encodings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from collector.encoders import flowlog, goflow2, json, msgpack

if TYPE_CHECKING:
    from collector.records import FlowRecord

Encoder = Callable[["FlowRecord"], bytes]


class RecordFormat(NamedTuple):
    """A value format: its content type, what follows a record in a file, its encoder factory."""

    content_type: str
    separator: bytes
    encoder: Callable[[str | None], Encoder]  # records.vpc_flow_log_format -> the encoder


# goflow2's messages carry their own length: nothing between them
FORMATS: dict[str, RecordFormat] = {
    "json": RecordFormat(json.CONTENT_TYPE, b"\n", json.encoder),
    "msgpack": RecordFormat(msgpack.CONTENT_TYPE, b"\n", msgpack.encoder),
    "vpc-flow-log": RecordFormat(flowlog.CONTENT_TYPE, b"\n", flowlog.encoder),
    "goflow2": RecordFormat(goflow2.CONTENT_TYPE, b"", goflow2.encoder),
}

CONTENT_TYPES = {name: spec.content_type for name, spec in FORMATS.items()}


def encoder_for(fmt: str, vpc_flow_log_format: str | None = None) -> Encoder:
    """The value encoder for a configured format (ValueError for one not registered; the config
    loader only lets registered ones through). ``vpc_flow_log_format`` is used by vpc-flow-log
    only; a bad one raises ConfigError naming its key."""
    try:
        spec = FORMATS[fmt]
    except KeyError:
        raise ValueError(fmt) from None
    return spec.encoder(vpc_flow_log_format)


def record_separator(fmt: str) -> bytes:
    """What follows each record in a file or on stdout: a newline, except for the binary
    ``goflow2`` stream, whose records carry their own length."""
    return FORMATS[fmt].separator


__all__ = ["CONTENT_TYPES", "FORMATS", "Encoder", "RecordFormat", "encoder_for", "record_separator"]
