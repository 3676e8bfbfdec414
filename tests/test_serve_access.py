"""Who may call `sidrec serve` (#28 item 1): API keys (full and read-only), the Host
check, the write rule of a server on a public address, the security headers, the docs
page's own Swagger files, and `/v1/info` telling no host name or pid. In-process: the
app over a LIGER model, through FastAPI's TestClient."""

from __future__ import annotations

import hmac
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from serving import copy_of

from sidrec.errors import SidrecError
from sidrec.serve import build_app
from sidrec.serve.access import KEYS_ENV, Access, access_for, parse_keys, read_keys

FULL, READ = "full-key-0123456789abcdef", "read-key-0123456789abcdef"
KEYS = f"{FULL}\n{READ} read-only  # the dashboards\n"
NEW = {"id": "new-film", "text": "Title: A New Film; Genres: space opera"}
RECOMMEND = {"history": ["i01", "i03"], "k": 3}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def run(served_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_of(served_run, tmp_path_factory.mktemp("access"))


@pytest.fixture(scope="module")
def make_client(run: Path) -> Callable[..., TestClient]:
    """TestClient(app with `access`) on http://127.0.0.1; closed at the module's end."""
    opened: list[TestClient] = []

    def make(access: Access, host: str = "127.0.0.1") -> TestClient:
        client = TestClient(build_app(run / "models" / "liger", access=access),
                            base_url=f"http://{host}")
        torch.set_num_threads(1)
        opened.append(client.__enter__())
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def keyed(make_client: Callable[..., TestClient], tmp_path_factory) -> TestClient:
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text(KEYS)
    return make_client(access_for("127.0.0.1", key_file, environ={}))


def test_with_keys_every_v1_route_needs_one(keyed: TestClient) -> None:
    for method, path, body in (("get", "/v1/info", None), ("get", "/v1/items/i01", None),
                               ("get", "/v1/items?q=film", None),
                               ("post", "/v1/recommend", RECOMMEND),
                               ("post", "/v1/recommend/batch", {"requests": [RECOMMEND]}),
                               ("post", "/v1/items", [NEW]), ("get", "/v1/nothing", None)):
        for headers in ({}, bearer("wrong-key-0123456789abcdef"), {"Authorization": FULL},
                        {"Authorization": "Basic " + FULL}):
            r = keyed.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json() == {"error": "this server needs an API key: send "
                                "Authorization: Bearer KEY", "field": None}
            assert "\n" not in r.text
    # open without a key: health, readiness, the page, the contract
    for path in ("/healthz", "/readyz", "/", "/openapi.json", "/docs"):
        assert keyed.get(path).status_code == 200, path


def test_read_only_keys_read_and_full_keys_write(keyed: TestClient) -> None:
    for key in (READ, FULL):
        assert keyed.post("/v1/recommend", json=RECOMMEND, headers=bearer(key)).status_code == 200
        assert keyed.get("/v1/items/i01", headers=bearer(key)).status_code == 200
    r = keyed.post("/v1/items", json=[NEW], headers=bearer(READ))
    assert r.status_code == 403 and "read-only" in r.json()["error"]
    assert keyed.get(f"/v1/items/{NEW['id']}", headers=bearer(FULL)).status_code == 404
    r = keyed.post("/v1/items", json=[NEW], headers=bearer(FULL))
    assert r.status_code == 200, r.text
    assert keyed.get(f"/v1/items/{NEW['id']}", headers=bearer(READ)).json()["added"] is True


def test_keys_are_compared_in_constant_time_every_one(monkeypatch) -> None:
    access = Access(parse_keys(KEYS, "test"))
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counted(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counted)
    assert access.role(f"Bearer {FULL}".encode()) == "write"
    assert access.role(f"bearer {READ}".encode()) == "read"
    assert access.role(b"Bearer nope") is None and access.role(None) is None
    assert len(calls) == 3 * 2  # every key, whichever matched (digests of equal length)
    assert FULL.encode() not in b"".join(a + b for a, b in calls)  # digests, not keys


def test_key_files_and_the_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(KEYS)
    keys = read_keys(key_file, {KEYS_ENV: "env-key-0123456789abcdef read-only, "
                                "env-key2-0123456789abcdef"})
    assert sorted(keys.values()) == [False, False, True, True]
    for text, why in (("short read-only", "16-256 characters"),
                      (f"{FULL} admin", "expected `KEY` or `KEY read-only`")):
        with pytest.raises(SidrecError, match=why):
            parse_keys(text, "--api-key-file k")
    with pytest.raises(SidrecError, match="no key in it"):
        (tmp_path / "empty").write_text("# nothing\n")
        read_keys(tmp_path / "empty", {})
    with pytest.raises(SidrecError, match="cannot read it"):
        read_keys(tmp_path / "missing", {})


def test_serve_refuses_a_bad_key_file_before_loading(served_run: Path, cli,
                                                     tmp_path: Path) -> None:
    result = cli("serve", served_run / "models" / "tiger", "--api-key-file", tmp_path / "no")
    assert result.code == 2 and "--api-key-file" in result.err and "cannot read it" in result.err
    assert "Traceback" not in result.err


def test_only_known_hosts_are_answered(make_client: Callable[..., TestClient]) -> None:
    client = make_client(access_for("127.0.0.1", allowed_hosts=("recs.example.com",),
                                    environ={}))
    for host in ("127.0.0.1", "localhost:8000", "recs.example.com", "[::1]:8000"):
        r = client.post("/v1/recommend", json=RECOMMEND, headers={"Host": host})
        assert r.status_code == 200, (host, r.text)
    for host in ("attacker.example", "127.0.0.1.attacker.example", "evil.com:8000"):
        r = client.get("/v1/info", headers={"Host": host})
        assert r.status_code == 400 and r.json()["field"] == "Host", (host, r.text)
        assert client.get("/", headers={"Host": host}).status_code == 400
        assert client.get("/healthz", headers={"Host": host}).status_code == 200  # probes
    assert access_for("0.0.0.0", environ={}).hosts == ("0.0.0.0", "localhost", "127.0.0.1",
                                                       "[::1]")
    with pytest.raises(SidrecError, match="a wildcard is"):
        access_for("127.0.0.1", allowed_hosts=("recs.*.com",), environ={})


def test_a_public_address_without_keys_takes_no_writes(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client(access_for("0.0.0.0", allowed_hosts=("*",), environ={}))
    assert client.post("/v1/recommend", json=RECOMMEND).status_code == 200
    r = client.post("/v1/items", json=[{**NEW, "id": "public-1"}])
    assert r.status_code == 403
    assert "listens on 0.0.0.0 with no API keys" in r.json()["error"]
    assert "--api-key-file" in r.json()["error"] and KEYS_ENV in r.json()["error"]
    # with a key it may write; on the loopback it may without one
    client = make_client(access_for("0.0.0.0", allowed_hosts=("*",),
                                    environ={KEYS_ENV: FULL}))
    assert client.post("/v1/items", json=[{**NEW, "id": "public-2"}],
                       headers=bearer(FULL)).status_code == 200
    assert access_for("localhost", environ={}).writes_open
    assert not access_for("192.0.2.7", environ={}).writes_open


def test_security_headers_docs_offline_and_no_host_in_info(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client(Access())
    for r in (client.get("/v1/info"), client.get("/"), client.get("/v1/items/nothing"),
              client.get("/healthz"), client.get("/docs"),
              client.post("/v1/recommend", content=b"x" * (2 << 20),
                          headers={"content-type": "application/json"})):
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["content-security-policy"] == "frame-ancestors 'none'", r.url
    docs = client.get("/docs").text
    assert "cdn." not in docs and "https://" not in docs
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/static-offline-docs/{asset}" in docs
        assert client.get(f"/static-offline-docs/{asset}").status_code == 200
    info = client.get("/v1/info").json()
    assert socket.gethostname() not in str(info) and str(os.getpid()) not in info["replica"]
    assert info["replica"] == client.get("/v1/info").json()["replica"]  # one per process
