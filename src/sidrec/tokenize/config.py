"""Tokenizer configs and named presets (plain frozen dataclasses).

A tokenizer is chosen by name (`method`), never inferred from its settings:
`tokenizer_config("rqvae", "small", {"epochs": 500})`.

Why the `small` preset is 3 levels x 32 codes. Two pressures pull against each other:

- codes per level must be well *below* the number of items, so that each code is shared
  by many items and the first token means something (a coarse semantic cluster the
  generative model can learn from). With ~1.7k items (MovieLens-100k), 32 first-level
  codes give ~50 items per code; 256 codes would give ~6, and most codes would be used by
  one or two items (or never), i.e. an atomic ID in disguise.
- the product of codebook sizes must be far *above* the number of items, so that few
  items collide on the full L-code prefix: 32^3 = 32,768 >> 1.7k (or 12k for Amazon
  Beauty). The collision token absorbs the rest.

3 x 32 is also COBRA's setting on the public Amazon data (Yang et al. 2025, arXiv 2503.02453).
The `paper` presets use TIGER's 3 x 256 (Rajput et al. 2023, Sec. 4.1 / App.), sized
for ~10k+ item catalogues.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from sidrec.config import replace
from sidrec.errors import SidrecError

Method = Literal["rqvae", "rqkmeans"]


@dataclass(frozen=True)
class RQVAEConfig:
    """RQ-VAE (TIGER, Rajput et al. 2023, Sec. 3.1 and App. "RQ-VAE")."""

    method: ClassVar[str] = "rqvae"

    levels: int = 3  # L: codes per item before the collision token
    codebook_size: int = 32  # K: codes per level (see the module docstring)
    latent_dim: int = 32  # TIGER: 32
    # Encoder MLP widths; the decoder mirrors them. TIGER: (512, 256, 128). The small
    # preset drops the 512 layer: 3x less compute per step, and on MovieLens-100k the same
    # collision rate (8.0 vs 8.4 %) and reconstruction (62 vs 61 % of variance left).
    hidden: tuple[int, ...] = (256, 128)
    beta: float = 0.25  # commitment weight (TIGER: 0.25)
    epochs: int = 200  # passes over the warm items
    batch_size: int = 256  # TIGER: 1024 (on 10k+ items); smaller = more steps per epoch
    # NOTE: TIGER trains with Adagrad, lr 0.4, for 20k epochs; Adam at 1e-3 reaches a
    # comparable reconstruction in far fewer steps on a small catalogue (small preset).
    optimizer: Literal["adam", "adagrad"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    kmeans_init: bool = True  # k-means of the first items' latents initialises each level
    # TIGER clusters the first batch; on a small catalogue with small batches that is too
    # few points per code, so up to this many items of the first shuffle are used.
    kmeans_init_items: int = 2048
    kmeans_iters: int = 25
    dead_code_reset: bool = True  # codes unused for a whole epoch jump to a live residual
    # Resets stop after this fraction of the epochs so the last assignments can settle.
    reset_until: float = 0.8
    standardize: bool = True  # per-dimension z-score fitted on warm items
    seed: int = 0
    # Early stopping (not in TIGER, which trains a fixed 20k epochs: hours on 2 CPU cores).
    # A seeded hold-out of the warm items (see `holdout_size`) is left out of training; every
    # `eval_every` epochs its reconstruction error from its codes is measured (rqvae.py,
    # `_valid_loss`), the weights with the lowest one are kept, and the fit stops after `patience`
    # evaluations in a row that did not beat the best by a relative `min_improvement`.
    # `epochs` is then a ceiling. patience 0: no hold-out, exactly `epochs` epochs.
    patience: int = 5
    eval_every: int = 10
    valid_fraction: float = 0.05
    # Floor on the hold-out, so a small catalogue's validation loss is not a handful of rows.
    valid_min_items: int = 256
    min_improvement: float = 1e-3

    def holdout_size(self, n_warm: int) -> int:
        """Warm items held out for validation: max(valid_fraction x n, valid_min_items),
        capped at a fifth of them and at n - codebook_size (k-means needs an item per code);
        0 (no hold-out: the fit runs all `epochs`) with patience 0 or when that leaves fewer
        than MIN_VALID_ITEMS (catalogues under ~160 warm items)."""
        if self.patience == 0:
            return 0
        size = max(math.ceil(self.valid_fraction * n_warm), self.valid_min_items)
        size = min(size, n_warm // 5, n_warm - self.codebook_size)
        return size if size >= MIN_VALID_ITEMS else 0


# Below this many held-out rows a validation loss is too noisy to stop on.
MIN_VALID_ITEMS = 32


@dataclass(frozen=True)
class RQKMeansConfig:
    """Residual k-means (faiss): level l clusters the residuals left by levels < l.

    `balanced=True` fits each level's centroids with capacity-constrained Lloyd steps
    (each code takes at most ceil(n/K) items), which spreads codes evenly over the data.
    Encoding is always nearest-centroid, so warm and cold items are encoded the same way.
    """

    method: ClassVar[str] = "rqkmeans"

    levels: int = 3
    codebook_size: int = 32
    kmeans_iters: int = 25
    balanced: bool = False
    balanced_iters: int = 10  # capacity-constrained Lloyd steps after plain k-means
    # The balanced steps run on a seeded sample of at most this many warm items per code
    # (faiss's k-means samples the same way); 0 = every warm item. Codes are then given by
    # nearest centroid as always. Below codebook_size x this (65,536 items at 256 codes)
    # nothing changes; at 1 M items it makes the fit ~15x cheaper.
    balanced_sample: int = 256
    # Sentence embeddings are already comparable across dimensions; residual k-means is
    # usually run on them directly (OneRec-style). Set True to match RQ-VAE's input.
    standardize: bool = False
    seed: int = 0


TokenizerConfig = RQVAEConfig | RQKMeansConfig

PRESETS: dict[str, dict[str, TokenizerConfig]] = {
    "rqvae": {
        "small": RQVAEConfig(),
        "paper": RQVAEConfig(
            codebook_size=256,
            hidden=(512, 256, 128),
            epochs=20000,  # a ceiling: early stopping ends the fit far sooner (patience)
            batch_size=1024,
            optimizer="adagrad",
            lr=0.4,
            kmeans_init_items=1024,  # the first batch, as in TIGER
            # Adagrad at lr 0.4 descends slowly and noisily: on MovieLens-100k (3 x 32) the
            # held-out error went 5.2 -> 3.3 between epochs 211 and 711, with up to 150
            # epochs between new bests (measured), so the small preset's 50-epoch patience
            # stopped it at 261. 300 epochs without a 0.1 % gain end it instead.
            eval_every=20,
            patience=15,
        ),
    },
    "rqkmeans": {
        "small": RQKMeansConfig(),
        "paper": RQKMeansConfig(codebook_size=256),  # TIGER-sized SID space, 3 x 256
    },
}


def tokenizer_config(
    method: str, preset: str = "small", overrides: dict[str, Any] | None = None
) -> TokenizerConfig:
    """The named preset of `method` with `key=value` overrides applied and type-checked."""
    if method not in PRESETS:
        raise SidrecError(f"unknown tokenizer method {method!r}; choose one of: rqvae, rqkmeans")
    if preset not in PRESETS[method]:
        names = ", ".join(PRESETS[method])
        raise SidrecError(f"unknown {method} preset {preset!r}; choose one of: {names}")
    cfg = PRESETS[method][preset]
    if overrides:
        cfg = replace(cfg, overrides, where=f"tokenize.{method}")
    check_config(cfg)
    return cfg


def check_config(cfg: TokenizerConfig) -> None:
    if cfg.levels < 1:
        raise SidrecError(f"tokenize: levels must be >= 1, got {cfg.levels}")
    if cfg.codebook_size < 2:
        raise SidrecError(f"tokenize: codebook_size must be >= 2, got {cfg.codebook_size}")
    if isinstance(cfg, RQVAEConfig):
        if cfg.epochs < 1 or cfg.batch_size < 1:
            raise SidrecError("tokenize: epochs and batch_size must be >= 1")
        if cfg.patience < 0 or cfg.eval_every < 1 or cfg.valid_min_items < 0:
            raise SidrecError(
                f"tokenize: patience {cfg.patience} must be >= 0 (0: no early stopping), "
                f"eval_every {cfg.eval_every} >= 1 and valid_min_items {cfg.valid_min_items} >= 0"
            )
        if not (0 < cfg.valid_fraction < 1 and 0 <= cfg.min_improvement < 1):
            raise SidrecError(
                f"tokenize: valid_fraction {cfg.valid_fraction} must be in (0, 1) and "
                f"min_improvement {cfg.min_improvement} in [0, 1), e.g. 0.05 and 0.001"
            )
        if cfg.latent_dim < 1 or any(h < 1 for h in cfg.hidden):
            raise SidrecError("tokenize: latent_dim and hidden widths must be >= 1")
        if cfg.kmeans_init and max(cfg.batch_size, cfg.kmeans_init_items) < cfg.codebook_size:
            raise SidrecError(
                f"tokenize: kmeans_init_items {cfg.kmeans_init_items} < codebook_size "
                f"{cfg.codebook_size}; k-means initialisation needs at least one item per code"
            )
