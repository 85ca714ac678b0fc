"""AWS VPC Traffic Mirroring collector: VXLAN in, flow records out."""

__version__ = "0.1.0"
