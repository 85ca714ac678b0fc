# The compiled build's typing of collector/wire/geneve.py (Cython, pure Python mode; see
# ARCHITECTURE.md, "Compiled modules"): decode_gwlb's field values are C integers once read, so
# the GENEVE checks and decode's fast path after them are C comparisons, as in decode.pxd.
import cython

@cython.locals(
    head=cython.ulong, outer_vihl=cython.long, outer_frag=cython.long, outer_proto=cython.long,
    dport=cython.long, flags=cython.long, word=cython.ulong, etype=cython.long,
    vihl=cython.long, ip_len=cython.long, frag=cython.long, proto=cython.long,
    tflags=cython.long, vtc=cython.long, plen=cython.long,
)
cpdef object decode_gwlb(object buf, Py_ssize_t n)

cdef unsigned long _GWLB_HEAD, _FLAG_I, _VNI_BITS
cdef long _VXLAN_PORT, _IPV4_NO_OPTIONS, _UDP, _ALL_BUT_DF, _ETHERTYPE_IPV4, _ETHERTYPE_IPV6
cdef long _IPV4_MIN, _IPV4_FRAGMENT, _IPV6_LEN, _TCP_PROTO
cdef Py_ssize_t _GWLB_FAST_LEN, _GWLB_DECODE_LEN, _GWLB_L3, _GWLB_FAST_V6_LEN

# The compiled build's octet reads (see decode.pxd): the GWLB layout checked in C, then decode's
# read of IPv4 TCP/UDP at offset 68.
from collector.wire.decode cimport _buffer_octets, _decode_v4_octets

@cython.locals(q="const unsigned char *", size=Py_ssize_t)
cdef bint _gwlb_layout_octets(object buf, Py_ssize_t n)
