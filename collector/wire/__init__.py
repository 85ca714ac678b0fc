"""Sans-IO, zero-copy decoders for what AWS Traffic Mirroring sends: VXLAN -> Ethernet -> IP -> L4."""

from collector.wire.decode import Packet, decode, decode_packet
from collector.wire.drops import Drop

__all__ = ["Drop", "Packet", "decode", "decode_packet"]
