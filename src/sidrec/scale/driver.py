"""Runs the scale stages: each in its own subprocess (`python -m sidrec.scale`), so the peak
RSS it reports (`ru_maxrss` of that process, from `os.wait4`) is its own, and records every
result in `<work>/scale.json` as it comes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from sidrec.scale import add_stage, data_stages, recommend_stages
from sidrec.scale.common import Options, label, timed

# name -> stage, in the order they run at each size
RUNNERS: dict[str, Callable[[int, Path, Options], dict[str, Any]]] = {
    "synth": data_stages.stage_synth,
    "prepare": data_stages.stage_prepare,
    "embeddings": data_stages.stage_embeddings,
    "rqkmeans": data_stages.stage_rqkmeans,
    "rqvae": data_stages.stage_rqvae,
    "trie": data_stages.stage_trie,
    "decode": recommend_stages.stage_decode,
    "liger": recommend_stages.stage_liger,
    "cobra": recommend_stages.stage_cobra,
    "dense": recommend_stages.stage_dense,
    "add": add_stage.stage_add,
    "ratio": recommend_stages.stage_ratio,
}
STAGES = tuple(RUNNERS)


def run_stage(name: str, n: int, work: Path, opt: Options, inline: bool) -> dict[str, Any]:
    """One stage at size n: in a subprocess (its own peak RSS) unless `inline`."""
    if inline:
        result, seconds = timed(RUNNERS[name], n, work, opt)
        return {**result, "wall_seconds": seconds}
    cmd = [sys.executable, "-m", "sidrec.scale", "--stage", name, "--size", str(n),
           "--work", str(work), "--options", json.dumps(asdict(opt))]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} at {label(n)} failed (exit {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "wall_seconds": time.perf_counter() - start,
            "peak_rss_gb": usage.ru_maxrss / 1e6}


def run_all(sizes: list[int], work: Path, opt: Options, inline: bool = False,
            stages: tuple[str, ...] = STAGES, log: Any = print) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    record_path = work / "scale.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record.setdefault("sizes", {})
    record.update({"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                   "options": asdict(opt)})
    for i, n in enumerate(sizes):
        row = record["sizes"].setdefault(str(n), {})
        for name in stages:
            if (name == "rqvae" and n != 100_000) or (name == "ratio" and i == 0):
                continue
            o = opt if i == 0 or name != "add" else replace(opt, encode_texts=False)
            load = os.getloadavg()[0]
            row[name] = {**run_stage(name, n, work, o, inline), "load_before": round(load, 1),
                         "date": time.strftime("%Y-%m-%d %H:%M")}
            log(f"{label(n)} {name}: {json.dumps(row[name])}")
            record_path.write_text(json.dumps(record, indent=1))
    return record

