"""The evaluator: metric values by hand, a brute-force reference, and the split protocol."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from conftest import sid_catalogue
from hypothesis import given, settings
from hypothesis import strategies as st

from sidrec.data.dataset import Dataset
from sidrec.errors import SidrecError
from sidrec.evaluate import evaluate, top_k
from sidrec.io import read_json
from sidrec.metrics import (
    bootstrap_interval,
    coverage_at,
    expected_ndcg_at,
    expected_recall_at,
    ndcg_at,
    recall_at,
    subset_metrics,
    target_ranks,
    tied_block,
)
from sidrec.models import available_models, get_model_class
from sidrec.models.base import (
    INVALID_ITEM,
    Catalogue,
    InferenceConfig,
    Recommender,
    excluded_items,
    mask_history,
)
from sidrec.report import (
    aggregate,
    format_intervals,
    format_summary,
    format_table,
    save_metrics,
)


@dataclass(frozen=True)
class Sign(InferenceConfig):
    sign: float = 1.0


def make_dataset(
    train: list[list[int]], valid: list[int], test: list[int], n_items: int, max_history: int = 5
) -> Dataset:
    seen = np.zeros(n_items, dtype=bool)
    for seq in train:
        seen[seq] = True
    return Dataset(
        name="hand",
        item_ids=np.asarray([f"i{i}" for i in range(n_items)], dtype=object),
        item_text=[f"item {i}" for i in range(n_items)],
        cold=~seen,
        user_ids=np.asarray([f"u{u}" for u in range(len(train))], dtype=object),
        train=[np.asarray(s, dtype=np.int64) for s in train],
        valid=np.asarray(valid, dtype=np.int64),
        test=np.asarray(test, dtype=np.int64),
        max_history=max_history,
    )


def catalogue(ds: Dataset) -> Catalogue:
    return Catalogue(
        item_text=ds.item_text,
        cold=torch.as_tensor(ds.cold),
        popularity=torch.as_tensor(ds.popularity(), dtype=torch.float32),
    )


class FixedScores(Recommender):
    """Scores given per user: row `users[b]` of a fixed [n_users, n_items] matrix."""

    name = "fixed"
    Config = dict
    Inference = Sign

    def __init__(self, scores: torch.Tensor, ds: Dataset, variants: dict | None = None) -> None:
        super().__init__({}, catalogue(ds))
        self.table = scores
        self._variants = variants or {"": Sign()}

    def recommend(self, history, users, k, inference=None, margin=0, seen=None):
        inference = self._inference(inference)
        scores = self.table[users] * inference.sign
        excluded = excluded_items(inference, history, seen)
        if excluded is not None:
            scores = mask_history(scores, excluded)
        order = scores.argsort(dim=1, descending=True, stable=True)[:, : k + margin]
        return order, scores.gather(1, order)  # equal scores listed by item id

    def variants(self) -> dict[str, Any]:
        return self._variants


class Recorder(Recommender):
    """Recommends the split's true target (an oracle for `oracle`) and records histories."""

    name = "recorder"
    Config = dict

    def __init__(self, ds: Dataset, oracle: np.ndarray) -> None:
        super().__init__({}, catalogue(ds))
        self.oracle = torch.as_tensor(oracle)
        self.seen: list[torch.Tensor] = []

    def recommend(self, history, users, k, inference=None, margin=0, seen=None):
        self.seen.append(history.clone())
        items = torch.full((len(users), k), -1, dtype=torch.int64)
        items[:, 0] = self.oracle[users]
        scores = torch.full((len(users), k), -math.inf)
        scores[:, 0] = 1.0
        return items, scores


# ---------------------------------------------------------------- metric functions by hand


def test_ranks_hand_computed():
    items = torch.tensor([[3, 1, 2], [5, 6, 7], [1, 2, 3], [4, -1, -1]])
    scores = torch.tensor([[3.0, 2, 1], [3.0, 2, 1], [3.0, 2, 1], [1.0, -math.inf, -math.inf]])
    targets = torch.tensor([3, 6, 9, 8])
    assert target_ranks(items, scores, targets).tolist() == [1, 2, 0, 0]


def test_ties_rank_after_every_tied_item():
    items = torch.tensor([[10, 11, 12, 13, 14]] * 4)
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.5, 0.1]] * 4)
    targets = torch.tensor([11, 13, 10, 14])
    assert target_ranks(items, scores, targets).tolist() == [4, 4, 1, 5]
    # a constant scorer cannot collect hits from the list order
    flat = torch.zeros(1, 5)
    assert target_ranks(items[:1], flat, torch.tensor([10])).tolist() == [5]


