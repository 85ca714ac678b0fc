# cython: annotation_typing=False
# Types for the compiled build of ipv4.py (Cython, pure Python mode): the .py is the source.
cimport cython

@cython.locals(value="long long", octet=long, digits=long, dots=long, ch=Py_UCS4, c=long)
cpdef long long ipv4_value(str text) except -2
