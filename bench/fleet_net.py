"""Network namespaces and veth links of the fleet on one machine (iproute2, run as root).

Every namespace is named ``vmcf<PID>-<N>-<role>`` after the process that made it, so a later run
can tell its own namespaces from the leftovers of a run that died (its PID is gone) and remove
those.
Both ends of every veth pair live in namespaces made here: the machine's own network namespace
never gets an interface, an address or a route.

The load-balancer namespace is the hub: every other namespace has one link to it and a default
route through it, so sources reach the NLB address, collectors reach Kafka, and the harness (which
enters the load-balancer namespace) reaches every collector's /healthz and /metrics.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PREFIX = "vmcf"
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000  # <sched.h>
NLB_ADDRESS = "10.77.0.100"  # the listener address the sources mirror to; it exists nowhere
VXLAN_PORT = 4789  # RFC 7348 section 5
GENEVE_PORT = 6081  # RFC 8926 section 3.3: what a Gateway Load Balancer sends its targets
HEALTH_PORT = 8080
KAFKA_PORT = 9092
MTU = 9001  # a VPC's: a mirrored 1500-byte packet (plus 54 bytes of VXLAN encapsulation) fits
_LEFTOVER = re.compile(rf"^{PREFIX}(\d+)-")
_SERIAL = itertools.count(1)


class FleetError(Exception):
    """The fleet could not be built (a command failed); the message says which."""


def run(*command: str, netns: str | None = None, check: bool = True) -> str:
    """Run a command (in a namespace) and return its stdout; a failure names the command."""
    full = ["ip", "netns", "exec", netns, *command] if netns else list(command)
    done = subprocess.run(full, capture_output=True, text=True, check=False, timeout=60)
    if check and done.returncode != 0:
        raise FleetError(f"{' '.join(full)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def namespaces_supported() -> str:
    """Empty when this process may create network namespaces and nftables rules, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft", "conntrack"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make system-deps installs it)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        run("ip", "netns", "add", probe)
        run("nft", "add", "table", "ip", "probe", netns=probe)
    except FleetError as exc:
        return f"the kernel refuses a network namespace with nftables: {exc}"
    finally:
        run("ip", "netns", "del", probe, check=False)
    return ""


@contextlib.contextmanager
def entered(netns: str) -> Iterator[None]:
    """Run the calling thread (and the threads and processes it starts) inside ``netns``.

    setns(2) moves only the calling thread, so the rest of the process (a test runner, say) keeps
    its own network; sockets opened inside stay in ``netns`` after the thread moves back.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(NETNS_DIR / netns, os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise FleetError(f"setns({netns}): {os.strerror(ctypes.get_errno())}")
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise FleetError(f"setns back: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(target)
        os.close(own)


def remove_namespace(name: str) -> None:
    """Kill whatever still runs inside ``name`` (it is ours), then delete it with its links."""
    pids = run("ip", "netns", "pids", name, check=False).split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    for _ in range(50):
        if not run("ip", "netns", "pids", name, check=False).split():
            break
        time.sleep(0.1)
    run("ip", "netns", "del", name, check=False)


def remove_leftovers() -> list[str]:
    """Namespaces and work directories of earlier runs whose process is gone; returns them."""
    removed = []
    names = sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []
    for name in names:
        match = _LEFTOVER.match(name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            remove_namespace(name)
            removed.append(name)
    for work in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-fleet"):
        match = _LEFTOVER.match(work.name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            shutil.rmtree(work, ignore_errors=True)
            removed.append(str(work))
    return removed


@dataclass(frozen=True)
class Node:
    """One namespace hanging off the load balancer: its name, address and the hub's address."""

    role: str
    netns: str
    address: str
    gateway: str


class Topology:
    """The namespaces of one fleet; ``close`` removes them all, also after a failed build."""

    def __init__(self) -> None:
        self.tag = f"{PREFIX}{os.getpid()}-{next(_SERIAL)}"  # two fleets of one process differ
        self.lb = f"{self.tag}-lb"
        self.nodes: dict[str, Node] = {}
        self.created: list[str] = []
        self.work = Path(tempfile.gettempdir()) / f"{self.tag}-fleet"

    def build(self) -> None:
        remove_leftovers()
        self.work.mkdir(exist_ok=True)
        self._namespace(self.lb)
        run("ip", "link", "set", "lo", "up", netns=self.lb)
        run("sysctl", "-qw", "net.ipv4.ip_forward=1", netns=self.lb)

    def _namespace(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self.created.append(name)

    def add(self, role: str, subnet: int) -> Node:
        """A namespace for ``role`` linked to the hub on 10.77.<subnet>.0/24."""
        node = Node(role, f"{self.tag}-{role}", f"10.77.{subnet}.2", f"10.77.{subnet}.1")
        self._namespace(node.netns)
        hub_side = f"to-{role}"[:15]
        run("ip", "link", "add", hub_side, "netns", self.lb, "mtu", str(MTU), "type", "veth",
            "peer", "name", "eth0", "netns", node.netns, "mtu", str(MTU))  # fmt: skip
        run("ip", "addr", "add", f"{node.gateway}/24", "dev", hub_side, netns=self.lb)
        run("ip", "link", "set", hub_side, "up", netns=self.lb)
        for command in (
            ("ip", "addr", "add", f"{node.address}/24", "dev", "eth0"),
            ("ip", "link", "set", "eth0", "up"),
            ("ip", "link", "set", "lo", "up"),
            ("ip", "route", "add", "default", "via", node.gateway),
        ):
            run(*command, netns=node.netns)
        self.nodes[role] = node
        return node

    def close(self) -> None:
        for name in reversed(self.created):
            remove_namespace(name)
        self.created.clear()
        shutil.rmtree(self.work, ignore_errors=True)
