"""`sidrec serve MODEL_DIR`: a trained model's recommendations over HTTP.

FastAPI on uvicorn, one model in one process (docs/serving.md):

    POST /v1/recommend        {"history": ["50", "172"], "k": 10, "user_id": "u1",
                               "exclude_seen": true, "options": {"beam": 40}}
                              -> {"items": [{"id", "score", "title", "cold"}], "model", "took_ms"}
    POST /v1/recommend/batch  {"requests": [<recommend body>, ...]} -> {"results": [...]}
    POST /v1/items            [{"id": "...", "text": "..."}] -> added live and persisted
    GET  /v1/items?q=toy      search by title;  GET /v1/items/{id}: one item
    GET  /v1/info             the model, its inference settings, the limits
    GET  /healthz, /readyz    process up; model loaded
    GET  /metrics             Prometheus
    GET  /docs                the OpenAPI contract;  GET /: the explorer page

Modules: `settings` (limits, batching, connections), `schemas` (the JSON contract),
`queries` (a checked request, and a batch of them answered with few model calls),
`worker` (dynamic batching on one inference thread), `model_process` (the model in a
child process, `model_process=true`), `encoder_process` (new items' texts encoded in a
child process, `encoder_process=true`), `connections` (uvicorn's deadlines and limits),
`app` (the app put together), `routes` (its routers), `backend` (what the routes share,
as FastAPI dependencies; adds run off the inference thread), `checks` (a request checked
before it is queued, its cost too), `guard` (security headers, body limit and deadline,
request metrics), `access` (API keys, the
Host check, the write rule), `rules` (what ids and texts may be), `contract` (the OpenAPI
schema), `http_errors` (every error as one JSON body), `ray_app` (the same app on Ray
Serve, `--ray`), `static/` (the explorer page).
Every server process holds its model's `sidrec.catalogue.LiveCatalogue` (through its
`Service`), the model process and each Ray Serve replica too.
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidrec.errors import SidrecError
from sidrec.serve.settings import ServeSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from sidrec.api import Service
    from sidrec.serve.access import Access

__all__ = ["ServeSettings", "build_app", "check_listen", "loader", "serve"]


@dataclass(frozen=True)
class Loader:
    """Loads the model for serving (with its run's added items). A picklable value, so
    that the model process (`ServeSettings.model_process`) loads its own copy with it."""

    model_dir: str
    settings: ServeSettings
    inference: dict[str, Any] | None = None

    def __call__(self) -> Service:
        from sidrec.api import load as load_service

        return load_service(self.model_dir, on_unknown=self.settings.on_unknown,
                            device=self.settings.device, inference=self.inference)


def loader(model_dir: str | Path, settings: ServeSettings,
           inference: dict[str, Any] | None = None) -> Loader:
    """What loads the model for serving (with its run's added items)."""
    return Loader(str(model_dir), settings, inference)


def check_listen(host: str, port: int) -> None:
    """Bind host:port once before the model loads, so that a port in use or a host this
    machine does not have is a one-line error now, not a server log after loading."""
    if not 1 <= port <= 65535:
        raise SidrecError(f"--port {port}: must be in 1..65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(infos[0][4])
    except OSError as e:
        raise SidrecError(f"--host {host} --port {port}: cannot listen there "
                          f"({e.strerror or e}); pick another --port or --host") from None


def build_app(model_dir: str | Path, settings: ServeSettings | None = None,
              inference: dict[str, Any] | None = None, preload: bool = True,
              access: Access | None = None) -> FastAPI:
    """The app serving `model_dir`. `preload` loads the model now (a wrong directory is an
    error here); otherwise the worker loads it at startup and /readyz says when. `access`:
    who may call it (`sidrec.serve.access`; default: no keys, localhost only)."""
    from sidrec.serve.app import create_app
    from sidrec.serve.worker import InferenceWorker

    settings = settings or ServeSettings()
    load = loader(model_dir, settings, inference)
    return create_app(InferenceWorker(load, settings, service=load() if preload else None),
                      settings, access=access)


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000,
          settings: ServeSettings | None = None, inference: dict[str, Any] | None = None,
          access_log: bool = False, access: Access | None = None) -> None:
    """Load the model, then serve it until Ctrl-C / SIGTERM. `access` defaults to
    `access_for(host)`: the keys of `SIDREC_API_KEYS`, the bound host and localhost."""
    import uvicorn

    from sidrec.serve.access import access_for, startup_notes
    from sidrec.serve.connections import uvicorn_options

    access = access or access_for(host)
    app = build_app(model_dir, settings, inference, access=access)
    for note in startup_notes(access):
        print(f"sidrec serve: {note}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, access_log=access_log, log_level="info",
                **uvicorn_options(settings or ServeSettings()))
