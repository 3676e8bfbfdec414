"""`sidrec serve` under load: dynamic batching vs. one model call per request vs. offline.

    .venv/bin/python benchmarks/bench_serve.py            # the demo's TIGER, LIGER, COBRA
    .venv/bin/python benchmarks/bench_serve.py --run-dir runs/other --models liger

For each model of the run (`make demo` trains them into runs/ml-100k-holdout/models/):
1. offline: `sidrec.load(model).recommend_batch` over the test users' histories, in
   chunks of `max_batch` (64) rows: users/s, the ceiling for a server on this machine;
2. `sidrec serve MODEL` on 127.0.0.1 (a free port), driven by an async client (aiohttp;
   see `drive` for why not httpx) at concurrency 1, 8 and 64: requests/s, p50/p95/p99
   latency, the mean batch size (from the server's /metrics), errors and invalid answers
   (an id outside the catalogue, fewer than k items, or a generated SID that was no item);
3. the same server with its model in a process of its own (`model_process=true`);
4. the same server with batching off (`--no-batching`) at the same concurrencies.
Then the ratios, measured in this one run, for each batched server: at concurrency 64,
batched / unbatched throughput (goal >= 5), batched / offline (goal >= 0.6), p99 / p50
(goal <= 4).

With `--soak SECONDS` it measures one batched server over time instead, for each model:
1. adds against recommendations: recommendations at a constant `--rate` for
   `--probe-seconds` with nothing else (their idle p99), then the same rate while one
   `POST /v1/items` adds `--add-items` (1,000) items of ~900 characters: p99 during the
   add / idle p99 (goal <= 2);
2. the soak: the constant rate for SECONDS with an add of 10 items every `--add-every`
   (10) s mixed in,
   and per `--window` (60 s) the server's resident memory (its own and its child
   processes', from /proc: Linux), p50 / p99 and errors; RSS growth from the first window
   (the warm-up) to the last (goal < 5 %) and the last window's p99 / the first's.
A model that takes no new items (TIGER) is soaked without adds. The server works on a
copy of the run directory, so the run itself gains no items.

Every request loop is bounded in count (`--requests` per step, rate x seconds) and time
(`--seconds`, the soak's), and only 127.0.0.1 is addressed. Server and client share the
machine's cores. The server's model runs on `--threads` torch threads (default: its own,
all cores but one); offline runs at 1 thread and at all cores, and the faster counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from sidrec.serve.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 8, 64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workload(run: Path, n: int, k: int) -> tuple[list[dict], set[str]]:
    """Request bodies from the test users' histories (with their user ids), and the ids."""
    from sidrec.data.dataset import Dataset

    ds = Dataset.load(run)
    histories, _, users = ds.eval_examples("test")
    ids = [str(i) for i in ds.item_ids]
    bodies = []
    for row in range(n):
        u = row % len(users)
        history = [ids[i] for i in histories[u] if i >= 0]
        bodies.append({"history": history, "k": k, "user_id": str(ds.user_ids[users[u]])})
    return bodies, set(ids)


def offline(model_dir: Path, bodies: list[dict], k: int, chunk: int, threads: int) -> float:
    """Users/s of `recommend_batch` in chunks of `chunk` rows (one warm-up chunk first);
    `chunk` 1 is one model call per user, what a server without batching can reach."""
    import torch

    import sidrec

    rec = sidrec.load(model_dir, device="cpu")
    torch.set_num_threads(threads)
    histories = [b["history"] for b in bodies]
    users = [b["user_id"] for b in bodies]
    rec.recommend_batch(histories[:chunk], k, users=users[:chunk])
    start = time.perf_counter()
    for i in range(0, len(histories), chunk):
        rec.recommend_batch(histories[i : i + chunk], k, users=users[i : i + chunk])
    return len(histories) / (time.perf_counter() - start)


# The servers compared: label -> extra `sidrec serve` arguments; the first is the default.
SERVERS = {"batching on": [], "batching on, model process": ["model_process=true"],
           "batching off": ["--no-batching"]}


