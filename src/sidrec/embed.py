"""`sidrec embed`: item text -> vectors with a sentence-transformers encoder.

The default encoder is all-MiniLM-L6-v2 (384-d), shipped on PyPI (`sidrec.encoders`);
any other sentence-transformers name or local path works via `encoder=`. Hub downloads
stay off (HF_HUB_OFFLINE=1) unless the user sets HF_HUB_OFFLINE=0 themselves.

Vectors are cached under the sidrec cache by (encoder identity, hash of all item texts),
so a second run, or another run directory over the same catalogue, is instant. The
identity (`sidrec.encoders.encoder_identity`) is what the vectors depend on.

`vectors=FILE` (`sidrec embed RUN --vectors FILE`) takes vectors computed elsewhere
instead (`sidrec.vectors`); the encoder is then recorded as `FROM_FILE`, its identity the
file's hash (and the ids file's), so a changed file is read again and later stages rebuild.
Items added to such a run need a vector of their own: text alone cannot be encoded.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sidrec.data.dataset import Dataset
from sidrec.data.readers import cache_dir
from sidrec.device import pick_device, resolve_device
from sidrec.encoders import DEFAULT_ENCODER, encoder_identity, resolve_encoder, stored_name
from sidrec.errors import SidrecError
from sidrec.io import hash_file, hash_obj, reusable_record, save_npy
from sidrec.run import RunDir

FROM_FILE = "vectors file"  # the encoder `embeddings.json` names for `vectors=FILE`


@dataclass(frozen=True)
class EmbedConfig:
    encoder: str = DEFAULT_ENCODER  # sentence-transformers name or local path
    batch_size: int = 128
    device: str = "auto"  # auto | cpu | cuda
    vectors: str = ""  # item vectors computed elsewhere (.npy, .parquet, .csv): no encoder
    ids: str = ""  # with a .npy `vectors`: its item ids, one per line, in row order


def encode_texts(texts: list[str], cfg: EmbedConfig, progress: bool = True,
                 threads: int = 0) -> np.ndarray:
    """[len(texts), dim] float32 sentence embeddings, with `threads` torch threads on a
    CPU (0: `resolve_device`'s default)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", os.environ["HF_HUB_OFFLINE"])
    source = resolve_encoder(cfg.encoder)
    try:
        model = _sentence_model(source, str(resolve_device(cfg.device, threads)))
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
    check_embed_config(cfg)
    dataset = Dataset.load(run.root)
    if cfg.vectors:
        return _from_file(run, dataset, cfg)
    if not dataset.has_text:
        raise SidrecError(
            f"{run.root}: prepared without an items table, so its items have no text to "
            "embed; prepare it again with --items ITEMS_TABLE (an item id column and text "
            f"columns), or bring vectors: sidrec embed {run.root} --vectors FILE")
    run.check_writable()
    text_hash = hash_obj(dataset.item_text)
    identity = encoder_identity(cfg.encoder)
    info = _reusable(run, identity, text_hash)
    if info is not None:
        return {**info, "cached": True}
    cached = cache_dir() / "embeddings" / f"{hash_obj([identity, text_hash])}.npy"
    vectors = _read_cached(cached, len(dataset.item_text))
    from_cache = vectors is not None
    if vectors is None:
        vectors = encode_texts(dataset.item_text, cfg, progress)
        if not np.isfinite(vectors).all():
            raise SidrecError(f"encoder {cfg.encoder!r} produced non-finite vectors; try another")
        try:
            save_npy(cached, vectors)
        except OSError as e:  # an unwritable cache costs the next run time, not this one
            warnings.warn(f"{cached}: not cached ({e.strerror or e})", stacklevel=2)
    info = run.save_embeddings(vectors, {"encoder": stored_name(cfg.encoder),
                                         "encoder_id": identity, "text_hash": text_hash})
    return {**info, "cached": from_cache}


def _from_file(run: RunDir, dataset: Dataset, cfg: EmbedConfig) -> dict:
    """`embed` from the vectors file `cfg.vectors` (see the module docstring)."""
    from sidrec.vectors import read_vectors

    path, ids = Path(cfg.vectors).expanduser(), Path(cfg.ids).expanduser() if cfg.ids else None
    run.check_writable()
    # the files' hashes: what the vectors depend on; the item order: which row is whose
    stamp = [hash_file(p) for p in (path, ids) if p is not None and p.is_file()]
    identity = f"{path.resolve()} ({', '.join(stamp)}) for {hash_obj(list(dataset.item_ids))}"
    text_hash = hash_obj(dataset.item_text)
    info = _reusable(run, identity, text_hash)
    if info is not None:
        return {**info, "cached": True}
    vectors = read_vectors(path, [str(i) for i in dataset.item_ids], ids)
    info = run.save_embeddings(vectors, {"encoder": FROM_FILE, "vectors": str(path.resolve()),
                                         "encoder_id": identity, "text_hash": text_hash})
    return {**info, "cached": False}


def check_embed_config(cfg: EmbedConfig) -> None:
    if cfg.batch_size < 1:
        raise SidrecError(f"embed: batch_size must be >= 1, got {cfg.batch_size} (e.g. 128)")
    if not cfg.encoder.strip():
        raise SidrecError("embed: encoder is empty; pass a sentence-transformers name or path")
    pick_device(cfg.device)  # device=tpu is an error even when nothing is encoded


def _reusable(run: RunDir, identity: str, text_hash: str) -> dict | None:
    """`embeddings.json` when it describes this encoder (`identity`), this catalogue and
    the bytes of `embeddings.npy` as they are now (a record without their hash, from an
    older sidrec, never is); else None (the stage runs)."""
    return reusable_record(
        run.embeddings_info, {"encoder_id": identity, "text_hash": text_hash},
        needs=(run.embeddings,),
        unchanged=lambda info: info.get("embeddings_hash") == hash_file(run.embeddings))


def _read_cached(path: Path, n_items: int) -> np.ndarray | None:
    """The cached vectors [n_items, d] at `path` if present and sound, else None."""
    if not path.is_file():
        return None
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if vectors.ndim != 2 or len(vectors) != n_items or not np.isfinite(vectors).all():
        return None
    return np.asarray(vectors, dtype=np.float32)
