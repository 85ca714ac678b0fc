"""The Kafka sink's one state: what it does with records right now (see ``State``)."""

from __future__ import annotations

import enum


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
