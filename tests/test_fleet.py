"""The fleet on one machine (bench/fleet*.py): two mirror sources, the NLB stand-in (nftables DNAT
with jhash + conntrack + a target-group health checker), collectors and a Kafka broker of its own,
each in a network namespace, through the five scenarios of docs/fleet.md.

One fleet serves every test of this module (building it starts a broker: the slow part); each
scenario mirrors flows of its own and reads back only the records it produced, and starts by
bringing the fleet to the number of healthy collectors it needs, so each test also runs alone.
The shared broker on 127.0.0.1:9092 is not used.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from bench.fleet_harness import SESSIONS, Fleet
from bench.fleet_net import NLB_ADDRESS, PREFIX, namespaces_supported, remove_leftovers
from bench.fleet_scenarios import SCENARIOS, Run, make_flows
from bench.fleet_source import outer_port
from bench.traffic import PROFILES

ROOT = Path(__file__).resolve().parent.parent
REFUSED = namespaces_supported()
pytestmark = pytest.mark.skipif(bool(REFUSED), reason=f"no fleet on this machine: {REFUSED}")


def namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith(PREFIX)]


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with Fleet() as built:
        yield built
    assert not [n for n in namespaces() if n.startswith(f"{built.net.tag}-")]  # nothing left
    assert not built.net.work.exists()


def assert_all_accounted(result: dict[str, Any]) -> None:
    assert result["unexplained_loss"] == 0, result
    assert result["sent"] > 0
    assert result["context_error_count"] == 0, result["context_errors"]
    assert result["unknown_records"] == 0
    assert result["kernel_drops"] == 0  # modest rates: a drop here would be worth a look
    assert result["lb_unrouted"] == 0  # the NLB stand-in always had a target
    for name, c in result["collectors"].items():  # the kernel's count of what it sent each one
        assert c["datagrams"] == c["lb_forwarded"], (name, c)


def assert_lossless(result: dict[str, Any]) -> None:
    assert_all_accounted(result)
    assert result["counted"] == result["sent"]
    assert result["explained_loss"] == 0
    assert result["flows_exact"] == result["flows"]  # per flow, not only in sum
    # bytes = the inner IP lengths sent, per flow (truncated sessions included)
    assert result["bytes_counted"] == result["bytes_sent"] > result["sent"]
    assert result["flows_bytes_exact"] == result["flows"]


def test_steady_state_each_flow_on_one_collector_and_the_load_spread(fleet: Fleet) -> None:
    result = SCENARIOS["steady"](fleet)
    assert_lossless(result)
    assert result["split_flows"] == 0
    # the mixed profile's flows: IPv6, UDP, ICMP, 802.1Q tags, and source-b's PacketLength
    assert fleet.packet_length == {"source-a": 0, "source-b": PROFILES["mixed"].truncate_to}
    assert result["mix"] == {"ipv6": 10, "udp": 12, "icmp": 2, "vlan": 2, "truncated": 24}
    collectors = result["collectors"]
    assert len(collectors) == 3
    for name, c in collectors.items():
        assert c["flows"] >= 5, (name, collectors)  # 48 flows over 3 targets by jhash
        assert c["datagrams"] == c["packets_on_topic"]  # no filter rejects in this scenario


def test_scale_out_the_new_collector_gets_new_flows_only(fleet: Fleet) -> None:
    result = SCENARIOS["scale-out"](fleet)
    assert_lossless(result)
    assert result["split_flows"] == 0  # conntrack kept the old flows where they were
    checks = result["checks"]
    assert checks["old_flows_on_new"] == 0
    assert checks["new_flows_on_new"] > 0
    assert result["collectors"][checks["new_collector"]]["datagrams"] > 0


def test_scale_in_a_draining_collector_loses_nothing(fleet: Fleet) -> None:
    result = SCENARIOS["scale-in"](fleet)
    assert_lossless(result)
    checks = result["checks"]
    assert checks["exit_status"] == 0
    assert checks["victim_flows"] > 0
    # its flows moved to the others once the NLB let go of it, and all their packets arrived
    assert checks["victim_flows_moved"] == checks["victim_flows"]
    assert result["split_flows"] == 0  # only the victim's flows moved


def test_crash_loses_exactly_what_the_collector_held_and_says_so(fleet: Fleet) -> None:
    result = SCENARIOS["crash"](fleet)
    assert_all_accounted(result)
    crash, checks = result["crash"], result["checks"]
    assert crash["flows_in_table"] == checks["victim_flows"] > 0  # each of its flows held some
    assert crash["lost"] > 0
    assert result["explained_loss"] == crash["lost"]
    assert result["counted"] == result["sent"] - crash["lost"]
    # the loss sits in the victim's flows only; every other flow arrived packet for packet
    assert checks["victim_flows"] > 0
    assert checks["victim_flows_missing"] == crash["lost"]
    assert checks["other_flows_inexact"] == []
    assert checks["other_flows_bytes_inexact"] == []
    assert result["split_flows"] == 0


def test_sessions_a_and_b_carry_their_session_direction_and_eni(fleet: Fleet) -> None:
    result = SCENARIOS["sessions"](fleet)
    assert_lossless(result)  # includes: every record's session, interface_id and direction
    assert result["probes_sent"] > 0
    assert result["filter_rejected"] == result["probes_sent"]  # ingress UDP 53 by filter-a
    assert result["probe_packets_counted"] == 0
    assert {s.name for s in SESSIONS} == {"source-a", "source-b"}


def test_sources_mirror_like_aws_as_tshark_decodes_it(fleet: Fleet) -> None:
    """On the wire into the NLB: VXLAN to 4789 with the session's VNI, outer source = the source's
    own address, outer source port = the hash of the inner 5-tuple (ICMP: of protocol, source and
    destination), so constant per flow; IPv4 and IPv6, TCP, UDP and ICMP, the flow's 802.1Q tag,
    and source-b's session truncates every frame to its PacketLength."""
    run = Run(fleet, "capture", 3)
    flows = [f for f in make_flows(epoch=7, count=8) if f.session.name == "source-b"]
    assert {f.proto for f in flows} == {1, 6, 17} and any(f.ipv6 for f in flows)
    assert any(f.vlan for f in flows)
    capture = fleet.capture("source-b", count=60)
    run.mirror(flows)
    out, _ = capture.communicate(timeout=60)
    run.flush()
    assert_lossless(run.report())
    source = fleet.net.nodes["source-b"].address
    packet_length = fleet.packet_length["source-b"]
    assert packet_length == PROFILES["mixed"].truncate_to
    by_inner = {(ip_address(f.src), f.sport, ip_address(f.dst), f.dport): f for f in flows}
    lines = out.splitlines()
    assert len(lines) == 60
    seen, cut = set(), 0
    for line in lines:
        src, dst, src6, dst6, sport, dport, vni, tcp_sport, tcp_dport, vlan, length = line.split(
            ";"
        )
        (outer_src, *inner_src), (outer_dst, *inner_dst) = src.split(","), dst.split(",")
        udp_sports, udp_dports = sport.split(","), dport.split(",")
        inner = (inner_src[0], inner_dst[0]) if inner_src else (src6, dst6)
        if tcp_sport:
            ports = (int(tcp_sport), int(tcp_dport))
        elif len(udp_sports) > 1:
            ports = (int(udp_sports[1]), int(udp_dports[1]))
        else:  # ICMP: no ports
            ports = (0, 0)
        key = (ip_address(inner[0]), ports[0], ip_address(inner[1]), ports[1])
        flow = by_inner[key]
        seen.add(flow.id)
        assert (outer_src, outer_dst, udp_dports[0]) == (source, NLB_ADDRESS, "4789")
        assert int(vni) == flow.session.vni
        assert int(udp_sports[0]) == outer_port(
            flow.proto, flow.src, flow.sport, flow.dst, flow.dport
        )
        assert vlan == (str(flow.vlan) if flow.vlan else "")
        mirrored = int(length.split(",")[0]) - 16  # bytes after the VXLAN header
        assert mirrored <= packet_length
        cut += mirrored == packet_length
    assert len(seen) == len(flows)
    assert cut > 0  # the bigger packets were truncated


