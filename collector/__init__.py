"""AWS VPC Traffic Mirroring collector: VXLAN in, flow records out.

Some modules are also compiled (``collector.build``); ``COLLECTOR_PURE_PYTHON=1`` in the
environment makes every ``collector`` module load from its ``.py`` file instead, the reference the
compiled build is tested against. It must be set before the first ``collector`` import, so it is
read here.
"""

import os
import sys
from collections.abc import Sequence
from importlib.machinery import SOURCE_SUFFIXES, FileFinder, ModuleSpec, SourceFileLoader
from types import ModuleType

__version__ = "0.1.0"

PURE_PYTHON_ENV = "COLLECTOR_PURE_PYTHON"


class _SourceOnlyFinder:
    """Finds ``collector.*`` modules among ``.py`` files only, before the path finder (which
    prefers an extension module beside the source)."""

    @staticmethod
    def find_spec(
        name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if path is None or not name.startswith(__name__ + "."):
            return None
        for entry in path:
            spec = FileFinder(entry, (SourceFileLoader, SOURCE_SUFFIXES)).find_spec(name, target)
            if spec is not None:
                return spec
        return None


if os.environ.get(PURE_PYTHON_ENV) == "1" and _SourceOnlyFinder not in sys.meta_path:
    sys.meta_path.insert(0, _SourceOnlyFinder)
