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

    @property
    def label(self) -> str:
        """The metric label value, e.g. ``vxlan_flags``."""
        return self.name.lower()

    @property
    def is_decode_error(self) -> bool:
        """True for reasons that mean the datagram itself is malformed."""
        return self <= Drop.IPV6_EXT_CHAIN


DROP_COUNT = len(Drop)
