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

Every request loop is bounded in count (`--requests` per step) and time (`--seconds`),
and only 127.0.0.1 is addressed. Server and client share the machine's cores. The
server's model runs on `--threads` torch threads (default: its own, all cores but one);
offline runs at 1 thread and at all cores, and the faster counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
