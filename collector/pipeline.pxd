# The compiled build's typing of collector/pipeline.py (Cython, pure Python mode; see
# ARCHITECTURE.md, "Compiled modules"): the new-flow decision's constants as C integers.
cdef Py_ssize_t _LONGEST_V4_KEY
cdef long _UNKNOWN_VNI, _FILTER_REJECT, _UNKNOWN_DIRECTION
