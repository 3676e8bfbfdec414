"""`sidrec analyze cobra`: where COBRA's coarse-to-fine decoding loses the target.

COBRA ranks an item in two steps (`models/cobra_decode.py`): the sparse head's beam picks
M sparse IDs, then each beam's v̂ ranks the items under its ID and BeamFusion merges the
beams. A low Recall@10 can come from either step; the two checks tell them apart, on the
users of one split (the model's own inference, no history mask):

- sparse head: the position of the target's sparse ID among the M beams (first beam,
  among the M, or missed);
- dense head, teacher-forced: v̂ computed from the target's *true* sparse ID (exactly the
  v̂ of the beam that holds that ID, when one does), and the target's rank by cosine among
  the items of its group, against the expected rank of a random order, (size + 1) / 2.

From the two follows how often the target is among the fused candidates at all (its ID
in the beam and the target within that beam's N nearest) against how often the fused
top 10 holds it: the gap is BeamFusion's ranking across beams.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sidrec.data.dataset import Dataset, Split
from sidrec.errors import SidrecError
from sidrec.io import write_json
from sidrec.models.cobra import Cobra
from sidrec.models.cobra_decode import beam_width, dense_query, prefill, sparse_beam
from sidrec.run import RunDir

TOP = 10  # the fused list's cut-off, as the headline Recall@10


@torch.no_grad()
def cobra_checks(model: Any, dataset: Dataset, split: Split = "valid",
                 max_users: int | None = 4000, batch_size: int = 256) -> dict[str, Any]:
    """Per-user facts of the two checks for the first `max_users` users of `split`."""
    if not isinstance(model, Cobra):
        raise SidrecError(f"model {model.name!r} is no COBRA with sparse and dense parts; "
                          "the checks need both (train --model cobra)")
    histories, targets, users = dataset.eval_examples(split)
    keep = slice(None, max_users)
    histories, targets, users = histories[keep], targets[keep], users[keep]
    cfg = model.inference
    width = beam_width(cfg, TOP)  # the M beams decoding a top 10 searches
    device = model.offsets.device
    groups, sparse_index = model.sparse.tables()
    out: dict[str, list[np.ndarray]] = {"beam_position": [], "rank_in_group": [],
                                        "group_size": [], "hit@10": []}
    model.eval()
    for start in range(0, len(targets), batch_size):
        history = torch.as_tensor(histories[start:start + batch_size], device=device)
        target = torch.as_tensor(targets[start:start + batch_size], device=device)
        hidden, cache, vectors = prefill(model, history)
        beams = sparse_beam(model, hidden, cache, width, cfg.constrained).sids
        codes = model.sparse.codes[target]  # (B, S): the target's true sparse ID
        match = (beams == codes[:, None]).all(-1)  # (B, M)
        position = torch.where(match.any(1), match.float().argmax(1), -1)
        v_hat = dense_query(model, cache, codes)  # teacher-forced v̂
        members, cos = groups.nearest(v_hat, sparse_index.lookup(codes), vectors)
        own = cos.masked_fill(members != target[:, None], float("-inf")).amax(1)
        # The model's own decoding, not one rebuilt from the pieces above: the checks are
        # held to what `recommend` does (tests/test_analyze_cobra.py).
        top, _ = model.recommend(history, torch.as_tensor(users[start:start + batch_size]),
                                 TOP)
        out["beam_position"].append(position.cpu().numpy())
        out["rank_in_group"].append((1 + (cos > own[:, None]).sum(1)).cpu().numpy())
        out["group_size"].append((members >= 0).sum(1).cpu().numpy())
        out["hit@10"].append((top == target[:, None]).any(1).cpu().numpy())
    return {key: np.concatenate(parts) for key, parts in out.items()}


def summarise(values: dict[str, np.ndarray], beam: int, neighbours: int) -> dict[str, Any]:
    position, rank, size = (values["beam_position"], values["rank_in_group"],
                            values["group_size"])
    in_beam = position >= 0
    return {
        "users": len(position),
        "sparse_id_first_beam": float((position == 0).mean()),
        f"sparse_id_in_{beam}_beams": float(in_beam.mean()),
        "group_size_median": float(np.median(size)),
        "rank_in_group_median": float(np.median(rank)),
        "rank_in_group_random_median": float(np.median((size + 1) / 2)),
        "in_group_top10": float((rank <= 10).mean()),
        f"among_candidates (in beam, within {neighbours} nearest)":
            float((in_beam & (rank <= neighbours)).mean()),
        "fused_top10 (recall@10)": float(values["hit@10"].mean()),
    }


def format_checks(summary: dict[str, Any]) -> str:
    rows = [f"| {key} | {value:.4f} |" if isinstance(value, float) else
            f"| {key} | {value} |" for key, value in summary.items()]
    return "\n".join(["| check | value |", "|---|---|", *rows])


def analyze_cobra(run_dir: str | Path | RunDir, name: str, split: Split = "valid",
                  max_users: int | None = 4000) -> dict[str, Any]:
    """Run the checks on a trained model and write analysis/cobra_checks_<name>.json."""
    from sidrec.checkpoint import load_model

    run = RunDir(run_dir)
    md = run.model(name).require()
    dataset = Dataset.load(run.root)
    model = load_model(md, run, dataset=dataset)
    cfg = model.inference
    summary = summarise(cobra_checks(model, dataset, split, max_users),
                        beam_width(cfg, TOP), cfg.neighbours)
    summary = {"split": split, **summary}
    write_json(run.root / "analysis" / f"cobra_checks_{name}.json", summary)
    return summary
