"""The prebuilt bundle is the default path, the distribution's repositories the fallback.

make bundle carries the system packages as RPMs when given them (download-packages fills the
directory on Amazon Linux 2023); install-collector installs those with every repository disabled,
and only when the bundle has none for the processor, or they fail to install, runs dnf against the
repositories. The choice is run here for real in bash, with ``dnf`` replaced by a script that
records its arguments (no dnf on this machine, and the installer must not touch this host); the
rest of install-collector is not run.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

import pytest

from tests.cfn_template import ROOT

IMAGE = ROOT / "deploy" / "image"
INSTALLER = IMAGE / "install-collector"
PACKAGES = ["python3.11", "aws-cfn-bootstrap", "amazon-cloudwatch-agent", "rsyslog"]


def package_choice() -> str:
    """install-collector's system-package step, from ``packages=`` to its closing ``fi``."""
    text = INSTALLER.read_text()
    match = re.search(r"^packages=.*?^fi$", text, re.MULTILINE | re.DOTALL)
    assert match, "install-collector has no system-package step"
    return match.group(0)


def run_choice(tmp_path: Path, rpms: list[str], local_install_fails: bool) -> tuple[str, str]:
    bundle = tmp_path / "bundle"
    arch_dir = bundle / "packages" / platform.machine()
    arch_dir.mkdir(parents=True)
    for name in rpms:
        (arch_dir / name).write_bytes(b"")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    fail = "1" if local_install_fails else "0"
    (stubs / "dnf").write_text(
        '#!/bin/bash\necho "dnf $*" >> "$CALLS"\n'
        f'case "$*" in *--disablerepo*) exit {fail};; esac\nexit 0\n'
    )
    (stubs / "dnf").chmod(0o755)
    script = tmp_path / "choice"
    script.write_text(f'set -euo pipefail\nhere="{bundle}"\n{package_choice()}\n')
    calls = tmp_path / "calls"
    result = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        env={"PATH": f"{stubs}:{os.environ['PATH']}", "CALLS": str(calls)},
        timeout=30,
        check=True,
    )
    return result.stdout, calls.read_text()


def test_the_bundles_packages_install_with_every_repository_off(tmp_path: Path) -> None:
    out, calls = run_choice(tmp_path, ["python3.11-3.11.9.rpm", "rsyslog-8.rpm"], False)
    (call,) = calls.splitlines()
    assert call.startswith("dnf install -y --disablerepo=* --setopt=install_weak_deps=False ")
    assert call.endswith(("python3.11-3.11.9.rpm", "rsyslog-8.rpm"))
    assert "install-collector: system packages from the bundle in " in out


def test_without_packages_the_repositories_are_the_fallback(tmp_path: Path) -> None:
    out, calls = run_choice(tmp_path, [], False)
    assert calls.splitlines() == [f"dnf install -y {' '.join(PACKAGES)}"]
    assert "system packages from the repositories (fallback) in " in out


def test_packages_that_do_not_install_fall_back_too(tmp_path: Path) -> None:
    out, calls = run_choice(tmp_path, ["python3.11-3.11.9.rpm"], True)
    first, second = calls.splitlines()
    assert "--disablerepo=*" in first
    assert second == f"dnf install -y {' '.join(PACKAGES)}"
    assert "the bundle's packages did not install" in out


def test_bundle_carries_the_packages_download_packages_fetches() -> None:
    download = (IMAGE / "download-packages").read_text()
    assert f"packages=({' '.join(PACKAGES)})" in download
    assert "--forcearch" in download
    build = (IMAGE / "build-bundle").read_text()
    assert '"$bundle/packages/$arch/"' in build
    assert "for arch in x86_64 aarch64" in build
    # without PACKAGES the build says what the instances will do instead
    assert "distribution's repositories at every boot" in build


@pytest.mark.parametrize("script", ["download-packages", "build-bundle", "install-collector"])
def test_package_scripts_pass_shellcheck(script: str) -> None:
    result = subprocess.run(
        ["shellcheck", "--severity=info", str(IMAGE / script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def test_the_bundle_carries_the_compiled_wheel_beside_the_pure_one() -> None:
    build = (IMAGE / "build-bundle").read_text()
    pure = 'COLLECTOR_BUILD_PURE=1 "$python" -m pip wheel'
    assert pure in build
    # the compiled wheel too, unless asked not to, and only if Amazon Linux 2023's glibc loads it
    assert 'if [ "${PURE_ONLY:-0}" != 1 ]; then' in build
    assert "objdump -T" in build
    assert "2.34" in build
    installer = (IMAGE / "install-collector").read_text()
    assert '--find-links "$here/wheels" vpc-mirror-collector' in installer
    assert '"$prefix/venv/bin/python" -m collector.build' in installer
