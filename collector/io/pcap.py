"""Reading captures taken on a collector host (pcap and pcapng), down to the UDP payload.

The outer layers (link, IPv4/IPv6, UDP) are walked here; everything inside the payload (VXLAN, or
GENEVE from a Gateway Load Balancer around the mirror datagram) is the pipeline's business. Frames
that are UDP to neither port are counted, not raised.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from collector.errors import CollectorError

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER = 0x1A2B3C4D
PCAPNG_IDB, PCAPNG_SPB, PCAPNG_EPB, PCAPNG_OPB = 1, 3, 6, 2

# tcpdump.org link-layer header types
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229

MAX_RECORD_BYTES = 262_144  # a capture record longer than this is corrupt, not a frame


class CaptureError(CollectorError):
    """The capture file itself is unreadable (not a frame in it)."""


@dataclass
class CaptureStats:
    """What the reader saw besides VXLAN datagrams."""

    frames: int = 0
    not_vxlan: int = 0
    truncated_file: bool = False
    linktypes: set[int] = field(default_factory=set)


Datagram = tuple[bytes, float, bytes | None]  # VXLAN payload, timestamp (Unix s), outer source


def _network_offset(linktype: int, frame: bytes) -> tuple[int, int] | None:
    """(offset of the IP header, ethertype or 4/6) for the supported link types."""
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return None
        off = 12
        (etype,) = struct.unpack_from("!H", frame, off)
        while etype in (0x8100, 0x88A8, 0x9100) and len(frame) >= off + 6:
            off += 4
            (etype,) = struct.unpack_from("!H", frame, off)
        return off + 2, etype
    if linktype == LINKTYPE_LINUX_SLL:
        return (16, struct.unpack_from("!H", frame, 14)[0]) if len(frame) >= 16 else None
    if linktype == LINKTYPE_LINUX_SLL2:
        return (20, struct.unpack_from("!H", frame, 0)[0]) if len(frame) >= 20 else None
    if linktype == LINKTYPE_NULL:
        if len(frame) < 4:
            return None
        family = struct.unpack_from("=I", frame, 0)[0]
        return 4, 0x0800 if family == 2 else 0x86DD
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6) and frame:
        return 0, 0x0800 if frame[0] >> 4 == 4 else 0x86DD
    return None


def vxlan_payload(linktype: int, frame: bytes, port: int) -> tuple[bytes, bytes] | None:
    """(VXLAN payload, outer source address) of a frame that is UDP to ``port``, else None."""
    found = udp_payload(linktype, frame)
    if found is None or found[0] != port:
        return None
    return found[1], found[2]


def udp_payload(linktype: int, frame: bytes) -> tuple[int, bytes, bytes] | None:
    """(destination port, UDP payload, source address) of a UDP frame, else None."""
    located = _network_offset(linktype, frame)
    if located is None:
        return None
    off, etype = located
    if etype == 0x0800 and len(frame) >= off + 20 and frame[off] >> 4 == 4:
        ihl = (frame[off] & 15) * 4
        proto = frame[off + 9]
        frag = struct.unpack_from("!H", frame, off + 6)[0] & 0x1FFF
        src = frame[off + 12 : off + 16]
        if proto != 17 or frag or ihl < 20:
            return None
        udp = off + ihl
    elif etype == 0x86DD and len(frame) >= off + 40 and frame[off] >> 4 == 6:
        if frame[off + 6] != 17:  # outer extension headers are not expected on a VPC
            return None
        src = frame[off + 8 : off + 24]
        udp = off + 40
    else:
        return None
    if len(frame) < udp + 8:
        return None
    dport, length = struct.unpack_from("!2xHH", frame, udp)
    end = min(len(frame), udp + max(length, 8))
    return dport, frame[udp + 8 : end], src


def _read_exact(fh: BinaryIO, size: int) -> bytes | None:
    data = fh.read(size)
    return data if len(data) == size else None


def _pcap_frames(
    fh: BinaryIO, header: bytes, stats: CaptureStats
) -> Iterator[tuple[int, float, bytes]]:
    magic_le = struct.unpack("<I", header[:4])[0]
    endian = "<" if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
    magic = struct.unpack(endian + "I", header[:4])[0]
    divisor = 1_000_000_000 if magic == PCAP_MAGIC_NS else 1_000_000
    # the low 16 bits; the upper ones carry FCS information (libpcap's LT_LINKTYPE)
    linktype = struct.unpack(endian + "I", header[20:24])[0] & 0xFFFF
    stats.linktypes.add(linktype)
    record = struct.Struct(endian + "IIII")
    while True:
        head = fh.read(16)
        if not head:
            return
        if len(head) < 16:
            stats.truncated_file = True
            return
        sec, frac, incl, _orig = record.unpack(head)
        if incl > MAX_RECORD_BYTES:
            raise CaptureError(f"corrupt pcap record: {incl} bytes captured")
        data = _read_exact(fh, incl)
        if data is None:
            stats.truncated_file = True
            return
        # one int/int division: the float nearest the true time, as pcapng gives (see _tsresol)
        yield linktype, (sec * divisor + frac) / divisor, data


def _pcapng_frames(
    fh: BinaryIO, first: bytes, stats: CaptureStats
) -> Iterator[tuple[int, float, bytes]]:
    interfaces: list[tuple[int, int]] = []  # (linktype, timestamp units per second)
    endian = "<"
    block = first
    while True:
        if len(block) < 8:
            if block:
                stats.truncated_file = True
            return
        btype = struct.unpack(endian + "I", block[:4])[0]
        if btype == PCAPNG_SHB:
            rest = _read_exact(fh, 4)
            if rest is None:
                stats.truncated_file = True
                return
            endian = "<" if struct.unpack("<I", rest)[0] == PCAPNG_BYTE_ORDER else ">"
            interfaces = []
            body_len = struct.unpack(endian + "I", block[4:8])[0] - 12
            body = _read_exact(fh, body_len)
            if body is None:
                stats.truncated_file = True
                return
        else:
            total = struct.unpack(endian + "I", block[4:8])[0]
            if total < 12 or total > MAX_RECORD_BYTES + 64:
                raise CaptureError(f"corrupt pcapng block length {total}")
            body = _read_exact(fh, total - 8)
            if body is None:
                stats.truncated_file = True
                return
            body = body[:-4]
            if btype == PCAPNG_IDB:
                linktype = struct.unpack_from(endian + "H", body, 0)[0]
                interfaces.append((linktype, _tsresol(body[8:], endian)))
                stats.linktypes.add(linktype)
            elif btype in (PCAPNG_EPB, PCAPNG_OPB) and len(body) >= 20:
                iface, high, low, cap = struct.unpack_from(endian + "IIII", body, 0)
                if btype == PCAPNG_OPB:  # a 16-bit interface id, then a 16-bit drops count
                    iface = struct.unpack_from(endian + "H", body, 0)[0]
                if iface < len(interfaces):
                    linktype, per_second = interfaces[iface]
                    yield linktype, ((high << 32) | low) / per_second, body[20 : 20 + cap]
            elif btype == PCAPNG_SPB and interfaces and len(body) >= 4:
                original = struct.unpack_from(endian + "I", body, 0)[0]
                yield interfaces[0][0], 0.0, body[4 : 4 + original]  # without the block padding
        block = fh.read(8)


def _tsresol(options: bytes, endian: str) -> int:
    """Timestamp units per second of an interface (if_tsresol), as an exact integer.

    Dividing the integer timestamp by it gives the float nearest the true time; multiplying by an
    inexact 1e-6 does not, and a record's milliseconds could then differ between the pcap and the
    pcapng of one capture.
    """
    off = 0
    while off + 4 <= len(options):
        code, length = struct.unpack_from(endian + "HH", options, off)
        if code == 0:
            break
        if code == 9 and length >= 1:  # if_tsresol
            value = options[off + 4]
            return 1 << (value & 0x7F) if value & 0x80 else int(10**value)
        off += 4 + ((length + 3) & ~3)
    return 1_000_000


def read_frames(path: str | Path, stats: CaptureStats) -> Iterator[tuple[int, float, bytes]]:
    """(linktype, timestamp, frame) for each record of a pcap or pcapng file."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the generator's with block below
    except OSError as exc:
        raise CaptureError(f"cannot open {path}: {exc.strerror}") from exc
    with fh:
        head = fh.read(24)
        if len(head) < 8:
            raise CaptureError(f"{path} is not a pcap or pcapng file")
        magic = struct.unpack("<I", head[:4])[0]
        if magic == PCAPNG_SHB:
            fh.seek(8)
            yield from _pcapng_frames(fh, head[:8], stats)
        elif magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS) or struct.unpack(">I", head[:4])[0] in (
            PCAP_MAGIC_US,
            PCAP_MAGIC_NS,
        ):
            if len(head) < 24:
                raise CaptureError(f"{path}: truncated pcap header")
            yield from _pcap_frames(fh, head, stats)
        else:
            raise CaptureError(f"{path} is not a pcap or pcapng file")


