# The compiled build's typing of collector/flows.py (Cython, pure Python mode; see ARCHITECTURE.md,
# "Compiled modules"): the packet path's constants as C integers, its decoders as C calls.
cdef long _ENDS_FLOW
cdef Py_ssize_t _PORTS_KEY_V4_SIZE

# the decoders, called from the packet paths as C functions rather than through their module
from collector.wire.decode cimport decode
from collector.wire.geneve cimport decode_gwlb
