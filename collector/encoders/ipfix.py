# cython: boundscheck=False, wraparound=False, initializedcheck=False
"""IPFIX (RFC 7011) messages of flow records: data records in sets, framing. Sans-IO.

The elements and the two templates (IPv4, IPv6) are in collector.encoders.ipfix_elements.
``MessageEncoder`` keeps the state RFC 7011 ties to one transport session and Observation Domain:
the sequence number (data records sent before the message, modulo 2**32, section 3.1) and when the
templates were last sent. The I/O side (collector.io.ipfix) owns sockets and clocks and passes
``now`` in.
"""

from __future__ import annotations

import socket
import struct
from binascii import unhexlify
from collections.abc import Callable, Iterable

from msgspec.structs import astuple

from collector.encoders.ipfix_elements import (
    DIRECTIONS,
    END_REASONS,
    FORWARDING,
    HEADER,
    MAX_MESSAGE_BYTES,
    MAX_STRING_BYTES,
    SEGMENT_TYPE_VXLAN,
    SET_HEADER,
    TEMPLATE_SET_ID,
    TEMPLATE_V4,
    TEMPLATE_V6,
    VERSION,
    Element,
    reference_data_record,
    string_field,
    template_elements,
    template_record,
)
from collector.records import FlowRecord


def _set(set_id: int, body: bytes) -> bytes:
    return SET_HEADER.pack(set_id, SET_HEADER.size + len(body)) + body


# The longest record: fixed part, two IPv6 addresses, the ids, every string at its bound.
_HEAD_BYTES = 8 * 4 + 2 + 2 + 1 + 2  # flowStart, flowEnd, octets, packets, ports, proto, flags
# icmpTypeCode, end reason, direction, segment, interfaces, forwarding status (and with enterprise
# elements the filter rule)
_KIND_BYTES = 2 + 1 + 1 + 8 + 4 + 4 + 1
_ENTERPRISE_KIND_BYTES = _KIND_BYTES + 2
_LONGEST_RECORD = (
    _HEAD_BYTES + _ENTERPRISE_KIND_BYTES + 8 + 16 + 16 + 8 + 8 * (1 + MAX_STRING_BYTES)
)
# A record kind is what records of one address family share when they share their ICMP type/code,
# end reason, direction, VNI and session strings: the struct of the whole record, the packed
# fixed fields, the encoded strings, built once. ICMP type/code come from the sender: each
# family's table of kinds holds _CACHE_MAX entries and is cleared when full.
_CACHE_MAX = 65_536
_KindKey = tuple[int | str | None, ...]
# (IPv4?, enterprise elements?, bytes of the strings) -> struct; bounded by the string bound
_record_structs: dict[tuple[bool, bool, int], struct.Struct] = {}
_header_into = HEADER.pack_into
_set_header_into = SET_HEADER.pack_into
_pton = socket.inet_pton


class _Last:
    """The last source and destination address texts of a kind and their packed forms."""

    __slots__ = ("dst", "dst_text", "src", "src_text")

    def __init__(self) -> None:
        self.src_text: str | None = None
        self.src = b""
        self.dst_text: str | None = None
        self.dst = b""


# (pack_into of the record's struct, its size, fixed bytes, strings, the kind's last addresses)
_Kind = tuple[Callable[..., None], int, bytes, bytes, _Last]


def _record_struct(v4: bool, enterprise: bool, context_bytes: int) -> struct.Struct:
    """One struct for a whole data record of a template: the head, the kind's bytes (icmp type
    and code, end reason, direction, layer2SegmentId, interfaces), exporterSequence, the
    addresses, connectionId and the strings (pre-encoded) in template order."""
    key = (v4, enterprise, context_bytes)
    found = _record_structs.get(key)
    if found is None:
        address = "4s" if v4 else "16s"
        ids = "Q" if enterprise else ""
        connection = "8s" if enterprise else ""
        kind = _ENTERPRISE_KIND_BYTES if enterprise else _KIND_BYTES
        fmt = f">QQQQHHBH{kind}s{ids}{address}{address}{connection}{context_bytes}s"
        found = _record_structs[key] = struct.Struct(fmt)
    return found


