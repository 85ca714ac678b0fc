# The compiled build's typing of collector/sessions.py (Cython, pure Python mode; see
# ARCHITECTURE.md, "Compiled modules"): nothing is typed; compiled, a new flow's direction
# (Session.direction, once per flow) is decided without the interpreter's frame.
