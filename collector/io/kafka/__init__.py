"""Publishing records to Kafka, split the way aiokafka splits its producer:

- ``client``: settings checks, TLS, SASL, MSK IAM, the connection probe, topic admin and which
  errors are retriable (also used by ``collector tail``);
- ``delivery``: the broker-free core: batches, pending / unacknowledged / retry accounting;
- ``sink``: ``KafkaSink``, which drives the core, the producer and the spool through one ``State``
  (``state``); ``spooling``: the sink's spool slot and the drops it counts;
- ``workarounds``: every place that reaches into aiokafka's internals, each with its issue.
"""

from collector.io.kafka.client import client_kwargs, msk_iam_token_provider, ssl_context
from collector.io.kafka.sink import KafkaSink
from collector.io.kafka.state import State
from collector.io.kafka.workarounds import quiet_aiokafka_repeats, use_fast_lz4

__all__ = [
    "KafkaSink",
    "State",
    "client_kwargs",
    "msk_iam_token_provider",
    "quiet_aiokafka_repeats",
    "ssl_context",
    "use_fast_lz4",
]