def test_a_tie_crossing_the_kth_item_is_a_miss():
    # items 0..8 score 9..1, items 9..14 all 0.5: the target 9 ties with the 10th..15th
    ds = make_dataset([[20], [21]], [22, 23], [9, 9], n_items=30)
    row = torch.cat([torch.arange(9, 0, -1).float(), torch.full((6,), 0.5), torch.zeros(15)])
    model = FixedScores(row.repeat(2, 1), ds)
    at_10 = evaluate(model, ds, "test", ks=(10,), coverage_k=10)["rows"][0]
    assert at_10["recall@10_ties_last"] == 0.0  # without the margin it was listed 10th
    # expected under random tie-breaking: rank uniform over 10..15, one of six is <= 10
    assert at_10["recall@10"] == pytest.approx(1 / 6)
    assert at_10["ndcg@10"] == pytest.approx(1 / math.log2(11) / 6)
    at_15 = evaluate(model, ds, "test", ks=(15,))["rows"][0]
    assert at_15["recall@15"] == 1.0 and at_15["recall@15_ties_last"] == 1.0
    assert at_15["ndcg@15_ties_last"] == pytest.approx(1 / math.log2(16))
    assert at_15["ndcg@15"] == pytest.approx(sum(1 / math.log2(r + 1) for r in range(10, 16)) / 6)


def test_a_block_of_equal_scores_gets_its_expected_metric():
    """COBRA's ψ = 0 switch gives each item of a sparse-ID group the same score: the
    target is scored as if the block were shuffled, not placed last (nor first)."""
    items = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 8, 9], [5, 6, 7, 8, 9]])
    scores = torch.tensor([[0.9, 0.4, 0.4, 0.4, 0.1]] * 3)
    targets = torch.tensor([7, 5, 4])  # in the block 2..4, alone at 1, not listed
    first, last = tied_block(items, scores, targets)
    assert first.tolist() == [2, 1, 0] and last.tolist() == [4, 1, 0]
    assert expected_recall_at(first, last, 3).tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    gains = [1 / math.log2(r + 1) for r in (2, 3)]
    assert expected_ndcg_at(first, last, 3).tolist() == pytest.approx([sum(gains) / 3, 1, 0])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=12), st.integers(0, 11),
       st.integers(1, 12))
def test_expected_metrics_equal_the_mean_over_every_order_of_the_block(levels, at, k):
    """Against brute force: the target's rank averaged over every position its tied
    block can put it in."""
    scores = torch.tensor(sorted(levels, reverse=True), dtype=torch.float32)[None]
    n = scores.shape[1]
    items = torch.arange(n)[None]
    target = torch.tensor([at % n])
    block = [r + 1 for r in range(n) if scores[0, r] == scores[0, at % n]]
    first, last = tied_block(items, scores, target)
    recall = sum(r <= k for r in block) / len(block)
    ndcg = sum(1 / math.log2(r + 1) for r in block if r <= k) / len(block)
    assert expected_recall_at(first, last, k).item() == pytest.approx(recall)
    assert expected_ndcg_at(first, last, k).item() == pytest.approx(ndcg, rel=1e-6)


def test_rows_carry_a_bootstrap_interval_that_narrows_with_users():
    hits = np.array([1.0] * 10 + [0.0] * 34)[:, None]  # 44 cold users, 10 hits
    lo, hi = bootstrap_interval(hits)
    assert lo[0] < 10 / 44 < hi[0] and 0.10 < hi[0] - lo[0] < 0.35
    assert bootstrap_interval(hits) == (lo, hi)  # seeded
    many = np.repeat(hits, 50, axis=0)  # the same rate over 2,200 users
    lo2, hi2 = bootstrap_interval(many)
    assert hi2[0] - lo2[0] < (hi[0] - lo[0]) / 4
    assert bootstrap_interval(np.ones((7, 1))) == (np.ones(1), np.ones(1))
    ds = make_dataset([[0, 1], [2, 3]], [4, 5], [6, 7], n_items=10)
    row = evaluate(FixedScores(torch.arange(10, 0, -1).float()[None].repeat(2, 1), ds),
                   ds, "test", ks=(10,))["rows"][0]
    assert row["n"] == 2 and row["recall@10_lo"] <= row["recall@10"] <= row["recall@10_hi"]


