"""The prepared dataset every later stage reads: `runs/<name>/dataset/`.

Layout (all written atomically by `sidrec.data.prepare`):

- `items.parquet`    item (dense id 0..n_items-1), item_id (original id), text, cold (bool)
- `users.parquet`    user (dense id), user_id (original id)
- `split.parquet`    user, train (list of dense item ids, chronological), valid, test
- `manifest.json`    counts, protocol settings, a hash of each split, format version

Leave-one-out: a user's chronological sequence s_1..s_n gives train = s_1..s_{n-2},
valid target s_{n-1} (history = train), test target s_n (history = train + [s_{n-1}]).
Training examples are every prefix of `train`: history s_1..s_{i-1} -> target s_i.

Histories handed to models are int64 arrays [B, max_history], left-padded with `PAD`
(-1) so the most recent item is always in the last column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from sidrec.errors import SidrecError
from sidrec.io import read_json_object
from sidrec.run import RunDir

PAD = -1
FORMAT_VERSION = 1
Split = Literal["valid", "test"]


@dataclass
class Dataset:
    """In-memory view of a prepared dataset (dense ids everywhere)."""

    name: str
    item_ids: np.ndarray  # [n_items] original ids (str), index = dense id
    item_text: list[str]  # [n_items]
    cold: np.ndarray  # [n_items] bool: never in any training sequence
    user_ids: np.ndarray  # [n_users] original ids (str)
    train: list[np.ndarray]  # per user, chronological dense ids (int64)
    valid: np.ndarray  # [n_users] valid target
    test: np.ndarray  # [n_users] test target
    max_history: int = 20
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def has_text(self) -> bool:
        """False for a run prepared from an interactions table alone (no items table): its
        texts are `Item: <id>`, nothing a text encoder can tell items apart by."""
        source = self.manifest.get("source")
        return not isinstance(source, dict) or source.get("item_text") is not False

    @property
    def warm(self) -> np.ndarray:
        return ~self.cold

    def popularity(self) -> np.ndarray:
        """[n_items] number of occurrences in training sequences (cold items: 0)."""
        counts = np.zeros(self.n_items, dtype=np.int64)
        if self.train:
            np.add.at(counts, np.concatenate(self.train), 1)
        return counts

    def train_examples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every prefix of every user's training part.

        Returns (histories [N, max_history] left-padded with PAD, targets [N], users [N]).
        """
        histories, targets, users = [], [], []
        for u, seq in enumerate(self.train):
            for i in range(1, len(seq)):
                histories.append(seq[max(0, i - self.max_history) : i])
                targets.append(seq[i])
                users.append(u)
        histories_array = pad_histories(histories, self.max_history)
        return histories_array, np.asarray(targets, np.int64), np.asarray(users, np.int64)

    def eval_examples(self, split: Split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One example per user: (histories [U, max_history], targets [U], users [U])."""
        histories = pad_histories(self._before(split), self.max_history)
        targets = self.valid if split == "valid" else self.test
        users = np.arange(self.n_users, dtype=np.int64)
        return histories, targets.astype(np.int64), users

    def seen_items(self, split: Split) -> np.ndarray:
        """Every item each user had before the split's target: [U, S] left-padded with PAD,
        S the longest such history. What `exclude_history` masks: the model reads only
        the last `max_history` of it (`eval_examples`)."""
        seqs = self._before(split)
        return pad_histories(seqs, max((len(s) for s in seqs), default=0))

    def _before(self, split: Split) -> list[np.ndarray]:
        """Each user's sequence before the split's target: the training part for "valid",
        plus the validation item for "test"."""
        if split == "valid":
            return self.train
        if split == "test":
            return [np.append(t, v) for t, v in zip(self.train, self.valid, strict=True)]
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")

    @classmethod
    def load(cls, run_dir: str | Path | RunDir) -> Dataset:
        root = RunDir(run_dir).dataset
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            raise SidrecError(
                f"{root}: no prepared dataset here; run `sidrec data prepare` for this run "
                "directory first"
            )
        fix = (f"prepare it again (`sidrec data prepare SOURCE --run-dir {run_dir} --force`, "
               "with the settings it was made with)")
        manifest = read_json_object(manifest_path, fix)
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise SidrecError(
                f"{manifest_path}: dataset format version {version!r} is not the supported "
                f"{FORMAT_VERSION}; re-run `sidrec data prepare` into a fresh run directory"
            )
        tables = {}
        for name, columns in (("items", ["item_id", "text", "cold"]), ("users", ["user_id"]),
                              ("split", ["train", "valid", "test"])):
            path = root / f"{name}.parquet"
            try:
                tables[name] = pd.read_parquet(path, columns=columns)
            except (OSError, ValueError, KeyError) as e:  # missing, truncated, other columns
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise SidrecError(f"{path}: unreadable ({first}); {fix}") from None
        items, users, split = tables["items"], tables["users"], tables["split"]
        try:
            name, max_history = manifest["name"], int(manifest["protocol"]["max_history"])
        except (KeyError, TypeError, ValueError) as e:
            raise SidrecError(f"{manifest_path}: no valid name and protocol.max_history "
                              f"({type(e).__name__}: {e}); {fix}") from None
        return cls(
            name=name,
            item_ids=items["item_id"].to_numpy(dtype=object),
            item_text=items["text"].tolist(),
            cold=items["cold"].to_numpy(dtype=bool),
            user_ids=users["user_id"].to_numpy(dtype=object),
            train=[np.asarray(t, dtype=np.int64) for t in split["train"]],
            valid=split["valid"].to_numpy(dtype=np.int64),
            test=split["test"].to_numpy(dtype=np.int64),
            max_history=max_history,
            manifest=manifest,
        )


def pad_histories(histories: list[np.ndarray] | list[list[int]], max_history: int) -> np.ndarray:
    """Left-pad (and left-truncate) variable-length histories into [B, max_history]."""
    out = np.full((len(histories), max_history), PAD, dtype=np.int64)
    for row, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)[-max_history:]
        if len(h):
            out[row, max_history - len(h) :] = h
    return out