class MessageEncoder:
    """Data records into IPFIX messages for one transport session and Observation Domain."""

    def __init__(
        self,
        observation_domain_id: int,
        max_message_bytes: int,
        enterprise_number: int,
    ) -> None:
        if not 0 <= observation_domain_id < 2**32:
            raise ValueError("observation_domain_id is 32 bits")
        self.observation_domain_id = observation_domain_id
        self.max_message_bytes = min(max_message_bytes, MAX_MESSAGE_BYTES)
        self.enterprise_number = enterprise_number
        self.enterprise = enterprise_number != 0
        self.sequence = 0  # data records sent in this transport session (mod 2**32 on the wire)
        self.templates_sent_at: float | None = None
        self._templates = {
            TEMPLATE_V4: template_elements(4, enterprise=self.enterprise),
            TEMPLATE_V6: template_elements(6, enterprise=self.enterprise),
        }
        body = b"".join(
            template_record(tid, fields, enterprise_number)
            for tid, fields in self._templates.items()
        )
        self.template_set = _set(TEMPLATE_SET_ID, body)
        self._kinds4: dict[_KindKey, _Kind] = {}
        self._kinds6: dict[_KindKey, _Kind] = {}
        # a message is packed in place here, then copied out
        self._buffer = bytearray(self.max_message_bytes)
        self._view = memoryview(self._buffer)
        floor = HEADER.size + SET_HEADER.size + _LONGEST_RECORD  # templates may go on their own
        if self.max_message_bytes < floor:
            raise ValueError(f"messages of {self.max_message_bytes} bytes cannot hold a record")

    def restart(self) -> None:
        """A new transport session (TCP reconnect): sequence from 0, templates before data."""
        self.sequence = 0
        self.templates_sent_at = None

    def templates(self) -> dict[int, tuple[Element, ...]]:
        """Template id -> its fields."""
        return dict(self._templates)

    def clear_caches(self) -> None:
        """Forget the cached kinds (benchmarks start each pass from empty caches)."""
        self._kinds4.clear()
        self._kinds6.clear()

    def _new_kind(self, key: _KindKey, v4: bool) -> _Kind:
        icmp_type, icmp_code, end_reason, direction, vni, action = key[:6]
        assert isinstance(vni, int) and isinstance(end_reason, str) and isinstance(direction, str)
        assert isinstance(action, str)
        icmp = 0 if icmp_type is None else (int(icmp_type) << 8) | int(icmp_code or 0)
        in_if = vni if direction == "egress" else 0
        out_if = vni if direction == "ingress" else 0
        fixed = struct.pack(
            ">HBBB3xIIIB",
            icmp,
            END_REASONS[end_reason],
            DIRECTIONS[direction],
            SEGMENT_TYPE_VXLAN,
            vni,
            in_if,
            out_if,
            FORWARDING[action],
        )
        strings = key[6:]
        if self.enterprise:  # the filter rule follows the forwarding status
            fixed += struct.pack(">H", strings[0] or 0)
            strings = strings[1:]
        context = b"".join([string_field(s if isinstance(s, str) else None) for s in strings])
        record = _record_struct(v4, self.enterprise, len(context))
        kind = record.pack_into, record.size, fixed, context, _Last()
        kinds = self._kinds4 if v4 else self._kinds6
        if len(kinds) >= _CACHE_MAX:
            kinds.clear()
        kinds[key] = kind
        return kind

    def _close(
        self,
        messages: list[tuple[bytes, int]],
        end: int,
        set_start: int,
        set_id: int,
        count: int,
        export_time: int,
        sequence: int,
    ) -> int:
        """Finish the message in the buffer, ``end`` bytes with the set open at ``set_start``
        (dropped if it holds no record); returns the sequence number after it."""
        buf = self._buffer
        if end > set_start + SET_HEADER.size:
            _set_header_into(buf, set_start, set_id, end - set_start)
        else:
            end = set_start
        domain = self.observation_domain_id
        _header_into(buf, 0, VERSION, end, export_time, sequence & 0xFFFFFFFF, domain)
        messages.append((self._view[:end].tobytes(), count))
        return sequence + count

    def encode(
        self, records: Iterable[FlowRecord], now: float, refresh_s: float | None = None
    ) -> list[tuple[bytes, int]]:
        """Messages carrying ``records``, each with its number of data records.

        Templates lead the first message when they are due (``templates_due``). Each message stays
        within ``max_message_bytes``; the sequence number advances by the records of each message.
        IPv4 records go in sets of the IPv4 template, IPv6 ones in sets of the IPv6 template, each
        family in the records' order: a message takes records while the next one fits, as
        ``reference_data_record`` lays each out (tests/test_encode_paths.py), and its set headers
        and header are written when it is full. The records are packed in place: one struct per
        record kind interpreted (``_fill_packed``), each field written once compiled
        (``_fill_written``).
        """
        export_time = int(now)
        sequence = self.sequence
        messages: list[tuple[bytes, int]] = []
        buf, close = self._buffer, self._close
        o = HEADER.size  # where the next record, set header or template set goes
        if self.templates_due(now, refresh_s):
            buf[o : o + len(self.template_set)] = self.template_set
            o += len(self.template_set)
            self.templates_sent_at = now
        v4: list[FlowRecord] = []
        v6: list[FlowRecord] = []
        add4, add6 = v4.append, v6.append
        for r in records:
            if r.ip_version == 4:
                add4(r)
            else:
                add6(r)
        count = 0  # records in the message
        set_id, set_start = 0, o  # the open set (none yet) and where its header goes
        for items, family_set in ((v4, TEMPLATE_V4), (v6, TEMPLATE_V6)):
            if not items:
                continue
            if o > set_start + SET_HEADER.size:  # the other family's set ends, the message goes on
                _set_header_into(buf, set_start, set_id, o - set_start)
            set_id, set_start = family_set, o
            o += SET_HEADER.size
            if COMPILED:
                try:
                    o, count, set_start, sequence = _fill_written(
                        self,
                        items,
                        family_set,
                        messages,
                        o,
                        count,
                        set_start,
                        sequence,
                        export_time,
                    )
                except OverflowError as exc:  # a value its field cannot hold: as struct says it
                    raise struct.error(str(exc)) from exc
            else:
                o, count, set_start, sequence = _fill_packed(
                    self, items, family_set, messages, o, count, set_start, sequence, export_time
                )
        if o > HEADER.size:
            sequence = close(messages, o, set_start, set_id, count, export_time, sequence)
        self.sequence = sequence
        return messages

    def reference_data_record(self, r: FlowRecord) -> bytes:
        """One data record written field by field in template order: the readable definition
        of the records ``encode`` packs."""
        tid = TEMPLATE_V4 if r.ip_version == 4 else TEMPLATE_V6
        return reference_data_record(r, self._templates[tid])

    def templates_due(self, now: float, refresh_s: float | None) -> bool:
        """True before the first data of a session and, with ``refresh_s``, every refresh_s."""
        sent = self.templates_sent_at
        return sent is None or (refresh_s is not None and now - sent >= refresh_s)

    def _header(self, length: int, export_time: int) -> bytes:
        return HEADER.pack(
            VERSION, length, export_time, self.sequence & 0xFFFFFFFF, self.observation_domain_id
        )

    def withdrawal(self, now: float) -> bytes:
        """A message withdrawing both templates (section 8.1: a template record with no fields)."""
        body = b"".join(struct.pack(">HH", tid, 0) for tid in self._templates)
        tset = _set(TEMPLATE_SET_ID, body)
        return self._header(HEADER.size + len(tset), int(now)) + tset


