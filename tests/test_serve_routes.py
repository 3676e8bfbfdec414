"""The server's parts alone, with no model loaded: `check_query` against a stub service,
and routers mounted on an app of their own with their dependencies overridden."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sidrec.errors import SidrecError
from sidrec.serve import routes
from sidrec.serve.backend import Backend, backend, service
from sidrec.serve.checks import check_query
from sidrec.serve.http_errors import ApiError, add_error_handlers
from sidrec.serve.metrics import Metrics
from sidrec.serve.queries import Query
from sidrec.serve.schemas import RecommendRequest
from sidrec.serve.settings import ServeSettings

ITEM = {"id": "a", "title": "Alpha", "text": "Title: Alpha", "cold": False, "added": False}


class StubCatalogue:
    """The part of a `LiveCatalogue` the checks and the item routes ask."""

    ids = ("a", "b")

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.ids

    def __len__(self) -> int:
        return len(self.ids)

    def item(self, item_id: str) -> dict[str, Any] | None:
        return ITEM if item_id == "a" else None

    def search(self, query: str, limit: int) -> list[dict[str, Any]]:
        return [ITEM][:limit] if query in ITEM["title"].lower() else []

    def stale(self) -> bool:  # no other process adds to it
        return False


class StubService:
    on_unknown = "error"
    catalogue = StubCatalogue()

    def inference_with(self, options: dict[str, Any]) -> None:
        if set(options) - {"beam"}:
            raise SidrecError(f"unknown inference setting(s) {sorted(options)}; valid: beam")


def checked(where: str = "", **body: Any) -> Query:
    return check_query(RecommendRequest(**body), StubService(), ServeSettings(max_option=50),
                       where)


def test_check_query_asks_the_catalogue_and_the_service() -> None:
    assert checked(history=["a", "b"], k=3, user_id=7) == Query(("a", "b"), 3, "7")
    assert checked(history=["zz"], on_unknown="skip").history == ("zz",)
    for body, field in (({"history": ["a", "zz"]}, "history[1]"),  # unknown to the catalogue
                        ({"history": [], "k": 0}, "k"),
                        ({"history": [], "options": {"bem": 5}}, "options.bem"),  # the model's
                        ({"history": [], "options": {"beam": 51}}, "options.beam")):  # > 50
        with pytest.raises(ApiError) as e:
            checked("requests[2].", **body)
        assert (e.value.status, e.value.field) == (400, f"requests[2].{field}")


def app_with(*routers: Any) -> FastAPI:
    app = FastAPI()
    add_error_handlers(app)
    for router in routers:
        app.include_router(router)
    return app


def test_the_item_routes_alone() -> None:
    app = app_with(routes.items)
    app.dependency_overrides[service] = StubService
    client = TestClient(app)
    assert client.get("/v1/items", params={"q": "alp"}).json() == {"items": [ITEM]}
    assert client.get("/v1/items/a").json() == ITEM
    r = client.get("/v1/items/zz")
    assert r.status_code == 404 and r.json() == {"error": "no item 'zz'", "field": None}
    r = client.get("/v1/items", params={"limit": 0})
    assert r.status_code == 422 and r.json()["field"] == "limit"


class LoadingWorker:
    """An `InferenceWorker` whose model has not loaded yet."""

    service = None
    error = None
    ready = threading.Event()

    def failure(self) -> str | None:
        return None


def test_routes_answer_503_until_the_model_is_loaded() -> None:
    app = app_with(routes.items, routes.status)
    loading = Backend(LoadingWorker(), ServeSettings(), Metrics())  # type: ignore[arg-type]
    app.dependency_overrides[backend] = lambda: loading
    client = TestClient(app)
    r = client.get("/v1/items/a")
    assert r.status_code == 503 and "the model is loading" in r.json()["error"]
    assert client.get("/readyz").json() == {"status": "loading"}
    assert client.get("/healthz").json() == {"status": "ok"}
