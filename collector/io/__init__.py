"""The only code that does I/O: sockets, captures, sinks, HTTP."""
