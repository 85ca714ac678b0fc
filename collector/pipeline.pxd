# The compiled build's typing of collector/pipeline.py (Cython, pure Python mode; see
# ARCHITECTURE.md, "Compiled modules"): the new-flow decision's constants as C integers.
cimport cython
cdef Py_ssize_t _LONGEST_V4_KEY
cdef long _UNKNOWN_VNI, _FILTER_REJECT, _UNKNOWN_DIRECTION

@cython.locals(i=Py_ssize_t)
cpdef void account_batch(object account, list slots, list names, tuple sizes, object now)

# The pipeline as an extension type: the new-flow decision's caches and flow table as C fields,
# _decide and the table's add/reject as C calls.
from collector.flows cimport FlowTable
from collector.wire.decode cimport _buffer_octets

cdef long _AF_INET
cdef Py_ssize_t _SOCKADDR_IN_LEN
cdef bint _LITTLE_ENDIAN

cdef class Pipeline:
    cdef public object sessions, exporter, sequence, stats
    cdef public FlowTable table
    cdef public object account, account_geneve
    cdef list _drops, _geneve_drops
    cdef dict _endpoint_sessions, _outer_cache, _session_cache
    cdef object _records
    cdef long _last_vni
    cdef object _last_session
    cdef long long _last_outer_word
    cdef object _last_outer
    @cython.locals(q="const unsigned char *", size=Py_ssize_t, family=cython.long,
                   word=cython.longlong)
    cpdef object _last_ipv4_sender(self, object raw)
    cpdef _new_flow(self, bytes key, long ip_len, long tcp_flags, double now, object outer_src)
    cpdef object _outer_address(self, object outer)
    cpdef object _session_of(self, bytes key)
    cpdef long _decide(self, bytes key, long ip_len, long tcp_flags, double now, object session,
                       object outer_src) except? -1
