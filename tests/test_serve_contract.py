"""The HTTP contract fuzzed: schemathesis against the app in-process (ASGI, no socket),
a LIGER model with API keys, every check schemathesis has, a fixed number of examples.

The schema cannot know which ids the catalogue holds or which inference options the model
takes: for those a schema-valid request gets the contract's 400, so `positive_data_acceptance`
counts 400 as an answer. Everything else is schemathesis' own defaults: no 5xx, every status
and body documented, schema-invalid data refused, 405 with `Allow`, no key -> 401."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from serving import copy_of

from sidrec.serve import build_app
from sidrec.serve.access import KEYS_ENV, access_for
from sidrec.serve.rules import MAX_ID_CHARS

schemathesis = pytest.importorskip("schemathesis", reason="the dev extra brings schemathesis")

KEY = "contract-test-key-0123456789"
EXAMPLES = 10  # per operation, phase and generation mode
CONFIG = {
    "seed": 0, "workers": 1, "continue-on-failure": True,
    "headers": {"Authorization": f"Bearer {KEY}"},
    "generation": {"max-examples": EXAMPLES, "mode": "all", "deterministic": True,
                   "database": "none"},
    "checks": {"positive_data_acceptance": {
        "expected-statuses": ["2xx", "400", "401", "403", "404", "409"]},
        # schemathesis' own list, and 413: a body over max_body_bytes (1,001 items with
        # vectors) is refused unread
        "negative_data_rejection": {"expected-statuses": [
            "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428",
            "429", "5xx"]}},
}


def fuzz(app, config: dict) -> tuple[list[str], int]:
    """(what schemathesis found, one line each; how many test cases it ran) against `app`:
    every phase (examples, coverage, fuzzing, stateful) and every check."""
    from schemathesis.engine import Status, events, from_schema

    schema = schemathesis.openapi.from_asgi("/openapi.json", app,
                                            config=schemathesis.Config.from_dict(config))
    found, cases = [], 0
    for event in from_schema(schema).execute():
        if isinstance(event, events.FatalError):
            raise event.exception
        if isinstance(event, events.NonFatalError):
            found.append(f"{event.label}: {event.info.format()}")
        if not isinstance(event, events.ScenarioFinished):
            continue
        cases += len(event.recorder.cases)
        if event.status in (Status.FAILURE, Status.ERROR):
            for case_id, checks in event.recorder.checks.items():
                case = event.recorder.cases[case_id].value
                response = event.recorder.find_response(case_id=case_id)
                for check in checks:
                    if check.failure_info is not None:
                        found.append(f"[{check.name}] {check.failure_info.failure.title}: "
                                     f"{case.method} {case.formatted_path} "
                                     f"body={case.body!r:.300} -> "
                                     f"{response and response.status_code} "
                                     f"{response and response.text!r:.300}")
    return sorted(set(found)), cases


@pytest.fixture(scope="module")
def app(served_run: Path, tmp_path_factory: pytest.TempPathFactory):
    run = copy_of(served_run, tmp_path_factory.mktemp("contract"))
    access = access_for("127.0.0.1", allowed_hosts=("testserver",), environ={KEYS_ENV: KEY})
    app = build_app(run / "models" / "liger", access=access)
    torch.set_num_threads(1)
    return app


@pytest.mark.filterwarnings("ignore::UserWarning")  # unknown ids skipped, on_unknown=skip
def test_the_contract_fuzzes_clean(app) -> None:
    found, cases = fuzz(app, CONFIG)
    assert not found, "\n".join(found)
    assert cases > 100  # every operation was run, not skipped


# What each route answers besides 200, as the schema must say (#28 item 6).
DOCUMENTED = {
    ("post", "/v1/recommend"): {400, 401, 413, 422, 500, 503, 504},
    ("post", "/v1/recommend/batch"): {400, 401, 413, 422, 500, 503, 504},
    ("post", "/v1/items"): {400, 401, 403, 409, 413, 422, 500, 503, 504},
    ("get", "/v1/items"): {400, 401, 422, 500, 503},
    ("get", "/v1/items/{item_id}"): {400, 401, 404, 500, 503},
    ("get", "/v1/info"): {400, 401, 500, 503},
    ("get", "/readyz"): {503},
}


def test_the_schema_documents_every_status_ids_and_keys(app) -> None:
    from fastapi.testclient import TestClient

    schema = TestClient(app).get("/openapi.json").json()
    for (method, path), statuses in DOCUMENTED.items():
        operation = schema["paths"][path][method]
        assert statuses <= {int(s) for s in operation["responses"]}, (method, path)
        if path.startswith("/v1/"):
            assert operation["security"] == [{"apiKey": []}]
    models = schema["components"]["schemas"]
    lookup = models["RecommendRequest"]["properties"]["history"]["items"]
    assert lookup["anyOf"][0] == {"type": "string", "minLength": 1}  # "" refused
    assert lookup["anyOf"][1]["type"] == "integer"  # integers are ids too
    new = models["NewItem"]["properties"]["id"]["anyOf"]
    assert new[0]["maxLength"] == MAX_ID_CHARS and new[0]["minLength"] == 1
    request = models["RecommendRequest"]["properties"]
    assert (request["k"]["minimum"], request["k"]["maximum"]) == (1, 100)
    vector = next(s for s in models["NewItem"]["properties"]["vector"]["anyOf"]
                  if s.get("type") == "array")
    assert vector["minItems"] == vector["maxItems"] == 384  # the run's vectors


@given(st.one_of(st.text(max_size=8), st.text(st.characters(codec="utf-8"), max_size=300),
                 st.sampled_from(["a", " a", "a ", "\u00a0a", "a\u3000", "\ufeffa", "a\u202e",
                                  "a\x85", "\u200bx", "x" * 256, "x" * 257, "é", "e\u0301"])))
@settings(max_examples=300, deadline=None)
def test_the_schema_and_the_server_agree_on_new_ids_and_texts(value: str) -> None:
    """What the JSON Schema (read by ECMA rules, as schemathesis does) accepts for a new
    id or a text is what the server accepts."""
    import jsonschema_rs
    from pydantic import TypeAdapter, ValidationError

    from sidrec.serve import schemas

    for kind in (schemas.NewId, schemas.ItemText):
        adapter = TypeAdapter(kind)
        try:
            adapter.validate_python(value)
            served = True
        except ValidationError:
            served = False
        documented = jsonschema_rs.validator_for(adapter.json_schema()).is_valid(value)
        assert served == documented, (kind, value)


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("put", "/v1/items", "GET, POST"), ("delete", "/v1/recommend", "POST"),
    ("post", "/v1/info", "GET"), ("patch", "/v1/items/i01", "GET"), ("post", "/docs", "GET"),
    ("delete", "/static/explorer.js", "GET, HEAD"), ("put", "/openapi.json", "GET, HEAD")])
def test_405_answers_say_what_is_allowed(app, method: str, path: str, allow: str) -> None:
    from fastapi.testclient import TestClient

    r = TestClient(app).request(method, path, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 405 and r.headers["allow"] == allow
    assert r.json()["error"] == "Method Not Allowed"
