# The compiled build's typing of collector/flows.py (Cython, pure Python mode; see ARCHITECTURE.md,
# "Compiled modules"): the packet path's constants as C integers, its decoders as C calls.
cimport cython

cdef long _ENDS_FLOW
cdef Py_ssize_t _PORTS_KEY_V4_SIZE

# the decoders, called from the packet paths as C functions rather than through their module
from collector.wire.decode cimport decode
from collector.wire.geneve cimport decode_gwlb

# The compiled build's flow entry (see CompiledFlow in flows.py): C counters and times, the
# direction as its index in terms.DIRECTIONS, untracked by the garbage collector (cython.no_gc).
cdef class CompiledFlow:
    cdef public unsigned long long packets, bytes
    cdef public double first, last
    cdef public object session
    cdef public unsigned char tcp_flags, direction_code

# The flow table as an extension type: its dicts as C fields, add/reject as C calls.
cdef class FlowTable:
    cdef public object active_timeout_s, inactive_timeout_s
    cdef public Py_ssize_t max_flows
    cdef dict _flows, _not_kept
    cdef list _ended
    cdef public Py_ssize_t evictions, rejected_evictions
    cpdef add(self, bytes key, long ip_len, long tcp_flags, double now, object session,
              object direction)
    cpdef reject(self, bytes key, long ip_len, long tcp_flags, double now, long reason,
                 object recorded=*)

cdef dict _DIRECTION_CODES
@cython.locals(entry=CompiledFlow)
cdef object _new_flow_entry(long ip_len, long tcp_flags, double now, object session,
                            object direction)
