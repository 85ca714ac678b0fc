"""A small HTTP/1.1 server for /healthz and /metrics (no framework: two GET routes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger("collector.http")

Route = Callable[[], tuple[int, str, bytes]]  # -> (status, content type, body)
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
MAX_REQUEST_BYTES = 8192  # request line + headers; protects against slow or huge requests
REQUEST_TIMEOUT_S = 5.0


class HealthServer:
    """Serves the given routes; every response closes the connection."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port."""
        self.server = await asyncio.start_server(
            self._handle, host, port, limit=MAX_REQUEST_BYTES, reuse_address=True
        )

    async def close(self) -> None:
        """Stop listening."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            method, _, rest = head.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            route = self.routes.get(path)
            if route is None:
                status, ctype, body = 404, "text/plain", b"not found\n"
            elif method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"GET only\n"
            else:
                status, ctype, body = route()
            writer.write(
                (
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
                ).encode("latin-1")
                + (body if method != "HEAD" else b"")
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a client that sends garbage or goes away gets nothing more
        except Exception:
            log.exception("health request failed")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
