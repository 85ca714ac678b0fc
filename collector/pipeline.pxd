# The compiled build's typing of collector/pipeline.py (Cython, pure Python mode; see
# ARCHITECTURE.md, "Compiled modules"): the new-flow decision's constants as C integers.
cimport cython
cdef Py_ssize_t _LONGEST_V4_KEY
cdef long _UNKNOWN_VNI, _FILTER_REJECT, _UNKNOWN_DIRECTION

@cython.locals(i=Py_ssize_t)
cpdef void account_batch(object account, list slots, list names, tuple sizes, object now)
