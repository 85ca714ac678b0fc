"""The health server (collector/io/http.py) on a real loopback socket, with real HTTP clients."""

from __future__ import annotations

import asyncio
import logging
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import pytest

from collector.io import http
from collector.io.http import MAX_REQUEST_BYTES, HealthServer


def _broken() -> tuple[int, str, bytes]:
    raise RuntimeError("route failed")


@pytest.fixture
async def server() -> AsyncIterator[tuple[HealthServer, int]]:
    calls = {"healthz": 0}

    def healthz() -> tuple[int, str, bytes]:
        calls["healthz"] += 1
        return (200 if calls["healthz"] == 1 else 503), "application/json", b'{"status":"ok"}\n'

    routes = {
        "/healthz": healthz,
        "/metrics": lambda: (200, "text/plain; version=0.0.4", b"up 1\n"),
        "/broken": _broken,
    }
    health = HealthServer(routes)
    await health.start("127.0.0.1", 0)
    assert health.server is not None
    port = health.server.sockets[0].getsockname()[1]
    yield health, port
    await health.close()


async def _exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes and end the request stream, read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    writer.write_eof()
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    return response


def _urlopen(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def test_a_standard_client_gets_status_type_length_and_body(
    server: tuple[HealthServer, int],
) -> None:
    _, port = server
    status, headers, body = await asyncio.to_thread(_urlopen, f"http://127.0.0.1:{port}/healthz")
    assert (status, body) == (200, b'{"status":"ok"}\n')
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Length"] == str(len(body))
    assert headers["Connection"] == "close"
    assert headers["Cache-Control"] == "no-store"
    # the route decides the status on every request: the NLB sees 503 as soon as it says so
    status, _, _ = await asyncio.to_thread(_urlopen, f"http://127.0.0.1:{port}/healthz?probe=1")
    assert status == 503


async def test_head_has_the_headers_and_no_body(server: tuple[HealthServer, int]) -> None:
    _, port = server
    response = await _exchange(port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 5" in head
    assert body == b""


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        (b"GET /nothing HTTP/1.1", b"404 Not Found"),
        (b"POST /healthz HTTP/1.1", b"405 Method Not Allowed"),
        (b"DELETE /metrics HTTP/1.0", b"405 Method Not Allowed"),
    ],
)
async def test_unknown_paths_and_methods_are_refused(
    server: tuple[HealthServer, int], request_line: bytes, status: bytes
) -> None:
    _, port = server
    response = await _exchange(port, request_line + b"\r\nHost: x\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 " + status + b"\r\n")


async def test_oversized_garbage_and_failing_routes_get_a_closed_connection_and_no_harm(
    server: tuple[HealthServer, int], caplog: pytest.LogCaptureFixture
) -> None:
    _, port = server
    huge = b"GET /healthz HTTP/1.1\r\nX: " + b"a" * (2 * MAX_REQUEST_BYTES) + b"\r\n\r\n"
    assert await _exchange(port, huge) == b""
    assert await _exchange(port, b"\x00\xff garbage without an end of headers") == b""
    with caplog.at_level(logging.ERROR, logger="collector.http"):
        assert await _exchange(port, b"GET /broken HTTP/1.1\r\n\r\n") == b""
    assert "health request failed" in caplog.text
    # still serving
    response = await _exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert response.endswith(b"\r\n\r\nup 1\n")


async def test_a_client_that_never_finishes_its_request_is_dropped(
    server: tuple[HealthServer, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "REQUEST_TIMEOUT_S", 0.2)
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # and nothing more
    await writer.drain()
    assert await reader.read() == b""  # the server hung up without answering
    writer.close()
    await writer.wait_closed()
