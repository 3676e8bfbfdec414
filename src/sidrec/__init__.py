"""sidrec: sequential recommendation with semantic IDs (TIGER, LIGER, COBRA) and baselines.

Pipeline stages (one module each): `sidrec.data` -> `sidrec.embed` -> `sidrec.tokenize`
-> `sidrec.train` -> `sidrec.evaluate`; `sidrec.load` serves a trained model.
"""

__version__ = "0.1.0"


def load(model_dir, on_unknown: str = "error", device: str = "auto"):  # noqa: ANN001, ANN201
    """Load `runs/<name>/models/<model>` for serving (see `sidrec.api.Service`)."""
    from sidrec.api import load as _load

    return _load(model_dir, on_unknown=on_unknown, device=device)
