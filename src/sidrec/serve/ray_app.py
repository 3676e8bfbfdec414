"""`sidrec serve MODEL_DIR --ray --replicas N`: the same app on Ray Serve.

When one machine is not enough, Ray Serve runs N replicas of the app (each a process
holding the model, on any machine of a Ray cluster) behind its own HTTP proxy, and
spreads requests over them. Each replica is the app of `sidrec.serve.app`, with one
difference: concurrent requests are merged by Ray's own batching (`serve.batch`, at
`max_batch` rows or after `max_wait_ms`) instead of the worker's queue, and each merged
batch runs on the replica's inference thread.

Items added through one replica are written to the run directory's
`added_items.parquet`; the other replicas read it before their next batch (and before
they call an id unknown), so every replica serves them. Across machines the run directory
must be shared storage.

`pip install 'sidrec[ray]'` brings Ray Serve. `serve_ray` starts a local Ray instance on
127.0.0.1 (no dashboard, no usage reporting); to join a cluster, deploy `deployment(...)`
with `serve.run` yourself.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from sidrec.errors import SidrecError
from sidrec.run import ModelDir
from sidrec.serve.access import Access, access_for, startup_notes
from sidrec.serve.settings import ServeSettings


def _ray() -> Any:
    try:
        from ray import serve
    except ImportError:
        raise SidrecError("--ray needs Ray Serve: pip install 'sidrec[ray]'") from None
    return serve


def replica_app(model_dir: str, settings: ServeSettings,
                inference: dict[str, Any] | None, access: Access | None = None) -> Any:
    """The app of one replica (built on the replica by Ray)."""
    from sidrec.serve import loader
    from sidrec.serve.app import create_app
    from sidrec.serve.queries import Query
    from sidrec.serve.worker import InferenceWorker

    serve = _ray()
    # A replica is a process of its own already: its model calls stay in it.
    settings = replace(settings, model_process=False)
    load = loader(model_dir, settings, inference)
    # Loaded here, in the replica's constructor: Ray routes requests to a replica once it
    # is constructed, so one loading in the background would answer 503 beside a ready one.
    worker = InferenceWorker(load, settings, service=load())

    @serve.batch(max_batch_size=settings.rows_per_call,
                 batch_wait_timeout_s=settings.max_wait_ms / 1000)
    async def batched(queries: list[Query]) -> list[Any]:
        return await asyncio.wrap_future(worker.call(worker.answer, queries))

    async def recommend(query: Query) -> Any:
        result = await asyncio.wait_for(batched(query), settings.timeout_s)
        if isinstance(result, Exception):
            raise result
        return result

    return create_app(worker, settings, recommend, access)


def deployment(model_dir: str | Path, settings: ServeSettings | None = None,
               inference: dict[str, Any] | None = None, replicas: int = 1,
               cpus_per_replica: float = 1.0, access: Access | None = None) -> Any:
    """The Ray Serve application (`serve.run` it): `replicas` copies of the app, each
    with the access rules `access` (`sidrec.serve.access`; default: localhost only)."""
    serve = _ray()
    ModelDir(Path(model_dir)).require()
    settings = settings or ServeSettings()
    path = str(Path(model_dir).resolve())

    def build() -> Any:  # evaluated on each replica
        return replica_app(path, settings, inference, access)

    ingress = serve.ingress(build)()
    return serve.deployment(
        ingress, name="sidrec", num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus_per_replica},
        max_ongoing_requests=max(2 * settings.rows_per_call, 8),
    ).bind()


def serve_ray(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000,
              settings: ServeSettings | None = None, inference: dict[str, Any] | None = None,
              replicas: int = 1, access: Access | None = None) -> None:
    """A local Ray instance with `replicas` replicas behind Ray's proxy on host:port, until
    Ctrl-C / SIGTERM. Each replica gets cores / replicas torch threads unless `threads` is
    set; `access` defaults to `access_for(host)`."""
    if replicas < 1:
        raise SidrecError(f"--replicas {replicas}: must be >= 1")
    # A one-machine instance on the loopback: without this, Ray replaces 127.0.0.1 by the
    # machine's network address for its own connections. Read when ray is imported.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    serve = _ray()
    import ray

    cores = os.cpu_count() or 1
    settings = settings or ServeSettings()
    if not settings.threads:
        settings = replace(settings, threads=max(1, cores // replicas))
    access = access or access_for(host)
    app = deployment(model_dir, settings, inference, replicas, access=access)
    for note in startup_notes(access):
        print(f"sidrec serve: {note}", flush=True)
    ray.init(address="local", num_cpus=max(cores, replicas), include_dashboard=False,
             _node_ip_address="127.0.0.1", configure_logging=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name="sidrec", route_prefix="/")
        print(f"sidrec: serving {model_dir} on http://{host}:{port} with {replicas} Ray Serve "
              "replica(s); Ctrl-C stops", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
