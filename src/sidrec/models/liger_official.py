"""`liger-official`: LIGER with the official code's input and inference in every preset.

The `cpu` preset of `liger` departs from the official defaults in one option chosen on
validation (input dropout 0.1 instead of 0.5; docs/selection-liger.md); this model is the
official setting trained beside it, so the demo's table shows both rows.
"""

from __future__ import annotations

from typing import ClassVar

from sidrec.models import register
from sidrec.models.liger import LIGER


@register
class LIGEROfficial(LIGER):
    """LIGER, official defaults throughout (`LIGERConfig`'s own)."""

    name: ClassVar[str] = "liger-official"
