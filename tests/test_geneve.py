"""Golden GENEVE vectors (tests/data/golden/geneve, written by tests/data/make_golden_geneve.py).

The referees are the same as for VXLAN: scapy (scapy.contrib.geneve) built the frames and stated
what they hold, tshark decodes the same files (GENEVE -> IP -> UDP 4789 -> VXLAN -> inner), and every
prefix of every GENEVE payload must give the outcome its layer offsets call for, on the hot path
(``decode_gwlb``) and the readable one (``decode_geneve``) alike.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from collector.errors import DecodeError
from collector.io.pcap import CaptureStats, read_mirrored
from collector.wire import decode_geneve, decode_packet
from collector.wire.decode import decode_walk
from collector.wire.geneve import GWLB_FAST_LEN, decode_gwlb, endpoint_text, locate_walk

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden" / "geneve"
CASES = sorted(p.stem for p in GOLDEN.glob("*.json"))
OUTER_HEADERS = 14 + 20 + 8  # outer Ethernet, IPv4 (from the GWLB), UDP to 6081

REQUIRED = {
    "gwlb_ipv4_tcp_syn",
    "gwlb_ipv6_udp",
    "gwlb_vlan_8021q",
    "gwlb_df_clear",
    "gwlb_ipv4_options",
    "gwlb_inner_vxlan_flags",
    "geneve_mirror_ipv6",
    "geneve_ethernet",
    "geneve_no_options",
    "geneve_unknown_option",
    "geneve_critical_understood",
    "geneve_version",
    "geneve_control",
    "geneve_critical_unknown",
    "geneve_option_overrun",
    "geneve_protocol",
    "geneve_inner_header",
    "geneve_inner_first_fragment",
    "geneve_inner_later_fragment",
    "geneve_inner_tcp",
    "geneve_inner_wrong_port",
}


@cache
def golden(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((GOLDEN / f"{name}.json").read_text())
    return doc


@cache
def golden_frame(name: str) -> bytes:
    data = (GOLDEN / f"{name}.pcap").read_bytes()
    (captured,) = struct.unpack_from("<I", data, 24 + 8)
    assert len(data) == 24 + 16 + captured, "exactly one record"
    return data[40:]


def golden_payload(name: str) -> bytes:
    frame = golden_frame(name)
    assert struct.unpack_from("!H", frame, 36)[0] == 6081
    return frame[OUTER_HEADERS:]


def readable(payload: bytes) -> dict[str, Any]:
    """decode_geneve's answer in the golden ``expect`` shape."""
    try:
        found = decode_geneve(payload)
    except DecodeError as exc:
        return {"drop": exc.reason.label}
    endpoint = found.options.endpoint_id
    return {
        "mirror_source": found.mirror_source,
        "gwlb_endpoint_id": None if endpoint is None else endpoint_text(endpoint),
        "packet": found.packet._asdict(),
    }


def test_golden_set_is_complete() -> None:
    assert set(CASES) >= REQUIRED
    for name in CASES:
        assert golden(name)["case"] == name


