"""Golden VXLAN vectors (tests/data/golden, written by tests/data/make_golden.py) through the decoder.

Three referees nobody here wrote: scapy built the frames and stated the expected fields, tshark decodes
the same files, and every prefix of every payload (a session PacketLength can cut anywhere) must give
exactly the outcome its layer boundaries call for.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from collector.errors import DecodeError
from collector.io.pcap import CaptureStats, read_vxlan
from collector.wire import Drop, Packet, decode, decode_packet
from collector.wire.decode import decode_walk
from collector.wire.ethernet import MAX_VLAN_TAGS
from collector.wire.ip import MAX_IPV6_EXT_HEADERS

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.json"))
OUTER_HEADERS = 14 + 20 + 8  # every golden frame: outer Ethernet, IPv4 without options, UDP
EXT_PROTOCOLS = {0, 43, 44, 51, 60, 135, 139, 140}  # IPv6 extension headers (RFC 8200 s4, IANA)

# Every case the decoder must be held to; a vector that goes missing fails here, not silently.
REQUIRED = {
    "vxlan_flag_i_unset",
    "vxlan_other_flags",
    "ipv4_tcp_syn",
    "ipv4_tcp_fin",
    "ipv4_tcp_rst",
    "ipv4_tcp_ack_psh",
    "ipv4_udp",
    "ipv4_icmp_echo",
    "ipv4_options",
    "ipv4_first_fragment",
    "ipv4_later_fragment",
    "vlan_8021q",
    "vlan_qinq",
    "vlan_too_many_tags",
    "arp",
    "ipv6_tcp",
    "ipv6_udp",
    "ipv6_icmpv6_echo",
    "ipv6_hop_by_hop",
    "ipv6_routing",
    "ipv6_destination_options",
    "ipv6_ah",
    "ipv6_first_fragment",
    "ipv6_later_fragment",
    "ipv6_ext_chain_too_long",
    "ipv4_gre",
    "ipv4_esp",
    "ipv6_other_protocol",
    "ipv4_jumbo_truncated",
}


@cache
def golden(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((GOLDEN / f"{name}.json").read_text())
    return doc


@cache
def golden_frame(name: str) -> bytes:
    """The one frame of a golden pcap (classic little-endian pcap, as scapy writes it)."""
    data = (GOLDEN / f"{name}.pcap").read_bytes()
    assert struct.unpack_from("<I", data, 0)[0] == 0xA1B2C3D4
    (captured,) = struct.unpack_from("<I", data, 24 + 8)
    assert len(data) == 24 + 16 + captured, "exactly one record"
    return data[40:]


def golden_payload(name: str) -> bytes:
    frame = golden_frame(name)
    assert frame[12:14] == b"\x08\x00" and frame[14] == 0x45 and frame[23] == 17
    assert struct.unpack_from("!H", frame, 36)[0] == 4789
    return frame[OUTER_HEADERS:]


def as_expected(result: Packet | Drop) -> dict[str, Any]:
    if isinstance(result, Drop):
        return {"drop": result.label}
    return result._asdict()


def decoded(payload: bytes) -> dict[str, Any]:
    try:
        return as_expected(decode_packet(payload))
    except DecodeError as exc:
        return as_expected(exc.reason)


def test_golden_set_is_complete() -> None:
    assert set(CASES) >= REQUIRED
    for name in CASES:
        doc = golden(name)
        assert doc["case"] == name
        assert (GOLDEN / f"{name}.pcap").exists()


def test_each_vector_is_the_frame_its_recorded_tshark_line_describes() -> None:
    """``tshark -r NAME.pcap`` prints, today, the very line the vector recorded (whitespace aside).
    One run per file: tshark's TCP and reassembly state would carry over between frames of one
    capture and change the lines."""

    def summary(name: str) -> str:
        command = [tshark_binary(), "-r", str(GOLDEN / f"{name}.pcap")]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        return " ".join(out.split())

    with ThreadPoolExecutor(max_workers=4) as pool:
        printed = dict(zip(CASES, pool.map(summary, CASES), strict=True))
    assert printed == {name: golden(name)["tshark"] for name in CASES}


@pytest.mark.parametrize("name", CASES)
def test_decode_packet_gives_the_golden_result(name: str) -> None:
    assert decoded(golden_payload(name)) == golden(name)["expect"]


@pytest.mark.parametrize("name", CASES)
def test_hot_path_decode_ignores_bytes_past_n(name: str) -> None:
    """The live path decodes from a reused receive buffer: what lies beyond ``n`` must not matter."""
    payload = golden_payload(name)
    for filler in (b"\x00", b"\xff"):
        buf = bytearray(payload + filler * 64)
        assert decode(memoryview(buf), len(payload)) == decode(payload, len(payload))


# ---- every truncation ------------------------------------------------------------------------------


def _drop(label: str) -> dict[str, Any]:
    return {"drop": label}


def expected_prefix(doc: dict[str, Any], k: int) -> dict[str, Any]:
    """What decoding the first ``k`` bytes of a golden payload must give, from its layer boundaries.

    The rules: a layer whose fixed header is cut is a drop named after that layer (VXLAN 8, Ethernet
    14, VLAN tag 4, IPv4 20, IPv6 40, an extension header's first 8 octets); the bounds on VLAN tags
    and extension headers hold as soon as the walk reaches the header past the bound; a later fragment
    needs nothing past its IP headers; a cut transport header loses its fields (TCP flags need 14
    octets, ports 4, ICMP type and code 2) but the packet still counts, with ``ip_len`` from the IP
    header whatever was captured.
    """
    full = doc["expect"]
    for layer in doc["layers"]:
        kind, off = layer["layer"], layer["offset"]
        if kind == "vxlan":
            if k < off + 8:
                return _drop("vxlan_short")
            if not layer["flags"] & 0x08:
                return _drop("vxlan_flags")
        elif kind == "ethernet":
            if k < off + 14:
                return _drop("ethernet_short")
        elif kind == "vlan":
            if layer["depth"] > MAX_VLAN_TAGS:
                return _drop("vlan_depth")
            if k < off + 4:
                return _drop("vlan_short")
        elif kind == "not_ip":
            return _drop("non_ip")
        elif kind == "ipv4":
            if k < off + 20:
                return _drop("ipv4_short")
            if layer["later_fragment"]:
                return full
        elif kind == "ipv6":
            if k < off + 40:
                return _drop("ipv6_short")
        elif kind == "ipv6_ext":
            if layer["depth"] > MAX_IPV6_EXT_HEADERS:
                return _drop("ipv6_ext_chain")
            if k < off + 8:
                return _drop("ipv6_ext_short")
            if layer["later_fragment"]:
                return full
        elif kind == "tcp":
            if k >= off + 14:
                return full
            if k >= off + 4:
                return {**full, "tcp_flags": 0}
            return {**full, "src_port": 0, "dst_port": 0, "tcp_flags": 0}
        elif kind == "udp":
            return full if k >= off + 4 else {**full, "src_port": 0, "dst_port": 0}
        elif kind == "icmp":
            return full if k >= off + 2 else {**full, "icmp_type": None, "icmp_code": None}
        elif kind == "other":
            return full
        else:
            raise AssertionError(f"unknown layer {kind!r} in {doc['case']}")
    return full


@pytest.mark.parametrize("name", CASES)
def test_every_truncation(name: str) -> None:
    doc = golden(name)
    payload = golden_payload(name)
    assert expected_prefix(doc, len(payload)) == doc["expect"], (
        "the rules agree with scapy's verdict"
    )
    buf = bytearray(payload + b"\xa5" * 16)  # garbage past n, as in a reused receive buffer
    wrong = []
    for k in range(len(payload) + 1):
        want = expected_prefix(doc, k)
        got = decoded(payload[:k])
        hot = decode(buf, k)
        if got != want:
            wrong.append((k, got, want))
        elif hot != decode(payload[:k], k):
            wrong.append((k, hot, "decode() differs from decode_packet()"))
        elif decode_walk(buf, k) != hot:
            wrong.append((k, hot, "the fast path differs from the layer walk"))
    assert not wrong, f"{len(wrong)} prefixes wrong, first: {wrong[:3]}"


def test_truncation_rules_see_every_layer() -> None:
    """Each golden case exercises the cut it is meant to: outcomes change at the layer boundaries."""
    outcomes: set[str] = set()
    for name in CASES:
        doc = golden(name)
        for k in range(len(golden_payload(name)) + 1):
            got = expected_prefix(doc, k)
            outcomes.add(got.get("drop", "packet"))
    assert outcomes >= {
        "vxlan_short",
        "vxlan_flags",
        "ethernet_short",
        "vlan_short",
        "vlan_depth",
        "non_ip",
        "ipv4_short",
        "ipv6_short",
        "ipv6_ext_short",
        "ipv6_ext_chain",
        "packet",
    }


# ---- tshark's decoding of the same files -----------------------------------------------------------

TSHARK_FIELDS = (
    "vxlan.flags",
    "vxlan.vni",
    "vlan.id",
    "ieee8021ad.id",
    "arp.opcode",
    "ip.src",
    "ip.dst",
    "ip.proto",
    "ip.len",
    "ip.frag_offset",
    "ipv6.src",
    "ipv6.dst",
    "ipv6.plen",
    "ipv6.nxt",
    "ipv6.hopopts.nxt",
    "ipv6.routing.nxt",
    "ipv6.dstopts.nxt",
    "ipv6.fraghdr.nxt",
    "ipv6.fraghdr.offset",
    "ah.next_header",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.flags",
    "udp.srcport",
    "udp.dstport",
    "icmp.type",
    "icmp.code",
    "icmpv6.type",
    "icmpv6.code",
)
IPV6_CHAIN_FIELDS = (
    "ipv6.hopopts.nxt",
    "ipv6.routing.nxt",
    "ipv6.dstopts.nxt",
    "ipv6.fraghdr.nxt",
    "ah.next_header",
)


def tshark_binary() -> str:
    found = shutil.which("tshark")
    assert found, "tshark is required by the golden tests (make system-deps installs it)"
    return found


def tshark_fields(pcap: Path) -> list[dict[str, list[str]]]:
    """Every frame's TSHARK_FIELDS, each a list of all occurrences (outer layers first)."""
    command = [tshark_binary(), "-n", "-r", str(pcap)]
    # one fragment is all a mirror target sees: dissect it rather than wait for reassembly
    command += ["-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE"]
    command += ["-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,"]
    for name in TSHARK_FIELDS:
        command += ["-e", name]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        values = line.split("\t")
        assert len(values) == len(TSHARK_FIELDS), line
        rows.append(
            {n: v.split(",") if v else [] for n, v in zip(TSHARK_FIELDS, values, strict=True)}
        )
    return rows


def tshark_verdict(f: dict[str, list[str]]) -> dict[str, Any]:
    """What tshark's fields say the decoder must return: the same shape as the golden ``expect``."""
    if not int(f["vxlan.flags"][0], 16) & 0x0800:  # the I bit, as a 16-bit flags field
        return _drop("vxlan_flags")
    if len(f["vlan.id"]) + len(f["ieee8021ad.id"]) > MAX_VLAN_TAGS:
        return _drop("vlan_depth")
    if f["arp.opcode"]:
        return _drop("non_ip")
    out: dict[str, Any] = {"vni": int(f["vxlan.vni"][0])}
    if len(f["ip.src"]) >= 2:  # outer IPv4 first, then the inner header
        proto = int(f["ip.proto"][1])
        out.update(
            ip_version=4,
            src_addr=f["ip.src"][1],
            dst_addr=f["ip.dst"][1],
            ip_len=int(f["ip.len"][1]),
        )
        transport = int(f["ip.frag_offset"][1]) == 0
    else:
        chain = [int(v) for n in IPV6_CHAIN_FIELDS for v in f[n]]
        if len(chain) > MAX_IPV6_EXT_HEADERS:
            return _drop("ipv6_ext_chain")
        upper = [v for v in [int(f["ipv6.nxt"][0]), *chain] if v not in EXT_PROTOCOLS]
        assert len(upper) == 1, f
        proto = upper[0]
        out.update(
            ip_version=6,
            src_addr=f["ipv6.src"][0],
            dst_addr=f["ipv6.dst"][0],
            ip_len=int(f["ipv6.plen"][0]) + 40,
        )
        transport = not any(int(v) for v in f["ipv6.fraghdr.offset"])
    out.update(protocol=proto, src_port=0, dst_port=0, tcp_flags=0, icmp_type=None, icmp_code=None)
    if transport and proto == 6 and f["tcp.srcport"]:
        out.update(src_port=int(f["tcp.srcport"][0]), dst_port=int(f["tcp.dstport"][0]))
        if f["tcp.flags"]:
            out["tcp_flags"] = int(f["tcp.flags"][0], 16) & 0xFF
    elif transport and proto == 17 and len(f["udp.srcport"]) >= 2:
        out.update(src_port=int(f["udp.srcport"][1]), dst_port=int(f["udp.dstport"][1]))
    elif proto in (1, 58):
        kind = "icmp" if proto == 1 else "icmpv6"
        out.update(icmp_type=int(f[f"{kind}.type"][0]), icmp_code=int(f[f"{kind}.code"][0]))
    return out


def test_tshark_agrees_with_the_golden_results(tmp_path: Path) -> None:
    merged = tmp_path / "golden.pcap"
    frames = [golden_frame(name) for name in CASES]
    with merged.open("wb") as out:  # one classic pcap with every golden frame: a single tshark run
        out.write((GOLDEN / f"{CASES[0]}.pcap").read_bytes()[:24])
        for i, frame in enumerate(frames):
            out.write(struct.pack("<IIII", 1_764_100_000 + i, 0, len(frame), len(frame)) + frame)
    rows = tshark_fields(merged)
    assert len(rows) == len(CASES)
    disagreements = {}
    for name, row in zip(CASES, rows, strict=True):
        want = golden(name)["expect"]
        got = tshark_verdict(row)
        if "drop" in want or "drop" in got:
            if got.get("drop") != want.get("drop"):
                disagreements[name] = (got, want)
        elif got != {k: want[k] for k in got}:
            disagreements[name] = (got, want)
    assert not disagreements


# ---- the vectors are what the generator makes, and the capture reader finds them -------------------


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("make_golden", DATA / "make_golden.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_files_are_what_the_generator_makes() -> None:
    generator = _generator()
    names = []
    for case in generator.cases():
        names.append(case.name)
        assert bytes(generator.frame(case)) == golden_frame(case.name), case.name
        expect, layers = generator.describe(case)
        assert golden(case.name)["expect"] == expect
        assert golden(case.name)["layers"] == layers
    assert sorted(names) == CASES


@pytest.mark.parametrize("name", CASES)
def test_capture_reader_finds_the_payload(name: str) -> None:
    stats = CaptureStats()
    found = list(read_vxlan(GOLDEN / f"{name}.pcap", 4789, stats))
    assert stats.frames == 1 and stats.not_vxlan == 0 and not stats.truncated_file
    [(payload, ts, outer_src)] = found
    assert payload == golden_payload(name)
    assert ts == 1_764_100_000.0
    assert outer_src == bytes([10, 1, 0, 10])
