# The compiled build's typing of collector/wire/decode.py (Cython, pure Python mode; see
# ARCHITECTURE.md, "Compiled modules"): a datagram's field values are C integers once read, so the
# checks between the reads are C comparisons, and the module's integer constants are C constants.
import cython

@cython.locals(
    flags=cython.long, word=cython.ulong, etype=cython.long, vihl=cython.long,
    ip_len=cython.long, frag=cython.long, proto=cython.long, tflags=cython.long,
    head=cython.ulong, vtc=cython.long, plen=cython.long,
)
cpdef object decode(object buf, Py_ssize_t n, Py_ssize_t start=*)

@cython.locals(
    flags=cython.long, word=cython.ulong, vni=cython.ulong, etype=cython.long,
    off=cython.Py_ssize_t, tags=cython.int, vihl=cython.long, ip_len=cython.long,
    frag=cython.long, proto=cython.long, ihl=cython.long, vtc=cython.long, plen=cython.long,
    hops=cython.int, fo=cython.long, hlen=cython.long, sport=cython.long, dport=cython.long,
    tflags=cython.long, itype=cython.long, icode=cython.long,
)
cpdef object decode_walk(object buf, Py_ssize_t n, Py_ssize_t start=*)

cdef unsigned long _FLAG_I, _VNI_BITS
cdef long _MAX_VLAN, _MAX_EXT, _ETHERTYPE_IPV4, _ETHERTYPE_IPV6, _IPV4_MIN, _IPV4_FRAGMENT
cdef long _IPV6_LEN, _IPV6_FRAGMENT, _EXT_MIN, _FRAGMENT, _AH, _TCP_PROTO, _UDP_PROTO
cdef Py_ssize_t _TCP_HEADER, _PORTS_LEN, _ICMP_LEN, _VLAN_TAG, _ETH, _ETHERTYPE, _L3
cdef long _IHL_V4_NO_OPTIONS
cdef Py_ssize_t _FAST_V4_LEN, _FAST_V6_LEN
cdef long _VXLAN_SHORT, _VXLAN_FLAGS, _ETHERNET_SHORT, _VLAN_SHORT, _VLAN_DEPTH, _NON_IP
cdef long _IP_VERSION, _IPV4_SHORT, _IPV4_HEADER, _IPV4_LENGTH, _IPV6_SHORT, _IPV6_EXT_SHORT
cdef long _IPV6_EXT_CHAIN