_State = tuple[int, int, int, int]  # where the next record goes, records in the message, where
# the open set starts, the sequence number of the message


def _fill_packed(
    encoder: MessageEncoder,
    items: list[FlowRecord],
    set_id: int,
    messages: list[tuple[bytes, int]],
    o: int,
    count: int,
    set_start: int,
    sequence: int,
    export_time: int,
) -> _State:
    """The records of one family into the buffer from ``o`` (the set open at ``set_start``),
    each packed by its kind's struct, messages closed as they fill: the interpreted build's
    path (one C call per record)."""
    buf, top, close = encoder._buffer, encoder.max_message_bytes, encoder._close
    v4 = set_id == TEMPLATE_V4
    family = socket.AF_INET if v4 else socket.AF_INET6
    kinds = encoder._kinds4 if v4 else encoder._kinds6
    new_kind, pton = encoder._new_kind, socket.inet_pton
    # an address is packed again unless it is the text its kind saw last (the ENI's own address
    # is one side of every record of its session); the family is the record's ip_version, as
    # the template's
    if encoder.enterprise:
        for r in items:
            key: _KindKey = (
                r.icmp_type,
                r.icmp_code,
                r.end_reason,
                r.direction,
                r.vni,
                r.action,
                r.filter_rule,
                r.interface_id,
                r.session,
                r.instance_id,
                r.subnet_id,
                r.vpc_id,
                r.az_id,
                r.account_id,
                r.region,
            )
            try:
                pack_into, size, fixed, context, last = kinds[key]
            except KeyError:
                pack_into, size, fixed, context, last = new_kind(key, v4)
            end = o + size
            if end > top:
                sequence = close(messages, o, set_start, set_id, count, export_time, sequence)
                count, set_start = 0, HEADER.size
                o = set_start + SET_HEADER.size
                end = o + size
            text = r.src_addr
            if text is last.src_text:
                src = last.src
            else:
                src = last.src = pton(family, text)
                last.src_text = text
            text = r.dst_addr
            if text is last.dst_text:
                dst = last.dst
            else:
                dst = last.dst = pton(family, text)
                last.dst_text = text
            pack_into(
                buf,
                o,
                r.start_ms,
                r.end_ms,
                r.bytes,
                r.packets,
                r.src_port,
                r.dst_port,
                r.protocol,
                r.tcp_flags,
                fixed,
                r.sequence,
                src,
                dst,
                unhexlify(r.flow_id),
                context,
            )
            o = end
            count += 1
        return o, count, set_start, sequence
    for r in items:
        key = (  # without enterprise elements the ENI is the only string
            r.icmp_type,
            r.icmp_code,
            r.end_reason,
            r.direction,
            r.vni,
            r.action,
            r.interface_id,
        )
        try:
            pack_into, size, fixed, context, last = kinds[key]
        except KeyError:
            pack_into, size, fixed, context, last = new_kind(key, v4)
        end = o + size
        if end > top:
            sequence = close(messages, o, set_start, set_id, count, export_time, sequence)
            count, set_start = 0, HEADER.size
            o = set_start + SET_HEADER.size
            end = o + size
        text = r.src_addr
        if text is last.src_text:
            src = last.src
        else:
            src = last.src = pton(family, text)
            last.src_text = text
        text = r.dst_addr
        if text is last.dst_text:
            dst = last.dst
        else:
            dst = last.dst = pton(family, text)
            last.dst_text = text
        pack_into(
            buf,
            o,
            r.start_ms,
            r.end_ms,
            r.bytes,
            r.packets,
            r.src_port,
            r.dst_port,
            r.protocol,
            r.tcp_flags,
            fixed,
            src,
            dst,
            context,
        )
        o = end
        count += 1
    return o, count, set_start, sequence