@pytest.mark.parametrize("name", available_models())
def test_the_margin_never_changes_the_first_k(name):
    cls = get_model_class(name)
    torch.manual_seed(0)
    model = cls(cls.Config(), sid_catalogue(n=40, text_dim=8)).eval()
    history = torch.tensor([[-1, 7, 8, 9], [10, 11, 12, 13], [-1, -1, -1, 20]])
    users = torch.tensor([0, 1, 2])
    for inference in model.variants().values():
        for masked in (False, True):
            inference = dataclasses.replace(inference, exclude_history=masked)
            items, scores = model.recommend(history, users, 5, inference)
            wide_items, wide_scores = model.recommend(history, users, 5, inference, margin=5)
            assert wide_items.shape[1] <= 10
            assert torch.equal(wide_items[:, :5], items)
            assert torch.equal(wide_scores[:, :5], scores)


def test_the_history_mask_covers_the_whole_history_not_the_window():
    """max_history 2, but the user saw items 0..4 before the test target 5: masking the
    window alone ({3, 4}) left 0, 1, 2 at the top of a scorer that prefers old items."""
    ds = make_dataset([[0, 1, 2, 3]], [4], [5], n_items=8, max_history=2)
    assert ds.seen_items("test").tolist() == [[0, 1, 2, 3, 4]]
    assert ds.seen_items("valid").tolist() == [[0, 1, 2, 3]]
    assert ds.eval_examples("test")[0].tolist() == [[3, 4]]
    row = torch.arange(8, 0, -1, dtype=torch.float32)  # item 0 best, item 7 worst
    rows = {r["variant"]: r for r in evaluate(FixedScores(row[None], ds), ds, "test",
                                              ks=(1,))["rows"] if r["subset"] == "overall"}
    assert rows[""]["recall@1"] == 0.0
    assert rows["excl. history"]["recall@1"] == 1.0
    # rows of different history lengths in one batch; the shorter row's padding is no item
    ds = make_dataset([[0, 1, 2, 3], [6]], [4, 7], [5, 0], n_items=8, max_history=2)
    assert ds.seen_items("test").tolist() == [[0, 1, 2, 3, 4], [-1, -1, -1, 6, 7]]
    items, _ = top_k(FixedScores(row[None].repeat(2, 1), ds), ds.eval_examples("test")[0],
                     np.arange(2), 2, inference=Sign(exclude_history=True),
                     seen=ds.seen_items("test"))
    assert items.tolist() == [[5, 6], [0, 1]]


@pytest.mark.parametrize("name", available_models())
def test_every_model_masks_the_whole_seen_set(name):
    """`recommend(..., seen=)` leaves out items far older than the input window, in every
    variant (beam search, BeamFusion, LIGER's hybrid, dense retrieval, Pop's listing)."""
    cls = get_model_class(name)
    torch.manual_seed(0)
    model = cls(cls.Config(), sid_catalogue(n=40, text_dim=8)).eval()
    history = torch.tensor([[30, 31, 32, 33], [34, 35, 36, 37]])
    seen = torch.cat([torch.arange(0, 26).repeat(2, 1), history], dim=1)  # [2, 30]
    seen[1, :3] = -1  # rows of different lengths
    users = torch.tensor([0, 1])
    for label, inference in model.variants().items():
        masked = dataclasses.replace(inference, exclude_history=True)
        items, _ = model.recommend(history, users, 5, masked, seen=seen)
        for row, row_seen in zip(items.tolist(), seen.tolist(), strict=True):
            assert not set(row) & {i for i in row_seen if i >= 0}, (label, row)
        window, _ = model.recommend(history, users, 5, masked)  # without `seen`: the window
        for row, row_history in zip(window.tolist(), history.tolist(), strict=True):
            assert not set(row) & set(row_history), (label, row)


def test_nan_scores_are_an_error_naming_the_users():
    ds = make_dataset([[20], [21]], [22, 23], [9, 9], n_items=30)
    row = torch.full((30,), float("nan"))
    with pytest.raises(SidrecError, match="NaN scores for users 0..1"):
        evaluate(FixedScores(row.repeat(2, 1), ds), ds, "test", ks=(10,))
    # a rank's shard names its users by their row in the whole evaluation
    history = np.full((2, 4), -1)
    with pytest.raises(SidrecError, match="NaN scores for users 100..101"):
        top_k(FixedScores(row.repeat(2, 1), ds), history, np.array([0, 1]), 5, first_row=100)


