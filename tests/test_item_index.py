"""ItemIndex's calibration (models/item_index.py): on clustered vectors with queries near
their items the IVF it keeps finds 0.99 of the exact top-10 scanning few cells; an IVF
that would scan more than `MAX_SCANNED` of its cells for it is dropped for exact search;
without a sample it answers exactly until it has seen enough real queries, then
calibrates on them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sidrec.models.item_index import (
    CALIBRATION_QUERIES,
    MAX_SCANNED,
    TARGET_RECALL,
    ItemIndex,
    exact_topk,
    recall_of,
)


def near_queries(items: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    """m queries, each an item plus noise (cosine ~0.9 to it): a trained model's kind."""
    g = torch.Generator().manual_seed(seed)
    picked = items[torch.randint(len(items), (m,), generator=g)]
    return picked + 0.1 * torch.randn(m, items.shape[1], generator=g)


@pytest.fixture(scope="module")
def clustered() -> torch.Tensor:
    """30k unit vectors in 300 clusters (cosine ~0.9 within one), d = 32."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(300, 32, generator=g)
    rows = centres[torch.randint(300, (30_000,), generator=g)]
    return F.normalize(rows + 0.3 * torch.randn(30_000, 32, generator=g), dim=-1)


def exact_ids(items: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    return exact_topk(F.normalize(queries, dim=-1), items, 10)[0]


def test_calibrated_ivf_finds_the_target_recall_scanning_few_cells(clustered):
    index = ItemIndex(clustered, exact_below=0, queries=near_queries(clustered, 512, 1))
    c = index.choice
    assert c.kind == "ivf" and not index.exact
    assert c.recall >= TARGET_RECALL and c.queries == 512
    assert 1 <= c.nprobe <= c.nlist * MAX_SCANNED
    held_out = near_queries(clustered, 512, 2)  # queries it was not calibrated on
    want = exact_ids(clustered, held_out)
    assert recall_of(index.search(held_out, 10)[0], want) >= TARGET_RECALL
    # scanning every cell is exact search
    assert torch.equal(index.search(held_out, 10, probe=1.0)[0], want)


def test_an_ivf_that_must_scan_much_of_itself_is_dropped():
    # Uniform vectors and queries far from all of them: 0.99 of the top-10 takes nearly
    # every cell, which costs what exact search does, and more.
    g = torch.Generator().manual_seed(0)
    items = F.normalize(torch.randn(4000, 64, generator=g), dim=-1)
    queries = torch.randn(300, 64, generator=g)
    index = ItemIndex(items, exact_below=0, queries=queries[:256])
    assert index.choice.kind == "exact" and index.exact
    assert index.choice.recall < TARGET_RECALL  # at the most cells it may scan
    assert index.choice.nprobe == int(index.choice.nlist * MAX_SCANNED)
    assert str(index.choice).startswith("exact (an IVF at ")
    index.add(-items[:5], torch.arange(4000, 4005))  # exact search reads added rows too
    assert torch.equal(index.search(queries[256:], 10)[0],
                       exact_ids(torch.cat([items, -items[:5]]), queries[256:]))


def test_without_a_sample_it_answers_exactly_then_calibrates_on_what_it_served(clustered):
    index = ItemIndex(clustered, exact_below=0)
    assert index.choice is None and not index.exact
    batch = 100
    for i in range(CALIBRATION_QUERIES // batch + 1):
        q = near_queries(clustered, batch, 10 + i)
        assert torch.equal(index.search(q, 10)[0], exact_ids(clustered, q))
    assert index.choice.kind == "ivf" and index.choice.queries == 300
    assert index.choice.recall >= TARGET_RECALL
