"""AWS VPC Traffic Mirroring collector: VXLAN in, flow records out.

Some modules are also compiled (``collector.build``). Two import rules, read here because they must
hold before the first ``collector`` module loads:
- ``COLLECTOR_PURE_PYTHON=1`` in the environment loads every ``collector`` module from its ``.py``
  file, the reference the compiled build is tested against;
- in a source tree (where the ``.pxd`` typing sits beside the module), an extension module older
  than its ``.py`` or ``.pxd`` is passed over for the ``.py``, with a warning: an edit always runs,
  even before ``make install`` compiles it again.
"""

import os
import sys
import warnings
from collections.abc import Sequence
from importlib.machinery import (
    EXTENSION_SUFFIXES,
    SOURCE_SUFFIXES,
    FileFinder,
    ModuleSpec,
    SourceFileLoader,
)
from types import ModuleType

__version__ = "0.1.0"

PURE_PYTHON_ENV = "COLLECTOR_PURE_PYTHON"


def _source_spec(name: str, path: Sequence[str]) -> ModuleSpec | None:
    for entry in path:
        spec = FileFinder(entry, (SourceFileLoader, SOURCE_SUFFIXES)).find_spec(name)
        if spec is not None:
            return spec
    return None


def _stale_extension(source: str) -> str | None:
    """The extension module beside ``source`` when it is older than the source or its .pxd."""
    base = source[: -len(".py")]
    if not os.path.exists(base + ".pxd"):
        return None  # not a source tree (an installed wheel): the extension module is the build
    newest = max(os.path.getmtime(source), os.path.getmtime(base + ".pxd"))
    for suffix in EXTENSION_SUFFIXES:
        if os.path.exists(base + suffix) and os.path.getmtime(base + suffix) < newest:
            return base + suffix
    return None


class _SourceFinder:
    """Finds ``collector.*`` modules before the path finder (which prefers an extension module
    beside the source): every module from source when pure, else only where the extension
    module is stale."""

    pure = os.environ.get(PURE_PYTHON_ENV) == "1"

    @classmethod
    def find_spec(
        cls, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if path is None or not name.startswith(__name__ + "."):
            return None
        spec = _source_spec(name, path)
        if spec is None or cls.pure or not spec.origin or not spec.origin.endswith(".py"):
            return spec if cls.pure else None
        stale = _stale_extension(spec.origin)
        if stale is None:
            return None
        warnings.warn(
            f"{stale} is older than its source: {name} runs from its .py (make install compiles "
            "it again)",
            stacklevel=2,
        )
        return spec


if _SourceFinder not in sys.meta_path:
    sys.meta_path.insert(0, _SourceFinder)
