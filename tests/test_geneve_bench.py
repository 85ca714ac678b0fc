"""The GENEVE side of the benchmarks: GWLB framing (bench/fleet_gwlb.py) and bench.drain's GENEVE
receiver and target, on tiny fills (counts and verdicts, not timings)."""

from __future__ import annotations

import socket

from bench import drain
from bench.drain import Drain, summarize
from bench.fleet_gwlb import mirror_source_of, wrap, wrap_all
from bench.harness import Senders
from bench.traffic import PROFILES, build
from collector.errors import DecodeError
from collector.wire import decode_geneve, decode_packet
from collector.wire.geneve import GWLB_FAST_LEN, endpoint_text, locate


def test_wrapped_profile_datagrams_decode_to_the_same_packets() -> None:
    """Every datagram of the mixed profile, wrapped as a GWLB wraps it: the GENEVE path finds the
    same packet (or the same drop) as the VXLAN path, the source ENI and the endpoint id."""
    data = build(PROFILES["mixed"], 400)
    for vxlan, geneve in zip(data, wrap_all(data), strict=True):
        assert locate(geneve, len(geneve))[0] == GWLB_FAST_LEN  # the GWLB layout: one read
        try:
            want = decode_packet(vxlan)
        except DecodeError as exc:
            try:
                decode_geneve(geneve)
            except DecodeError as again:
                assert again.reason == exc.reason
            else:
                raise AssertionError("the GENEVE path decoded what the VXLAN path dropped") from exc
            continue
        found = decode_geneve(geneve)
        assert found.packet == want
        assert found.mirror_source == mirror_source_of(vxlan)
        assert found.options.endpoint_id is not None
        assert endpoint_text(found.options.endpoint_id).startswith("vpce-0")
        assert found.options.attachment_id is not None and found.options.flow_cookie is not None


def test_the_ipv4_header_checksum_is_right() -> None:
    payload = wrap(bytes(60), "10.0.1.10")
    header = payload[40:60]
    total = sum(int.from_bytes(header[i : i + 2], "big") for i in range(0, 20, 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF
    assert socket.inet_ntoa(header[12:16]) == "10.0.1.10"


def test_a_tiny_fill_of_the_geneve_receiver_is_counted_exactly() -> None:
    senders = Senders(1)
    receiver = drain.geneve_receiver(8 << 20)
    try:
        assert receiver.name == drain.GENEVE_RECEIVER
        result = drain.measure(receiver, "mixed", 5_000, senders)
        assert result.sent == result.received == 5_000
        assert result.fill_kernel_drops == 0
        metrics = receiver.collector.metrics()
        geneve = metrics['collector_encapsulation_datagrams_received_total{encapsulation="geneve"}']
        assert geneve == 5_000
        drops = {k: v for k, v in metrics.items() if "geneve_" in k and v}
        assert drops == {}  # the GWLB framing is all valid GENEVE
    finally:
        receiver.close()
    assert "mixed+geneve" in senders.data  # built once per run, reused


def drained(receiver: str, pps: float, cpu_us: float) -> Drain:
    sent = 100_000
    return Drain(
        receiver=receiver,
        profile="mixed",
        count=sent,
        sent=sent,
        fill_s=0.1,
        fill_rate_pps=1e6,
        fill_kernel_drops=0,
        fill_backlog_drops=0,
        queued_bytes=[1000],
        frozen_s=1.0,
        drain_s=sent / pps,
        drain_pps=pps,
        socket_drain_s=[sent / pps],
        received=sent,
        unexplained=0,
        cpu_s=cpu_us * sent / 1e6,
        cpu_us_per_packet=cpu_us,
        cpu_wait_s=0.0,
        polls=10,
        poller_cpu_s=0.0,
        load_1m=0.0,
        pids_unchanged=True,
    )


def test_the_geneve_target_is_the_ratio_of_one_workers_drain_rates() -> None:
    names = ["collector", drain.GENEVE_RECEIVER]
    passing = summarize(
        [drained("collector", 600_000, 1.5), drained(drain.GENEVE_RECEIVER, 560_000, 1.6)],
        ["mixed"],
        names,
    )
    (target,) = drain.geneve_targets(passing, ["mixed"])
    assert target["pass"] is True and target["ratio"] == round(600_000 / 560_000, 3)
    failing = summarize(
        [drained("collector", 600_000, 1.5), drained(drain.GENEVE_RECEIVER, 500_000, 1.8)],
        ["mixed"],
        names,
    )
    (target,) = drain.geneve_targets(failing, ["mixed"])
    assert target["pass"] is False and target["cpu_ratio"] == 1.2
    assert drain.geneve_targets(passing, ["new-flows"]) == []  # not measured: no target
