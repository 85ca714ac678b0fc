"""Fixtures every test module can ask for by name, without importing them.

``kafka_broker`` (session-scoped: the shared local broker), ``own_kafka_broker`` (a broker of the
test's own, for tests that stop it) and ``proxied_kafka_broker`` (one behind a fault proxy) live in
``kafka_fixtures``, next to the helpers that read topics back; registering them here is what makes
them visible to every module.
"""

from __future__ import annotations

from kafka_fixtures import kafka_broker, own_kafka_broker, proxied_kafka_broker

__all__ = ["kafka_broker", "own_kafka_broker", "proxied_kafka_broker"]
