"""The NLB stand-in: the kernel's packet path in the load-balancer namespace, and a target group.

nftables DNATs every UDP datagram to the NLB address and port 4789 to a target chosen by
``jhash(outer source address . outer source port) mod BUCKETS`` through the map ``buckets``;
conntrack then keeps the flow on that target, as the NLB's flow table does, until it is idle for
the UDP idle timeout (120 s, like the NLB's). Only new flows see a map change.

As a Gateway Load Balancer (the fleet's ``gwlb`` mode) it takes GENEVE on port 6081 the same way:
the sources hand it their mirror datagrams already in the GWLB's GENEVE (bench/fleet_gwlb.py) from
the mirror datagram's own address and port, so the hash is over the mirror datagram's 5-tuple, as
the GWLB's flow stickiness is; and the datagram leaves with the load balancer's own address as its
source (masquerade), as a GWLB's does. Target choice, health checks, draining: the same.

``TargetGroup`` is the health checker: it polls each registered target's /healthz every
``interval_s`` (success = 200-399 within ``timeout_s``), takes a target into service after
``healthy_threshold`` passes and out after ``unhealthy_threshold`` failures, and rewrites the map
(healthy targets only; every registered target when none is healthy: the NLB fails open). A target
that fails its checks keeps its existing flows for ``unhealthy_draining_s`` (the NLB's
"unhealthy.draining"), a deregistered one for ``deregistration_delay_s``; then its conntrack
entries are deleted (connection termination) and those flows are hashed again on their next
datagram. Every state change is logged with its time.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bench.fleet_net import GENEVE_PORT, HEALTH_PORT, NLB_ADDRESS, VXLAN_PORT, run

BUCKETS = 64  # hash buckets; each maps to one target, so the spread is even to 1/64
UDP_IDLE_TIMEOUT_S = 120  # the NLB's fixed UDP idle timeout, given to conntrack
TABLE = "nlb"
_TO_NLB = f"ip daddr {NLB_ADDRESS} udp dport {VXLAN_PORT}"
_TO_GWLB = f"ip daddr {NLB_ADDRESS} udp dport {GENEVE_PORT}"
_HASH = f"jhash ip saddr . udp sport mod {BUCKETS} seed 0x4789"
RULESET = f"""
table ip {TABLE} {{
    map buckets {{ typeof numgen inc mod {BUCKETS} : ip daddr; }}
    counter unrouted {{ }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        {_TO_NLB} dnat to {_HASH} map @buckets
        {_TO_NLB} counter name unrouted drop
        {_TO_GWLB} dnat to {_HASH} map @buckets
        {_TO_GWLB} counter name unrouted drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        udp dport {GENEVE_PORT} masquerade
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
    }}
}}
"""


def install(lb_netns: str) -> None:
    """The ruleset and the conntrack idle timeout of the load-balancer namespace."""
    _nft(lb_netns, RULESET)
    for key in ("nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"):
        run("sysctl", "-qw", f"net.netfilter.{key}={UDP_IDLE_TIMEOUT_S}", netns=lb_netns)


def _nft(lb_netns: str, script: str) -> None:
    done = subprocess.run(
        ["ip", "netns", "exec", lb_netns, "nft", "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if done.returncode != 0:
        raise RuntimeError(f"nft -f: {done.stderr.strip()}")


def unrouted(lb_netns: str) -> int:
    """Datagrams to the NLB address that no target took (empty map): counted, never silent."""
    out = run("nft", "list", "counter", "ip", TABLE, "unrouted", netns=lb_netns)
    for word, value in zip(out.split(), out.split()[1:], strict=False):
        if word == "packets":
            return int(value)
    return 0


def outer_flows_to(lb_netns: str, address: str) -> set[tuple[str, int]]:
    """(outer source address, outer source port) of every conntrack entry DNATed to ``address``:
    the mirrored flows the NLB stand-in currently sends to that target."""
    out = run("conntrack", "-L", "-p", "udp", "--reply-src", address, netns=lb_netns, check=False)
    flows = set()
    for line in out.splitlines():
        fields: dict[str, str] = {}
        for word in line.split():  # the original direction's src= and sport= come first
            key, sep, value = word.partition("=")
            if sep:
                fields.setdefault(key, value)
        if "src" in fields and "sport" in fields:
            flows.add((fields["src"], int(fields["sport"])))
    return flows


def count_forwarded(lb_netns: str, name: str, address: str) -> None:
    """Count the VXLAN (or GENEVE) datagrams the load balancer forwards to ``address`` (rule
    comment ``name``): the kernel's own per-target count, to hold against what the collector says
    it received."""
    rule = (
        "ip",
        "daddr",
        address,
        "udp",
        "dport",
        f"{{ {VXLAN_PORT}, {GENEVE_PORT} }}",
        "counter",
        "comment",
        f'"{name}"',
    )
    run("nft", "add", "rule", "ip", TABLE, "forward", *rule, netns=lb_netns)


def forwarded(lb_netns: str) -> dict[str, int]:
    """Datagrams forwarded per target (by the name given to ``count_forwarded``)."""
    listing = json.loads(run("nft", "-j", "list", "chain", "ip", TABLE, "forward", netns=lb_netns))
    out = {}
    for item in listing["nftables"]:
        rule = item.get("rule")
        if rule and "comment" in rule:
            for expr in rule["expr"]:
                if "counter" in expr:
                    out[str(rule["comment"])] = int(expr["counter"]["packets"])
    return out


@dataclass
class Target:
    """One registered collector and what the health checker knows of it."""

    name: str
    address: str
    state: str = "initial"  # initial, healthy, unhealthy.draining, unhealthy, draining, unused
    passes: int = 0
    failures: int = 0
    drain_until: float = 0.0


@dataclass
class TargetGroup:
    """Health checks and the bucket map; runs in a thread of a process inside the LB namespace."""

    lb_netns: str
    # AWS's timings scaled down (docs/fleet.md); the timeout is generous for a loaded 2-core
    # machine, where a false failure would move a healthy target's flows
    interval_s: float = 1.0
    timeout_s: float = 0.8
    healthy_threshold: int = 2
    unhealthy_threshold: int = 2
    unhealthy_draining_s: float = 1.5
    deregistration_delay_s: float = 1.5
    targets: dict[str, Target] = field(default_factory=dict)
    events: list[tuple[float, str, str]] = field(default_factory=list)
    mapped: tuple[str, ...] = ()
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="target-group", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def register(self, name: str, address: str) -> None:
        with self._lock:
            self.targets[name] = Target(name, address)
            self._event(name, "initial")

    def deregister(self, name: str) -> None:
        with self._lock:
            target = self.targets[name]
            target.state = "draining"
            target.drain_until = time.monotonic() + self.deregistration_delay_s
            self._event(name, "draining")
            self._apply()

    def state(self, name: str) -> str:
        with self._lock:
            return self.targets[name].state

    def wait_state(self, name: str, states: tuple[str, ...], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.state(name) not in states:
            if time.monotonic() > deadline:
                raise TimeoutError(f"target {name} is {self.state(name)}, not {states}")
            time.sleep(0.05)

    def _event(self, name: str, what: str) -> None:
        self.events.append((time.time(), name, what))

    def _check(self, target: Target) -> bool:
        url = f"http://{target.address}:{HEALTH_PORT}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                return 200 <= int(response.status) < 400
        except urllib.error.HTTPError as exc:
            return 200 <= exc.code < 400
        except OSError:
            return False

    def _loop(self) -> None:
        # one check per target at once, as the NLB checks each target on its own: a target that
        # times out does not delay the others' verdicts
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="health-check") as pool:
            while not self._stop.is_set():
                began = time.monotonic()
                self._round(pool)
                self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - began)))

    def _round(self, pool: ThreadPoolExecutor) -> None:
        with self._lock:
            targets = [t for t in self.targets.values() if t.state != "unused"]
        checked = [t for t in targets if t.state != "draining"]
        results = dict(zip((t.name for t in checked), pool.map(self._check, checked), strict=True))
        with self._lock:
            for target in targets:
                self._step(target, results.get(target.name))
            self._apply()

    def _step(self, target: Target, ok: bool | None) -> None:
        now = time.monotonic()
        if target.state in ("draining", "unhealthy.draining") and now >= target.drain_until:
            self._terminate(target)
            target.state = "unused" if target.state == "draining" else "unhealthy"
            self._event(target.name, target.state)
        if ok is None or target.state in ("draining", "unused"):
            return  # a deregistered target never comes back (a check may have raced the call)
        target.passes, target.failures = (target.passes + 1, 0) if ok else (0, target.failures + 1)
        if target.state != "healthy" and target.passes >= self.healthy_threshold:
            target.state = "healthy"
            self._event(target.name, "healthy")
        elif target.state == "healthy" and target.failures >= self.unhealthy_threshold:
            target.state = "unhealthy.draining"
            target.drain_until = now + self.unhealthy_draining_s
            self._event(target.name, "unhealthy.draining")

    def _terminate(self, target: Target) -> None:
        """Connection termination: its flows are hashed again on their next datagram."""
        delete = ("conntrack", "-D", "-p", "udp", "--reply-src", target.address)
        run(*delete, netns=self.lb_netns, check=False)  # exit 1 when it had no entries

    def _apply(self) -> None:
        healthy = sorted(t.address for t in self.targets.values() if t.state == "healthy")
        if not healthy:  # fail open, as the NLB does, to every target still registered
            healthy = sorted(
                t.address
                for t in self.targets.values()
                if t.state in ("initial", "unhealthy", "unhealthy.draining")
            )
        chosen = tuple(healthy)
        if chosen == self.mapped:
            return
        script = f"flush map ip {TABLE} buckets\n"
        if chosen:
            elements = ", ".join(f"{b} : {chosen[b % len(chosen)]}" for b in range(BUCKETS))
            script += f"add element ip {TABLE} buckets {{ {elements} }}\n"
        _nft(self.lb_netns, script)  # one nft transaction: no datagram sees a half-written map
        self.mapped = chosen
        self._event("map", ",".join(chosen) or "-")
