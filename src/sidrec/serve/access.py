"""Who may call `sidrec serve`: API keys, the hosts it answers for, its security headers.

    keys     `--api-key-file FILE` and/or `SIDREC_API_KEYS`: one key per line (or comma),
             `KEY` for full access or `KEY read-only`; `#` starts a comment. A key is 16
             to 256 characters of A-Z a-z 0-9 and `-._~+/=` (`secrets.token_urlsafe(32)`).
             With keys set, every `/v1` route needs `Authorization: Bearer KEY` (401
             without a known one), and a read-only key gets 403 on a write
             (`POST /v1/items`). Keys are compared in constant time (`hmac.compare_digest`
             over SHA-256 digests, every key tried), and kept only as those digests.
    hosts    the `Host` header must name the bound host, `localhost`, `127.0.0.1` or
             `[::1]`, or a host of `--allowed-hosts` (Starlette's `TrustedHostMiddleware`;
             `*` allows any): a DNS-rebinding page cannot reach the API (400).
    writes   a server bound to an address other than the loopback with no keys refuses
             writes (403, saying how to set a key): anyone who reaches the port could
             otherwise add items, which persist.
    headers  every answer carries `X-Content-Type-Options: nosniff`,
             `Content-Security-Policy: frame-ancestors 'none'` and `X-Frame-Options: DENY`.

`/healthz` and `/readyz` need neither a key nor a known host (a load balancer's probe
names the machine by its address); `/`, `/docs`, `/openapi.json`, `/metrics` and
`/static` need no key (they hold nothing a caller gave), but a known host.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.middleware.trustedhost import TrustedHostMiddleware

from sidrec.errors import SidrecError
from sidrec.serve.http_errors import error_response

KEYS_ENV = "SIDREC_API_KEYS"
READ_ONLY = "read-only"
KEY = re.compile(r"[A-Za-z0-9\-._~+/=]{16,256}")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
OPEN = ("/healthz", "/readyz")  # no key, any host
WRITES = {("POST", "/v1/items")}
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"),
                    (b"content-security-policy", b"frame-ancestors 'none'"),
                    (b"x-frame-options", b"DENY"))
HOW_TO_SET_A_KEY = (f"start it with --api-key-file FILE or {KEYS_ENV}=KEY (a key: python -c "
                    "'import secrets; print(secrets.token_urlsafe(32))')")


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


@dataclass(frozen=True)
class Access:
    """The keys (SHA-256 digests -> read-only), the hosts answered for, and the bound host
    (`writes_open`: whether a server without keys takes writes there)."""

    keys: Mapping[bytes, bool] = field(default_factory=dict)
    hosts: tuple[str, ...] = LOCAL_HOSTS
    bound: str = "127.0.0.1"

    @property
    def writes_open(self) -> bool:
        return bool(self.keys) or is_loopback(self.bound)

    def role(self, authorization: bytes | None) -> str | None:
        """"write" or "read" for a known `Bearer` key, else None. Every key is compared,
        in constant time, so the time taken says nothing about which came close."""
        scheme, _, given = (authorization or b"").partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            return None
        digest, found = _digest(given.strip()), None
        for known, read_only in self.keys.items():
            if hmac.compare_digest(digest, known):
                found = "read" if read_only else "write"
        return found


def parse_keys(text: str, source: str) -> dict[bytes, bool]:
    """{digest: read_only} of the keys in `text` (lines or commas: `KEY [read-only]`)."""
    keys: dict[bytes, bool] = {}
    for n, entry in enumerate(re.split(r"[\n,]", text), 1):
        words = entry.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{source}, entry {n}"
        if len(words) > 2 or (len(words) == 2 and words[1] != READ_ONLY):
            raise SidrecError(f"{where}: expected `KEY` or `KEY {READ_ONLY}`")
        if not KEY.fullmatch(words[0]):
            raise SidrecError(f"{where}: a key is 16-256 characters of A-Z a-z 0-9 -._~+/= "
                              "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        keys[_digest(words[0])] = len(words) == 2
    return keys


def read_keys(key_file: str | Path | None,
              environ: Mapping[str, str] = os.environ) -> dict[bytes, bool]:
    """The keys of `key_file` and of `SIDREC_API_KEYS`, together."""
    keys: dict[bytes, bool] = {}
    if key_file is not None:
        try:
            text = Path(key_file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise SidrecError(f"--api-key-file {key_file}: cannot read it ({e})") from None
        keys = parse_keys(text, f"--api-key-file {key_file}")
        if not keys:
            raise SidrecError(f"--api-key-file {key_file}: no key in it")
    return {**keys, **parse_keys(environ.get(KEYS_ENV, ""), KEYS_ENV)}


def is_loopback(host: str) -> bool:
    """Whether every address `host` stands for is a loopback one (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback
                               for i in infos)


