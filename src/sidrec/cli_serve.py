"""The `sidrec` verbs that answer from a trained model: `recommend` (one history, on the
command line) and `serve` (over HTTP). Each verb is a parser function (`add_<verb>`)
beside the `cmd_<verb>` it runs; `sidrec.cli` registers them."""

from __future__ import annotations

import argparse
from typing import Any

from sidrec.config import from_dict, parse_overrides


def add_recommend(sub: Any) -> None:
    p = sub.add_parser("recommend", help="top-k for one history of original item ids",
                       description="Prints one line per item: id, score and title, "
                       "tab-separated (an item not seen in training is marked [new item]). A "
                       "backslash, tab, newline or carriage return inside an id or a title "
                       "is written \\\\, \\t, \\n or \\r; --json prints them as they are.")
    p.add_argument("model_dir", help="runs/<name>/models/<model>")
    p.add_argument("history", nargs="+", help="original item ids, oldest first")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--skip-unknown", action="store_true", help="skip unknown ids (warn)")
    p.add_argument("--exclude-seen", action="store_true", help="leave out the history's items")
    p.add_argument("--user", help="a user id from training (its user token); default: an "
                   "anonymous user")
    p.add_argument("--json", action="store_true",
                   help='print {"model", "items": [{"id", "score", "title", "cold"}]}')
    p.set_defaults(func=cmd_recommend, overrides=[])


def cmd_recommend(args: argparse.Namespace) -> None:
    import sidrec
    from sidrec.errors import UnknownItem

    # key=value words are inference settings (beam=50), the others item ids.
    settings = [*args.overrides, *(h for h in args.history if "=" in h)]
    history = [h for h in args.history if "=" not in h]
    rec = sidrec.load(args.model_dir, on_unknown="skip" if args.skip_unknown else "error",
                      inference=parse_overrides(settings))
    try:
        recs = rec.recommend(history, k=args.k, exclude_seen=args.exclude_seen,
                             user_id=args.user)
    except UnknownItem as e:  # the API's advice, in the command's words
        raise UnknownItem(e.row, e.unknown, "check the id, or pass --skip-unknown") from None
    items = [{**info, "score": score} for info, (_, score) in
             zip(rec.catalogue.describe([i for i, _ in recs]), recs, strict=True)]
    if args.json:
        import json

        rows = [{k: i[k] for k in ("id", "score", "title", "cold")} for i in items]
        print(json.dumps({"model": rec.name, "items": rows}, ensure_ascii=False))
        return
    for i in items:
        title = i["title"] + (" [new item]" if i["cold"] else "")
        print(f"{_tsv_field(i['id'])}\t{i['score']:.4f}\t{_tsv_field(title)}")


def _tsv_field(text: str) -> str:
    """`text` with backslash, tab, newline and carriage return written as \\\\, \\t, \\n,
    \\r, so an id holding them stays on its line and in its column."""
    return (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="recommendations over HTTP (FastAPI; explorer page at /)",
                       description="Serve a trained model: POST /v1/recommend, "
                       "/v1/recommend/batch, /v1/items; GET /docs, /metrics, / (explorer). "
                       "key=value sets a serve setting (max_k, max_wait_ms, threads, ...; "
                       "sidrec/serve/settings.py) or else an inference setting (beam=40).")
    p.add_argument("model_dir", help="runs/<name>/models/<model>")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-batching", action="store_true",
                   help="one model call per request (dynamic batching off, for comparison)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--api-key-file", metavar="FILE",
                   help="API keys, one a line: KEY, or KEY read-only (no POST /v1/items); "
                   "with keys (this file or SIDREC_API_KEYS), every /v1 route needs "
                   "Authorization: Bearer KEY")
    p.add_argument("--allowed-hosts", default="", metavar="HOST,...",
                   help="more Host names to answer for, besides the bound host and "
                   "localhost (*.example.com: a domain's hosts; *: any)")
    p.add_argument("--ray", action="store_true",
                   help="deploy on Ray Serve (pip install 'sidrec[ray]'), a local Ray instance")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (with --ray)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> None:
    from sidrec.serve import ServeSettings, check_listen
    from sidrec.serve.access import access_for
    from sidrec.serve.settings import setting_names

    # key=value words are serve settings (max_wait_ms=5) or else inference settings (beam=40).
    pairs = parse_overrides(args.overrides)
    names = setting_names()
    flags = {"batching": False} if args.no_batching else {}
    settings = from_dict(ServeSettings, {**{k: v for k, v in pairs.items() if k in names},
                                         **flags}, "serve")
    inference = {k: v for k, v in pairs.items() if k not in names}
    hosts = tuple(h.strip().lower() for h in args.allowed_hosts.split(",") if h.strip())
    access = access_for(args.host, args.api_key_file, hosts)
    check_listen(args.host, args.port)
    if args.ray:
        from sidrec.serve.ray_app import serve_ray

        serve_ray(args.model_dir, args.host, args.port, settings, inference,
                  replicas=args.replicas, access=access)
    else:
        from sidrec.serve import serve

        serve(args.model_dir, args.host, args.port, settings, inference,
              access_log=args.access_log, access=access)
