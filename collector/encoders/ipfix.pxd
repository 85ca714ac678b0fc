# cython: annotation_typing=False
# Types for the compiled build of ipfix.py (Cython, pure Python mode): the .py is the source, its
# first line turns bounds checks off (a record is written only where the message has room for it).
cimport cython

cdef Py_ssize_t _AT_FLOW_ID, _AT_SEQUENCE, _AT_VNI, _AT_SESSION, _AT_INTERFACE_ID
cdef Py_ssize_t _AT_DIRECTION, _AT_PROTOCOL, _AT_SRC_ADDR, _AT_DST_ADDR, _AT_SRC_PORT
cdef Py_ssize_t _AT_DST_PORT, _AT_ICMP_TYPE, _AT_ICMP_CODE, _AT_PACKETS, _AT_BYTES
cdef Py_ssize_t _AT_TCP_FLAGS, _AT_START_MS, _AT_END_MS, _AT_END_REASON, _AT_INSTANCE_ID
cdef Py_ssize_t _AT_SUBNET_ID, _AT_VPC_ID, _AT_AZ_ID, _AT_ACCOUNT_ID, _AT_REGION
cdef Py_ssize_t _AT_ACTION, _AT_FILTER_RULE
cdef int _AF_INET, _AF_INET6

@cython.locals(value="long long", octet=long, digits=long, dots=long, ch=Py_UCS4, c=long)
cpdef long long _ipv4_value(str text) except -2
cdef unsigned char[::1] _view


cdef class _Last:
    cdef public object src_text, dst_text
    cdef public bytes src, dst


@cython.locals(i=Py_ssize_t)
cdef Py_ssize_t _put_u64(Py_ssize_t o, unsigned long long value) noexcept

cdef Py_ssize_t _put_u32(Py_ssize_t o, unsigned long long value) noexcept

cdef Py_ssize_t _put_u16(Py_ssize_t o, unsigned short value) noexcept

cdef int _hex_digit(int c) noexcept

@cython.locals(i=Py_ssize_t, high=int, digit=int, ch=Py_UCS4)
cdef Py_ssize_t _put_flow_id(Py_ssize_t o, str flow_id) except -1

@cython.locals(n=Py_ssize_t, i=Py_ssize_t)
cdef Py_ssize_t _put_bytes(Py_ssize_t o, bytes data, Py_ssize_t length) noexcept

@cython.locals(
    top=Py_ssize_t,
    v4=bint,
    family=int,
    address_bytes=Py_ssize_t,
    kinds=dict,
    enterprise=bint,
    fields=tuple,
    key=tuple,
    kind=tuple,
    size=Py_ssize_t,
    fixed=bytes,
    context=bytes,
    src=bytes,
    dst=bytes,
    src_value="long long",
    dst_value="long long",
    last=_Last,
    protocol="unsigned char",
)
cdef tuple _fill_written(
    object encoder,
    list items,
    Py_ssize_t set_id,
    list messages,
    Py_ssize_t o,
    Py_ssize_t count,
    Py_ssize_t set_start,
    object sequence,
    object export_time,
)
