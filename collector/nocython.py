"""The few ``cython`` names a compiled module's ``.py`` file uses, for a run without Cython.

A compiled module (ARCHITECTURE.md, "Compiled modules") keeps its typing in the ``.pxd`` beside
it; what a ``.pxd`` cannot say is written as a decorator in the ``.py`` (``cython.cclass`` with
``cython.no_gc`` for an entry class the garbage collector must not track, ``cython.locals`` for
a closure's locals). Where Cython is installed, ``import cython`` gives its own no-op versions;
a deployed collector has no Cython, and imports these instead: the same no-ops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

compiled = False
NULL: Any = None


def address(thing: Any) -> Any:
    """``cython.address(x)``: ``&x`` in the compiled build (never reached in the pure one)."""
    return thing


# the C types the decorators name (Cython's own stand-ins are Python types too)
double: Any = float
long: Any = int


def _same(thing: T) -> T:
    return thing


cclass: Callable[[T], T] = _same
no_gc: Callable[[T], T] = _same


def locals(**types: Any) -> Callable[[T], T]:
    """``@cython.locals(name=type, ...)``: types for the compiled build, nothing here."""
    return _same
