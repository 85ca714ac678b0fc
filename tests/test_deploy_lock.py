"""The two locks against pyproject.toml and against each other.

requirements-dev.lock is what `make install` puts in .venv (runtime, aws, bench and dev extras, the
build requirements); deploy/requirements.lock is what the stack installs (runtime, aws and msk-iam
extras). Both pin every file by hash, hold exactly the closure of what pyproject asks for, and agree
on the version of every package they share, so the deployed set is the tested one. Only `make lock`
changes them (pip-compile records the command in each header); an upstream release changes nothing
here.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.cfn_template import ROOT

DEPLOY_LOCK = ROOT / "deploy" / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
PYPROJECT = ROOT / "pyproject.toml"
ROOT_VIA = "vpc-mirror-collector (pyproject.toml)"
BUILD_VIA = "vpc-mirror-collector (pyproject.toml::build-system.requires)"
CONSTRAINT_VIA = "-c requirements-dev.lock"


@dataclass(frozen=True)
class Locked:
    version: Version
    hashes: list[str]
    via: list[str]


def _lock(path: Path) -> dict[str, Locked]:
    entries: dict[str, Locked] = {}
    current: str | None = None
    in_via = False
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if entry := re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s\\]+)\s*\\?", line):
            current = canonicalize_name(entry.group(1))
            entries[current] = Locked(Version(entry.group(2)), [], [])
            in_via = False
        elif current and (digest := re.fullmatch(r"--hash=sha256:([0-9a-f]{64})\s*\\?", line)):
            entries[current].hashes.append(digest.group(1))
        elif current and line.startswith("# via"):
            in_via = True
            if rest := line.removeprefix("# via").strip():
                entries[current].via.append(rest)
        elif current and in_via and line.startswith("#   "):
            entries[current].via.append(line.removeprefix("#").strip())
        elif line and not line.startswith("#"):
            pytest.fail(f"{path.name}: unexpected line {raw!r}")
    return entries


def _project() -> dict[str, object]:
    return tomllib.loads(PYPROJECT.read_text())


def _requirements(extras: tuple[str, ...], *, build: bool = False) -> list[Requirement]:
    data = _project()
    project = data["project"]
    assert isinstance(project, dict)
    texts = [*project["dependencies"]]
    for extra in extras:
        texts += project["optional-dependencies"][extra]
    if build:
        build_system = data["build-system"]
        assert isinstance(build_system, dict)
        texts += build_system["requires"]
    return [Requirement(text) for text in texts]


DEPLOYED = ("aws", "msk-iam")
DEVELOPED = ("aws", "bench", "dev")
LOCKS = {
    "deploy": (DEPLOY_LOCK, lambda: _requirements(DEPLOYED)),
    "dev": (DEV_LOCK, lambda: _requirements(DEVELOPED, build=True)),
}

_TARGET = {
    "python_version": "3.11",
    "python_full_version": "3.11.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
}


def _applies(marker: Marker | None, extra: str = "") -> bool:
    return marker is None or marker.evaluate({**_TARGET, "extra": extra})


@pytest.mark.parametrize("which", sorted(LOCKS))
def test_lock_pins_every_file_by_hash(which: str) -> None:
    path, _ = LOCKS[which]
    lock = _lock(path)
    assert lock
    for name, entry in lock.items():
        assert entry.hashes, f"{path.name}: {name} has no --hash"
        assert entry.via, f"{path.name}: {name} says nothing of why it is locked"
    header = path.read_text()
    # Written by `make lock` (the command pip-compile records in the header).
    assert "--generate-hashes" in header
    assert "pyproject.toml" in header
    if which == "deploy":
        assert "--constraint=requirements-dev.lock --extra=aws --extra=msk-iam" in header
    else:
        assert "--all-build-deps" in header
        assert "--extra=aws --extra=bench --extra=dev" in header


@pytest.mark.parametrize("which", sorted(LOCKS))
def test_lock_pins_every_dependency_of_pyproject(which: str) -> None:
    path, wanted = LOCKS[which]
    lock = _lock(path)
    for requirement in wanted():
        if not _applies(requirement.marker):
            continue
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement} is not in {path.name}: run make lock"
        assert requirement.specifier.contains(lock[name].version, prereleases=True), (
            f"{path.name} pins {name}=={lock[name].version}, pyproject wants {requirement}: "
            "run make lock"
        )


def test_the_deployed_set_is_the_tested_set() -> None:
    """Every package both locks hold has one version and the same files in both."""
    deploy, dev = _lock(DEPLOY_LOCK), _lock(DEV_LOCK)
    shared = set(deploy) & set(dev)
    assert {"aiokafka", "boto3", "botocore", "msgspec", "uvloop", "prometheus-client"} <= shared
    for name in sorted(shared):
        assert deploy[name].version == dev[name].version, (
            f"deploy pins {name}=={deploy[name].version}, dev pins {dev[name].version}: "
            "run make lock"
        )
        assert sorted(deploy[name].hashes) == sorted(dev[name].hashes), name
    # what only the deployed set holds is there for the msk-iam extra, never tested otherwise
    for name in sorted(set(deploy) - shared):
        assert CONSTRAINT_VIA not in deploy[name].via, name


def test_the_venv_runs_the_dev_lock() -> None:
    """`make install` installs requirements-dev.lock exactly (the tests below read its metadata)."""
    for name, entry in _lock(DEV_LOCK).items():
        try:
            installed = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            if name in {"pip", "setuptools", "wheel"}:
                continue  # build tools that a venv may hold at its own version
            pytest.fail(f"{name} is locked but not installed: run make install")
        assert Version(installed.version) == entry.version, (
            f"the venv runs {name} {installed.version}, requirements-dev.lock pins "
            f"{entry.version}: run make install"
        )


@pytest.mark.parametrize("which", sorted(LOCKS))
def test_lock_is_exactly_the_closure_of_pyproject(which: str) -> None:
    path, wanted = LOCKS[which]
    lock = _lock(path)
    # Minimal: every entry is there for pyproject or for another entry.
    for name, entry in lock.items():
        roots = {ROOT_VIA, BUILD_VIA, CONSTRAINT_VIA}
        parents = {canonicalize_name(v) for v in entry.via if v not in roots}
        assert {ROOT_VIA, BUILD_VIA} & set(entry.via) or parents & set(lock), (
            f"{path.name}: {name} is locked for nothing: {entry.via}"
        )
    # Complete: what each locked release requires (its metadata in this venv, which runs the dev
    # lock) is locked too, at a version it accepts.
    extras: dict[str, set[str]] = {}
    for requirement in wanted():
        extras.setdefault(canonicalize_name(requirement.name), set()).update(requirement.extras)
    checked = set()
    for name, entry in lock.items():
        try:
            installed = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not in the dev venv (the msk-iam signer); its `via` line vouches for it
        if Version(installed.version) != entry.version:
            continue  # a build tool the venv holds at its own version (see the test above)
        checked.add(name)
        for text in installed.requires or []:
            requirement = Requirement(text)
            accepted = {"", *extras.get(name, set())}
            if not any(_applies(requirement.marker, extra) for extra in accepted):
                continue
            dependency = canonicalize_name(requirement.name)
            assert dependency in lock, f"{path.name}: {name} needs {requirement}, not locked"
            assert requirement.specifier.contains(lock[dependency].version, prereleases=True)
    assert {"aiokafka", "boto3", "botocore", "msgspec", "uvloop", "prometheus-client"} <= checked