def read_vxlan(path: str | Path, port: int, stats: CaptureStats) -> Iterator[Datagram]:
    """The VXLAN datagrams of a capture with their timestamps and outer source addresses."""
    for linktype, ts, frame in read_frames(path, stats):
        stats.frames += 1
        found = vxlan_payload(linktype, frame, port)
        if found is None:
            stats.not_vxlan += 1
            continue
        payload, src = found
        yield payload, ts, src


Mirrored = tuple[bytes, float, bytes | None, bool]
"""A datagram of a capture: payload, timestamp, outer source, whether it is GENEVE."""


def read_mirrored(
    path: str | Path, vxlan_port: int, geneve_port: int, stats: CaptureStats
) -> Iterator[Mirrored]:
    """The VXLAN datagrams and the GENEVE datagrams (as a Gateway Load Balancer's targets see
    them) of a capture, in capture order; other frames are counted in ``stats.not_vxlan``."""
    for linktype, ts, frame in read_frames(path, stats):
        stats.frames += 1
        found = udp_payload(linktype, frame)
        if found is not None:
            dport, payload, src = found
            if dport == vxlan_port:
                yield payload, ts, src, False
                continue
            if dport == geneve_port:
                yield payload, ts, src, True
                continue
        stats.not_vxlan += 1
