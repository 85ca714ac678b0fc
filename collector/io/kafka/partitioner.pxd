# The compiled build's typing of collector/io/kafka/partitioner.py (Cython, pure Python mode; see
# ARCHITECTURE.md, "Compiled modules"). The hash words are below 2**32 and a product of two of them
# below 2**64, so unsigned 64-bit C arithmetic, masked as the .py masks, gives Python's results.
import cython

cdef unsigned long long _START16

@cython.locals(k=cython.ulonglong)
cpdef unsigned long long _mixed_word(unsigned long long word)

@cython.locals(m=cython.ulonglong, n=cython.ulonglong, h=cython.ulonglong)
cpdef unsigned long long _flow_id_hash(bytes key, list table)

@cython.locals(
    length=cython.Py_ssize_t, m=cython.ulonglong, h=cython.ulonglong, a=cython.ulonglong,
    b=cython.ulonglong, c=cython.ulonglong, d=cython.ulonglong,
)
cpdef unsigned long long murmur2(bytes key)

@cython.locals(
    count=cython.Py_ssize_t, m=cython.ulonglong, start16=cython.ulonglong, n=cython.ulonglong,
    h=cython.ulonglong, table=list, chosen=list,
)
cpdef list partitions_for(object keys, object partitions)

@cython.locals(
    length=cython.Py_ssize_t, m=cython.ulonglong, mask=cython.ulonglong, shift=cython.int,
    h=cython.ulonglong, k=cython.ulonglong, whole=cython.Py_ssize_t, rest=cython.Py_ssize_t,
    i=cython.Py_ssize_t,
)
cpdef unsigned long long murmur2_octets(bytes key)
