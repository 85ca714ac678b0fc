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

# The compiled build's octet reads (_decode_v4_octets): the memory of a bytes, bytearray or
# contiguous memoryview of octets (NULL for anything else), and a new bytes object to write a
# key into. Buffer plumbing only: what is read where is decided in decode.py.
cdef extern from *:
    """
    static CYTHON_INLINE const unsigned char *collector_buffer_octets(PyObject *o, Py_ssize_t *size) {
        if (PyByteArray_CheckExact(o)) {
            *size = PyByteArray_GET_SIZE(o);
            return (const unsigned char *)PyByteArray_AS_STRING(o);
        }
        if (PyBytes_CheckExact(o)) {
            *size = PyBytes_GET_SIZE(o);
            return (const unsigned char *)PyBytes_AS_STRING(o);
        }
        if (PyMemoryView_Check(o)) {
            Py_buffer *view = PyMemoryView_GET_BUFFER(o);
            if (view->itemsize == 1 && PyBuffer_IsContiguous(view, 'C')) {
                *size = view->len;
                return (const unsigned char *)view->buf;
            }
        }
        return NULL;
    }
    """
    const unsigned char *_buffer_octets "collector_buffer_octets" (object o, Py_ssize_t *size)
    bytes _new_bytes "PyBytes_FromStringAndSize" (const char *nothing, Py_ssize_t size)
    unsigned char *_bytes_octets "PyBytes_AS_STRING" (object o)

@cython.locals(
    q="const unsigned char *", d="unsigned char *", size=Py_ssize_t, proto=cython.long,
    ip_len=cython.long, i=cython.int,
)
cdef object _decode_v4_octets(object buf, Py_ssize_t n, Py_ssize_t start)