def test_each_vector_is_the_frame_its_recorded_tshark_line_describes() -> None:
    for name in CASES:
        out = subprocess.run(
            [tshark_binary(), "-r", str(GOLDEN / f"{name}.pcap")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert " ".join(out.split()) == golden(name)["tshark"], name


@pytest.mark.parametrize("name", CASES)
def test_decode_geneve_gives_the_golden_result(name: str) -> None:
    assert readable(golden_payload(name)) == golden(name)["expect"]


def expected_prefix(name: str, k: int) -> dict[str, Any]:
    """What the first ``k`` bytes of a vector's payload must give, from its layer offsets."""
    doc = golden(name)
    layers, expect = doc["layers"], doc["expect"]
    stage = layers["stage"]
    drop = expect.get("drop")
    if k < 8:
        return {"drop": "geneve_short"}
    if stage == "header":
        return {"drop": drop}
    if k < layers["options_end"]:
        return {"drop": "geneve_option_overrun"}
    if stage == "options":
        return {"drop": drop}
    if k < layers["ip_min_end"]:
        return {"drop": "geneve_inner_short"}
    if stage == "ip":
        return {"drop": drop}
    if k < layers["udp"] + 8:
        return {"drop": "geneve_inner_short"}
    if stage == "udp":
        return {"drop": drop}
    # the VXLAN datagram's own prefix: its truncation rules are tests/test_golden.py's
    vxlan = golden_payload(name)[layers["vxlan"] : k]
    try:
        packet = decode_packet(vxlan)
    except DecodeError as exc:
        return {"drop": exc.reason.label}
    return {**expect, "packet": packet._asdict()}


def walk(buf: bytes, n: int) -> Any:
    """The layer walk all the way: ``locate_walk``, then ``decode_walk`` at its offset."""
    located = locate_walk(buf, n)
    if isinstance(located, int):
        return located
    return decode_walk(buf, n, located[0])


@pytest.mark.parametrize("name", CASES)
def test_every_truncation(name: str) -> None:
    """Every prefix of the payload (a short read, a crafted length): the outcome its layers call
    for; the hot path (one read for the GWLB layout) agrees with the walk on each, also when the
    buffer holds more bytes than the datagram's length says."""
    payload = golden_payload(name)
    for k in range(len(payload) + 1):
        prefix = payload[:k]
        assert readable(prefix) == expected_prefix(name, k), (name, k)
        assert decode_gwlb(prefix, k) == walk(prefix, k), (name, k)
        assert decode_gwlb(payload, k) == walk(prefix, k), (name, k)


def test_the_gwlb_vectors_take_the_one_read_path() -> None:
    """The GWLB's own layout is what the single read recognises (the others are walked)."""
    from collector.wire.geneve import GWLB_EXPECTED, GWLB_FAST

    for name in CASES:
        payload = golden_payload(name)
        fast = GWLB_FAST.unpack_from(payload, 0) in GWLB_EXPECTED
        assert fast == name.startswith("gwlb_"), name
        if fast and "drop" not in golden(name)["expect"]:
            assert locate_walk(payload, len(payload))[0] == GWLB_FAST_LEN


# ---- tshark's decoding of the same files ---------------------------------------------------------

TSHARK_FIELDS = (
    "geneve.version",
    "geneve.flags.oam",
    "geneve.flags.critical",
    "geneve.proto_type",
    "geneve.option.class",
    "geneve.option.type",
    "geneve.option.length",
    "geneve.option.unknown.data",
    "ip.src",
    "ip.hdr_len",
    "ip.proto",
    "ip.flags.mf",
    "ip.frag_offset",
    "ipv6.src",
    "udp.dstport",
    "vxlan.flags",
    "vxlan.vni",
    "eth.type",
)
AWS_CLASS = 0x0108


def tshark_binary() -> str:
    found = shutil.which("tshark")
    assert found, "tshark is required by the golden tests (make system-deps installs it)"
    return found


def tshark_rows(pcap: Path) -> list[dict[str, list[str]]]:
    command = [tshark_binary(), "-n", "-r", str(pcap), "-o", "ip.defragment:FALSE"]
    command += ["-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,"]
    for field in TSHARK_FIELDS:
        command += ["-e", field]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        values = line.split("\t")
        assert len(values) == len(TSHARK_FIELDS), line
        rows.append(
            {n: v.split(",") if v else [] for n, v in zip(TSHARK_FIELDS, values, strict=True)}
        )
    return rows


def tshark_geneve_verdict(f: dict[str, list[str]]) -> dict[str, Any]:
    """What tshark's fields of the GENEVE layer and the mirror datagram say: the drop the collector
    must give, or the mirror source and endpoint id (the VXLAN datagram is test_golden's)."""
    if int(f["geneve.version"][0]) != 0:
        return {"drop": "geneve_version"}
    if f["geneve.flags.oam"][0] in ("1", "True"):
        return {"drop": "geneve_control"}
    # geneve.option.length: the header's options length in octets, then each option's (with its
    # 4-octet header); an option list tshark cannot walk lists no option at all
    total, *each = (int(x) for x in f["geneve.option.length"])
    classes = [int(c, 16) for c in f["geneve.option.class"]]
    types = [int(t, 16) for t in f["geneve.option.type"]]
    datas = f["geneve.option.unknown.data"]
    critical = f["geneve.flags.critical"][0] in ("1", "True")
    aws = {1: 8, 2: 8, 3: 4}
    if critical:
        if sum(each) != total:
            return {"drop": "geneve_option_overrun"}
        for option_class, option_type, length in zip(classes, types, each, strict=True):
            kind = option_type & 0x7F
            understood = option_class == AWS_CLASS and aws.get(kind) == length - 4
            if option_type & 0x80 and not understood:
                return {"drop": "geneve_critical_option"}
    endpoint = None
    for option_class, option_type, data in zip(classes, types, datas, strict=True):
        if option_class == AWS_CLASS and option_type & 0x7F == 1 and endpoint is None:
            endpoint = endpoint_text(int(data, 16))
    proto = int(f["geneve.proto_type"][0], 16)
    if proto not in (0x0800, 0x86DD, 0x6558):
        return {"drop": "geneve_protocol"}
    if proto == 0x86DD:
        source = f["ipv6.src"][0]
        mirror_proto = 17  # the IPv6 mirror datagram of the vectors has no extension header
    else:  # the outer frame's IPv4 header (the GWLB's) comes first
        if int(f["ip.hdr_len"][1]) < 20:
            return {"drop": "geneve_inner_header"}
        if f["ip.flags.mf"][1] in ("1", "True") or int(f["ip.frag_offset"][1]):
            return {"drop": "geneve_inner_fragment"}
        source = f["ip.src"][1]
        mirror_proto = int(f["ip.proto"][1])
    if mirror_proto != 17 or f["udp.dstport"][1:2] != ["4789"]:
        return {"drop": "geneve_inner_not_vxlan"}
    return {"mirror_source": source, "gwlb_endpoint_id": endpoint}


def test_tshark_agrees_with_the_golden_results(tmp_path: Path) -> None:
    merged = tmp_path / "geneve.pcap"
    with merged.open("wb") as out:
        out.write((GOLDEN / f"{CASES[0]}.pcap").read_bytes()[:24])
        for i, name in enumerate(CASES):
            frame = golden_frame(name)
            out.write(struct.pack("<IIII", 1_764_100_000 + i, 0, len(frame), len(frame)) + frame)
    rows = tshark_rows(merged)
    assert len(rows) == len(CASES)
    disagreements = {}
    for name, row in zip(CASES, rows, strict=True):
        want = golden(name)["expect"]
        layers = golden(name)["layers"]
        got = tshark_geneve_verdict(row)
        if layers["stage"] == "vxlan" or "drop" not in want:
            # the GENEVE layer passes: tshark found the mirror datagram's VXLAN header
            assert row["vxlan.vni"], name
            if "drop" not in want:
                want_here = {k: want[k] for k in ("mirror_source", "gwlb_endpoint_id")}
                if got != want_here or int(row["vxlan.vni"][-1]) != want["packet"]["vni"]:
                    disagreements[name] = (got, want_here)
            continue
        if got != want:
            disagreements[name] = (got, want)
    assert not disagreements


# ---- the vectors are what the generator makes, and the capture reader finds them -----------------


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "make_golden_geneve", DATA / "make_golden_geneve.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
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
def test_capture_reader_finds_the_geneve_payload(name: str) -> None:
    stats = CaptureStats()
    found = list(read_mirrored(GOLDEN / f"{name}.pcap", 4789, 6081, stats))
    assert stats.frames == 1 and stats.not_vxlan == 0
    [(payload, ts, outer_src, geneve)] = found
    assert geneve and payload == golden_payload(name)
    assert ts == 1_764_100_000.0
    assert outer_src == bytes([10, 0, 200, 7])  # the GWLB's address: never used for direction
