"""Which build runs: the compiled modules or the pure-Python reference.

``COMPILED_MODULES`` are compiled by Cython 3 from their own ``.py`` files (pure Python mode: the
typing is in the ``.pxd`` file beside each) when ``make install`` finds a C compiler; setup.py
reads this list. The ``.py`` files stay the source: the same tests run against both builds, and
``COLLECTOR_PURE_PYTHON=1`` runs the pure one (see ``collector/__init__.py``).
This module imports only the standard library: setup.py runs it before the package is built.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from importlib.machinery import EXTENSION_SUFFIXES

COMPILED_MODULES = (
    "collector.wire.decode",
    "collector.wire.geneve",
    "collector.flows",
    "collector.pipeline",
    "collector.sessions",
    "collector.io.kafka.partitioner",
    "collector.encoders.goflow2",
    "collector.encoders.ipfix",
)


def compiled_modules() -> dict[str, bool]:
    """Each compiled module's name -> whether it runs compiled in this process."""
    out = {}
    for name in COMPILED_MODULES:
        path = getattr(importlib.import_module(name), "__file__", None) or ""
        out[name] = path.endswith(tuple(EXTENSION_SUFFIXES))
    return out


def compiled() -> bool:
    """True when every module of COMPILED_MODULES runs compiled."""
    return all(compiled_modules().values())


def stale_modules() -> list[str]:
    """Compiled modules older than their ``.py`` or ``.pxd``: an edit not yet compiled (the
    extension module would still run the old code). Empty for an installed wheel (no ``.pxd``)."""
    from collector import _stale_extension  # noqa: PLC0415 - setup.py loads this file alone

    stale = []
    for name in COMPILED_MODULES:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin and origin.endswith(".py") and _stale_extension(origin):
            stale.append(name)  # passed over for its .py (collector/__init__.py)
        elif origin and origin.endswith(tuple(EXTENSION_SUFFIXES)):
            source = os.path.join(os.path.dirname(origin), name.rpartition(".")[2] + ".py")
            if os.path.exists(source) and _stale_extension(source):
                stale.append(name)
    return stale


def describe() -> str:
    """One line for the log and `make install`: which build runs, and why when it is the pure one."""
    modules = compiled_modules()
    done = sum(modules.values())
    if done == len(modules):
        return f"compiled build: {done} modules compiled with Cython"
    missing = ", ".join(name for name, is_compiled in modules.items() if not is_compiled)
    return (
        f"PURE-PYTHON BUILD: {len(modules) - done} of {len(modules)} hot modules run interpreted "
        f"({missing}), so the receive path is slower; "
        + (
            "COLLECTOR_PURE_PYTHON=1 asked for it"
            if os.environ.get("COLLECTOR_PURE_PYTHON") == "1"
            else "install a C compiler and run make install again"
        )
    )


if __name__ == "__main__":
    print(describe())
