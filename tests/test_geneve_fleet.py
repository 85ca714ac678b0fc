"""The fleet on one machine with a Gateway Load Balancer endpoint as the mirror target
(``bench.fleet --gwlb``): the sources' mirror datagrams reach the collectors in GENEVE on 6081 from
the load balancer's own address, kept on one collector per flow by the hash of the mirror
datagram's 5-tuple, and the result must be the NLB's (tests/test_fleet.py): no flow split across
collectors, nothing lost in steady state or on a drain, every record naming its source's endpoint.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from bench.fleet_harness import SESSIONS, Fleet
from bench.fleet_net import GENEVE_PORT, namespaces_supported
from bench.fleet_scenarios import SCENARIOS, Run, make_flows
from bench.fleet_source import outer_port
from tests.test_fleet import assert_lossless

REFUSED = namespaces_supported()
pytestmark = pytest.mark.skipif(bool(REFUSED), reason=f"no fleet on this machine: {REFUSED}")


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with Fleet(gwlb=True) as built:
        yield built


def geneve_counts(fleet: Fleet) -> dict[str, tuple[float, float]]:
    """Per live collector: (datagrams, of which GENEVE) as its /metrics says."""
    key = 'collector_encapsulation_datagrams_received_total{encapsulation="geneve"}'
    out = {}
    for collector in fleet.live():
        metrics = collector.metrics()
        out[collector.name] = (metrics["collector_datagrams_received_total"], metrics[key])
    return out


def test_steady_state_each_flow_on_one_collector(fleet: Fleet) -> None:
    result = SCENARIOS["steady"](fleet)
    assert_lossless(result)  # includes every record's gwlb_endpoint_id (context errors)
    assert result["split_flows"] == 0
    for name, c in result["collectors"].items():
        assert c["flows"] >= 5, (name, result["collectors"])
    for name, (datagrams, geneve) in geneve_counts(fleet).items():
        assert datagrams == geneve > 0, name  # all of it came as GENEVE


def test_scale_in_a_draining_collector_loses_nothing(fleet: Fleet) -> None:
    result = SCENARIOS["scale-in"](fleet)
    assert_lossless(result)
    checks = result["checks"]
    assert checks["exit_status"] == 0
    assert checks["victim_flows"] > 0
    assert checks["victim_flows_moved"] == checks["victim_flows"]
    assert result["split_flows"] == 0


def test_on_the_wire_geneve_from_the_load_balancer_with_the_mirror_datagram_inside(
    fleet: Fleet,
) -> None:
    """tshark on the link to a collector: UDP to 6081 from the load balancer's address, AWS's
    options with the source's endpoint id, and inside the mirror datagram from the source's own
    address and the port AWS derives from the inner flow."""
    live = fleet.ensure(3)
    target = live[0]
    run = Run(fleet, "gwlb-wire", 3)
    flows = make_flows(epoch=11, count=24)
    fields = ("ip.src", "udp.srcport", "udp.dstport", "geneve.option.unknown.data", "vxlan.vni")
    command = ["tshark", "-l", "-n", "-i", f"to-{target.node.role}"[:15], "-c", "20", "-f"]
    command += [f"udp dst port {GENEVE_PORT}", "-T", "fields", "-E", "occurrence=a"]
    command += ["-E", "separator=;"]
    for name in fields:
        command += ["-e", name]
    capture = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert capture.stderr is not None
    for line in capture.stderr:
        if line.startswith("Capturing on"):
            break
    run.mirror(flows)
    out, _ = capture.communicate(timeout=60)
    run.flush()
    assert_lossless(run.report())
    sources = {fleet.net.nodes[s.name].address: s for s in SESSIONS}
    lines = out.splitlines()
    assert len(lines) == 20
    for line in lines:
        ip_src, sports, dports, options, vni = line.split(";")
        (outer, mirror, *_inner) = ip_src.split(",")
        assert outer == target.node.gateway  # the load balancer's address, never the source's
        assert dports.split(",")[:2] == [str(GENEVE_PORT), "4789"]
        session = sources[mirror]  # the mirror datagram: from the source ENI's address
        assert int(vni) == session.vni
        endpoint = options.split(",")[0]
        assert int(endpoint, 16) == session.gwlb_endpoint
        mirror_sport = int(sports.split(",")[1])
        assert any(
            mirror_sport == outer_port(f.proto, f.src, f.sport, f.dst, f.dport)
            for f in flows
            if f.session.name == session.name
        )
