"""ARCHITECTURE.md's module table is the layering: every import in collector/ must be one it allows.

Imports are read from the source (``ast``), at any depth (a function-level import counts too);
imports under ``if TYPE_CHECKING:`` are annotations only and do not count.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "collector"
MAX_MODULE_LINES = 700
# what the sans-IO core (the table's rows above `io`) must never import
IO_LIBRARIES = frozenset({"asyncio", "uvloop", "aiokafka", "multiprocessing", "subprocess"})
_ROW = re.compile(r"^\|\s*`([\w.]+)`\s*\|[^|]*\|([^|]*)\|\s*$")


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node but what sits under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def imports(source: str, known: Mapping[str, object]) -> tuple[set[str], set[str]]:
    """(modules of the package imported, top-level names of other packages imported)."""
    ours: set[str] = set()
    theirs: set[str] = set()
    for node in _runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (ours if alias.name.split(".")[0] == "collector" else theirs).add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "collector":
                theirs.add(node.module)
                continue
            # `from collector.wire import l4` imports the submodule, not (only) the package
            submodules = {f"{node.module}.{a.name}" for a in node.names} & set(known)
            ours |= submodules
            if len(submodules) < len(node.names):
                ours.add(node.module)
    return ours, {name.split(".")[0] for name in theirs}


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    known = modules()
    edges: dict[str, set[str]] = {}
    libraries: dict[str, set[str]] = {}
    for name, path in known.items():
        ours, theirs = imports(path.read_text(encoding="utf-8"), known)
        edges[name] = {m for m in ours if m in known and m != name}
        libraries[name] = theirs
    return edges, libraries


def architecture_table(text: str) -> dict[str, set[str]]:
    """``collector.X`` -> what its row says it may import (``collector.P.*`` for packages)."""
    table: dict[str, set[str]] = {}
    for line in text.splitlines():
        match = _ROW.match(line)
        if match is None:
            continue
        short, allowed = match.groups()
        name = "collector" if short == "collector" else f"collector.{short}"
        table[name] = {
            "collector" if item == "collector" else f"collector.{item}"
            for item in re.findall(r"`([\w.*]+)`", allowed)
        }
    return table


def allowed(target: str, rules: set[str]) -> bool:
    return any(
        target == rule or (rule.endswith(".*") and target.startswith(rule[:-1])) for rule in rules
    )


def violations(edges: Mapping[str, set[str]], table: Mapping[str, set[str]]) -> list[str]:
    return [
        f"{module} imports {target}: not in its ARCHITECTURE.md row"
        for module, targets in sorted(edges.items())
        for target in sorted(targets)
        if not allowed(target, table.get(module, set()))
    ]


def cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


TABLE = architecture_table((ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8"))


def test_every_module_has_a_row_and_every_row_a_module() -> None:
    known = set(modules())
    assert sorted(known - set(TABLE)) == [], "add a row to ARCHITECTURE.md for each"
    assert sorted(set(TABLE) - known) == [], "ARCHITECTURE.md names modules that do not exist"


def test_every_import_is_one_the_architecture_allows() -> None:
    edges, _ = graph()
    assert violations(edges, TABLE) == []


def test_there_is_no_import_cycle() -> None:
    edges, _ = graph()
    assert cycles(edges) == []


def test_the_sans_io_core_imports_no_io_library_and_no_io_module() -> None:
    rows = list(TABLE)
    core = rows[: rows.index("collector.io")]
    edges, libraries = graph()
    for module in core:
        assert not libraries[module] & IO_LIBRARIES, module
        assert not any(t.startswith("collector.io") for t in edges[module]), module


def test_no_module_is_over_the_line_limit() -> None:
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_the_checks_catch_an_upward_import_and_a_cycle() -> None:
    """The checker itself: an import the table does not allow, and a cycle, are both reported."""
    table = architecture_table(
        "| `wire.l4` | numbers | |\n"
        "| `flows` | the table | `wire.*`, `records` |\n"
        "| `records` | the record | `flows` |\n"
    )
    assert table == {
        "collector.wire.l4": set(),
        "collector.flows": {"collector.wire.*", "collector.records"},
        "collector.records": {"collector.flows"},
    }
    edges = {
        "collector.wire.l4": {"collector.flows"},
        "collector.flows": {"collector.wire.l4", "collector.records"},
        "collector.records": {"collector.flows"},
    }
    assert violations(edges, table) == [
        "collector.wire.l4 imports collector.flows: not in its ARCHITECTURE.md row"
    ]
    assert cycles(edges) == [["collector.flows", "collector.records", "collector.wire.l4"]]


@pytest.mark.parametrize(
    ("source", "ours", "theirs"),
    [
        ("from collector.wire import l4, Drop", {"collector.wire.l4", "collector.wire"}, set()),
        ("import asyncio\nfrom aiokafka.errors import KafkaError", set(), {"asyncio", "aiokafka"}),
        ("def f():\n    from collector.records import FlowRecord", {"collector.records"}, set()),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from collector.pipeline import P",
            set(),
            {"typing"},
        ),
    ],
)
def test_imports_are_read_at_any_depth_but_not_under_type_checking(
    source: str, ours: set[str], theirs: set[str]
) -> None:
    known = {"collector.wire": 0, "collector.wire.l4": 0, "collector.records": 0}
    assert imports(source, known) == (ours, theirs)
