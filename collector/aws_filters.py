"""Mirror filters followed from the EC2 API while the collector runs.

A stack update that changes a filter (a wider CIDR, a new rule) changes it in AWS only: the copy a
collector read at boot stays as it was, and traffic the new rules accept is counted as
``filter_reject`` in silence. With ``[aws] follow_filters = true`` the supervisor asks
DescribeTrafficMirrorFilters every ``aws.filter_refresh_interval_s`` for each ``[filters.NAME]``
that names a ``filter_id``; when a rule set differs from the one in use, the new one goes to the
workers through the reload path (the same message a SIGHUP sends), so no restart and no lost flow.

The version of a rule set is a short hash of its rules in a canonical order: the same rules give
the same version on every collector of a fleet, whichever order AWS lists them in. ``/metrics``
shows the version in use per filter (``collector_filter_version_info``).

A failed call keeps the rules in use, logs one line and counts ``failures``; it never raises. A
fetched rule set that does not compile (a duplicate rule number against the inline rules) is
refused the same way. Blocking calls: the supervisor runs ``refresh`` in a thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from collector.config import AwsConfig, Config, FilterConfig, FilterRuleConfig
from collector.enrich import ec2_client
from collector.errors import ConfigError
from collector.filter import load_filter, rules_from_aws

log = logging.getLogger(__name__)

VERSION_HEX_DIGITS = 12
"""Length of a rule set's version (hex digits of its SHA-256): short enough for a label, and a
collision between two rule sets of one filter is out of reach."""


@dataclass(frozen=True)
class FilterVersion:
    """The rule set a filter uses now."""

    filter_id: str
    """The TrafficMirrorFilterId it follows; empty for a filter of inline rules only."""
    version: str
    followed: bool
    """True once the rules came from the EC2 API (not from the config file)."""


def rules_version(rules: Iterable[FilterRuleConfig]) -> str:
    """The version of a rule set: independent of the order the rules are listed in."""
    encoded = sorted(msgspec.json.encode(rule) for rule in rules)
    digest = hashlib.sha256(b"\n".join(encoded)).hexdigest()
    return digest[:VERSION_HEX_DIGITS]


def configured_rules(name: str, config: FilterConfig, base_dir: Path) -> list[FilterRuleConfig]:
    """The rules a ``[filters.NAME]`` table holds: inline ones, then those of its ``aws_json``."""
    rules = list(config.rules)
    if config.aws_json is not None:
        path = Path(config.aws_json)
        path = path if path.is_absolute() else base_dir / path
        key = f"filters.{name}"
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{key}.aws_json", f"cannot read {path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise ConfigError(f"{key}.aws_json", f"{path} is not JSON: {exc}") from exc
        rules += rules_from_aws(document, config.filter_id, key)
    return rules


def filter_versions(config: Config) -> dict[str, FilterVersion]:
    """The version of every filter of ``config`` as it stands (a filter that cannot be read is
    left out: check-config names its error)."""
    out = {}
    base = Path(config.base_dir)
    for name, fc in config.filters.items():
        try:
            rules = configured_rules(name, fc, base)
        except ConfigError:
            continue
        out[name] = FilterVersion(fc.filter_id or "", rules_version(rules), followed=False)
    return out


@dataclass(frozen=True)
class _Fetched:
    filter_id: str
    rules: tuple[FilterRuleConfig, ...]
    """The rules AWS holds (without the table's inline ones)."""


class FilterFollower:
    """Fetches the followed filters' rules and overlays them on the config from the file.

    The supervisor keeps the config as the file gives it (``aws_json`` and ``filter_id`` intact)
    and hands the workers ``overlay(file_config)``.
    """

    def __init__(self, aws: AwsConfig, client: Any = None) -> None:
        self.client = client if client is not None else ec2_client(aws)
        self.fetched: dict[str, _Fetched] = {}
        """Per filter name, the rules last fetched and accepted."""
        self.refreshes = 0
        """Successful refreshes (changed or not)."""
        self.failures = 0
        """Failed refreshes (the rules in use stayed)."""
        self.last_error = ""

    @staticmethod
    def followed(config: Config) -> dict[str, str]:
        """Filter name -> TrafficMirrorFilterId of every filter that names one."""
        return {name: fc.filter_id for name, fc in config.filters.items() if fc.filter_id}

    def refresh(self, file_config: Config) -> bool:
        """Fetch every followed filter; True when the rules in use change. Never raises."""
        wanted = self.followed(file_config)
        if not wanted:
            return False
        try:
            fetched = self._fetch(wanted)
            candidate = _overlay(file_config, fetched)
            # compile before accepting: the inline rules and the fetched ones may clash
            for name in fetched:
                load_filter(name, candidate.filters[name], Path(candidate.base_dir))
        except Exception as exc:  # the refresh loop must survive whatever the SDK raises
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "mirror filter refresh failed, keeping the rules in use",
                extra={"error": self.last_error},
            )
            return False
        self.refreshes += 1
        self.last_error = ""
        before = self.versions(file_config)
        self.fetched = fetched
        after = self.versions(file_config)
        changed = sorted(
            name
            for name in fetched
            if name not in before or before[name].version != after[name].version
        )
        if changed:
            log.info("mirror filter rules changed in AWS", extra={"filters": ",".join(changed)})
        return bool(changed)

    def overlay(self, file_config: Config) -> Config:
        """``file_config`` with the fetched rules in place of each followed filter's file copy."""
        return _overlay(file_config, self.fetched)

    def versions(self, file_config: Config) -> dict[str, FilterVersion]:
        """The version in use of every filter, marking those whose rules came from the EC2 API."""
        out = filter_versions(file_config)
        for name, got in self.fetched.items():
            fc = file_config.filters.get(name)
            if fc is not None and fc.filter_id == got.filter_id:
                version = rules_version(fc.rules + got.rules)
                out[name] = FilterVersion(got.filter_id, version, followed=True)
        return out

    def _fetch(self, wanted: Mapping[str, str]) -> dict[str, _Fetched]:
        documents = self._describe(sorted(set(wanted.values())))
        fetched = {}
        for name, filter_id in wanted.items():
            if filter_id not in documents:
                raise LookupError(f"{filter_id} (filters.{name}) is not in the EC2 answer")
            document = {"TrafficMirrorFilters": [documents[filter_id]]}
            rules = tuple(rules_from_aws(document, filter_id, f"filters.{name}"))
            fetched[name] = _Fetched(filter_id, rules)
        return fetched

    def _describe(self, filter_ids: list[str]) -> dict[str, Mapping[str, Any]]:
        found: dict[str, Mapping[str, Any]] = {}
        paginator = self.client.get_paginator("describe_traffic_mirror_filters")
        for page in paginator.paginate(TrafficMirrorFilterIds=filter_ids):
            for item in page.get("TrafficMirrorFilters") or ():
                found[item["TrafficMirrorFilterId"]] = item
        return found


def _overlay(file_config: Config, fetched: Mapping[str, _Fetched]) -> Config:
    filters = dict(file_config.filters)
    for name, got in fetched.items():
        fc = filters.get(name)
        if fc is None or fc.filter_id != got.filter_id:
            continue  # the file changed its mind (a SIGHUP reload): the file wins
        # the table's own inline rules stay (the ones beyond AWS's 10-rule quota), AWS's replace
        # the file copy
        filters[name] = FilterConfig(rules=fc.rules + got.rules, record_rejected=fc.record_rejected)
    return msgspec.structs.replace(file_config, filters=filters)
