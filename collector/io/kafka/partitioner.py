"""Kafka's own partitioner for keyed records: ``toPositive(murmur2(key)) % partitions``.

The Java client's default partitioner (``BuiltInPartitioner.partitionForKey``) and librdkafka's
``murmur2_random`` put a keyed record on that partition, so any producer or consumer keyed by
``flow_id`` agrees with the collector on where a flow's records live (tests/test_partitioner.py
checks it against the Java client of the broker's own Kafka distribution).

Pure functions, run once per record. The keys the collector writes are flow ids, 16 lowercase
hex digits, so each 4-byte word of such a key is one of 65,536 values: their mixed words are
computed once (a table built at the first use, about 2.5 MB and 70 ms) and a flow id's hash is four
lookups and the final mix (about 0.8x the time of the unrolled hash per record, measured). Any other
16-byte key takes the unrolled hash, any other length the general loop.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collector import nocython as cython  # what mypy checks the names against
else:
    try:
        import cython
    except ImportError:  # a deployed collector has no Cython: the pure build needs none of it
        from collector import nocython as cython

SEED = 0x9747B28C
MULTIPLIER = 0x5BD1E995
SHIFT = 24
MASK = 0xFFFFFFFF
POSITIVE = 0x7FFFFFFF
"""Java's ``Utils.toPositive``: the sign bit cleared (not the absolute value)."""

_WORDS4 = struct.Struct("<4I").unpack
_FLOW_ID_BYTES = 16
_START16 = ((SEED ^ _FLOW_ID_BYTES) * MULTIPLIER) & MASK
"""The hash of a 16-byte key after its first ``h *= m``: the same for every such key."""
_HEX_DIGITS = b"0123456789abcdef"


def _mixed_word(word: int) -> int:
    k = (word * MULTIPLIER) & MASK
    return ((k ^ (k >> SHIFT)) * MULTIPLIER) & MASK


@functools.cache
def _hex_word_table() -> list[int]:
    """The mixed word of every 4 lowercase hex digits, indexed by their value."""
    return [_mixed_word(int.from_bytes(b"%04x" % value, "little")) for value in range(0x10000)]


def _flow_id_hash(key: bytes, table: list[int]) -> int:
    """``murmur2`` of a 16-digit lowercase hex key (the caller checked that it is one)."""
    m = MULTIPLIER
    n = int(key, 16)
    h = _START16 ^ table[n >> 48]
    h = ((h * m) & MASK) ^ table[(n >> 32) & 0xFFFF]
    h = ((h * m) & MASK) ^ table[(n >> 16) & 0xFFFF]
    h = ((h * m) & MASK) ^ table[n & 0xFFFF]
    h ^= h >> 13
    h = (h * m) & MASK
    return h ^ (h >> 15)


def _is_flow_id(key: bytes) -> bool:
    return len(key) == _FLOW_ID_BYTES and not key.translate(None, _HEX_DIGITS)


def murmur2(key: bytes) -> int:
    """MurmurHash2 as Kafka's ``Utils.murmur2`` computes it, as an unsigned 32-bit number."""
    length = len(key)
    m = MULTIPLIER
    h: int
    if length == _FLOW_ID_BYTES:
        a, b, c, d = _WORDS4(key)
        a = (a * m) & MASK
        a = ((a ^ (a >> SHIFT)) * m) & MASK
        h = _START16 ^ a
        b = (b * m) & MASK
        b = ((b ^ (b >> SHIFT)) * m) & MASK
        h = ((h * m) & MASK) ^ b
        c = (c * m) & MASK
        c = ((c ^ (c >> SHIFT)) * m) & MASK
        h = ((h * m) & MASK) ^ c
        d = (d * m) & MASK
        d = ((d ^ (d >> SHIFT)) * m) & MASK
        h = ((h * m) & MASK) ^ d
    else:  # any other length: the general loop
        return murmur2_octets(key)
    h ^= h >> 13
    h = (h * m) & MASK
    return h ^ (h >> 15)


def kafka_hash(key: bytes) -> int:
    """``toPositive(murmur2(key))``: the partition is this modulo the partition count."""
    if _is_flow_id(key):
        return _flow_id_hash(key, _hex_word_table()) & POSITIVE
    return murmur2(key) & POSITIVE


def partition_for(key: bytes, partitions: Sequence[int]) -> int:
    """The partition the Java client's default partitioner picks for ``key`` (``partitions``:
    the topic's partition ids, sorted, as the metadata lists them)."""
    return partitions[kafka_hash(key) % len(partitions)]


def murmur2_octets(key: bytes) -> int:
    """``murmur2`` with each word read octet by octet, for any length: ``murmur2``'s general
    loop, and the compiled build's hash of every key (C reads of the key's octets and 64-bit C
    arithmetic, tens of nanoseconds per key; interpreted, ``murmur2``'s unrolled 16-byte path and
    the table of ``partitions_for`` are faster)."""
    m, mask, shift = MULTIPLIER, MASK, SHIFT  # C locals when compiled
    length = len(key)
    h = SEED ^ length
    whole = length & ~3
    for i in range(0, whole, 4):
        k = key[i] | key[i + 1] << 8 | key[i + 2] << 16 | key[i + 3] << 24
        k = (k * m) & mask
        k = ((k ^ (k >> shift)) * m) & mask
        h = ((h * m) & mask) ^ k
    rest = length & 3
    if rest:
        if rest == 3:
            h ^= key[whole + 2] << 16
        if rest >= 2:
            h ^= key[whole + 1] << 8
        h = ((h ^ key[whole]) * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    return h ^ (h >> 15)


def partitions_for(keys: Sequence[bytes], partitions: Sequence[int]) -> list[int]:
    """``partition_for`` of every key, in order (one call per batch of records; the flow-id hash
    is inlined here: a call per record would cost what the table saves)."""
    count = len(partitions)
    if cython.compiled:
        return [partitions[(murmur2_octets(key) & POSITIVE) % count] for key in keys]
    table = _hex_word_table()
    m = MULTIPLIER
    start16 = _START16
    general = murmur2
    chosen: list[int] = []
    append = chosen.append
    for key in keys:
        if len(key) == _FLOW_ID_BYTES and not key.translate(None, _HEX_DIGITS):
            n = int(key, 16)
            h = start16 ^ table[n >> 48]
            h = ((h * m) & MASK) ^ table[(n >> 32) & 0xFFFF]
            h = ((h * m) & MASK) ^ table[(n >> 16) & 0xFFFF]
            h = ((h * m) & MASK) ^ table[n & 0xFFFF]
            h ^= h >> 13
            h = (h * m) & MASK
            h ^= h >> 15
        else:
            h = general(key)
        append(partitions[(h & POSITIVE) % count])
    return chosen
