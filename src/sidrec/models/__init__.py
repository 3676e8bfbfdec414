"""Model registry: every model is chosen by name, never inferred from its settings."""

from __future__ import annotations

from sidrec.models.base import Batch, Catalogue, Recommender

REGISTRY: dict[str, type[Recommender]] = {}


def register(cls: type[Recommender]) -> type[Recommender]:
    REGISTRY[cls.name] = cls
    return cls


def get_model_class(name: str) -> type[Recommender]:
    _import_all()
    if name not in REGISTRY:
        from sidrec.errors import SidrecError

        raise SidrecError(f"unknown model {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def available_models() -> list[str]:
    _import_all()
    return sorted(REGISTRY)


def _import_all() -> None:
    # Importing a model module registers it; kept in one place so the list is explicit.
    import importlib

    for module in MODEL_MODULES:
        importlib.import_module(f"sidrec.models.{module}")


MODEL_MODULES: list[str] = [
    "pop", "sasrec", "dense", "tiger", "liger", "liger_official", "cobra",
    "cobra_ablations"]

__all__ = ["Batch", "Catalogue", "Recommender", "register", "get_model_class", "available_models"]
