"""The capture reader on the less common corners of pcap and pcapng (files built byte by byte here,
frames by scapy): FCS bits in the link type, obsolete and simple packet blocks, big-endian sections,
an outer IPv4 header with a bogus IHL."""

from __future__ import annotations

import struct
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from collector.io.pcap import CaptureStats, read_frames, read_vxlan

VXLAN_PAYLOAD = bytes([0x08, 0, 0, 0, 0, 0, 7, 0]) + bytes(Ether(src="06:00:00:00:00:01") / IP())


def mirrored(dst: str = "10.0.100.5") -> bytes:
    frame = Ether() / IP(src="10.1.0.10", dst=dst) / UDP(sport=50000, dport=4789)
    return bytes(frame / Raw(VXLAN_PAYLOAD))


def block(endian: str, btype: int, body: bytes) -> bytes:
    """A pcapng block: type, total length, body padded to 32 bits, total length again."""
    padded = body + bytes(-len(body) % 4)
    total = 12 + len(padded)
    return struct.pack(endian + "II", btype, total) + padded + struct.pack(endian + "I", total)


def pcapng(endian: str, *blocks: bytes) -> bytes:
    shb = block(endian, 0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = block(endian, 1, struct.pack(endian + "HHI", 1, 0, 0))  # Ethernet, µs (no if_tsresol)
    return shb + idb + b"".join(blocks)


def test_pcap_link_type_with_fcs_bits(tmp_path: Path) -> None:
    """libpcap keeps FCS information above the low 16 bits of the link type field."""
    path = tmp_path / "fcs.pcap"
    frame = mirrored()
    wrpcap(str(path), [Ether(frame)])
    data = bytearray(path.read_bytes())
    data[20:24] = struct.pack("<I", 1 | 0x04000000 | 2 << 28)  # Ethernet, FCS present, 4 octets
    path.write_bytes(bytes(data))
    stats = CaptureStats()
    [(payload, _, _)] = list(read_vxlan(path, 4789, stats))
    assert payload == VXLAN_PAYLOAD and stats.linktypes == {1}


def test_outer_ipv4_with_a_bogus_ihl_is_not_vxlan(tmp_path: Path) -> None:
    # IHL 4 would put "UDP" inside the IP header, whose destination address here reads as port 4789
    frame = bytearray(mirrored(dst="10.0.18.181"))
    frame[14] = 0x44
    path = tmp_path / "ihl.pcap"
    wrpcap(str(path), [Ether(bytes(frame))])
    stats = CaptureStats()
    assert list(read_vxlan(path, 4789, stats)) == []
    assert stats.not_vxlan == 1


def test_pcapng_obsolete_packet_block_big_endian(tmp_path: Path) -> None:
    frame = mirrored()
    for endian in "<>":
        ts = 1_764_100_000_250_000  # microseconds
        body = struct.pack(
            endian + "HHIIII", 0, 3, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame)
        )
        path = tmp_path / f"opb{endian == '>'}.pcapng"
        path.write_bytes(pcapng(endian, block(endian, 2, body + frame)))
        stats = CaptureStats()
        assert list(read_vxlan(path, 4789, stats)) == [
            (VXLAN_PAYLOAD, 1_764_100_000.25, bytes([10, 1, 0, 10]))
        ], endian


def test_pcapng_simple_packet_block_without_padding(tmp_path: Path) -> None:
    frame = mirrored() + b"\x01"  # odd length: the block pads it
    assert len(frame) % 4
    path = tmp_path / "spb.pcapng"
    path.write_bytes(pcapng("<", block("<", 3, struct.pack("<I", len(frame)) + frame)))
    stats = CaptureStats()
    assert [data for _, _, data in read_frames(path, stats)] == [frame]
