"""The five fleet scenarios and the accounting that proves every packet is where it should be.

Each scenario starts from a given number of healthy collectors, mirrors flows of its own (a new
epoch: new inner ports), and ends with the sources paused and every collector's table expired and
delivered; its records are exactly those between the topic's end offsets before and after. So the
scenarios share one fleet and still do not see each other's packets.

The flows follow the fleet's traffic profile (bench/traffic.py, ``mixed`` by default): its shares
of IPv6, UDP, ICMP and 802.1Q-tagged flows (each share of a source's flows rounded, at least one
flow when the share is not 0), two thirds egress and one third ingress; the sources draw every
packet's size from the profile's weights, and the profile's truncate_share of the sessions has a
PacketLength (bench/fleet_harness.py).

Accounting per scenario, from three independent sides: the sources (datagrams the kernel accepted
and the inner IP bytes they carried, per flow), the collectors' /metrics (datagrams received,
kept, rejected by the filter, kernel drops), and the topic read back (packets and bytes in
records, duplicates removed by exporter and sequence):

    sent             datagrams of flows the mirror filter keeps (``bytes_sent``: their inner IP
                     lengths, whole even where the session truncates)
    counted          packets in distinct records on the topic (``bytes_counted``: their bytes)
    explained_loss   kernel drops the collectors counted + what a crashed collector held +
                     datagrams the NLB stand-in had no target for (its ``unrouted`` counter)
    unexplained_loss sent - counted - explained_loss
    split_flows      inner flows seen by more than one collector, not counting flows that had to
                     move because their collector left (scale-in, crash)

What a crashed collector held is measured so: the sources pause, the harness waits until the
collectors' counters stop moving, scrapes the victim's /metrics (packets it kept =
``collector_filter_packets_total{action="accept"}``, flows in its table, records queued), then
SIGKILLs it. Its loss is then what it reported keeping minus the packets of its records on the
topic; the test checks that everything else arrived, per flow.
"""

from __future__ import annotations

import ipaddress
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.fleet_harness import SESSIONS, Collector, Fleet, Session
from bench.fleet_lb import forwarded, outer_flows_to, unrouted
from bench.fleet_source import outer_port
from bench.harness import Metrics
from bench.traffic import PROFILES, Profile

PPS_PER_SOURCE = 300
FLOWS_PER_SOURCE = 24
ACCEPT = 'collector_filter_packets_total{action="accept"}'
REJECT = 'collector_filter_packets_total{action="reject"}'
RECEIVED = "collector_datagrams_received_total"
KERNEL_DROPS = "collector_kernel_drops_total"


@dataclass(frozen=True)
class Flow:
    id: str
    session: Session
    proto: int
    src: str
    sport: int
    dst: str
    dport: int
    epoch: int
    probe: bool = False  # one the collectors' filter must reject
    vlan: int = 0  # 802.1Q VLAN id of the mirrored frames; 0: untagged

    def key(self) -> tuple[int, int, str, int, str, int]:
        return (self.session.vni, self.proto, self.src, self.sport, self.dst, self.dport)

    def spec(self) -> dict[str, Any]:
        fields = ("id", "proto", "src", "sport", "dst", "dport", "vlan")
        return {name: getattr(self, name) for name in fields}

    @property
    def ipv6(self) -> bool:
        return ":" in self.src


def _quota(count: int, share: float) -> int:
    """How many of ``count`` flows get a property of ``share``: rounded, at least one if any."""
    return 0 if share <= 0 else min(count, max(1, round(count * share)))


def _marks(rng: random.Random, count: int, share: float) -> list[bool]:
    marks = [i < _quota(count, share) for i in range(count)]
    rng.shuffle(marks)
    return marks