def access_for(host: str, key_file: str | Path | None = None,
               allowed_hosts: tuple[str, ...] = (),
               environ: Mapping[str, str] = os.environ) -> Access:
    """The access rules of a server bound to `host`."""
    bound = f"[{host}]" if ":" in host and not host.startswith("[") else host
    hosts = tuple(dict.fromkeys([bound.lower(), *LOCAL_HOSTS, *allowed_hosts]))
    for pattern in hosts:
        if "*" in pattern[1:] or (pattern.startswith("*") and pattern != "*"
                                  and not pattern.startswith("*.")):
            raise SidrecError(f"--allowed-hosts {pattern}: a wildcard is `*` or `*.domain`")
    return Access(read_keys(key_file, environ), hosts, host)


def startup_notes(access: Access) -> list[str]:
    """What the operator should know about `access` (printed at start)."""
    notes = []
    if access.keys:
        read_only = sum(access.keys.values())
        notes.append(f"{len(access.keys)} API key(s), {read_only} of them read-only: /v1 "
                     "needs Authorization: Bearer KEY")
    elif not access.writes_open:
        notes.append(f"bound to {access.bound} with no API keys: anyone who reaches the port "
                     f"may read, and POST /v1/items is refused; to add items, "
                     f"{HOW_TO_SET_A_KEY}")
    if "*" not in access.hosts:
        notes.append(f"answering for Host {', '.join(access.hosts)} (--allowed-hosts adds "
                     "more)")
    return notes


class Gate:
    """ASGI middleware: the host check, then the key check on `/v1`, then the write rule."""

    def __init__(self, app: Any, access: Access) -> None:
        self.app, self.access = app, access
        self.writes_open = access.writes_open  # once: the bound host's name is looked up
        self.hosts = TrustedHostMiddleware(self._known_host, list(access.hosts),
                                           www_redirect=False)

    @staticmethod
    async def _known_host(scope: dict, receive: Callable, send: Callable) -> None:
        scope["sidrec.known_host"] = True

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN:
            return await self.app(scope, receive, send)
        await self.hosts(scope, receive, _discard)  # Starlette's own check, answered below
        if not scope.pop("sidrec.known_host", False):
            answer = error_response(400, "the Host header names a host this server does not "
                                    "answer for (sidrec serve --allowed-hosts)", "Host")
            return await answer(scope, receive, send)
        if why := self.refusal(scope):
            status, message = why
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return await error_response(status, message, headers=headers)(scope, receive, send)
        await self.app(scope, receive, send)

    def refusal(self, scope: dict) -> tuple[int, str] | None:
        """(401 or 403, why) when this request may not go on, else None."""
        path, write = scope["path"], (scope["method"], scope["path"]) in WRITES
        if not path.startswith("/v1/") and path != "/v1":
            return None
        if self.access.keys:
            auth = dict(scope.get("headers") or []).get(b"authorization")
            role = self.access.role(auth)
            if role is None:
                return 401, "this server needs an API key: send Authorization: Bearer KEY"
            if write and role == "read":
                return 403, "this API key is read-only; adding items needs a full key"
        elif write and not self.writes_open:
            return 403, (f"this server listens on {self.access.bound} with no API keys, so it "
                         f"takes no writes; {HOW_TO_SET_A_KEY}")
        return None


async def _discard(message: dict) -> None:
    """Starlette's plain-text refusal is dropped: `Gate` answers in JSON instead."""
