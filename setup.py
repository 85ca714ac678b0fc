"""The compiled build: Cython 3 compiles the modules of ``collector.build.COMPILED_MODULES`` from
their own ``.py`` files (pure Python mode, typing from the ``.pxd`` beside each) into extension
modules. Without Cython, without a working C compiler, or with ``COLLECTOR_BUILD_PURE=1``, the
package installs as pure Python (``make install`` then says so: ``python -m collector.build``).
"""

from __future__ import annotations

import os
import runpy
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

COMPILED_MODULES = runpy.run_path(os.path.join("collector", "build.py"))["COMPILED_MODULES"]


class OptionalBuildExt(build_ext):
    """Builds what the C compiler can, one module per core; a failure leaves that module
    interpreted (loudly)."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # any build failure falls back to pure Python
            _warn(f"the C extensions were not built ({exc})")

    def build_extension(self, ext: object) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # the same, one module at a time
            _warn(f"{getattr(ext, 'name', ext)} was not compiled ({exc})")


def _warn(message: str) -> None:
    print(f"\n*** vpc-mirror-collector: {message}: it runs as pure Python ***\n", file=sys.stderr)


def _extensions() -> list[object]:
    if os.environ.get("COLLECTOR_BUILD_PURE") == "1":
        _warn("COLLECTOR_BUILD_PURE=1")
        return []
    try:
        from Cython.Build import cythonize  # noqa: PLC0415 - optional: without it, pure Python
    except ImportError:
        _warn("Cython is not installed")
        return []
    sources = [name.replace(".", os.sep) + ".py" for name in COMPILED_MODULES]
    return cythonize(
        sources,
        language_level=3,
        quiet=True,
        compiler_directives={
            # the .py annotations are for mypy and readers; C types come from the .pxd only
            "annotation_typing": False,
            "binding": True,  # functions keep their signatures and docstrings (inspect, tests)
            "embedsignature": True,
        },
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
