"""The alert rules as an on-call meets them: every alert waits (`for:`), says what it means, links
to its own section of the runbook, and is unit-tested by promtool both firing and staying quiet.

promtool itself runs the rules and their tests in tests/test_deploy.py; this file checks that those
tests leave no alert out, and that the runbook and the README name only alerts that exist.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
RUNBOOK = DEPLOY / "alerts.md"
RUNBOOK_PREFIX = "deploy/alerts.md#"
PROMTOOL = ROOT / ".cache" / "promtool" / "usr" / "bin" / "promtool"


def promtool(*args: str, cwd: Path) -> str:
    """Run promtool (unpacked by `make test`); its output, after asserting it succeeded."""
    assert PROMTOOL.exists(), "run `make test` (it fetches promtool from the prometheus package)"
    done = subprocess.run(
        [str(PROMTOOL), *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


ALERTS = _alerts()
NAMES = [rule["alert"] for rule in ALERTS]


def github_anchor(heading: str) -> str:
    """The anchor a Markdown heading gets on GitHub-style renderers: lower case, punctuation
    removed, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    return {
        github_anchor(line.lstrip("#"))
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("#")
    }


def test_anchor_rule_matches_the_renderers() -> None:
    assert github_anchor("CollectorKernelDrops") == "collectorkerneldrops"
    assert github_anchor("When records stop: checklist") == "when-records-stop-checklist"


def test_alert_names_are_unique() -> None:
    assert len(NAMES) == len(set(NAMES))
    assert len(NAMES) >= 20


@pytest.mark.parametrize("rule", ALERTS, ids=NAMES)
def test_every_alert_waits_explains_and_links_its_runbook_section(rule: dict[str, Any]) -> None:
    assert "for" in rule, "say how long the condition must hold (for: 0m if at once, and why)"
    assert re.fullmatch(r"\d+[smh]", str(rule["for"]))
    assert rule["labels"]["severity"] in {"page", "ticket"}
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert len(annotations["description"].split()) >= 8, "a description an on-call can act on"
    url = annotations["runbook_url"]
    assert url == RUNBOOK_PREFIX + rule["alert"].lower()
    assert url.removeprefix(RUNBOOK_PREFIX) in runbook_anchors(), f"no section for {url}"


def test_every_runbook_section_is_an_alert_and_every_link_resolves() -> None:
    text = RUNBOOK.read_text()
    sections = re.findall(r"^### (\S+)\s*$", text, flags=re.MULTILINE)
    assert sorted(sections) == sorted(NAMES)
    anchors = runbook_anchors()
    for anchor in re.findall(r"\]\(#([^)]+)\)", text):
        assert anchor in anchors, anchor


def test_runbook_names_only_alerts_that_exist() -> None:
    text = RUNBOOK.read_text()
    mentioned = set(re.findall(r"[`\[](Collector[A-Z][A-Za-z]+)[`\]]", text))
    assert not mentioned - set(NAMES), sorted(mentioned - set(NAMES))


# alerts that were replaced: CollectorRecordsLost covers dropped and failed records (both lost),
# CollectorSpoolFilling/CollectorSpoolFullSoon warn before the spool is full
RETIRED = ("CollectorRecordsDropped", "CollectorRecordsFailing", "CollectorSpoolGrowing")


@pytest.mark.parametrize("path", [RUNBOOK, DEPLOY / "README.md", ROOT / "README.md"])
def test_documents_do_not_name_retired_alerts(path: Path) -> None:
    text = path.read_text()
    assert not [name for name in RETIRED if name in text]


def test_readme_links_the_runbook() -> None:
    assert "(alerts.md)" in (DEPLOY / "README.md").read_text()


def _rule_test_cases() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    return [case for group in groups for case in group.get("alert_rule_test", [])]


def test_promtool_tests_make_every_alert_fire_and_stay_quiet() -> None:
    cases = _rule_test_cases()
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert not set(NAMES) - firing, "alerts no promtool test makes fire"
    assert not set(NAMES) - quiet, "alerts no promtool test shows quiet"
    assert not (firing | quiet) - set(NAMES), "tests of alerts that do not exist"
