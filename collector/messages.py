"""What the supervisor and its workers say to each other over their pipe: tagged msgspec structs.

Each message is one msgpack frame (``Connection.send_bytes``) holding a struct whose ``kind`` field
names it. Each side has one decoder for what the other side sends, so a message of the wrong kind,
or a field of the wrong type, is a ``msgspec`` error at the decoder, never a tuple unpacked wrong.
"""

from __future__ import annotations

import msgspec

from collector.config import Config
from collector.metrics import WorkerSnapshot


class Snapshot(msgspec.Struct, tag="snap", tag_field="kind"):
    """Worker -> supervisor, every SNAPSHOT_INTERVAL_S and last before exiting: its counters.
    Doubles as the heartbeat the supervisor's liveness check relies on."""

    snapshot: WorkerSnapshot


class Fatal(msgspec.Struct, tag="fatal", tag_field="kind"):
    """Worker -> supervisor: the worker cannot start; the whole service stops with ``status``."""

    message: str
    status: int


class Stop(msgspec.Struct, tag="stop", tag_field="kind"):
    """Supervisor -> worker: stop receiving, flush every flow and the sink, exit."""


class Reload(msgspec.Struct, tag="reload", tag_field="kind"):
    """Supervisor -> worker (SIGHUP): new sessions, filters and flow settings."""

    config: Config


FromWorker = Snapshot | Fatal
FromSupervisor = Stop | Reload

_encoder = msgspec.msgpack.Encoder()
_from_worker = msgspec.msgpack.Decoder(FromWorker)
_from_supervisor = msgspec.msgpack.Decoder(FromSupervisor)

MessageError = msgspec.DecodeError
"""What the decoders raise for a frame that is not a message of their side (ValidationError is
a subclass)."""


def encode(message: FromWorker | FromSupervisor) -> bytes:
    """One message as a frame."""
    return _encoder.encode(message)


def decode_from_worker(frame: bytes) -> FromWorker:
    """A frame the supervisor received."""
    message: FromWorker = _from_worker.decode(frame)
    return message


def decode_from_supervisor(frame: bytes) -> FromSupervisor:
    """A frame a worker received."""
    message: FromSupervisor = _from_supervisor.decode(frame)
    return message