# ---- the compiled build: every field written in place ----------------------------------------------
# Compiled, ``_fill_packed`` would still pay for a struct call with 16 arguments and for reading
# some 25 attributes per record; C writes each field into the buffer and reads the record's fields
# as one tuple instead. Interpreted, these byte loops are slower than one struct call, so each
# build takes the path that is fast for it (``COMPILED``); the tests run both paths in either build
# against the reference layout. Typing: ipfix.pxd.

# which path ``MessageEncoder.encode`` takes: the compiled module's file is not a .py
COMPILED = not __file__.endswith(".py")
_FIELDS = FlowRecord.__struct_fields__
_AT_FLOW_ID = _FIELDS.index("flow_id")
_AT_SEQUENCE = _FIELDS.index("sequence")
_AT_VNI = _FIELDS.index("vni")
_AT_SESSION = _FIELDS.index("session")
_AT_INTERFACE_ID = _FIELDS.index("interface_id")
_AT_DIRECTION = _FIELDS.index("direction")
_AT_PROTOCOL = _FIELDS.index("protocol")
_AT_SRC_ADDR = _FIELDS.index("src_addr")
_AT_DST_ADDR = _FIELDS.index("dst_addr")
_AT_SRC_PORT = _FIELDS.index("src_port")
_AT_DST_PORT = _FIELDS.index("dst_port")
_AT_ICMP_TYPE = _FIELDS.index("icmp_type")
_AT_ICMP_CODE = _FIELDS.index("icmp_code")
_AT_PACKETS = _FIELDS.index("packets")
_AT_BYTES = _FIELDS.index("bytes")
_AT_TCP_FLAGS = _FIELDS.index("tcp_flags")
_AT_START_MS = _FIELDS.index("start_ms")
_AT_END_MS = _FIELDS.index("end_ms")
_AT_END_REASON = _FIELDS.index("end_reason")
_AT_INSTANCE_ID = _FIELDS.index("instance_id")
_AT_SUBNET_ID = _FIELDS.index("subnet_id")
_AT_VPC_ID = _FIELDS.index("vpc_id")
_AT_AZ_ID = _FIELDS.index("az_id")
_AT_ACCOUNT_ID = _FIELDS.index("account_id")
_AT_REGION = _FIELDS.index("region")
_AT_ACTION = _FIELDS.index("action")
_AT_FILTER_RULE = _FIELDS.index("filter_rule")
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6
_view = memoryview(bytearray(1))  # the buffer of the encoder being filled