class Server:
    def __init__(self, model_dir: Path, threads: int, extra: list[str], log: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        args = [sys.executable, "-m", "sidrec.cli", "serve", str(model_dir), "--host",
                "127.0.0.1", "--port", self.url.rsplit(":", 1)[1], f"threads={threads}",
                "device=cpu", *extra]
        self.log = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited; see {log}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise SystemExit(f"the server was not ready in 180 s; see {log}")

    def metrics(self) -> dict[str, float]:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        out = {}
        for line in text.splitlines():
            if line.startswith(("sidrec_batch_size_sum", "sidrec_batch_size_count",
                                "sidrec_invalid_sids_total")):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()


async def drive(url: str, bodies: list[dict], concurrency: int, seconds: float,
                catalogue: set[str]) -> dict:
    """POST each body once, `concurrency` at a time, until done or `seconds` passed.

    The client is aiohttp: httpx's AsyncClient falls to ~80 requests/s at 64 concurrent
    requests on 2 cores even against GET /healthz, where aiohttp does ~2,900 (a known
    httpx issue, encode/httpx#3215), so httpx would measure itself, not the server.
    """
    import aiohttp

    payloads = [json.dumps(b).encode() for b in bodies]
    latencies: list[float] = []
    errors = invalid = 0
    deadline = time.monotonic() + seconds
    queue = iter(payloads)
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as client:
        async def worker() -> None:
            nonlocal errors, invalid
            for payload in queue:
                if time.monotonic() > deadline:
                    return
                t = time.perf_counter()
                try:
                    async with client.post("/v1/recommend", data=payload,
                                           headers=headers) as r:
                        status, body = r.status, await r.read()
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    continue
                if status != 200:  # an error's latency is no answer's
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t)
                items = [i["id"] for i in json.loads(body)["items"]]
                want = json.loads(payload)["k"]
                if len(items) != want or len(set(items)) != want or not set(items) <= catalogue:
                    invalid += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return {"requests": len(latencies), "rps": len(latencies) / wall,
            "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)), "errors": errors, "invalid": invalid}


def measure(server: Server, bodies: list[dict], n: dict[int, int], seconds: float,
            catalogue: set[str]) -> list[dict]:
    asyncio.run(drive(server.url, bodies[:64], 8, seconds, catalogue))  # warm up
    rows = []
    for c in CONCURRENCY:
        before = server.metrics()
        out = asyncio.run(drive(server.url, bodies[: n[c]], c, seconds, catalogue))
        after = server.metrics()
        calls = after["sidrec_batch_size_count"] - before["sidrec_batch_size_count"]
        rows_served = after["sidrec_batch_size_sum"] - before["sidrec_batch_size_sum"]
        out["mean_batch"] = rows_served / calls if calls else 0.0
        out["invalid_sids"] = (after["sidrec_invalid_sids_total"]
                               - before["sidrec_invalid_sids_total"])
        rows.append({"concurrency": c, **out})
    return rows


SOAK_ADD_ITEMS = 10  # items in each of the soak's adds
WORDS = ("quiet", "river", "engine", "winter", "garden", "signal", "harbour", "letter",
         "mirror", "orbit", "lantern", "meadow", "cipher", "canyon", "violet", "ember")


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` and its descendants (its encoder process, a model
    process), in MiB, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # the command name in parentheses may hold spaces: split after it
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    kib, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        kib += next((int(line.split()[1]) for line in status.splitlines()
                     if line.startswith("VmRSS:")), 0)
    return kib / 1024


def new_items(n: int, first: int, chars: int = 900) -> list[dict]:
    """`n` new items with ids `soak-FIRST`, ... and `chars` characters of text each."""
    rng = np.random.default_rng(first)
    items = []
    for i in range(first, first + n):
        words = " ".join(WORDS[w] for w in rng.integers(len(WORDS), size=chars // 5))
        text = f"Title: Soak item {i}; Year: 2026; Genres: Drama; Plot: {words}"
        items.append({"id": f"soak-{i}", "text": text[:chars]})
    return items


async def paced(client, bodies: list[dict], rate: float, seconds: float,
                until=lambda: False) -> list[tuple[float, float | None]]:
    """POST a recommendation every 1/`rate` s for `seconds` (or until `until()`), whether
    or not the earlier ones were answered (open loop: a stalled server shows as latency,
    not as fewer requests). Returns (when it was due, latency from then or None if it
    failed) for each request."""
    import aiohttp

    payloads = [json.dumps(b).encode() for b in bodies]
    results: list[tuple[float, float | None]] = []
    start = time.perf_counter()

    async def one(payload: bytes, due: float) -> None:
        try:
            async with client.post("/v1/recommend", data=payload,
                                   headers={"content-type": "application/json"}) as r:
                await r.read()
                ok = r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        results.append((due - start, time.perf_counter() - due if ok else None))

    tasks = []
    for i in range(int(rate * seconds)):
        if until():
            break
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(payloads[i % len(payloads)], due)))
    await asyncio.gather(*tasks)
    return results


def latency_row(sent: list[tuple[float, float | None]]) -> dict:
    ms = np.asarray([lat for _, lat in sent if lat is not None]) * 1000
    return {"requests": len(sent), "errors": sum(lat is None for _, lat in sent),
            "p50": float(np.percentile(ms, 50)) if ms.size else float("nan"),
            "p99": float(np.percentile(ms, 99)) if ms.size else float("nan")}


async def post_items(client, items: list[dict]) -> int:
    """The status of one POST /v1/items (0: no answer)."""
    import aiohttp

    try:
        async with client.post("/v1/items", json=items,
                               timeout=aiohttp.ClientTimeout(total=600)) as r:
            await r.read()
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def add_until_done(client, items: list[dict]) -> tuple[int, float, int]:
    """POST /v1/items, and again after each 504 (the server goes on with an add past its
    timeout_s, and sending it again is safe: an add is idempotent by id), as a client
    would, at most 20 times: (the last status, seconds in all, posts)."""
    start, posts, status = time.perf_counter(), 0, 504
    while status == 504 and posts < 20:
        status = await post_items(client, items)
        posts += 1
    return status, time.perf_counter() - start, posts


async def soak(server: Server, bodies: list[dict], args: argparse.Namespace,
               adds: bool) -> tuple[dict, list[dict]]:
    """The add probe, then the soak (module docstring); the probe's row and the windows'."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(server.url, timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=256)) as client:
        await paced(client, bodies, args.rate, min(5.0, args.probe_seconds))  # warm up
        idle = latency_row(await paced(client, bodies, args.rate, args.probe_seconds))
        probe = {"idle": idle, "add_status": None, "add_s": 0.0, "add_posts": 0,
                 "during": idle}
        if adds:
            done = asyncio.Event()
            load = asyncio.create_task(paced(client, bodies, args.rate, 600, done.is_set))
            await asyncio.sleep(0.5)  # recommendations in flight when the add arrives
            probe["add_status"], probe["add_s"], probe["add_posts"] = await add_until_done(
                client, new_items(args.add_items, 0))
            done.set()
            probe["during"] = latency_row(await load)

        start = time.perf_counter()
        added: list[tuple[float, int]] = []

        async def adder() -> None:
            first = args.add_items
            while time.perf_counter() - start + args.add_every < args.soak:
                await asyncio.sleep(args.add_every)
                status, _, _ = await add_until_done(client, new_items(SOAK_ADD_ITEMS, first))
                added.append((time.perf_counter() - start, status))
                first += SOAK_ADD_ITEMS

        rss: list[float] = []

        async def sampler() -> None:
            for w in range(1, int(np.ceil(args.soak / args.window)) + 1):
                await asyncio.sleep(max(0.0, start + min(w * args.window, args.soak)
                                        - time.perf_counter()))
                rss.append(rss_mb(server.process.pid))

        jobs = [paced(client, bodies, args.rate, args.soak), sampler()]
        sent, *_ = await asyncio.gather(*jobs, *([adder()] if adds else []))
    windows = []
    for w, mb in enumerate(rss):
        lo, hi = w * args.window, (w + 1) * args.window
        windows.append({"window": w + 1, "rss_mb": mb,
                        **latency_row([r for r in sent if lo <= r[0] < hi]),
                        "adds": sum(lo <= t < hi and s == 200 for t, s in added),
                        "add_errors": sum(lo <= t < hi and s != 200 for t, s in added)})
    return probe, windows


def soak_model(run: Path, model: str, bodies: list[dict], args: argparse.Namespace,
               logs: Path) -> str:
    """Soak one model's batched server on a copy of the run; its report."""
    copy = logs / f"run-{model}"
    shutil.copytree(run, copy, ignore=lambda d, names: [
        n for n in names if Path(d) == run / "models" and n != model])
    server = Server(copy / "models" / model, args.threads, [], logs / f"{model}-soak.log")
    try:
        adds = httpx.get(f"{server.url}/v1/info", timeout=10).json()["supports_new_items"]
        probe, windows = asyncio.run(soak(server, bodies, args, adds))
    finally:
        server.stop()
    return soak_report(model, args, adds, probe, windows)


def soak_report(model: str, args: argparse.Namespace, adds: bool, probe: dict,
                windows: list[dict]) -> str:
    idle, during = probe["idle"], probe["during"]
    lines = [f"\n{model}: {args.rate:g} recommendations/s, batching on"]
    if adds:
        lines += ["", "| recommendations | requests | errors | p50 ms | p99 ms |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {label} | {r['requests']} | {r['errors']} | {r['p50']:.1f} | "
                  f"{r['p99']:.1f} |" for label, r in
                  (("idle", idle), (f"during a {args.add_items}-item add", during))]
        retried = probe["add_posts"] - 1
        lines.append(f"the add: HTTP {probe['add_status']} in {probe['add_s']:.1f} s"
                     + (f" ({retried} more POST(s) of it after 504s)" if retried else "") + "; "
                     f"p99 during the add / idle p99: {during['p99'] / idle['p99']:.2f} "
                     "(goal <= 2)")
    else:
        lines.append("no adds: the model ranks only the items it was trained on")
    lines += ["", f"| soak window ({args.window:g} s) | RSS MiB | requests | errors | p50 ms | "
              "p99 ms | adds (10 items) | add errors |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {w['window']} | {w['rss_mb']:.1f} | {w['requests']} | {w['errors']} | "
              f"{w['p50']:.1f} | {w['p99']:.1f} | {w['adds']} | {w['add_errors']} |"
              for w in windows]
    first, last = windows[0], windows[-1]
    lines.append(f"RSS growth after warm-up (window 1 -> {last['window']}): "
                 f"{100 * (last['rss_mb'] / first['rss_mb'] - 1):+.1f} % (goal < 5 %); "
                 f"p99 last / first window: {last['p99'] / first['p99']:.2f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "ml-100k-holdout"))
    parser.add_argument("--models", default="tiger,liger,cobra")
    parser.add_argument("--requests", type=int, default=640, help="requests per step at c=64 "
                        "(c=8: half, c=1: a tenth)")
    parser.add_argument("--seconds", type=float, default=120, help="time limit per step")
    parser.add_argument("--threads", type=int, default=0, help="the server's torch threads "
                        "(0: its default, cores - 1); offline is measured at 1 and at all "
                        "cores, and the faster counts")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--soak", type=float, default=0, metavar="SECONDS",
                        help="soak each model's batched server this long instead (see above)")
    parser.add_argument("--rate", type=float, default=20, help="soak: recommendations/s")
    parser.add_argument("--window", type=float, default=60, help="soak: seconds per row")
    parser.add_argument("--probe-seconds", type=float, default=30,
                        help="soak: seconds of idle recommendations before the large add")
    parser.add_argument("--add-items", type=int, default=1000,
                        help="soak: items in the large add")
    parser.add_argument("--add-every", type=float, default=10,
                        help=f"soak: seconds between adds of {SOAK_ADD_ITEMS} items")
    args = parser.parse_args()
    run = Path(args.run_dir)
    models = [m for m in args.models.split(",") if m]
    missing = [m for m in models if not (run / "models" / m / "model.safetensors").is_file()]
    if missing:
        print(f"{run}/models/{{{','.join(missing)}}}: not trained. `make demo` trains the "
              "demo's models into runs/ml-100k-holdout (~14 min on 2 cores); a quicker "
              "stand-in: `sidrec bench models=tiger,liger,cobra train.max_epochs=1 "
              "run_dir=runs/scratch` and --run-dir runs/scratch", file=sys.stderr)
        return 2
    n = {64: args.requests, 8: max(1, args.requests // 2), 1: max(1, args.requests // 10)}
    bodies, catalogue = workload(run, max(n.values()), args.k)
    logs = Path(tempfile.mkdtemp(prefix="bench_serve."))
    if args.soak:
        for model in models:
            print(soak_model(run, model, bodies, args, logs), flush=True)
        shutil.rmtree(logs, ignore_errors=True)
        return 0
    results = []
    for model in models:
        model_dir = run / "models" / model
        cores = os.cpu_count() or 1
        served = ServeSettings(threads=args.threads).model_threads  # the server's model
        speeds = {t: offline(model_dir, bodies, args.k, 64, t)
                  for t in sorted({1, served, cores})}
        best = max(speeds, key=speeds.get)
        single = offline(model_dir, bodies[:64], args.k, 1, best)
        print(f"{model}: offline recommend_batch " + ", ".join(
            f"{v:.1f} users/s at {t} thread(s)" for t, v in speeds.items())
            + f"; one user per call: {single:.1f} users/s", flush=True)
        rows_of_model = []
        for label, extra in SERVERS.items():
            server = Server(model_dir, args.threads, extra,
                            logs / f"{model}-{label.replace(' ', '')}.log")
            try:
                rows = measure(server, bodies, n, args.seconds, catalogue)
            finally:
                server.stop()
            for row in rows:
                rows_of_model.append({"model": model, "server": label, **row})
                print(f"  {label:26} c={row['concurrency']:>2}: "
                      f"{row['rps']:7.1f} req/s  p50 {row['p50']:6.1f}  p99 {row['p99']:6.1f} "
                      f"ms  batch {row['mean_batch']:4.1f}  errors {row['errors']}  "
                      f"invalid {row['invalid'] + row['invalid_sids']:.0f}", flush=True)
        # Offline again after the servers; on a shared machine the faster of the two
        # measurements is the fairer ceiling.
        users_s = max(speeds[best], offline(model_dir, bodies, args.k, 64, best))
        at_served = max(speeds[served], offline(model_dir, bodies, args.k, 64, served))
        single = max(single, offline(model_dir, bodies[:64], args.k, 1, best))
        print(f"{model}: offline (best of two runs) {users_s:.1f} users/s at {best} "
              f"thread(s), {at_served:.1f} at the server's {served}; one user per call "
              f"{single:.1f}", flush=True)
        results += [{**r, "offline": users_s, "offline_single": single,
                     "offline_threads": best, "offline_served": at_served,
                     "served_threads": served} for r in rows_of_model]
    print(report(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


def report(results: list[dict]) -> str:
    lines = ["", "| model | server | concurrency | req/s | p50 ms | p95 ms | p99 ms | "
             "mean batch | errors | invalid |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['server']} | "
                     f"{r['concurrency']} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p95']:.1f} | "
                     f"{r['p99']:.1f} | {r['mean_batch']:.1f} | {r['errors']} | "
                     f"{r['invalid'] + r['invalid_sids']:.0f} |")
    lines += ["", "| model | batched server | offline users/s (64 per call, threads) | "
              "offline, 1 per call | offline at the server's threads | c=64 batched / "
              "unbatched (>= 5) | c=64 batched / offline (>= 0.6) | c=64 batched / offline "
              "at the server's threads | c=64 p99 / p50 (<= 4) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]

    def at_64(model: str, server: str) -> dict:
        return next(r for r in results if r["model"] == model and r["server"] == server
                    and r["concurrency"] == 64)

    for model in dict.fromkeys(r["model"] for r in results):
        off = at_64(model, "batching off")
        for server in [s for s in SERVERS if s != "batching off"]:
            on = at_64(model, server)
            lines.append(f"| {model} | {server} | {on['offline']:.1f} "
                         f"({on['offline_threads']}) | {on['offline_single']:.1f} | "
                         f"{on['offline_served']:.1f} ({on['served_threads']}) | "
                         f"{on['rps'] / off['rps']:.1f}x | {on['rps'] / on['offline']:.2f}x | "
                         f"{on['rps'] / on['offline_served']:.2f}x | "
                         f"{on['p99'] / on['p50']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