@pytest.mark.parametrize("name", [n for n in available_models() if n != "pop"])
def test_weights_that_are_not_finite_are_refused_not_scored_as_misses(name):
    """NaN weights (a diverged or damaged checkpoint) are refused in every inference
    variant; TIGER's beam and COBRA's BeamFusion dropped NaN beams as empty slots, so
    they were scored as misses, silently."""
    cls = get_model_class(name)
    torch.manual_seed(0)
    model = cls(cls.Config(), sid_catalogue(n=40, text_dim=8)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    history = torch.tensor([[-1, 7, 8, 9], [10, 11, 12, 13]])
    for inference in model.variants().values():
        with pytest.raises(SidrecError, match="weight tensor.s. hold NaN or inf"):
            top_k(model, history.numpy(), np.array([0, 1]), 5, inference=inference)


def test_recall_ndcg_values():
    ranks = torch.tensor([1, 3, 0, 7, 5])
    assert recall_at(ranks, 5).tolist() == [1, 1, 0, 0, 1]
    expected = [1.0, 0.5, 0.0, 0.0, 1 / math.log2(6)]
    assert ndcg_at(ranks, 5).tolist() == pytest.approx(expected)
    assert ndcg_at(ranks, 10)[3].item() == pytest.approx(1 / math.log2(8))


def test_subset_metrics_empty_and_coverage():
    empty = subset_metrics(
        torch.zeros(0, 5, dtype=torch.long),
        torch.zeros(0, 5),
        torch.zeros(0, dtype=torch.long),
        (5,),
        n_items=10,
    )
    assert empty["n"] == 0 and math.isnan(empty["recall@5"]) and math.isnan(empty["ndcg@5"])
    items = torch.tensor([[0, 1, -1], [1, 2, -1]])
    assert coverage_at(items, 2, 10) == pytest.approx(0.3)
    assert coverage_at(items, 1, 10) == pytest.approx(0.2)


# ---------------------------------------------------------------- against brute force


def brute_force(scores: np.ndarray, targets: np.ndarray, k: int) -> tuple[float, float]:
    recalls, ndcgs = [], []
    for row, target in zip(scores, targets, strict=True):
        order = sorted(range(len(row)), key=lambda i: -row[i])
        rank = order.index(target) + 1
        recalls.append(1.0 if rank <= k else 0.0)
        ndcgs.append(1.0 / math.log2(rank + 1) if rank <= k else 0.0)
    return float(np.mean(recalls)), float(np.mean(ndcgs))


@settings(max_examples=40, deadline=None)
@given(
    n_users=st.integers(1, 12),
    n_items=st.integers(2, 30),
    k=st.sampled_from([1, 3, 5, 10, 50]),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_brute_force(n_users, n_items, k, seed):
    rng = np.random.default_rng(seed)
    train = [list(rng.integers(0, n_items, size=rng.integers(1, 4))) for _ in range(n_users)]
    valid = rng.integers(0, n_items, size=n_users)
    test = rng.integers(0, n_items, size=n_users)
    ds = make_dataset(train, list(valid), list(test), n_items)
    # distinct scores: a random permutation per user
    scores = np.stack([rng.permutation(n_items) for _ in range(n_users)]).astype(np.float32)
    model = FixedScores(torch.as_tensor(scores), ds)
    result = evaluate(model, ds, "test", ks=(k,), batch_size=5)
    for subset, mask in [
        ("overall", np.ones(n_users, bool)),
        ("cold", ds.cold[test]),
        ("in-set", ~ds.cold[test]),
    ]:
        row = next(r for r in result["rows"] if r["subset"] == subset)
        assert row["n"] == mask.sum()
        if mask.sum() == 0:
            assert math.isnan(row[f"recall@{k}"])
            continue
        recall, ndcg = brute_force(scores[mask], test[mask], k)
        assert row[f"recall@{k}"] == pytest.approx(recall, abs=1e-6)
        assert row[f"ndcg@{k}"] == pytest.approx(ndcg, abs=1e-6)


def test_large_k_beyond_catalogue_and_variants():
    ds = make_dataset([[0, 1], [2, 3]], [4, 5], [6, 7], n_items=30)
    scores = torch.arange(30, dtype=torch.float32).repeat(2, 1)  # item 29 best
    model = FixedScores(scores, ds, variants={"up": Sign(), "down": Sign(-1.0)})
    result = evaluate(model, ds, "test", ks=(5, 50, 500))
    up = {r["subset"]: r for r in result["rows"] if r["variant"] == "up"}
    down = {r["subset"]: r for r in result["rows"] if r["variant"] == "down"}
    # every item is returned at k=500 > n_items, the rest of the slots are empty
    assert up["overall"]["recall@500"] == 1.0 and up["overall"]["recall@5"] == 0.0
    assert up["overall"]["filled@500"] == pytest.approx(30 / 500)
    # reversed order: targets 6, 7 at ranks 7, 8
    expected = (1 / math.log2(8) + 1 / math.log2(9)) / 2
    assert down["overall"]["ndcg@50"] == pytest.approx(expected)
    assert up["cold"]["n"] == 2 and up["in-set"]["n"] == 0 and math.isnan(up["in-set"]["ndcg@5"])
    assert up["overall"]["coverage@10"] == pytest.approx(10 / 30)
    table = format_table(result)
    assert "fixed [down]" in table and "–" in table


def test_history_masked_variant_invalid_and_cold_slots():
    # user 0 has seen items 0, 1 (its two best-scored); user 1 items 2, 3
    ds = make_dataset([[0, 1], [2, 3]], [4, 5], [6, 7], n_items=10)
    scores = torch.tensor([[9.0, 8, 0, 0, 0, 0, 7, 0, 0, 0], [0, 0, 9, 8, 0, 0, 0, 7, 0, 0]])
    model = FixedScores(scores, ds)
    result = evaluate(model, ds, "test", ks=(1, 3))
    assert [r["variant"] for r in result["rows"]] == [""] * 3 + ["excl. history"] * 3
    plain = result["rows"][0]
    masked = result["rows"][3]
    assert plain["recall@1"] == 0.0 and plain["recall@3"] == 1.0  # targets 6, 7 at rank 3
    assert masked["recall@1"] == 1.0  # with the seen items masked the targets come first
    assert result["inference"]["excl. history"]["exclude_history"] is True
    # items 4..9 never occur in training: the cold pool is 6; each top-10 holds them all
    assert result["cold_pool"] == 6
    assert plain["cold_slots@10"] == 6 and plain["random_cold@10"] == 1.0
    assert plain["invalid@3"] == 0.0


def test_invalid_sids_are_counted_as_misses_and_reported():
    items = torch.tensor([[INVALID_ITEM, 3, -1], [2, INVALID_ITEM, INVALID_ITEM]])
    scores = torch.tensor([[-math.inf, -1.0, -math.inf], [-0.5, -math.inf, -math.inf]])
    out = subset_metrics(items, scores, torch.tensor([3, 2]), (3,), n_items=5)
    assert out["invalid@3"] == pytest.approx(3 / 6) and out["filled@3"] == pytest.approx(2 / 6)
    assert out["recall@3"] == 1.0 and out["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1) / 2)


# ---------------------------------------------------------------- the split protocol


def test_test_target_never_in_history_and_splits_not_mixed():
    train = [[0, 1, 2], [5, 6]]
    ds = make_dataset(train, valid=[3, 7], test=[4, 8], n_items=10, max_history=5)

    oracle_test = Recorder(ds, ds.test)
    result = evaluate(oracle_test, ds, "test", ks=(1,), variants=[""])
    histories = torch.cat(oracle_test.seen)
    assert histories.tolist() == [[-1, 0, 1, 2, 3], [-1, -1, 5, 6, 7]]  # valid item last
    for h, target in zip(histories, ds.test, strict=True):
        assert target not in h.tolist()
    assert result["rows"][0]["recall@1"] == 1.0

    oracle_valid = Recorder(ds, ds.valid)
    result = evaluate(oracle_valid, ds, "valid", ks=(1,), variants=[""])
    histories = torch.cat(oracle_valid.seen)
    assert histories.tolist() == [[-1, -1, 0, 1, 2], [-1, -1, -1, 5, 6]]
    assert result["rows"][0]["recall@1"] == 1.0
    # predicting the valid item on the test split (or vice versa) scores nothing
    assert evaluate(Recorder(ds, ds.valid), ds, "test", ks=(1,))["rows"][0]["recall@1"] == 0.0
    assert evaluate(Recorder(ds, ds.test), ds, "valid", ks=(1,))["rows"][0]["recall@1"] == 0.0


def test_bad_arguments():
    ds = make_dataset([[0, 1]], [2], [3], n_items=4)
    model = FixedScores(torch.zeros(1, 4), ds)
    with pytest.raises(SidrecError, match="cut-offs"):
        evaluate(model, ds, ks=(0,))
    with pytest.raises(SidrecError, match="split"):
        evaluate(model, ds, split="train")
    with pytest.raises(SidrecError, match="variant"):
        evaluate(model, ds, variants=["nope"])


# ---------------------------------------------------------------- seeds, tables and files


def _run(value: float, name: str = "m") -> dict:
    row = {"variant": "", "subset": "overall", "n": 3, "recall@10": value, "ndcg@10": value / 2}
    return {
        "model": name,
        "display_name": name,
        "split": "test",
        "ks": [10],
        "rows": [row],
        "users_per_s": 1.0,
    }


def test_aggregate_mean_sd_and_table():
    agg = aggregate([_run(0.1), _run(0.3)])
    row = agg["rows"][0]
    assert row["recall@10"] == pytest.approx(0.2)
    assert row["recall@10_sd"] == pytest.approx(math.sqrt(0.02))
    assert agg["n_seeds"] == 2
    table = format_table(agg)
    assert "0.2000 ± 0.1414" in table and "×2 seeds" in table
    assert math.isnan(aggregate([_run(0.1)])["rows"][0]["recall@10_sd"])
    with pytest.raises(SidrecError):
        aggregate([])


def test_summary_and_interval_tables_state_the_cold_rows_chance_and_interval():
    # items 4..7 never occur in training (cold); the test targets 6, 7 are listed first,
    # and all 4 cold items fill 4 of the 8 slots: chance would find them as often
    ds = make_dataset([[0, 1], [2, 3]], [4, 5], [6, 7], n_items=8)
    scores = torch.tensor([[0.0, 0, 0, 0, 0, 0, 9, 8], [0.0, 0, 0, 0, 0, 0, 8, 9]])
    result = evaluate(FixedScores(scores, ds), ds, "test", ks=(10,))
    summary = format_summary(result)
    assert "| fixed | 1.0000 | – | – | 1.0000 [1.0000, 1.0000] | 1.0000 | 4.00 |" in summary
    assert "| fixed [excl. history] |" in summary
    intervals = format_intervals(result)
    assert "| fixed | cold | 2 | 1.0000 [1.0000, 1.0000] |" in intervals
    assert "| 4 | 4.00 | 1.0000 |" in intervals  # cold pool, cold slots@10, random_cold@10


def test_save_metrics_keeps_every_model(tmp_path):
    save_metrics(tmp_path, _run(0.1, "a"), "a")
    save_metrics(tmp_path, _run(0.2, "b"), "b")
    save_metrics(tmp_path, _run(0.3, "a"), "a")  # replaces a's test entry
    store = read_json(tmp_path / "metrics.json")
    assert sorted(store["models"]) == ["a", "b"]
    assert store["models"]["a"]["test"]["rows"][0]["recall@10"] == 0.3
    results = (tmp_path / "results.md").read_text()
    assert "| a | test | overall | 3 | 0.3000 | 0.1500 |" in results
    assert "| b |" in results
    save_metrics(tmp_path, _run(0.4, "a"), "a-seed1")  # another directory of model a
    assert "| a-seed1: a | test |" in (tmp_path / "results.md").read_text()


def test_a_damaged_metrics_file_is_a_clear_error_and_is_left_as_it_is(tmp_path):
    for damaged in ('{"models": {', "[]", '{"models": {"a": 3}}'):
        (tmp_path / "metrics.json").write_text(damaged)
        with pytest.raises(SidrecError, match=r"metrics.json: .*; move it away"):
            save_metrics(tmp_path, _run(0.1, "a"), "a")
        assert (tmp_path / "metrics.json").read_text() == damaged


def _record_in_a_process(args: tuple) -> None:
    folder, n = args
    for round_ in range(5):
        save_metrics(folder, _run(0.1 * round_, f"m{n}"), f"m{n}")


def test_evaluations_recording_at_once_lose_no_model(tmp_path):
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_record_in_a_process, [(tmp_path, n) for n in range(8)])
    assert sorted(read_json(tmp_path / "metrics.json")["models"]) == [f"m{n}" for n in range(8)]