def test_with_no_healthy_target_the_nlb_fails_open_and_takes_them_back(fleet: Fleet) -> None:
    """Every target failing its checks (stopped processes: /healthz times out): the map keeps
    all of them, as the NLB fails open; once they answer again they are healthy and mapped."""
    live = fleet.ensure(3)
    group = fleet.group
    assert group is not None
    addresses = tuple(sorted(c.node.address for c in live))
    assert group.mapped == addresses
    for collector in live:
        os.killpg(collector.proc.pid, signal.SIGSTOP)
    try:
        for collector in live:
            group.wait_state(collector.name, ("unhealthy",))
        assert group.mapped == addresses  # failed open: still every target
        assert [e for e in group.events if e[1] == "map" and e[2] == "-"] == []
    finally:
        for collector in live:
            os.killpg(collector.proc.pid, signal.SIGCONT)
    for collector in live:
        group.wait_state(collector.name, ("healthy",))
    assert group.mapped == addresses


def test_a_fleet_that_fails_to_build_leaves_nothing_behind(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its broker cannot start (no Java): the error says why and every namespace it had made and
    its work directory are gone; the fleet already running is untouched."""
    monkeypatch.setenv("JAVA", "/bin/false")
    broken = Fleet()
    with pytest.raises(RuntimeError, match="kafkactl start"):
        broken.__enter__()
    assert not [n for n in namespaces() if n.startswith(f"{broken.net.tag}-")]
    assert not broken.net.work.exists()
    assert fleet.net.work.exists()
    assert len([n for n in namespaces() if n.startswith(f"{fleet.net.tag}-")]) >= 4


def test_the_benchmark_command_prints_the_figures_as_json_and_draws_the_plot(
    tmp_path: Path,
) -> None:
    """``python -m bench.fleet --json`` (one scenario here): its contract is the last line."""
    plot = tmp_path / "load.png"
    command = [sys.executable, "-m", "bench.fleet", "--json", "--scenario", "steady"]
    command += ["--profile", "small"]  # 64-byte inner packets only, no session truncates
    done = subprocess.run(
        [*command, "--plot", str(plot)],
        capture_output=True, text=True, cwd=ROOT, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["sent"] == report["counted"] > 0
    assert report["explained_loss"] == report["unexplained_loss"] == report["split_flows"] == 0
    (steady,) = report["scenarios"]
    assert sum(c["datagrams"] for c in steady["collectors"].values()) == report["sent"]
    assert report["profile"] == "small"
    assert report["bytes_counted"] == report["bytes_sent"] == 64 * report["sent"]
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_leftovers_of_a_crashed_run_are_removed() -> None:
    """A namespace and a work directory named after a process that is gone are removed."""
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process now
    name = f"{PREFIX}{gone.pid}-lb"
    work = Path(tempfile.gettempdir()) / f"{PREFIX}{gone.pid}-fleet"
    subprocess.run(["ip", "netns", "add", name], check=True)
    work.mkdir()
    try:
        removed = remove_leftovers()
        assert name in removed
        assert str(work) in removed
        assert name not in namespaces()
        assert not work.exists()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
