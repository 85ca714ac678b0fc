"""The Kafka sink's one state: what it does with records right now (see ``State``)."""

from __future__ import annotations

import enum
from typing import Literal


class State(enum.Enum):
    """What the sink does with records right now.

    ========= ============================================== ==========================
    state     meaning                                        new records go
    ========= ============================================== ==========================
    OFFLINE   no producer: not started, reconnecting         to the spool
    REPLAYING connected; the spool holds records             to the spool, behind them
    DIRECT    connected; the spool is drained                to the broker from memory
    STALLED   connected; no ack for STALL_S while waiting    to the spool
    CLOSED    close() ran                                    dropped and counted
    ========= ============================================== ==========================

    Retries of batches already built go out in every state but OFFLINE and CLOSED (they also
    probe a stalled broker). An acknowledgement ends STALLED (to REPLAYING); a drained spool ends
    REPLAYING; a producer reset or a failed connect means OFFLINE.
    """

    OFFLINE = "offline"
    REPLAYING = "replaying"
    DIRECT = "direct"
    STALLED = "stalled"
    CLOSED = "closed"


CONNECTED = (State.REPLAYING, State.DIRECT, State.STALLED)
"""A producer exists (it may be stalled)."""
SPOOLING = (State.OFFLINE, State.REPLAYING, State.STALLED)
"""New records go to the spool, not to the broker."""


Health = Literal["ok", "degraded", "failed"]


def health(
    state: State, spool_bytes: int, connect_error: str, retrying: int, last_error: str
) -> tuple[Health, str]:
    """What /healthz says of a sink in ``state`` that lost nothing lately."""
    if state is State.OFFLINE:
        return "degraded", f"{connect_error or 'not connected'}; spooling ({spool_bytes} bytes)"
    if state is State.STALLED:
        return "degraded", f"Kafka is not acknowledging; spooling ({spool_bytes} bytes)"
    if state is State.REPLAYING or spool_bytes:
        return "degraded", f"replaying the spool ({spool_bytes} bytes)"
    if retrying:
        return "degraded", f"retrying {retrying} records: {last_error}"
    return "ok", ""
