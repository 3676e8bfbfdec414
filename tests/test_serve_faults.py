"""Faults are the server's, not the caller's (#28 item 5): a corrupt or missing-file run
directory answers 500 / 503 with no server path in the body (the log has it); a lone UTF-16
surrogate anywhere a caller writes text is a 400 naming the field, never a 500; ids are
NFC, and a new id holding a control or bidi character, or past 256 characters, is a 400.
In-process: the app over a copy of the LIGER run, through FastAPI's TestClient."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from serving import copy_of

from sidrec.serve import build_app
from sidrec.serve.rules import MAX_ID_CHARS

HISTORY = ["i01", "i03"]


def fresh_client(run: Path, preload: bool = True) -> TestClient:
    client = TestClient(build_app(run / "models" / "liger", preload=preload),
                        base_url="http://127.0.0.1")
    torch.set_num_threads(1)
    return client


@pytest.fixture
def run(served_run: Path, tmp_path: Path) -> Path:
    return copy_of(served_run, tmp_path)


@pytest.fixture(scope="module")
def client(served_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with fresh_client(copy_of(served_run, tmp_path_factory.mktemp("faults"))) as c:
        yield c


def no_paths(r, run: Path) -> None:
    """The answer names no file of the server's: not the run, not the temporary folder."""
    assert str(run) not in r.text and str(run.parent.parent) not in r.text, r.text
    assert "/tmp" not in r.text and ".parquet" not in r.text, r.text


def add(client: TestClient, item_id: str, text: str = "Title: Fine; Genres: drama"):
    return client.post("/v1/items", json=[{"id": item_id, "text": text}])


@pytest.mark.parametrize("fault", ["corrupt", "directory", "tokenizer"])
def test_a_broken_run_directory_is_the_servers_fault(run: Path, fault: str, caplog) -> None:
    with fresh_client(run) as c:
        assert add(c, "first").status_code == 200  # the file exists, the encoder is loaded
        added = run / "added_items.parquet"
        if fault == "corrupt":
            added.write_bytes(b"PAR1 this is no parquet file")
        elif fault == "directory":
            added.unlink()
            added.mkdir()
        else:
            shutil.move(run / "tokenizer", run.parent / "moved-tokenizer")
        r = add(c, "second")
        assert r.status_code == 500, r.text
        assert "the server log says why" in r.json()["error"]
        no_paths(r, run)
        assert "Traceback" not in r.text
        # the server keeps recommending (and says why in its log)
        assert c.post("/v1/recommend", json={"history": HISTORY}).status_code == 200
        assert c.get("/v1/items/second").status_code == 404
    assert str(run) in caplog.text  # the log names the file


def test_a_run_that_does_not_load_answers_503_without_paths(run: Path) -> None:
    (run / "added_items.parquet").write_bytes(b"not parquet at all")
    with fresh_client(run, preload=False) as c:
        for _ in range(200):  # the worker loads on its thread
            ready = c.get("/readyz")
            if ready.json()["status"] != "loading":
                break
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        no_paths(ready, run)
        r = c.post("/v1/recommend", json={"history": HISTORY})
        assert r.status_code == 503 and "the model did not load" in r.json()["error"]
        no_paths(r, run)


def raw(client: TestClient, path: str, body: str):
    """POST `body` as it is: JSON text whose escapes may spell lone surrogates."""
    return client.post(path, content=body.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/items", '[{"id": "\\ud800", "text": "Title: x"}]', "items[0].id"),
    ("/v1/items", '[{"id": "ok-id", "text": "Title: \\udfff"}]', "items[0].text"),
    ("/v1/recommend", '{"history": ["i01", "\\ud83d"]}', "history[1]"),
    ("/v1/recommend", '{"history": ["i01"], "user_id": "u\\udc00"}', "user_id"),
    ("/v1/recommend", '{"history": ["i01"], "options": {"\\ud800": 1}}', "options"),
    ("/v1/recommend/batch", '{"requests": [{"history": ["i01"], "options": {"be\\udfffam": 5}}]}',
     "requests[0].options"),
])
def test_lone_surrogates_are_a_400_naming_the_field(client: TestClient, path: str, body: str,
                                                    field: str) -> None:
    r = raw(client, path, body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field and "lone UTF-16 surrogate" in r.json()["error"]
    assert client.post("/v1/recommend", json={"history": HISTORY}).status_code == 200


def test_ids_are_nfc_and_new_ids_follow_the_rules(client: TestClient) -> None:
    nfd, nfc = "cafe\u0301-film", "caf\u00e9-film"
    r = add(client, nfd)
    assert r.status_code == 200 and r.json()["added"] == [nfc]
    r = add(client, nfc)  # the one item again, as a retry sends it: a success
    assert r.status_code == 200 and r.json()["added"] == [nfc]
    r = add(client, nfc, "Title: Another film")
    assert r.status_code == 409 and r.json()["field"] == "items[0]"
    assert client.get(f"/v1/items/{nfd}").json()["id"] == nfc
    assert client.post("/v1/recommend", json={"history": [nfd]}).status_code == 200
    longest = "x" * MAX_ID_CHARS
    assert add(client, longest).status_code == 200
    assert client.get(f"/v1/items/{longest}").status_code == 200  # fetchable back
    for bad, why in (("a\nb", "U+000A, a control character"),
                     ("tab\there", "U+0009, a control character"),
                     ("\u202eevil", "U+202E, a bidi control"),
                     ("x\u2066y", "U+2066, a bidi control"),
                     ("y" * (MAX_ID_CHARS + 1), f"the limit is {MAX_ID_CHARS}"),
                     ("", "the id is empty"), (" padded", "spaces at its ends")):
        r = add(client, bad)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["field"] == "items[0].id" and why in r.json()["error"], r.text
        assert "\n" not in r.text
    r = client.post("/v1/items", json=[{"id": "blank", "text": " \t"}])
    assert r.status_code == 400 and r.json()["field"] == "items[0].text"
    # an empty id is refused wherever an id goes
    r = client.post("/v1/recommend", json={"history": [""]})
    assert r.status_code == 400 and r.json()["field"] == "history[0]"
    assert client.get("/v1/items/").status_code == 400


def test_error_bodies_are_ascii_whatever_they_echo(client: TestClient) -> None:
    r = raw(client, "/v1/recommend", json.dumps({"history": ["i01"], "extra\ud800": 1}))
    assert r.status_code == 422 and r.content.isascii()
