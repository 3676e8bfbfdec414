"""`sidrec serve MODEL_DIR --ray --replicas 2`: the same app on a local Ray Serve
instance (127.0.0.1 only), two replicas behind Ray's proxy, Ray's own batching, and an
item added through one replica served by both. Skips only without the `ray` extra
(`make test` installs it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from serving import copy_of, running

pytest.importorskip("ray.serve", reason="the ray extra is not installed (pip install "
                    "'sidrec[ray]'; make test installs it)")


async def _drive(url: str) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        replicas: set[str] = set()
        for _ in range(10):  # bounded: until both replicas have answered
            infos = await asyncio.gather(*(client.get("/v1/info") for _ in range(8)))
            assert [r.status_code for r in infos] == [200] * 8, [r.text for r in infos]
            replicas |= {r.json()["replica"] for r in infos}
            if len(replicas) == 2:
                break
        bodies = [{"history": ["i01", f"i{n % 40:02d}"], "k": 5} for n in range(24)]
        recs = await asyncio.gather(*(client.post("/v1/recommend", json=b) for b in bodies))
        added = await client.post("/v1/items", json=[
            {"id": "ray-new", "text": "Title: A Film Served by Ray; Genres: space opera"}])
        after = await asyncio.gather(*(client.post("/v1/recommend", json={"history": ["ray-new"]})
                                       for _ in range(16)))
        seen = await asyncio.gather(*(client.get("/v1/items/ray-new") for _ in range(8)))
        metrics = (await client.get("/metrics")).text
    return {"replicas": replicas, "recs": recs, "added": added, "after": after, "seen": seen,
            "metrics": metrics}


def test_two_ray_serve_replicas(served_run: Path, tmp_path: Path) -> None:
    run = copy_of(served_run, tmp_path)
    with running(run / "models" / "liger", "--ray", "--replicas", "2", log=tmp_path / "ray.log",
                 timeout=240) as server:
        out = asyncio.run(_drive(server.url))
    assert len(out["replicas"]) == 2, out["replicas"]
    assert [r.status_code for r in out["recs"]] == [200] * 24
    assert all(len(r.json()["items"]) == 5 for r in out["recs"])
    assert out["added"].status_code == 200, out["added"].text
    # added through one replica, answered by either
    assert [r.status_code for r in out["after"]] == [200] * 16
    assert all(r.json()["added"] for r in out["seen"])
    assert "sidrec_batch_size_bucket" in out["metrics"]
