# The compiled build's typing of collector/flows.py (Cython, pure Python mode; see ARCHITECTURE.md,
# "Compiled modules"): the packet path's constants as C integers.
cdef long _ENDS_FLOW
cdef Py_ssize_t _PORTS_KEY_V4_SIZE