def make_flows(
    epoch: int,
    profile: Profile = PROFILES["mixed"],
    count: int = FLOWS_PER_SOURCE,
    probes: int = 0,
) -> list[Flow]:
    """Per source ``count`` flows in the profile's mix: IPv4 or IPv6; TCP (egress to 443, ingress
    to 22), UDP (egress to 53, ingress to 123) or ICMP echo; some 802.1Q-tagged; two thirds egress.
    Then ``probes`` ingress UDP 53 flows (IPv4 and IPv6 in turn) that filter-a rejects. Addresses
    and ports are new in each epoch, so an epoch's flows never reuse an earlier one's key."""
    flows = []
    for s in SESSIONS:
        rng = random.Random(profile.seed * 1000 + epoch * 10 + s.subnet)
        icmp = _quota(count, profile.icmp_share)
        udp = min(count - icmp, _quota(count, profile.udp_share))
        kinds = [1] * icmp + [17] * udp + [6] * (count - icmp - udp)
        rng.shuffle(kinds)
        v6s = _marks(rng, count, profile.ipv6_share)
        tags = _marks(rng, count, profile.vlan_share)
        for i in range(count + probes):
            probe = i >= count
            v6 = (i - count) % 2 == 1 if probe else v6s[i]
            local = s.inner_address6 if v6 else s.inner_address
            peer = (
                f"2001:db8:{epoch:x}:{100 + s.subnet:x}::{i + 1:x}"
                if v6
                else f"172.{16 + epoch}.{100 + s.subnet}.{i + 1}"
            )
            port = 20000 + epoch * 100 + i
            fid = f"{s.name}/e{epoch}/{i}"
            if probe:
                flows.append(Flow(fid, s, 17, peer, port, local, 53, epoch, True))
                continue
            vlan = 10 + i if tags[i] else 0
            proto = kinds[i]
            if proto == 1:
                proto = 58 if v6 else 1  # ICMPv6 / ICMP echo request: no ports
                src, dst = (peer, local) if i % 3 == 2 else (local, peer)
                flows.append(Flow(fid, s, proto, src, 0, dst, 0, epoch, vlan=vlan))
            elif i % 3 == 2:  # ingress
                dport = 22 if proto == 6 else 123
                flows.append(Flow(fid, s, proto, peer, port, local, dport, epoch, vlan=vlan))
            else:
                dport = 443 if proto == 6 else 53
                flows.append(Flow(fid, s, proto, local, port, peer, dport, epoch, vlan=vlan))
    return flows


def mix(flows: list[Flow], packet_length: dict[str, int]) -> dict[str, int]:
    """How many of ``flows`` are IPv6, UDP, ICMP, 802.1Q-tagged, in a truncating session."""
    return {
        "ipv6": sum(f.ipv6 for f in flows),
        "udp": sum(f.proto == 17 for f in flows),
        "icmp": sum(f.proto in (1, 58) for f in flows),
        "vlan": sum(f.vlan > 0 for f in flows),
        "truncated": sum(packet_length.get(f.session.name, 0) > 0 for f in flows),
    }


