"""The compiled build against the pure one, datagram for datagram.

Two processes, one per build (tests/build_diff_child.py), get the same random and mutated
datagrams (VXLAN and GENEVE, golden ones among them) and must make the same records, the same drop
counters and the same bytes in every encoding. Each run of the suite tries other datagrams; a
difference is a bug in the typing of a compiled module (its .pxd), whichever build is right.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz import SEEDS, datagrams

from collector.build import COMPILED_MODULES, compiled

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).with_name("build_diff_child.py")

pytestmark = pytest.mark.skipif(
    not compiled() and os.environ.get("COLLECTOR_PURE_PYTHON") != "1",
    reason="no compiled build here to compare (make install compiles it where cc is)",
)


class Child:
    def __init__(self, pure: bool) -> None:
        env = {**os.environ, "COLLECTOR_PURE_PYTHON": "1" if pure else "0"}
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**env, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
        )

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the child exited with {self.process.wait(timeout=10)}"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture(scope="module")
def builds() -> Iterator[tuple[Child, Child]]:
    pure, fast = Child(pure=True), Child(pure=False)
    try:
        yield pure, fast
    finally:
        pure.close()
        fast.close()


def _compare(builds: tuple[Child, Child], request: dict[str, Any]) -> dict[str, Any]:
    pure, fast = (child.ask(request) for child in builds)
    assert not any(pure.pop("build").values())
    assert all(fast.pop("build").values()), "the compiled side runs interpreted modules"
    assert fast["drops"] == pure["drops"]
    assert fast["geneve_drops"] == pure["geneve_drops"]
    assert fast["records"] == pure["records"]
    assert fast == pure
    return fast


def test_both_sides_run_the_build_they_claim(builds: tuple[Child, Child]) -> None:
    answer = _compare(builds, {"datagrams": [seed.hex() for seed in SEEDS]})
    assert answer["records"], "the golden datagrams make records"
    assert len(COMPILED_MODULES) >= 3


DIFF = settings(
    max_examples=60,
    deadline=None,  # no timing in tests
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@DIFF
@given(batch=st.lists(datagrams, min_size=1, max_size=120), geneve=st.sets(st.integers(0, 119)))
def test_compiled_and_pure_builds_agree(
    builds: tuple[Child, Child], batch: list[bytes], geneve: set[int]
) -> None:
    _compare(builds, {"datagrams": [d.hex() for d in batch], "geneve": sorted(geneve)})
