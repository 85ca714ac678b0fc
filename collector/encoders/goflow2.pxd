# cython: annotation_typing=False
# Types for the compiled build of goflow2.py (Cython, pure Python mode): the .py is the source,
# its first line turns bounds checks off (the buffer is longer than the longest message).
cimport cython

cdef bytearray _out
cdef unsigned char[::1] _out_view
cdef unsigned int _SAMPLING, _SEQUENCE_NUM, _SRC_ADDR, _DST_ADDR, _BYTES, _PACKETS_NUM
cdef unsigned int _IN_IF, _OUT_IF, _PROTO_NUM, _SRC_PORT_NUM, _DST_PORT_NUM, _FORWARDING
cdef unsigned int _TCP_FLAGS_NUM, _ETYPE, _ICMP_TYPE_NUM, _ICMP_CODE_NUM, _DOMAIN
cdef unsigned int _RECEIVED, _START, _END, _REJECTED, _ETYPE4, _ETYPE6
cdef int _AF_INET, _AF_INET6

@cython.locals(value="long long", octet=long, digits=long, dots=long, ch=Py_UCS4, c=long)
cpdef long long _ipv4_value(str text) except -2
cdef unsigned long long _NS
cdef long long _MIN_MS, _MAX_MS
cdef Py_ssize_t _AT_SEQUENCE, _AT_VNI, _AT_DIRECTION, _AT_IP_VERSION, _AT_PROTOCOL
cdef Py_ssize_t _AT_SRC_ADDR, _AT_DST_ADDR, _AT_SRC_PORT, _AT_DST_PORT, _AT_ICMP_TYPE
cdef Py_ssize_t _AT_ICMP_CODE, _AT_PACKETS, _AT_BYTES, _AT_TCP_FLAGS, _AT_ACTION
cdef Py_ssize_t _AT_START_MS, _AT_END_MS
cdef list _last_addresses

cdef Py_ssize_t _put(Py_ssize_t o, unsigned long long value) noexcept

cdef Py_ssize_t _put_field(Py_ssize_t o, unsigned int tag, unsigned long long value) noexcept

@cython.locals(n=Py_ssize_t, i=Py_ssize_t)
cdef Py_ssize_t _put_bytes(Py_ssize_t o, unsigned int tag, bytes data) noexcept

@cython.locals(last=list)
cdef bytes _address(Py_ssize_t slot, int family, object text)

@cython.locals(value="long long")
cdef Py_ssize_t _put_address(Py_ssize_t o, unsigned int tag, Py_ssize_t slot, int family, str text) except -1

@cython.locals(
    message="char *",
    slot=Py_ssize_t,
    o=Py_ssize_t,
    n=Py_ssize_t,
    vni="unsigned long long",
    v4=bint,
    family=int,
    sequence="unsigned long long",
    end_ns="unsigned long long",
)
cdef bytes _written(tuple fields, unsigned long long start_ms, unsigned long long end_ms)

@cython.locals(fields=tuple, start_ms="long long", end_ms="long long")
cpdef bytes encode_written(object r)
