# The compiled build's typing of collector/flows.py (Cython, pure Python mode; see ARCHITECTURE.md,
# "Compiled modules"): the packet path's constants as C integers, its decoders as C calls.
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
