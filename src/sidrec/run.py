"""The one place that names every artifact of a run directory.

    runs/<name>/
      dataset/            prepared split (`sidrec data prepare`): manifest.json + parquet
      embeddings.npy      item text vectors (`sidrec embed`) + embeddings.json (encoder, hash)
      sids.npy            semantic IDs (`sidrec tokenize`) + tokenizer.json + tokenizer/
      sid_sets/<tag>/     the same three, for a model whose preset asks for its own
                          tokenizer settings (`RunDir.with_sids`; e.g. COBRA's paper 3 x 32)
      models/<model>/     one trained model (`sidrec train`), see `ModelDir`
      added_items.parquet items added to the trained catalogue (`sidrec.catalogue.store`)
      metrics.json        every evaluation (`sidrec evaluate`, `sidrec bench`)
      results.md          the table of metrics.json (written by `sidrec evaluate`)
      bench.json, bench.md  the bench's settings, timings and report (`sidrec bench`)
      plots/              figures

Every stage, the API and the analyses take a `RunDir` (or a path, made into one), so a
file name is written once, here. The arrays are read only through `load_embeddings` and
`load_sids`, which check them (`sidrec.artifacts`).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sidrec import artifacts
from sidrec.errors import SidrecError


@dataclass(frozen=True)
class ModelDir:
    """`runs/<name>/models/<model>/`: one trained model."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def run(self) -> RunDir:
        """The run directory that holds this model (`<run>/models/<model>`), naming the SID
        set the model was trained on (its record's `sid_set`)."""
        tag = ""
        # no or no readable record: loading the model reports that
        with contextlib.suppress(OSError, ValueError, AttributeError):
            tag = str(json.loads(self.config.read_text()).get("sid_set") or "")
        return RunDir(self.root.parent.parent, tag)

    @property
    def config(self) -> Path:  # model name, preset, model + train configs, input hashes
        return self.root / "config.json"

    @property
    def inference(self) -> Path:  # the default inference config (not hashed)
        return self.root / "inference.json"

    @property
    def weights(self) -> Path:  # best weights by the validation metric
        return self.root / "model.safetensors"

    @property
    def next_weights(self) -> Path:  # a new best, until the checkpoint of its epoch is written
        return self.root / "model.next.safetensors"

    @property
    def checkpoint(self) -> Path:  # resume point: weights, optimiser, RNG states
        return self.root / "last.safetensors"

    @property
    def state(self) -> Path:  # a readable copy of the checkpoint's training state
        return self.root / "state.json"

    @property
    def log(self) -> Path:  # one JSON line per epoch
        return self.root / "train_log.jsonl"

    @property
    def curve(self) -> Path:  # the learning curve (`sidrec.curves`): curve.csv, curve.png
        return self.root / "curve"

    @property
    def tensorboard(self) -> Path:  # the same scalars, when the tensorboard extra is installed
        return self.root / "tensorboard"

    def require(self) -> ModelDir:
        """This directory, or a SidrecError when no trained model is here."""
        if not self.config.is_file():
            if RunDir(self.root).dataset.is_dir():  # a run directory, not one of its models
                models = sorted(p.parent.name for p in (self.root / "models").glob(
                    "*/config.json"))
                raise SidrecError(
                    f"{self.root}: a run directory, not a model; pass "
                    f"{self.root}/models/<model> (trained here: {', '.join(models) or 'none'})")
            raise SidrecError(
                f"{self.root}: no trained model here (config.json missing); train one with "
                f"`sidrec train {self.run.root} --model NAME`"
            )
        return self


