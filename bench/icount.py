"""Instructions per packet of the in-process path, compiled build against pure, with callgrind.

    python -m bench.icount [--flows 5000] [--json]

Seconds on a shared 2-core machine drift; instruction counts do not (valgrind's callgrind counts
the instructions one process executes, whatever else runs). Each figure is the difference of two
runs of the same child (``--phase``) under callgrind: the pipeline fed N distinct IPv4 TCP flows
once (``new``), then the same N again (``known``), then every flow ended and its record made
(``record``), each phase measured as its run minus the run that stops before it, divided by N.
Both builds run in the same invocation: ``COLLECTOR_PURE_PYTHON=1`` for the pure one. Needs
valgrind (Debian: valgrind).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
from typing import Any

from collector.config import build_config
from collector.pipeline import Pipeline
from collector.sessions import build_sessions

PHASES = ("setup", "new", "known", "record")
VNI = 4242


def _datagrams(count: int) -> list[bytearray]:
    """VXLAN + Ethernet + IPv4 + TCP, one distinct 5-tuple each (source address and port)."""
    template = (
        struct.pack("!B3xI", 0x08, VNI << 8)
        + bytes.fromhex("0200000000020200000000010800")
        + struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, bytes(4), bytes([172, 16, 0, 1])
        )
        + struct.pack("!HHIIBBHHH", 0, 443, 0, 0, 0x50, 0x10, 65535, 0, 0)
    )
    out = []
    for i in range(count):
        datagram = bytearray(template)
        struct.pack_into("!I", datagram, 8 + 14 + 12, 0x0A000000 + (i >> 6))
        struct.pack_into("!H", datagram, 8 + 14 + 20, 1024 + (i & 63))
        out.append(datagram)
    return out


def child(phase: str, count: int) -> None:
    """Run the pipeline up to ``phase`` (the parent counts the instructions)."""
    datagrams = _datagrams(count)
    config = build_config(
        {"flows": {"accept_unknown_vni": True, "active_timeout_s": 3600, "max_flows": count * 2}}
    )
    pipeline = Pipeline(config, build_sessions(config), exporter="icount/w0/1")
    account, size, source = pipeline.account, len(datagrams[0]), b"\x0a\x00\x00\x09"
    first = [1000.0 + i * 1e-6 for i in range(count)]
    second = [2000.0 + i * 1e-6 for i in range(count)]
    if phase in ("new", "known", "record"):
        for datagram, now in zip(datagrams, first, strict=True):
            account(datagram, size, now, source)
    if phase in ("known", "record"):
        for datagram, now in zip(datagrams, second, strict=True):
            account(datagram, size, now, source)
    if phase == "record":
        assert len(pipeline.flush()) == count


def instructions(phase: str, count: int, *, pure: bool) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        env = {**os.environ, "COLLECTOR_PURE_PYTHON": "1" if pure else "0"}
        subprocess.run(
            [
                *("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"),
                *(sys.executable, "-m", "bench.icount", "--child", phase, str(count)),
            ],
            env=env,
            capture_output=True,
            check=True,
        )
        with open(out, encoding="utf-8") as f:
            match = re.search(r"^summary: (\d+)", f.read(), re.MULTILINE)
    assert match, "callgrind wrote no summary"
    return int(match.group(1))


def measure(count: int, *, pure: bool) -> dict[str, float]:
    totals = {phase: instructions(phase, count, pure=pure) for phase in PHASES}
    return {
        phase: round((totals[phase] - totals[before]) / count)
        for before, phase in itertools.pairwise(PHASES)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=5000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    pure = measure(args.flows, pure=True)
    compiled = measure(args.flows, pure=False)
    report: dict[str, Any] = {
        "bench": "icount",
        "flows": args.flows,
        "instructions_per_packet": {"pure": pure, "compiled": compiled},
        "compiled_vs_pure": {p: round(compiled[p] / pure[p], 2) for p in pure},
    }
    if not args.json:
        for phase in pure:
            print(
                f"{phase:>7}: compiled {compiled[phase]:>7,} instructions/packet, pure "
                f"{pure[phase]:>7,} ({report['compiled_vs_pure'][phase]}x)"
            )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
