"""The I/O of the receive and delivery paths: UDP sockets, captures, sinks, the HTTP server.

The sans-IO core (wire, filter, sessions, flows, records, pipeline) never imports from here (see
ARCHITECTURE.md). The commands around the core do I/O of their own kinds as well: processes and
signals (service, worker), the EC2 API (enrich), reading a topic back (tail).
"""
