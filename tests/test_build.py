"""The two builds: compiled modules (Cython, from the same .py files) and the pure-Python one.

`make test` runs the whole suite against the compiled build (COLLECTOR_REQUIRE_COMPILED=1 where a C
compiler is, so a build that silently fell back to pure Python fails here) and the core tests again
with COLLECTOR_PURE_PYTHON=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from pipeline_support import tcp

from collector import build

ROOT = Path(__file__).resolve().parent.parent
PURE = os.environ.get("COLLECTOR_PURE_PYTHON") == "1"


def _build_in_child(**env: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", "import collector.build as b; print(b.compiled_modules())"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=60,
    )
    return out.stdout.strip()


def test_every_compiled_module_has_its_typing_beside_it() -> None:
    """A module is compiled with the .pxd beside it, and a .pxd names a compiled module."""
    declared = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for path in (ROOT / "collector").rglob("*.pxd")
    }
    assert declared == set(build.COMPILED_MODULES)
    for name in build.COMPILED_MODULES:
        assert (ROOT / Path(*name.split("."))).with_suffix(".py").is_file(), name


def test_pure_python_switch_loads_every_module_from_its_source() -> None:
    modules = _build_in_child(COLLECTOR_PURE_PYTHON="1")
    assert "True" not in modules, modules
    for name in build.COMPILED_MODULES:
        assert f"'{name}': False" in modules


def test_this_run_has_the_build_it_asks_for() -> None:
    modules = build.compiled_modules()
    if PURE:
        assert not any(modules.values()), modules
        assert "COLLECTOR_PURE_PYTHON=1 asked for it" in build.describe()
    elif os.environ.get("COLLECTOR_REQUIRE_COMPILED") == "1":
        assert all(modules.values()), (
            f"a C compiler is here but the build is not compiled: {build.describe()}"
        )
        assert build.describe().startswith("compiled build:")
    else:  # neither asked for: whichever make install made, said as it is
        assert build.describe().startswith(
            "compiled build:" if all(modules.values()) else "PURE-PYTHON BUILD:"
        )


def test_the_pure_build_runs_where_cython_is_not_installed() -> None:
    """A deployed collector has no Cython: the pure build's ``import cython`` falls back to
    collector.nocython, and flows are counted and recorded as usual (the compiled build imports
    nothing at run time: Cython resolves ``import cython`` when it compiles)."""
    first, last = (
        tcp(7, "10.0.1.10", "198.51.100.7", 40000, 443),
        tcp(7, "10.0.1.10", "198.51.100.7", 40000, 443, flags="FA"),
    )
    script = (
        "import sys; sys.modules['cython'] = None\n"  # import cython -> ImportError
        "from collector import flows, nocython\n"
        "assert flows.cython is nocython, flows.cython\n"
        "from collector.config import build_config\n"
        "from collector.pipeline import Pipeline\n"
        "from collector.sessions import build_sessions\n"
        "c = build_config({'flows': {'accept_unknown_vni': True}})\n"
        "p = Pipeline(c, build_sessions(c), exporter='t/w0/1')\n"
        f"p.feed(bytes.fromhex('{first.hex()}'), {len(first)}, 1000.0, b'\\x0a\\0\\0\\x09')\n"
        f"p.feed(bytes.fromhex('{last.hex()}'), {len(last)}, 1001.0, b'\\x0a\\0\\0\\x09')\n"
        "(r,) = p.collect()\n"
        "print(r.packets, r.end_reason)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "COLLECTOR_PURE_PYTHON": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split() == ["2", "tcp_fin"], out


def test_no_compiled_module_is_older_than_its_source() -> None:
    """An edited .py or .pxd whose extension module was not rebuilt would test the old code."""
    assert build.stale_modules() == [], "compiled modules older than their source: make install"


def test_metrics_say_which_build_runs() -> None:
    from collector.metrics import Aggregate

    text = Aggregate().render().decode()
    compiled = "false" if PURE or not build.compiled() else "true"
    assert f'collector_build_info{{compiled="{compiled}",version="' in text


def _wheel(tmp_path: Path, **env: str) -> Path:
    """The project's wheel, built from a copy of the tree as the bundle and the image build it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "collector",
        src / "collector",
        ignore=shutil.ignore_patterns("*.so", "*.c", "*.html"),
    )
    out = tmp_path / "wheels"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"),
            *("--no-build-isolation", "--wheel-dir", str(out), str(src)),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, **env},
        timeout=600,
    )
    (wheel,) = out.glob("*.whl")
    return wheel


def test_the_wheel_ships_the_compiled_modules_where_a_compiler_is(tmp_path: Path) -> None:

    wheel = _wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    compiled = [n for n in names if n.endswith(".so")]
    if shutil.which("cc") is None:  # no compiler: the same wheel, pure Python and universal
        assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
        assert compiled == []
        return
    assert "-cp311-cp311-linux_" in wheel.name, wheel.name
    for module in build.COMPILED_MODULES:
        path = module.replace(".", "/")
        assert any(n.startswith(path + ".cpython-311") for n in compiled), (module, compiled)
        assert path + ".py" in names  # the source stays: the reference and the fallback


def test_a_pure_wheel_when_asked(tmp_path: Path) -> None:

    wheel = _wheel(tmp_path, COLLECTOR_BUILD_PURE="1")
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    assert not [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".so")]


def test_without_a_working_compiler_the_build_falls_back_to_pure_python(tmp_path: Path) -> None:
    """A C compiler that fails every call (as none at all would) costs the compiled modules, not
    the install: the wheel is built, its modules run from their .py files."""
    wheel = _wheel(tmp_path, CC="false", LDSHARED="false")
    assert not [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".so")]