def _ipv4_value(text: str) -> int:
    """A dotted quad (four decimal octets, no leading zeros, nothing else: what inet_pton reads)
    as a 32-bit number; -1 for any other text, left to inet_pton to read or refuse. A C loop
    once compiled, where inet_pton costs a call with argument parsing and a bytes object (the
    same function is in goflow2.py and ipfix.py: a compiled module calls only its own C
    functions, so neither depends on the other being compiled)."""
    value = 0
    octet = 0
    digits = 0
    dots = 0
    for ch in text:
        c = ord(ch)
        if 48 <= c <= 57:  # 0-9
            if digits and not octet:  # a leading zero
                return -1
            octet = octet * 10 + (c - 48)
            if octet > 255:
                return -1
            digits += 1
        elif c == 46 and digits and dots < 3:  # a dot after an octet
            value = (value << 8) | octet
            octet = 0
            digits = 0
            dots += 1
        else:
            return -1
    if dots != 3 or not digits:
        return -1
    return (value << 8) | octet


def _put_u64(o: int, value: int) -> int:
    """``value`` big-endian in 8 bytes at ``o``; returns the offset after it."""
    for i in range(7, -1, -1):
        _view[o + i] = value & 0xFF
        value >>= 8
    return o + 8


def _put_u32(o: int, value: int) -> int:
    _view[o] = value >> 24
    _view[o + 1] = (value >> 16) & 0xFF
    _view[o + 2] = (value >> 8) & 0xFF
    _view[o + 3] = value & 0xFF
    return o + 4


def _put_u16(o: int, value: int) -> int:
    _view[o] = value >> 8
    _view[o + 1] = value & 0xFF
    return o + 2


def _put_bytes(o: int, data: bytes, length: int) -> int:
    """``data`` in ``length`` bytes (cut, or padded with zeros, as struct's ``s`` packs)."""
    n = len(data)
    n = min(n, length)
    for i in range(n):
        _view[o + i] = data[i]
    for i in range(n, length):
        _view[o + i] = 0
    return o + length


def _hex_digit(c: int) -> int:
    """The value of the hex digit whose code point is ``c``; -1 for any other character."""
    if 48 <= c <= 57:  # 0-9
        return c - 48
    if 97 <= c <= 102:  # a-f
        return c - 87
    if 65 <= c <= 70:  # A-F
        return c - 55
    return -1


def _put_flow_id(o: int, flow_id: str) -> int:
    """connectionId: the flow id's 16 hex digits as 8 bytes (``unhexlify`` for any other text,
    with struct's ``8s`` padding or cut)."""
    if len(flow_id) == 16:
        high = 0
        for i, ch in enumerate(flow_id):
            digit = _hex_digit(ord(ch))
            if digit < 0:
                break
            if i & 1:
                _view[o + (i >> 1)] = high << 4 | digit
            else:
                high = digit
        else:
            return o + 8
    return _put_bytes(o, unhexlify(flow_id), 8)