class Run:
    """One scenario on a fleet: traffic, collectors' counters, the topic, the accounting."""

    def __init__(self, fleet: Fleet, name: str, collectors: int) -> None:
        self.fleet = fleet
        self.name = name
        fleet.ensure(collectors)
        fleet.mark(f"{name} begins")
        self.start_offsets = fleet.end_offsets()
        self.base: dict[str, Metrics] = {c.name: dict(c.metrics()) for c in fleet.live()}
        self.base_sent, self.base_bytes = self._pause()
        self.base_unrouted = unrouted(fleet.net.lb)
        self.base_forwarded = forwarded(fleet.net.lb)
        self.flows: dict[str, Flow] = {}
        self.moved_from: set[str] = set()  # collectors whose flows had to move (scale events)
        self.crash: dict[str, float] = {}
        self.checks: dict[str, Any] = {}
        self.sent: dict[str, int] = {}
        self.bytes: dict[str, int] = {}
        self.victim_flows: set[str] = set()  # flows the NLB sent to a collector that left

    def _each_source(self, op: str, **extra: Any) -> tuple[dict[str, int], dict[str, int]]:
        """The command to every source; the datagrams and inner IP bytes sent per flow."""
        sent: dict[str, int] = {}
        sent_bytes: dict[str, int] = {}
        for source in self.fleet.sources.values():
            reply = source.command(op=op, **extra)
            sent.update(reply["sent"])
            sent_bytes.update(reply["bytes"])
        return sent, sent_bytes

    def _pause(self) -> tuple[dict[str, int], dict[str, int]]:
        return self._each_source("pause")

    def mirror(self, flows: list[Flow]) -> None:
        """Mirror ``flows`` (in addition to those already mirrored in this run)."""
        for flow in flows:
            self.flows[flow.id] = flow
        for name, source in self.fleet.sources.items():
            mine = [f.spec() for f in self.flows.values() if f.session.name == name]
            source.command(op="flows", flows=mine)
            source.command(op="rate", pps=PPS_PER_SOURCE)
            source.command(op="resume")

    def pause(self) -> None:
        self.sent, self.bytes = self._pause()

    def note_flows_of(self, victim: Collector) -> None:
        """Remember which flows conntrack sends to ``victim`` (before it leaves)."""
        outer = outer_flows_to(self.fleet.net.lb, victim.node.address)
        for flow in self.flows.values():
            source = self.fleet.net.nodes[flow.session.name].address
            port = outer_port(flow.proto, flow.src, flow.sport, flow.dst, flow.dport)
            if (source, port) in outer:
                self.victim_flows.add(flow.id)

    def resume(self) -> None:
        self._each_source("resume")

    def settle(self, collectors: list[Collector], polls: int = 3) -> None:
        """Wait until the collectors' receive counters stop moving (snapshots come every 0.5 s)."""
        last: list[float] = []
        still = 0
        deadline = time.monotonic() + 30
        while still < polls and time.monotonic() < deadline:
            time.sleep(0.3)
            now = [c.metrics().get(RECEIVED, 0.0) for c in collectors]
            still = still + 1 if now == last else 0
            last = now

    def flush(self, timeout_s: float = 60.0) -> None:
        """Pause the sources, then wait until every live collector has expired and delivered all."""
        self.pause()
        deadline = time.monotonic() + timeout_s
        previous: list[tuple[float, ...]] = []
        while time.monotonic() < deadline:
            time.sleep(0.5)
            state = [_quiet(c.metrics()) for c in self.fleet.live()]
            if state == previous and all(s[0] == s[1] == 0 and s[2] == s[3] for s in state):
                return
            previous = state
        raise TimeoutError(f"{self.name}: collectors did not deliver everything in {timeout_s}s")

    def kill(self, victim: Collector) -> None:
        """Crash ``victim`` with the sources paused; what it held is scraped just before."""
        self.pause()
        paused = time.monotonic()
        self.settle(self.fleet.live())
        held = victim.metrics()
        self.note_flows_of(victim)
        self.checks["pause_to_kill_s"] = round(time.monotonic() - paused, 2)
        base = self.base.get(victim.name, {})
        self.crash = {
            "collector_kept": held.get(ACCEPT, 0.0) - base.get(ACCEPT, 0.0),
            "flows_in_table": held.get("collector_flows_active", 0.0),
            "records_queued": held.get("collector_sink_queue_records", 0.0),
        }
        self.fleet.crash(victim)
        self.moved_from.add(victim.name)

    def report(self) -> dict[str, Any]:
        """Read the scenario's records back and do the accounting."""
        records = self.fleet.read(self.start_offsets)
        seen: set[tuple[str, int]] = set()
        duplicates = 0
        by_key = {_normal(flow.key()): flow for flow in self.flows.values()}
        packets: dict[str, int] = defaultdict(int)  # flow id -> packets on the topic
        octets: dict[str, int] = defaultdict(int)  # flow id -> bytes on the topic
        on: dict[str, set[str]] = defaultdict(set)  # flow id -> collectors that saw it
        per_collector_packets: dict[str, int] = defaultdict(int)
        wrong: list[str] = []
        strangers = 0
        for rec in records:
            ident = (rec["exporter"], int(rec["sequence"]))
            if ident in seen:
                duplicates += 1
                continue
            seen.add(ident)
            collector = rec["exporter"].split("/", 1)[0]
            src, dst = _address(rec["src_addr"]), _address(rec["dst_addr"])
            key = (rec["vni"], rec["protocol"], src, rec["src_port"], dst, rec["dst_port"])
            flow = by_key.get(key)
            if flow is None:
                strangers += 1
                continue
            packets[flow.id] += int(rec["packets"])
            octets[flow.id] += int(rec["bytes"])
            on[flow.id].add(collector)
            per_collector_packets[collector] += int(rec["packets"])
            wrong.extend(_context_errors(rec, flow, gwlb=self.fleet.gwlb))
        kept = [f for f in self.flows.values() if not f.probe]
        probes = [f for f in self.flows.values() if f.probe]
        sent_of = {f.id: self.sent.get(f.id, 0) - self.base_sent.get(f.id, 0) for f in kept}
        sent = sum(sent_of.values())
        counted = sum(packets[f.id] for f in kept)
        bytes_of = {f.id: self.bytes.get(f.id, 0) - self.base_bytes.get(f.id, 0) for f in kept}
        bytes_exact = [f.id for f in kept if octets[f.id] == bytes_of[f.id]]
        delta = self._deltas()
        kernel_drops = sum(d[KERNEL_DROPS] for d in delta.values())
        crash_loss = 0
        if self.crash:
            (victim,) = self.moved_from
            crash_loss = int(self.crash["collector_kept"]) - per_collector_packets[victim]
            self.crash["lost"] = crash_loss
        lb_unrouted = unrouted(self.fleet.net.lb) - self.base_unrouted  # the NLB had no target
        lb_forwarded = {
            name: n - self.base_forwarded.get(name, 0)
            for name, n in forwarded(self.fleet.net.lb).items()
        }
        explained = int(kernel_drops) + crash_loss + lb_unrouted
        split = [f.id for f in kept if len(on[f.id]) > 1 and not on[f.id] & self.moved_from]
        exact = [f.id for f in kept if packets[f.id] == sent_of[f.id]]
        if self.crash:
            self.checks["victim_flows"] = len(self.victim_flows)
            self.checks["victim_flows_missing"] = sum(
                sent_of[f] - packets[f] for f in self.victim_flows if f in sent_of
            )
            self.checks["other_flows_inexact"] = sorted(
                set(sent_of) - set(exact) - self.victim_flows
            )
            self.checks["other_flows_bytes_inexact"] = sorted(
                set(bytes_of) - set(bytes_exact) - self.victim_flows
            )
        return {
            "scenario": self.name,
            "collectors": {
                n: {
                    "datagrams": int(d[RECEIVED]),
                    "lb_forwarded": lb_forwarded.get(n, 0),
                    "packets_on_topic": per_collector_packets[n],
                    "flows": _flows_on(on, n),
                }
                for n, d in delta.items()
            },
            "sent": sent,
            "counted": counted,
            "explained_loss": explained,
            "unexplained_loss": sent - counted - explained,
            "split_flows": len(split),
            "kernel_drops": int(kernel_drops),
            "lb_unrouted": lb_unrouted,
            "crash": self.crash,
            "duplicates": duplicates,
            "flows": len(kept),
            "flows_exact": len(exact),
            "bytes_sent": sum(bytes_of.values()),
            "bytes_counted": sum(octets[f.id] for f in kept),
            "flows_bytes_exact": len(bytes_exact),
            "mix": mix(kept, self.fleet.packet_length),
            "flows_moved": sum(1 for f in kept if len(on[f.id]) > 1 and on[f.id] & self.moved_from),
            "probes_sent": sum(
                self.sent.get(f.id, 0) - self.base_sent.get(f.id, 0) for f in probes
            ),
            "probe_packets_counted": sum(packets[f.id] for f in probes),
            "filter_rejected": int(sum(d[REJECT] for d in delta.values())),
            "context_errors": wrong[:5],
            "context_error_count": len(wrong),
            "unknown_records": strangers,
            "checks": self.checks,
            "_on": {fid: sorted(names) for fid, names in on.items()},
        }

    def _deltas(self) -> dict[str, dict[str, float]]:
        out = {}
        for collector in self.fleet.collectors.values():
            now = collector.last
            base = self.base.get(collector.name, {})
            if not now or (collector.gone and collector.name not in self.base):
                continue
            if collector.gone and collector.name not in self.moved_from:
                continue  # left before this scenario
            out[collector.name] = {
                k: now.get(k, 0.0) - base.get(k, 0.0)
                for k in (RECEIVED, ACCEPT, REJECT, KERNEL_DROPS)
            }
        return out


