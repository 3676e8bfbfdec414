"""`sidrec serve` over real HTTP: a LIGER server started on 127.0.0.1 (a free port) from
the command line, the JSON contract, every kind of bad input (422 / 400 naming the field,
never a 500 or a traceback, the server keeps serving), live items that survive a restart,
health, metrics, OpenAPI and the explorer page."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from serving import N_ITEMS, copy_of, metric, running

HISTORY = ["i01", "i03", "i05"]


@pytest.fixture(scope="module")
def run(served_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_of(served_run, tmp_path_factory.mktemp("http"))


@pytest.fixture(scope="module")
def server(run: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    with running(run / "models" / "liger", log=log) as s:
        yield s


@pytest.fixture(scope="module")
def client(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def test_recommend_round_trip(client: httpx.Client) -> None:
    r = client.post("/v1/recommend", json={"history": HISTORY, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "liger" and body["took_ms"] > 0
    items = body["items"]
    assert len(items) == 5 and len({i["id"] for i in items}) == 5
    assert all(set(i) == {"id", "score", "title", "cold"} for i in items)
    assert all(i["title"].startswith("Film number ") for i in items)
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    seen = client.post("/v1/recommend", json={"history": HISTORY, "k": 10, "exclude_seen": True,
                                              "user_id": "u1"}).json()["items"]
    assert len(seen) == 10 and not {i["id"] for i in seen} & set(HISTORY)
    # integer ids are ids too; an empty history gets the popular items
    assert client.post("/v1/recommend", json={"history": [], "k": 3}).json()["items"]


def test_batch_answers_in_order(client: httpx.Client) -> None:
    requests = [{"history": HISTORY, "k": 2}, {"history": ["i02"], "k": 4, "user_id": "u2"},
                {"history": ["i07", "i09"], "k": 3, "options": {"mode": "dense"}}]
    r = client.post("/v1/recommend/batch", json={"requests": requests})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [len(x["items"]) for x in results] == [2, 4, 3]
    for request, result in zip(requests, results, strict=True):
        alone = client.post("/v1/recommend", json=request).json()
        assert [i["id"] for i in alone["items"]] == [i["id"] for i in result["items"]]


BAD = [
    # (method, path, body, status, field)
    ("post", "/v1/recommend", b"{not json", 422, "body"),
    ("post", "/v1/recommend", {"k": 5}, 422, "history"),
    ("post", "/v1/recommend", {"history": "i01"}, 422, "history"),
    ("post", "/v1/recommend", {"history": [["i01"]]}, 422, "history[0]"),
    ("post", "/v1/recommend", {"history": ["i01"], "k": "5"}, 422, "k"),
    ("post", "/v1/recommend", {"history": ["i01"], "histroy": []}, 422, "histroy"),
    ("post", "/v1/recommend", {"history": ["i01"], "exclude_seen": "yes"}, 422, "exclude_seen"),
    ("post", "/v1/recommend", {"history": ["i01"], "options": []}, 422, "options"),
    ("post", "/v1/recommend", {"history": ["i01"], "k": 0}, 400, "k"),
    ("post", "/v1/recommend", {"history": ["i01"], "k": 101}, 400, "k"),
    ("post", "/v1/recommend", {"history": ["i01"] * 201}, 400, "history"),
    ("post", "/v1/recommend", {"history": ["i01", "nope"]}, 400, "history[1]"),
    ("post", "/v1/recommend", {"history": ["i01"], "options": {"beam": 0}}, 400, "options.beam"),
    ("post", "/v1/recommend", {"history": ["i01"], "options": {"beam": 10**6}}, 400,
     "options.beam"),
    ("post", "/v1/recommend", {"history": ["i01"], "options": {"bogus": 1}}, 400,
     "options.bogus"),
    ("post", "/v1/recommend", {"history": ["i01"], "options": {"mode": "x"}}, 400, "options.mode"),
    ("post", "/v1/recommend/batch", {"requests": [{"history": ["i01"]}, {"history": ["no"]}]},
     400, "requests[1].history[0]"),
    ("post", "/v1/recommend/batch", {"requests": [{"history": ["i01"]}] * 65}, 400, "requests"),
    ("post", "/v1/recommend/batch",  # 64 x beam 1000: past max_cost
     {"requests": [{"history": ["i01"], "options": {"beam": 1000}}] * 64}, 400, "requests"),
    ("post", "/v1/recommend/batch", {"requests": [{"history": ["i01"], "k": 1.5}]}, 422,
     "requests[0].k"),
    ("post", "/v1/items", [{"id": "x"}], 422, "items[0].text"),
    ("post", "/v1/items", {"id": "x", "text": "t"}, 422, "body"),
    ("post", "/v1/items", [{"id": "i01", "text": "taken"}], 409, "items[0]"),
    ("post", "/v1/items", [{"id": "fresh", "text": "  "}], 400, "items[0].text"),
    ("post", "/v1/recommend", b'{"history": ["' + b"x" * (1 << 20) + b'"]}', 413, None),
    ("get", "/v1/items/no-such-item", None, 404, None),
    ("get", "/v1/items?limit=0", None, 422, "limit"),
    ("get", "/no/such/route", None, 404, None),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "field"), BAD,
                         ids=[f"{b[3]}-{b[4] or b[1]}" for b in BAD])
def test_bad_input_names_the_field(client: httpx.Client, method: str, path: str, body: object,
                                   status: int, field: str | None) -> None:
    if isinstance(body, bytes):
        r = client.request(method, path, content=body,
                           headers={"content-type": "application/json"})
    else:
        r = client.request(method, path, json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    payload = r.json()
    assert isinstance(payload["error"], str) and payload["error"]
    assert "Traceback" not in r.text and "File \"" not in r.text
    if field is not None:
        assert payload["field"] == field, payload


def test_the_server_keeps_serving_after_bad_input(client: httpx.Client) -> None:
    assert client.get("/readyz").status_code == 200
    assert client.post("/v1/recommend", json={"history": HISTORY}).status_code == 200
    text = client.get("/metrics").text
    assert metric(text, 'sidrec_requests_total{route="/v1/recommend",status="400"') >= 1
    assert metric(text, 'sidrec_requests_total{route="/v1/recommend",status="422"') >= 1
    assert 'status="500"' not in text
    # every request that failed on its way to the worker left the arriving count
    assert metric(text, "sidrec_requests_arriving") == 0


def test_health_metrics_docs_and_page(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "liger"
    text = client.get("/metrics").text
    for name in ("sidrec_requests_total", "sidrec_request_seconds_bucket",
                 "sidrec_batch_size_bucket", "sidrec_queue_depth"):
        assert name in text, name
    assert metric(text, "sidrec_catalogue_items") >= N_ITEMS
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/recommend", "/v1/recommend/batch", "/v1/items", "/v1/items/{item_id}"} <= \
        set(paths) | {p.replace(":path", "") for p in paths}
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "sidrec explorer" in page.text
    assert client.get("/static/explorer.js").status_code == 200


# Last: it stops the module's server.
def test_items_are_added_live_and_survive_a_restart(server, run: Path, tmp_path: Path) -> None:
    new = {"id": "new-1", "text": "Title: Brand New Space Film; Genres: space opera"}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/v1/items", json=[new])
        assert r.status_code == 200, r.text
        assert r.json() == {"added": ["new-1"], "n_items": N_ITEMS + 1}
        # the very next requests see it
        item = c.get("/v1/items/new-1").json()
        assert item == {"id": "new-1", "title": "Brand New Space Film", "text": new["text"],
                        "cold": True, "added": True}
        assert [i["id"] for i in c.get("/v1/items", params={"q": "brand new"}).json()["items"]] \
            == ["new-1"]
        assert c.post("/v1/recommend", json={"history": ["new-1"]}).status_code == 200
        everything = c.post("/v1/recommend", json={"history": HISTORY, "k": N_ITEMS + 1}).json()
        assert "new-1" in {i["id"] for i in everything["items"]}  # LIGER ranks cold items
        # a failing batch adds nothing
        r = c.post("/v1/items", json=[{"id": "new-2", "text": "Title: Fine"},
                                      {"id": "new-1", "text": "Title: Taken"}])
        assert r.status_code == 409 and r.json()["field"] == "items[1]"
        assert c.get("/v1/items/new-2").status_code == 404
        assert c.get("/v1/info").json()["n_items"] == N_ITEMS + 1
    assert (run / "added_items.parquet").is_file()
    server.stop()
    with running(run / "models" / "liger", log=tmp_path / "restart.log") as again, \
            httpx.Client(base_url=again.url, timeout=30) as c:
        assert c.get("/v1/items/new-1").json()["added"] is True
        assert c.get("/v1/info").json()["n_items"] == N_ITEMS + 1
        assert c.post("/v1/recommend", json={"history": ["new-1", "i02"]}).status_code == 200
