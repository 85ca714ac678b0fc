"""One side of tests/test_build_differential.py: a process of one build (compiled, or pure with
COLLECTOR_PURE_PYTHON=1) that answers each line of datagrams on stdin with one line on stdout:
what its pipeline and encoders made of them.

A request is a JSON object: ``datagrams`` (hex) and ``geneve`` (which of them arrive on the GENEVE
listener). The answer holds the build, every record (as JSON), the drop counters, and each record
encoded in every value format plus the IPFIX messages of all of them, in hex.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import msgspec

from collector.build import compiled_modules
from collector.config import build_config
from collector.encoders import FORMATS
from collector.encoders.ipfix import MessageEncoder
from collector.pipeline import Pipeline
from collector.sessions import build_sessions

T0 = 1_764_100_000.0
VNI = 0x5A17C3  # the golden vectors' VNI
SETTINGS: dict[str, Any] = {
    "flows": {"accept_unknown_vni": True, "active_timeout_s": 5.0, "inactive_timeout_s": 2.0},
    "sessions": [
        {
            "vni": VNI,
            "name": "golden",
            "interface_id": "eni-0123456789abcdef0",
            "addresses": ["10.0.0.0/8", "2001:db8::/32"],
            "filter": "f",
        }
    ],
    "filters": {
        "f": {
            "record_rejected": True,
            "rules": [
                {
                    "direction": "ingress",
                    "rule_number": 10,
                    "action": "reject",
                    "protocol": 17,
                    "source_cidr": "0.0.0.0/0",
                    "destination_cidr": "0.0.0.0/0",
                },
                {
                    "direction": "ingress",
                    "rule_number": 20,
                    "action": "accept",
                    "source_cidr": "0.0.0.0/0",
                    "destination_cidr": "0.0.0.0/0",
                },
                {
                    "direction": "egress",
                    "rule_number": 10,
                    "action": "accept",
                    "protocol": 6,
                    "source_cidr": "0.0.0.0/0",
                    "destination_cidr": "0.0.0.0/0",
                    "destination_ports": "1-1023",
                },
                {
                    "direction": "ingress",
                    "rule_number": 30,
                    "action": "accept",
                    "source_cidr": "::/0",
                    "destination_cidr": "::/0",
                },
            ],
        }
    },
}


def answer(request: dict[str, Any]) -> dict[str, Any]:
    config = build_config(SETTINGS)
    pipeline = Pipeline(config, build_sessions(config), exporter="diff/w0/1")
    geneve = set(request.get("geneve", ()))
    records = []
    for i, text in enumerate(request["datagrams"]):
        data = bytes.fromhex(text)
        now = T0 + i * 0.25  # past the inactive timeout every 8 datagrams: expiry runs too
        feed = pipeline.feed_geneve if i in geneve else pipeline.feed
        feed(data, len(data), now, "10.0.0.9" if i % 3 else None)
        if i % 5 == 4:
            records += pipeline.expire(now)
    records += pipeline.flush()
    encoded = {
        name: [spec.encoder(None)(r).hex() for r in records] for name, spec in FORMATS.items()
    }
    ipfix = MessageEncoder(7, 1400, 32473)
    encoded["ipfix"] = [m.hex() for m, _ in ipfix.encode(records, T0, None)]
    stats = pipeline.stats
    return {
        "build": compiled_modules(),
        "records": [msgspec.json.encode(r).decode() for r in records],
        "drops": list(stats.drops),
        "geneve_drops": list(stats.geneve_drops),
        "datagrams": stats.datagrams,
        "encoded": encoded,
    }


def main() -> None:
    for line in sys.stdin:
        print(json.dumps(answer(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
