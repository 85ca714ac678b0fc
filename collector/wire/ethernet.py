"""Ethernet II framing with 802.1Q / 802.1ad tags (IEEE 802.1Q-2018)."""

from __future__ import annotations

import struct

ETHERNET_HEADER_LEN = 14  # dst MAC, src MAC, ethertype
ETHERTYPE_OFFSET = 12
VLAN_TAG_LEN = 4  # TCI (2) + inner ethertype (2)

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
# 802.1Q C-tag, 802.1ad S-tag, and the pre-standard 0x9100 QinQ outer tag still seen in the wild
VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100})

MAX_VLAN_TAGS = 4  # QinQ needs two; more is a crafted frame that would make us walk the datagram

U16 = struct.Struct("!H")