def _fill_written(
    encoder: MessageEncoder,
    items: list[FlowRecord],
    set_id: int,
    messages: list[tuple[bytes, int]],
    o: int,
    count: int,
    set_start: int,
    sequence: int,
    export_time: int,
) -> _State:
    """``_fill_packed`` of the compiled build: the same bytes, each field written in place."""
    global _view  # noqa: PLW0603 - the helpers write into it without a buffer argument each
    _view = encoder._view
    top = encoder.max_message_bytes
    v4 = set_id == TEMPLATE_V4
    family = _AF_INET if v4 else _AF_INET6
    address_bytes = 4 if v4 else 16
    kinds = encoder._kinds4 if v4 else encoder._kinds6
    enterprise = encoder.enterprise
    for r in items:
        fields = astuple(r)
        if enterprise:
            key: _KindKey = (
                fields[_AT_ICMP_TYPE],
                fields[_AT_ICMP_CODE],
                fields[_AT_END_REASON],
                fields[_AT_DIRECTION],
                fields[_AT_VNI],
                fields[_AT_ACTION],
                fields[_AT_FILTER_RULE],
                fields[_AT_INTERFACE_ID],
                fields[_AT_SESSION],
                fields[_AT_INSTANCE_ID],
                fields[_AT_SUBNET_ID],
                fields[_AT_VPC_ID],
                fields[_AT_AZ_ID],
                fields[_AT_ACCOUNT_ID],
                fields[_AT_REGION],
            )
        else:
            key = (
                fields[_AT_ICMP_TYPE],
                fields[_AT_ICMP_CODE],
                fields[_AT_END_REASON],
                fields[_AT_DIRECTION],
                fields[_AT_VNI],
                fields[_AT_ACTION],
                fields[_AT_INTERFACE_ID],
            )
        kind = kinds.get(key)
        if kind is None:
            kind = encoder._new_kind(key, v4)
        size = kind[1]
        fixed = kind[2]
        context = kind[3]
        last = kind[4]
        if o + size > top:
            sequence = encoder._close(messages, o, set_start, set_id, count, export_time, sequence)
            count, set_start = 0, HEADER.size
            o = set_start + SET_HEADER.size
        # an address is read in place if a dotted quad, else parsed again unless it is the text
        # its kind saw last
        src_value = _ipv4_value(fields[_AT_SRC_ADDR]) if v4 else -1
        if src_value < 0:
            text = fields[_AT_SRC_ADDR]
            if text is last.src_text:
                src = last.src
            else:
                src = last.src = _pton(family, text)
                last.src_text = text
        dst_value = _ipv4_value(fields[_AT_DST_ADDR]) if v4 else -1
        if dst_value < 0:
            text = fields[_AT_DST_ADDR]
            if text is last.dst_text:
                dst = last.dst
            else:
                dst = last.dst = _pton(family, text)
                last.dst_text = text
        o = _put_u64(o, fields[_AT_START_MS])
        o = _put_u64(o, fields[_AT_END_MS])
        o = _put_u64(o, fields[_AT_BYTES])
        o = _put_u64(o, fields[_AT_PACKETS])
        o = _put_u16(o, fields[_AT_SRC_PORT])
        o = _put_u16(o, fields[_AT_DST_PORT])
        protocol = fields[_AT_PROTOCOL]
        _view[o] = protocol
        o = _put_u16(o + 1, fields[_AT_TCP_FLAGS])
        o = _put_bytes(o, fixed, len(fixed))
        if enterprise:
            o = _put_u64(o, fields[_AT_SEQUENCE])
        o = _put_u32(o, src_value) if src_value >= 0 else _put_bytes(o, src, address_bytes)
        o = _put_u32(o, dst_value) if dst_value >= 0 else _put_bytes(o, dst, address_bytes)
        if enterprise:
            o = _put_flow_id(o, fields[_AT_FLOW_ID])
        o = _put_bytes(o, context, len(context))
        count += 1
    return o, count, set_start, sequence


def max_message_bytes(mtu_bytes: int, ipv6: bool) -> int:
    """The largest IPFIX message one UDP datagram carries unfragmented on a path of ``mtu_bytes``."""
    return mtu_bytes - (40 if ipv6 else 20) - 8
