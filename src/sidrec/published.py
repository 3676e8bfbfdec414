"""The published rows sidrec's Amazon results are read against (Amazon 2014 5-core,
leave-one-out, full ranking over all items, no history mask): Recall@10, NDCG@10.

SASRec (BCE, the paper-era loss) and TIGER are the TIGER paper's rows (Rajput et al.,
NeurIPS 2023, Table 2); COBRA's are the COBRA paper's (Yang et al., arXiv 2503.02453;
its N@10 and Toys cells come from secondary transcriptions). The LIGER paper reports
in-set / cold-start subsets with its own baselines, so it has no row here: LIGER is read
against TIGER's in-set row and the cold chance level instead.
"""

from __future__ import annotations

import math
from typing import Any

PUBLISHED: dict[str, dict[str, tuple[float, float]]] = {
    "beauty": {"sasrec": (0.0605, 0.0318), "tiger": (0.0648, 0.0384),
               "cobra": (0.0725, 0.0456)},
    "sports": {"sasrec": (0.0350, 0.0192), "tiger": (0.0400, 0.0225),
               "cobra": (0.0434, 0.0257)},
    "toys": {"sasrec": (0.0675, 0.0374), "tiger": (0.0712, 0.0432),
             "cobra": (0.0781, 0.0515)},
}
PUBLISHED_LABEL = {"sasrec": "SASRec (BCE)", "tiger": "TIGER", "cobra": "COBRA"}


def published_rows(dataset_name: str) -> dict[str, tuple[float, float]] | None:
    """The published rows of the Amazon category named in `dataset_name` (e.g.
    "Amazon_Beauty"), or None for any other dataset."""
    name = dataset_name.lower()
    return next((rows for category, rows in PUBLISHED.items() if category in name), None)


def published_table(results: list[dict[str, Any]], dataset_name: str) -> str:
    """Our overall test rows (first variant) beside the published row of the same method,
    with the ratios; empty when the dataset has no published rows."""
    rows = published_rows(dataset_name)
    if rows is None:
        return ""
    lines = ["| model | R@10 | N@10 | published | R@10 | N@10 | ratio R@10 | ratio N@10 |",
             "|---|---|---|---|---|---|---|---|"]
    for result in results:
        theirs = rows.get(result["model"])
        ours = next((r for r in result["rows"] if r["subset"] == "overall"), None)
        if theirs is None or ours is None:
            continue
        recall, ndcg = ours["recall@10"], ours["ndcg@10"]
        lines.append(
            f"| {result['display_name']} | {recall:.4f} | {ndcg:.4f} | "
            f"{PUBLISHED_LABEL[result['model']]} | {theirs[0]:.4f} | {theirs[1]:.4f} | "
            f"{_ratio(recall, theirs[0])} | {_ratio(ndcg, theirs[1])} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def _ratio(ours: float, theirs: float) -> str:
    return "–" if math.isnan(ours) else f"{ours / theirs:.2f} ×"
