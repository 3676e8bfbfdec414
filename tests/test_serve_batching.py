"""Dynamic batching and the live catalogue, through real servers (TIGER, LIGER, COBRA).

- Concurrent requests are merged into batched model calls, and every answer equals what
  the offline API (`sidrec.load(...).recommend`, one history at a time) returns for the
  same inputs: the same items, scores within 1e-5.
- Items added while requests run: no request fails, no answer holds an unknown or
  duplicate item, and each added item is usable by the very next request.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from serving import N_ITEMS, copy_of, load, metric, post_all, running


@pytest.fixture(scope="module")
def run(served_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_of(served_run, tmp_path_factory.mktemp("batching"))


@pytest.fixture(scope="module")
def servers(run: Path, tmp_path_factory: pytest.TempPathFactory):
    """One server per model, started on first use."""
    logs = tmp_path_factory.mktemp("logs")
    started: dict = {}

    def get(model: str, *settings: str):
        key = (model, *settings)
        if key not in started:
            # a long wait, so that a batch has time to fill on a busy machine
            started[key] = running(run / "models" / model, "max_wait_ms=20", *settings,
                                   log=logs / f"{'-'.join(key)}.log")
            started[key].server = started[key].__enter__()
        return started[key].server

    yield get
    for context in started.values():
        context.__exit__(None, None, None)


def queries(n: int, seed: int) -> list[dict]:
    """Varied histories (1-12 items), users (known, unknown, none), k and exclude_seen."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        history = [f"i{j:02d}" for j in rng.choice(N_ITEMS, size=int(rng.integers(1, 13)),
                                                   replace=False)]
        body: dict = {"history": history, "k": 10}
        if i % 3 == 0:
            body["user_id"] = f"u{i}"  # a training user
        elif i % 3 == 1:
            body["user_id"] = f"visitor-{i}"  # unknown: the anonymous token
        if i % 4 == 0:
            body["exclude_seen"] = True
        out.append(body)
    return out


# model_process=true: the same through the model in a process of its own
PROCESS = ("model_process=true",)


def label(value: object) -> str:
    return "-".join(value) if isinstance(value, tuple) else str(value)


@pytest.mark.parametrize("model, settings", [("tiger", ()), ("liger", ()), ("cobra", ()),
                                             ("tiger", PROCESS)], ids=label)
def test_batched_answers_equal_offline(servers, run: Path, model: str, settings) -> None:
    server = servers(model, *settings)
    bodies = queries(32, seed=1)
    before = httpx.get(f"{server.url}/metrics").text
    responses = post_all(f"{server.url}/v1/recommend", bodies, concurrency=32)
    assert [r.status_code for r in responses] == [200] * len(bodies)
    after = httpx.get(f"{server.url}/metrics").text
    calls = metric(after, "sidrec_batch_size_count") - metric(before, "sidrec_batch_size_count")
    rows = metric(after, "sidrec_batch_size_sum") - metric(before, "sidrec_batch_size_sum")
    assert rows == len(bodies) and calls < len(bodies), "no request was batched with another"

    offline = load(run / "models" / model)
    for body, response in zip(bodies, responses, strict=True):
        served = response.json()["items"]
        alone = offline.recommend(body["history"], k=body["k"],
                                  exclude_seen=body.get("exclude_seen", False),
                                  user_id=body.get("user_id"))
        assert [i["id"] for i in served] == [item for item, _ in alone], body
        np.testing.assert_allclose([i["score"] for i in served], [s for _, s in alone],
                                   rtol=0, atol=1e-5)


# Varied texts (items whose prefix is full are placed beside their nearest neighbour).
LIVE = ["Arctic Expedition; Genres: documentary", "Jazz Piano Nights; Genres: music",
        "The Castle Siege; Genres: war history", "Pasta Masterclass; Genres: cooking",
        "Robot Uprising; Genres: science fiction thriller", "Little Fox; Genres: animation",
        "Courtroom Drama; Genres: legal drama", "Mountain Bike Rally; Genres: sport",
        "Haunted Lighthouse; Genres: horror", "Wedding Crashers Two; Genres: comedy romance"]


async def _load_while_adding(url: str, prefix: str, n_adds: int, seconds: float) -> dict:
    """Recommenders (bounded in count and time) while one client adds items one batch at a
    time; every added id is used by the next request at once."""
    deadline = time.monotonic() + seconds
    added: list[str] = []
    problems: list[str] = []
    counts = {"requests": 0}
    returned: set[str] = set()

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def recommender(worker: int) -> None:
            for n in range(40):
                if time.monotonic() > deadline:
                    return
                history = [f"i{(worker * 7 + n) % N_ITEMS:02d}", *added[-2:]]
                r = await client.post("/v1/recommend", json={"history": history, "k": 8})
                counts["requests"] += 1
                if r.status_code != 200:
                    problems.append(f"{r.status_code} {r.text}")
                    continue
                ids = [i["id"] for i in r.json()["items"]]
                returned.update(ids)
                if len(ids) != 8 or len(set(ids)) != 8:
                    problems.append(f"bad top-8 {ids}")

        async def adder() -> None:
            for n in range(n_adds):
                if time.monotonic() > deadline:
                    return
                items = [{"id": f"{prefix}-{n}-{j}", "text": f"Title: {LIVE[2 * n + j]}"}
                         for j in range(2)]
                r = await client.post("/v1/items", json=items)
                if r.status_code != 200:
                    problems.append(f"add {r.status_code} {r.text}")
                    return
                added.extend(i["id"] for i in items)
                # visible to the very next request, in a history and as an item
                r = await client.post("/v1/recommend", json={"history": [items[0]["id"]]})
                if r.status_code != 200:
                    problems.append(f"next request {r.status_code} {r.text}")

        await asyncio.gather(adder(), *(recommender(w) for w in range(4)))
        size = (await client.get("/v1/info")).json()["n_items"]
        known = set()
        for item_id in sorted(set(added) | returned):  # every id answered is a real item
            if (await client.get(f"/v1/items/{item_id}")).status_code == 200:
                known.add(item_id)
    return {"problems": problems, "added": added, "known": known, "returned": returned,
            "size": size, **counts}


@pytest.mark.parametrize("model, settings", [("liger", ()), ("cobra", ()),
                                             ("liger", PROCESS)], ids=label)
def test_items_added_under_load(servers, model: str, settings) -> None:
    server = servers(model, *settings)
    start = httpx.get(f"{server.url}/v1/info").json()["n_items"]
    # the servers share the run directory, so each adds ids of its own
    prefix = "-".join(("live", model, *settings))
    out = asyncio.run(_load_while_adding(server.url, prefix, n_adds=5, seconds=90))
    assert out["problems"] == []
    assert len(out["added"]) == 10 and out["known"] == set(out["added"]) | out["returned"]
    assert out["size"] >= start + 10 and out["requests"] >= 20
