"""sidrec: sequential recommendation with semantic IDs (TIGER, LIGER, COBRA) and baselines.

Pipeline stages (one module each): `sidrec.data` -> `sidrec.embed` -> `sidrec.tokenize`
-> `sidrec.train` -> `sidrec.evaluate`; `sidrec.load` serves a trained model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from sidrec.api import Service

__version__ = "0.1.0"


def load(model_dir: str | Path, on_unknown: str = "error", device: str = "auto",
         inference: dict[str, Any] | None = None) -> Service:
    """Load `runs/<name>/models/<model>` for serving (see `sidrec.api.Service`);
    `inference` overrides its stored inference settings, e.g. {"beam": 50}."""
    from sidrec.api import load as _load

    return _load(model_dir, on_unknown=on_unknown, device=device, inference=inference)
