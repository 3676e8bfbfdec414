"""The connections uvicorn holds for `sidrec serve`: a deadline for a request's headers,
beside uvicorn's own keep-alive timeout and connection limit (`uvicorn_options`).

uvicorn waits for a request's headers as long as a client cares to send them a byte at a
time, so a few hundred stalled sockets would hold the server's connections for good.
`HeaderDeadline` closes a connection whose request headers are not all in within
`header_timeout_s` of its first byte (or of the connection, for one that sends nothing);
the body has its own deadline in the app (`guard.Guard`, 408). It is mixed into uvicorn's
httptools protocol (`TimedHttpToolsProtocol`, the faster parser that uvicorn's "auto"
picks) and into its h11 protocol (`TimedH11Protocol`, the fallback without httptools);
`TimedProtocol` is the one in use, chosen as "auto" chooses.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from sidrec.serve.settings import ServeSettings


class HeaderDeadline:
    """The timer: a protocol calls `_await_headers` when a request's first byte comes and
    `_headers_in` when its headers are complete; `connection_made` starts it too."""

    header_timeout_s = 10.0  # set per server by `uvicorn_options`
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._headers_due: asyncio.TimerHandle | None = None
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_in()
        super().connection_lost(exc)  # type: ignore[misc]

    def _await_headers(self) -> None:
        if self._headers_due is None:
            self._headers_due = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _headers_in(self) -> None:
        if self._headers_due is not None:
            self._headers_due.cancel()
            self._headers_due = None

    def _too_slow(self) -> None:
        self._headers_due = None
        if not self.transport.is_closing():
            self.transport.close()


class TimedH11Protocol(HeaderDeadline, H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers: h11 has no
    callbacks, so its state says when a request has begun (not IDLE after a byte) and
    when its headers are in (no longer IDLE)."""

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._await_headers()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._headers_in()


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # uvicorn without httptools: "auto" takes h11, and so do we
    TimedProtocol: type[HeaderDeadline] = TimedH11Protocol
else:
    class TimedHttpToolsProtocol(HeaderDeadline, HttpToolsProtocol):
        """uvicorn's httptools protocol with a deadline for each request's headers."""

        def on_message_begin(self) -> None:
            self._await_headers()
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._headers_in()
            super().on_headers_complete()

    TimedProtocol = TimedHttpToolsProtocol


def uvicorn_options(settings: ServeSettings) -> dict[str, Any]:
    """`uvicorn.run`'s keyword arguments for the connection settings."""
    protocol = type(TimedProtocol.__name__, (TimedProtocol,),
                    {"header_timeout_s": settings.header_timeout_s})
    return {"http": protocol, "timeout_keep_alive": settings.keep_alive_s,
            "limit_concurrency": settings.max_connections}
