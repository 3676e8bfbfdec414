"""The connections uvicorn holds for `sidrec serve`: a deadline for a request's headers,
beside uvicorn's own keep-alive timeout and connection limit (`uvicorn_options`).

uvicorn (with h11) waits for a request's headers as long as a client cares to send them
a byte at a time, so a few hundred stalled sockets would hold the server's connections
for good. `TimedH11Protocol` closes a connection whose request headers are not all in
within `header_timeout_s` of its first byte (or of the connection, for one that sends
nothing); the body has its own deadline in the app (`guard.Guard`, 408).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from sidrec.serve.settings import ServeSettings


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers."""

    header_timeout_s = 10.0  # set per server by `uvicorn_options`

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._headers_due: asyncio.TimerHandle | None = None
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        self._await_headers()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE and self._headers_due is not None:
            self._headers_due.cancel()  # a request's headers are in
            self._headers_due = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._headers_due is not None:
            self._headers_due.cancel()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        if self._headers_due is None and self.conn.their_state is h11.IDLE:
            self._headers_due = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _too_slow(self) -> None:
        self._headers_due = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def uvicorn_options(settings: ServeSettings) -> dict[str, Any]:
    """`uvicorn.run`'s keyword arguments for the connection settings."""
    protocol = type("TimedH11Protocol", (TimedH11Protocol,),
                    {"header_timeout_s": settings.header_timeout_s})
    return {"http": protocol, "timeout_keep_alive": settings.keep_alive_s,
            "limit_concurrency": settings.max_connections}
