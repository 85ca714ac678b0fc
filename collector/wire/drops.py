"""Why a datagram or packet was not turned into flow counts. Each reason is a metric label."""

from __future__ import annotations

import enum


class Drop(enum.IntEnum):
    """Typed drop reasons. Values index the per-reason counter lists, so keep them dense from 0."""

    # decode reasons: the datagram itself is malformed or not something we account
    VXLAN_SHORT = 0  # fewer than 8 bytes: no VXLAN header
    VXLAN_FLAGS = 1  # RFC 7348 s5: the I flag is not set, the VNI is not valid
    ETHERNET_SHORT = 2  # runt inner frame: fewer than 14 bytes of Ethernet header
    VLAN_SHORT = 3  # an 802.1Q/802.1ad tag is cut off
    VLAN_DEPTH = 4  # more stacked VLAN tags than MAX_VLAN_TAGS
    NON_IP = 5  # inner ethertype is neither IPv4 nor IPv6 (ARP, LLDP, ...)
    IP_VERSION = 6  # the version nibble disagrees with the ethertype
    IPV4_SHORT = 7  # fewer than 20 bytes of IPv4 header captured
    IPV4_HEADER = 8  # IHL below 5 words
    IPV4_LENGTH = 9  # total length smaller than the header it claims
    IPV6_SHORT = 10  # fewer than 40 bytes of IPv6 header captured
    IPV6_EXT_SHORT = 11  # an extension header is cut off: the upper-layer protocol is unknown
    IPV6_EXT_CHAIN = 12  # longer extension-header chain than MAX_IPV6_EXT_HEADERS
    # pipeline reasons: the packet decoded but is not kept
    NOT_VXLAN = 13  # replay: a captured frame that is not UDP to the VXLAN port
    UNKNOWN_VNI = 14  # sessions are configured and none has this VNI
    FILTER_REJECT = 15  # the session's mirror filter rejects the flow (or no rule matches)
    UNKNOWN_DIRECTION = 16  # the session has a filter but the direction cannot be told
    # GENEVE reasons (RFC 8926; a Gateway Load Balancer's datagrams): the outer layer is malformed
    GENEVE_SHORT = 17  # fewer than 8 bytes: no GENEVE header
    GENEVE_VERSION = 18  # RFC 8926 s3.4: a version other than 0
    GENEVE_CONTROL = 19  # RFC 8926 s3.4: the O bit: a control message, not data
    GENEVE_OPTION_OVERRUN = 20  # the options (or one option) run past their length or the datagram
    GENEVE_CRITICAL_OPTION = 21  # RFC 8926 s3.5: a critical option this collector does not process
    GENEVE_PROTOCOL = 22  # protocol type is neither IPv4, IPv6 nor Ethernet
    GENEVE_INNER_SHORT = 23  # the inner IP (or Ethernet) and UDP headers are cut off
    GENEVE_INNER_HEADER = 24  # the inner IP header is invalid (version, header length)
    GENEVE_INNER_FRAGMENT = 25  # the inner mirror datagram is an IP fragment: no VXLAN header here
    GENEVE_INNER_NOT_VXLAN = 26  # the inner packet is not UDP to the VXLAN port 4789

    @property
    def label(self) -> str:
        """The metric label value, e.g. ``vxlan_flags``."""
        return self.name.lower()

    @property
    def is_decode_error(self) -> bool:
        """True for reasons that mean the datagram itself is malformed."""
        return self <= Drop.IPV6_EXT_CHAIN or self >= Drop.GENEVE_SHORT

    @property
    def is_geneve(self) -> bool:
        """True for reasons of the GENEVE layer (the VXLAN datagram inside was not reached)."""
        return self >= Drop.GENEVE_SHORT


DROP_COUNT = len(Drop)
