"""Adds never stall recommendations, work per request is bounded, and every process on a
run directory shows one catalogue (#28 items 2-4).

In-process apps over copies of the LIGER run (FastAPI's TestClient), and a real server
for what only a socket can do (a stalled body, headers that never end)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from serving import N_ITEMS, copy_of, running

from sidrec.serve import build_app
from sidrec.serve.settings import ServeSettings

HISTORY = ["i01", "i03", "i05"]
NEW = {"id": "new-1", "text": "Title: Brand New Space Film; Genres: space opera"}


def client_of(run: Path, **settings: object) -> TestClient:
    app = build_app(run / "models" / "liger",
                    ServeSettings(**{"encoder_process": False, **settings}))
    torch.set_num_threads(1)
    return TestClient(app, base_url="http://127.0.0.1")


@pytest.fixture
def run(served_run: Path, tmp_path: Path) -> Path:
    return copy_of(served_run, tmp_path)


@pytest.fixture
def client(run: Path) -> Iterator[TestClient]:
    with client_of(run) as c:
        yield c


def test_recommendations_are_answered_while_an_add_encodes(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """An add whose encoding takes long (held here until the recommendations are in)
    leaves the inference thread free: recommendations answer meanwhile, then the item is
    served."""
    import sidrec.embed

    encoding, release = threading.Event(), threading.Event()
    real = sidrec.embed.encode_texts

    def slow(*args: object, **kwargs: object) -> np.ndarray:
        encoding.set()
        release.wait(15)  # bounded: a server that waits for the add still ends the test
        return real(*args, **kwargs)

    monkeypatch.setattr(sidrec.embed, "encode_texts", slow)
    answers: list[httpx.Response] = []
    adding = threading.Thread(target=lambda: answers.append(
        client.post("/v1/items", json=[NEW])))
    adding.start()
    try:
        assert encoding.wait(30), "the add never started encoding"
        for _ in range(3):
            start = time.monotonic()
            r = client.post("/v1/recommend", json={"history": HISTORY, "k": 5})
            assert r.status_code == 200, r.text
            assert time.monotonic() - start < 5
        assert adding.is_alive(), "the recommendations waited for the add"
    finally:
        release.set()
        adding.join(60)
    assert answers[0].status_code == 200, answers[0].text
    assert client.post("/v1/recommend", json={"history": ["new-1"]}).status_code == 200


def test_an_add_retried_gets_the_same_answer(client: TestClient) -> None:
    first = client.post("/v1/items", json=[NEW])
    assert first.status_code == 200, first.text
    again = client.post("/v1/items", json=[NEW])  # as a client sends it after a 504
    assert again.status_code == 200 and again.json() == first.json()
    assert client.get("/v1/info").json()["n_added"] == 1
    other = client.post("/v1/items", json=[{**NEW, "text": "Title: Another Film"}])
    assert other.status_code == 409 and other.json()["field"] == "items[0]"


def test_items_another_server_added_are_seen_without_a_recommendation(run: Path) -> None:
    """Two servers on one run directory: what one adds, the other's item lookup, search
    and info show at once (no recommendation in between to refresh it)."""
    with client_of(run) as a, client_of(run) as b:
        assert b.get("/v1/items/new-1").status_code == 404
        assert a.post("/v1/items", json=[NEW]).status_code == 200
        item = b.get("/v1/items/new-1")
        assert item.status_code == 200 and item.json()["added"] is True
        found = b.get("/v1/items", params={"q": "brand new space"}).json()["items"]
        assert [i["id"] for i in found] == ["new-1"]
        info = b.get("/v1/info").json()
        assert (info["n_items"], info["n_added"]) == (N_ITEMS + 1, 1)


def test_a_request_past_the_cost_budget_names_the_field(run: Path) -> None:
    with client_of(run, max_cost=150) as c:
        for options, field in (({"beam": 200}, "options.beam"),
                               ({"hybrid_beam": 151}, "options.hybrid_beam")):
            r = c.post("/v1/recommend", json={"history": HISTORY, "options": options})
            assert r.status_code == 400 and r.json()["field"] == field, r.text
            assert "max_cost=150" in r.json()["error"]
        fits = {"history": HISTORY, "options": {"hybrid_beam": 50, "beam": 50}}
        assert c.post("/v1/recommend", json=fits).status_code == 200
        r = c.post("/v1/recommend/batch", json={"requests": [fits] * 4})  # 4 x 50
        assert r.status_code == 400 and r.json()["field"] == "requests", r.text
        assert c.post("/v1/recommend/batch", json={"requests": [fits] * 3}).status_code == 200


def read_all(sock: socket.socket, seconds: float) -> bytes:
    """What the server sends until it closes the connection, or `seconds` pass."""
    sock.settimeout(seconds)
    got = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            break
        if not chunk:
            break
        got += chunk
    return got


def test_stalled_clients_neither_delay_others_nor_hold_the_server(
        served_run: Path, tmp_path: Path) -> None:
    """A recommendation whose body stalls does not count as arriving (a batch would wait
    max_wait_ms for it), and is answered 408 after body_timeout_s; headers that never end
    lose their connection after header_timeout_s."""
    settings = ("max_wait_ms=3000", "body_timeout_s=2", "header_timeout_s=1")
    with running(served_run / "models" / "liger", *settings, log=tmp_path / "serve.log") as s, \
            httpx.Client(base_url=s.url, timeout=30) as c, \
            socket.create_connection(("127.0.0.1", s.port), timeout=10) as stalled, \
            socket.create_connection(("127.0.0.1", s.port), timeout=10) as slow_headers:
        assert c.post("/v1/recommend", json={"history": HISTORY}).status_code == 200
        stalled.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/json\r\nContent-Length: 40\r\n\r\n"
                        b'{"history": ["i01"')
        slow_headers.sendall(b"GET /v1/info HTTP/1.1\r\nHost: 127.0")
        time.sleep(0.3)  # both are in the server's hands
        start = time.monotonic()
        assert c.post("/v1/recommend", json={"history": HISTORY}).status_code == 200
        assert time.monotonic() - start < 2.0  # not max_wait_ms
        assert read_all(slow_headers, 5) == b""  # closed, nothing answered
        answer = read_all(stalled, 6)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert c.get("/readyz").status_code == 200


def test_the_encoder_process_encodes_as_this_process_does(served_run: Path) -> None:
    """New items' texts encoded in the encoder process (the default) get the vectors an
    in-process encoding gives; a process that died is replaced by the next call."""
    import json

    from sidrec.embed import EmbedConfig, encode_texts
    from sidrec.serve.encoder_process import EncoderProcess

    encoder = json.loads((served_run / "embeddings.json").read_text())["encoder"]
    texts = [NEW["text"], "Title: Jazz Piano Nights; Genres: music"]
    here = encode_texts(texts, EmbedConfig(encoder=encoder, device="cpu"), progress=False)
    torch.set_num_threads(1)
    process = EncoderProcess()
    try:
        np.testing.assert_allclose(process(texts, encoder), here, atol=1e-5)
        process._process.kill()
        process._process.join(10)
        np.testing.assert_allclose(process(texts[:1], encoder), here[:1], atol=1e-5)
    finally:
        process.stop()