def _emitted(m: Metrics) -> float:
    return sum(v for k, v in m.items() if k.startswith("collector_records_emitted_total{"))


def _quiet(m: Metrics) -> tuple[float, ...]:
    return (
        m.get("collector_flows_active", -1.0),
        m.get("collector_sink_queue_records", -1.0),
        _emitted(m),
        m.get("collector_records_delivered_total", -1.0),
        m.get(RECEIVED, 0.0),
    )


def _flows_on(on: dict[str, set[str]], name: str) -> int:
    return sum(1 for names in on.values() if name in names)


def _address(text: str) -> str:
    return ipaddress.ip_address(text).compressed


def _normal(key: tuple[int, int, str, int, str, int]) -> tuple[int, int, str, int, str, int]:
    vni, proto, src, sport, dst, dport = key
    return vni, proto, _address(src), sport, _address(dst), dport


def _context_errors(rec: dict[str, Any], flow: Flow, *, gwlb: bool = False) -> list[str]:
    s = flow.session
    direction = "egress" if flow.src in (s.inner_address, s.inner_address6) else "ingress"
    expected = {"session": s.name, "interface_id": s.eni, "direction": direction}
    # GENEVE from the GWLB names the endpoint its source mirrors to; VXLAN records name none
    expected["gwlb_endpoint_id"] = s.gwlb_endpoint_id if gwlb else None
    return [
        f"{flow.id}: {k}={rec.get(k)!r}, expected {v!r}"
        for k, v in expected.items()
        if rec.get(k) != v
    ]


