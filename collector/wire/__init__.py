"""Sans-IO, zero-copy decoders for what AWS Traffic Mirroring sends: VXLAN -> Ethernet -> IP -> L4,
and the GENEVE a Gateway Load Balancer wraps around it."""

from collector.wire.decode import Packet, decode, decode_packet
from collector.wire.drops import Drop
from collector.wire.geneve import GenevePacket, decode_geneve, locate

__all__ = ["Drop", "GenevePacket", "Packet", "decode", "decode_geneve", "decode_packet", "locate"]
