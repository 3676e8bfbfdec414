"""Every benchmark runs end to end at its smallest size, as a new process on today's code.

`--help` alone (what this file used to check) let bench_decode.py break unnoticed when
`constrained` moved into the inference config; a run at tiny sizes goes through the same
code as the headline runs, so an interface change fails here, not in the next headline.
Each run's printed table must have its rows.

Left out of the smallest sizes, and why:
- bench_scale.py's stages: tests/test_scale.py runs every one at 10k in-process; here its
  command line runs two of them in subprocesses, with its report and plot.
- recbole_sasrec.py's RecBole side: RecBole 1.2.1 needs numpy 1, in a venv of its own
  that a clean clone does not have, and reads its own ml-100k files; our side runs.
- gpu_check.py's `pytest -k cuda` step: it is the test suite itself (and needs CUDA); the
  rest runs on the CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
# tiny_data.py is no benchmark: the table the smallest sizes read.
SCRIPTS = sorted(s for s in BENCHMARKS.glob("*.py") if s.stem != "tiny_data")

# script -> (arguments of its smallest size, lines its output must hold). "{tmp}" is a
# fresh folder, "{served_run}" the serving tests' tiny trained run (conftest.py).
SMOKE: dict[str, tuple[list[str], list[str]]] = {
    "bench_decode": (["--smoke"], [
        "| 2 | 3 | constrained |", "| 4 | 5 | unconstrained |", "GEMM limit:",
        "- beam 5, constrained, of GEMM limit:"]),
    "bench_prepare_embed": (["--smoke"], [
        "| prepare + embed |", "| `sidrec embed`, new process (sidrec cache) |"]),
    "bench_scale": (["--max-items", "10000", "--stages", "synth,prepare", "--work",
                     "{tmp}/scale", "--plot", "{tmp}/scale.png"],
                    ["| interactions |", "| data prepare (s) |", "plot: "]),
    "bench_serve": (["--run-dir", "{served_run}", "--models", "tiger", "--requests", "16",
                     "--seconds", "10"],
                    ["| tiger | batching off | 64 |", "| tiger | batching on, model process |"]),
    "bench_tokenize": (["--smoke"], [
        "| 500 | rqkmeans (reference) |", "| 500 | rqkmeans balanced |",
        "| 500 | rqvae small (1 epochs) |"]),
    "bench_train": (["--smoke"], [
        "| tiger | cpu |", "| sasrec | cpu |", "the encoder takes", "| preset cpu, fp32 |"]),
    "bench_train_eval": (["--smoke"], ["| pop |", "| sasrec |", "| dense |", "| dense-text |"]),
    "gpu_check": (["--smoke"], ["TIGER cpu step: fp32", "| tiger |", "| liger |",
                                "| cobra |", "wrote "]),
    "recbole_sasrec": (["--smoke"], ["| ours sasrec (CE), matched |",
                                     "| ours sasrec (CE), cpu preset |"]),
}


def test_every_benchmark_has_a_smallest_size_here() -> None:
    assert sorted(SMOKE) == [s.stem for s in SCRIPTS]


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_the_benchmark_runs_at_its_smallest_size(script: Path, tmp_path: Path,
                                                 request: pytest.FixtureRequest) -> None:
    args, expected = SMOKE[script.stem]
    served = request.getfixturevalue("served_run") if "{served_run}" in args else ""
    args = [a.format(tmp=tmp_path, served_run=served) for a in args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "SIDREC_CACHE": os.environ.get("SIDREC_CACHE", str(tmp_path / "cache"))}
    done = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    missing = [line for line in expected if line not in done.stdout]
    assert not missing, f"{missing} not in:\n{done.stdout[-3000:]}"


def test_the_serve_soak_runs_at_its_smallest_size(served_run: Path, tmp_path: Path) -> None:
    """`bench_serve.py --soak` on LIGER (it takes new items): the large add against idle
    recommendations, then two windows with adds mixed in, every request answered."""
    args = ["--run-dir", str(served_run), "--models", "liger", "--soak", "6", "--window", "3",
            "--rate", "10", "--probe-seconds", "2", "--add-items", "50", "--add-every", "2"]
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_serve.py"), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "| during a 50-item add |" in out and "the add: HTTP 200" in out, out
    windows = [line.split("|")[1:-1] for line in out.splitlines()
               if line.startswith(("| 1 |", "| 2 |"))]
    assert len(windows) == 2, out
    # RSS, requests, errors, ..., adds, add errors
    assert all(float(w[1]) > 0 and int(w[2]) > 0 and w[3].strip() == "0" for w in windows)
    assert sum(int(w[6]) for w in windows) >= 1 and all(w[7].strip() == "0" for w in windows)
    assert "RSS growth after warm-up (window 1 -> 2)" in out
    assert not list(served_run.glob("added_items*")), "the soak added to the run itself"