# ---- the scenarios --------------------------------------------------------------------------
def steady(fleet: Fleet) -> dict[str, Any]:
    """Three collectors, flows spread over them, each flow on exactly one."""
    run = Run(fleet, "steady", 3)
    run.mirror(make_flows(epoch=1, profile=fleet.profile))
    time.sleep(6)
    run.flush()
    return run.report()


def scale_out(fleet: Fleet) -> dict[str, Any]:
    """A fourth collector registers: it gets new flows only, the old ones stay where they are."""
    run = Run(fleet, "scale-out", 3)
    old = make_flows(epoch=2, profile=fleet.profile)
    run.mirror(old)
    time.sleep(3)
    (new,) = [c for c in fleet.ensure(4) if c.name not in run.base]
    run.checks["new_collector"] = new.name
    new_flows = make_flows(epoch=3, profile=fleet.profile)
    run.mirror(new_flows)
    time.sleep(5)
    run.flush()
    result = run.report()
    on = result["_on"]
    result["checks"]["old_flows_on_new"] = sum(1 for f in old if new.name in on.get(f.id, ()))
    result["checks"]["new_flows_on_new"] = sum(1 for f in new_flows if new.name in on.get(f.id, ()))
    return result


def scale_in(fleet: Fleet) -> dict[str, Any]:
    """SIGTERM with drain_s: health turns 503, the NLB lets go of it, it drains and exits."""
    run = Run(fleet, "scale-in", 4)
    run.mirror(make_flows(epoch=4, profile=fleet.profile))
    time.sleep(3)
    victim = fleet.live()[0]
    run.note_flows_of(victim)
    fleet.terminate(victim)
    assert fleet.group is not None
    fleet.group.wait_state(victim.name, ("unhealthy",))
    victim.proc.wait(timeout=60)
    victim.gone = True
    fleet.group.deregister(victim.name)
    fleet.mark(f"{victim.name} exited {victim.proc.returncode}")
    run.moved_from.add(victim.name)
    run.checks["victim"] = victim.name
    run.checks["exit_status"] = victim.proc.returncode
    time.sleep(2)
    run.flush()
    result = run.report()
    on = result["_on"]
    result["checks"]["victim_flows"] = len(run.victim_flows)
    result["checks"]["victim_flows_moved"] = sum(len(on.get(f, ())) > 1 for f in run.victim_flows)
    return result


def crash(fleet: Fleet) -> dict[str, Any]:
    """SIGKILL: the loss is exactly what the collector held, and it is reported."""
    run = Run(fleet, "crash", 3)
    run.mirror(make_flows(epoch=5, profile=fleet.profile))
    victim = fleet.live()[0]
    time.sleep(1)
    run.note_flows_of(victim)
    # every flow of the victim emits its first record (active timeout), so part of its packets
    # were delivered; then one more second of traffic is in its table when it dies, and no flow
    # expires again before the kill (next active timeout >= 5 s away, inactive 4 s after pause)
    deadline = time.monotonic() + 30
    while _emitted(victim.metrics()) - _emitted(run.base[victim.name]) < len(run.victim_flows):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{victim.name} emitted no record for each of its flows in 30 s")
        time.sleep(0.2)
    time.sleep(1)
    run.kill(victim)
    assert fleet.group is not None
    fleet.group.wait_state(victim.name, ("unhealthy",))  # out of the map, flows terminated
    fleet.group.deregister(victim.name)
    run.checks["victim"] = victim.name
    run.resume()  # its flows now hash to the survivors
    time.sleep(3)
    run.flush()
    return run.report()


def sessions(fleet: Fleet) -> dict[str, Any]:
    """Sources A and B through filter-a: session, direction and ENI right; UDP 53 in rejected."""
    run = Run(fleet, "sessions", 3)
    run.mirror(make_flows(epoch=6, profile=fleet.profile, probes=4))
    time.sleep(5)
    run.flush()
    return run.report()


SCENARIOS: dict[str, Callable[[Fleet], dict[str, Any]]] = {
    "steady": steady,
    "scale-out": scale_out,
    "scale-in": scale_in,
    "crash": crash,
    "sessions": sessions,
}
