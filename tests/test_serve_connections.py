"""The header deadline of serve/connections.py on each of uvicorn's HTTP parsers: the one
`uvicorn_options` picks here (httptools where it is installed, as uvicorn's "auto" does)
and h11, the fallback without it. A bare uvicorn server in a thread over a tiny app, so
no model loads; test_serve_adds.py checks the deadline on a real `sidrec serve`."""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from sidrec.serve import connections
from sidrec.serve.settings import ServeSettings

HEADER_S = 1.0  # the smallest header_timeout_s the settings allow
OK = b"HTTP/1.1 200 OK"


async def read_body_then_ok(scope: dict, receive, send) -> None:
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.contextmanager
def serving(protocol: type) -> Iterator[int]:
    """A uvicorn server on 127.0.0.1 with `uvicorn_options` over `protocol`; its port."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(connections, "TimedProtocol", protocol)
        options = connections.uvicorn_options(
            ServeSettings(header_timeout_s=HEADER_S, keep_alive_s=30))
    assert issubclass(options["http"], protocol)
    config = uvicorn.Config(read_body_then_ok, lifespan="off", log_level="warning", **options)
    server = uvicorn.Server(config)
    listening = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield listening.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)
        listening.close()


def read_until_closed(sock: socket.socket, seconds: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and when it closed (or
    `seconds`, if it did not)."""
    start, got = time.monotonic(), b""
    sock.settimeout(seconds)
    with contextlib.suppress(TimeoutError):
        while chunk := sock.recv(4096):
            got += chunk
    return got, time.monotonic() - start


def answer(sock: socket.socket) -> bytes:
    """One whole answer of `read_body_then_ok`."""
    sock.settimeout(10)
    got = b""
    while not got.endswith(b"\r\n\r\nok"):
        chunk = sock.recv(4096)
        assert chunk, f"closed after {got!r}"
        got += chunk
    return got


PROTOCOLS = [pytest.param(connections.TimedProtocol, id="in-use"),
             pytest.param(connections.TimedH11Protocol, id="h11")]


def test_httptools_is_kept_where_installed() -> None:
    """The header deadline does not cost uvicorn its faster parser."""
    if importlib.util.find_spec("httptools") is None:
        assert connections.TimedProtocol is connections.TimedH11Protocol
    else:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        assert issubclass(connections.TimedProtocol, HttpToolsProtocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_headers_have_a_deadline_and_bodies_do_not(protocol: type) -> None:
    """A connection that sends nothing, or headers that never end, is closed after
    header_timeout_s with nothing answered; a request whose headers are in may take
    longer over its body, and on a kept-alive connection each request's deadline counts
    from its own first byte, not from the previous answer."""
    with serving(protocol) as port:
        def connect() -> socket.socket:
            return socket.create_connection(("127.0.0.1", port), timeout=10)

        with connect() as silent, connect() as trickle, connect() as kept:
            trickle.sendall(b"GET / HTTP/1.1\r\nHost: 127.0")
            kept.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n\r\n")
            time.sleep(1.5 * HEADER_S)  # past the deadline, in the body
            kept.sendall(b"body")
            assert answer(kept).startswith(OK)
            time.sleep(1.5 * HEADER_S)  # idle between requests: keep_alive_s applies
            kept.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert answer(kept).startswith(OK)
            for sock in (silent, trickle):
                got, after = read_until_closed(sock, 10)
                assert got == b"" and after < 5 * HEADER_S, (got, after)  # closed, unanswered
            kept.sendall(b"GET / HTTP/1.1\r\nHost: 127.0")
            got, after = read_until_closed(kept, 10)
            assert got == b"" and 0.5 * HEADER_S < after < 5 * HEADER_S, (got, after)