@dataclass(frozen=True)
class RunDir:
    root: Path
    sid_set: str = ""  # "" = the run's own SIDs; else a model's own tokenizer settings

    def __init__(self, root: str | Path | RunDir, sid_set: str | None = None) -> None:
        object.__setattr__(self, "root", root.root if isinstance(root, RunDir) else Path(root))
        inherited = root.sid_set if isinstance(root, RunDir) else ""
        object.__setattr__(self, "sid_set", inherited if sid_set is None else sid_set)

    def with_sids(self, tag: str) -> RunDir:
        """This run, with `sids`, `tokenizer_info` and `tokenizer` naming SID set `tag`
        ("" = the run's own)."""
        return RunDir(self.root, tag)

    @property
    def _sid_root(self) -> Path:
        return self.root / "sid_sets" / self.sid_set if self.sid_set else self.root

    def __fspath__(self) -> str:
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)

    def check_writable(self) -> RunDir:
        """This run directory, or a SidrecError when a stage could not write into it: the
        path (or a parent) is a file, or the folder (or its nearest existing parent) is
        not writable. Called before a stage does any work."""
        path = self.root
        while not path.exists() and path != path.parent:
            path = path.parent
        if not path.is_dir():
            where = "" if path == self.root else f" (in {self.root})"
            raise SidrecError(
                f"{path}: is a file, not a folder{where}; a run directory must be a folder: "
                "pass another path or move the file away"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise SidrecError(
                f"{path}: permission denied (the folder is not writable); make it writable "
                f"(chmod u+w {path}) or pass a run directory you can write"
            )
        return self

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings.npy"

    @property
    def embeddings_info(self) -> Path:
        return self.root / "embeddings.json"

    @property
    def sids(self) -> Path:
        return self._sid_root / "sids.npy"

    @property
    def tokenizer_info(self) -> Path:  # the stage's record; written last, marks it complete
        return self._sid_root / "tokenizer.json"

    @property
    def tokenizer(self) -> Path:  # the fitted tokenizer (weights + config)
        return self._sid_root / "tokenizer"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def added_items(self) -> Path:  # items added after training (API / `sidrec serve`)
        return self.root / "added_items.parquet"

    @property
    def added_items_lock(self) -> Path:  # serialises writers of `added_items`
        return self.root / ".added_items.lock"

    def load_embeddings(
        self, n_items: int | None = None, item_text: list[str] | None = None
    ) -> np.ndarray:
        """Item text vectors [n_items, d] float32, checked (`n_items` rows when given; the
        file `embeddings.json` records, made from `item_text` when given)."""
        return artifacts.load_embeddings(self.embeddings, self.root, n_items,
                                         self.embeddings_info, item_text)

    def save_embeddings(self, vectors: np.ndarray, record: dict) -> dict:
        """Write `embeddings.npy` [n_items, d] and `embeddings.json` (`record` + shape and
        hash); every writer of the pair comes here (`artifacts.save_embeddings`)."""
        return artifacts.save_embeddings(self.embeddings, self.embeddings_info, vectors, record)

    def load_sids(
        self, n_items: int | None = None, cold: np.ndarray | None = None
    ) -> tuple[np.ndarray, tuple[int, ...]]:
        """(SIDs [n_items, n_codes] int64, vocabulary size of each SID position), checked
        (the file `tokenizer.json` records, fitted on the run's current embeddings and,
        when given, with the cold-start mask `cold` [n_items] bool)."""
        # a model's own SID set is refitted by training that model, not by `sidrec tokenize`
        command = (f"sidrec train {self.root} --model MODEL" if self.sid_set else None)
        return artifacts.load_sids(self.sids, self.tokenizer_info, self.root, n_items,
                                   cold, self.embeddings, command)

    def model(self, name: str) -> ModelDir:
        if not name or Path(name).name != name or name in (".", ".."):
            raise SidrecError(
                f"model name {name!r}: must be a plain directory name (no '/' or '..'), "
                "e.g. --name tiger-beam50"
            )
        return ModelDir(self.models / name)

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def metrics_lock(self) -> Path:  # serialises `sidrec evaluate`s recording their rows
        return self.root / ".metrics.lock"

    @property
    def results(self) -> Path:
        return self.root / "results.md"

    @property
    def bench_record(self) -> Path:
        return self.root / "bench.json"

    @property
    def bench_report(self) -> Path:
        return self.root / "bench.md"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def plot(self, name: str) -> Path:
        return self.plots / f"{name}.png"
