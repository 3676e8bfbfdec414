"""COBRA's per-sparse-ID retrieval (models/item_groups.py, `cobra_decode.fuse_groups`)
against a plain loop over users and beams, on random small catalogues: groups larger than
the neighbours kept, dead beams and beams of no catalogue sparse ID, excluded (seen) items,
items with the same vector (ties), and items added after the groups were built."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sidrec.models.cobra_decode import CobraInference, fuse_groups
from sidrec.models.item_groups import GroupedItems

MODES = ("fusion", "no-dense", "no-beamfusion")


def reference(group_of: list[int], beam_logp: torch.Tensor, beam_group: torch.Tensor,
              v_hat: torch.Tensor, vectors: torch.Tensor, n: int, cfg: CobraInference,
              seen: torch.Tensor | None) -> tuple[list[list[int]], list[list[float]]]:
    """COBRA's group retrieval, one user and one beam at a time (Sec. 3.3, Eq. 6): a
    beam's candidates are its sparse ID's unseen items, the N nearest to its v̂ (ties in
    item-id order; all of them without the dense part); BeamFusion; an item's best score;
    the top n, ties in candidate order."""
    items_out, scores_out = [], []
    for b in range(len(beam_logp)):
        weight = torch.softmax(cfg.tau * beam_logp[b].double(), 0).nan_to_num(0.0)
        banned = set() if seen is None else set(seen[b].tolist())
        cands: list[tuple[int, float]] = []
        for m in range(beam_logp.shape[1]):
            if not math.isfinite(float(beam_logp[b, m])) or beam_group[b, m] < 0:
                continue
            q = v_hat[b, m].double() / v_hat[b, m].double().norm()
            members = [i for i, g in enumerate(group_of)
                       if g == beam_group[b, m] and i not in banned]
            cos = {i: float(q @ (vectors[i].double() / vectors[i].double().norm()))
                   for i in members}
            if cfg.mode != "no-dense" and len(members) > cfg.neighbours:
                members = sorted(members, key=lambda i: -cos[i])[: cfg.neighbours]
            if cfg.mode == "no-beamfusion":
                cands += [(i, cos[i]) for i in members]
                continue
            psi = 0.0 if cfg.mode == "no-dense" else cfg.psi
            z = sum(math.exp(psi * cos[i]) for i in members)
            cands += [(i, float(weight[m]) * math.exp(psi * cos[i]) / z) for i in members]
        ranked = sorted(range(len(cands)), key=lambda j: -cands[j][1])  # stable
        best: dict[int, float] = {}
        for j in ranked:
            best.setdefault(cands[j][0], cands[j][1])
        top = list(best.items())[:n]
        items_out.append([i for i, _ in top] + [-1] * (n - len(top)))
        scores_out.append([s for _, s in top] + [float("-inf")] * (n - len(top)))
    return items_out, scores_out


def random_case(seed: int, added: int = 0) -> dict:
    """A catalogue of uneven groups (one of them large), items sharing a vector, beams
    over the groups (some dead, some of no group), seen items; `added` more items (some
    in new groups) appended after the groups were built."""
    g = torch.Generator().manual_seed(seed)
    n_items = int(torch.randint(1, 40, (1,), generator=g))
    n_groups = int(torch.randint(1, 8, (1,), generator=g))
    big = torch.rand(n_items, generator=g) < 0.4  # a large group 0
    group = torch.where(big, 0, torch.randint(0, n_groups, (n_items,), generator=g))
    total = n_items + added
    group = torch.cat([group, torch.randint(0, n_groups + 3, (added,), generator=g)])
    d = int(torch.randint(2, 6, (1,), generator=g))
    vectors = torch.randn(total, d, generator=g)
    twins = torch.randint(0, total, (total // 4,), generator=g)
    vectors[torch.randint(0, total, (total // 4,), generator=g)] = vectors[twins]  # ties
    b, m = int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(1, 6, (1,), generator=g))
    beam_group = torch.randint(-1, int(group.max()) + 2, (b, m), generator=g)  # -1, unknown
    beam_logp = -3 * torch.rand(b, m, generator=g)
    beam_logp[torch.rand(b, m, generator=g) < 0.2] = float("-inf")  # dead beams
    s = int(torch.randint(0, 6, (1,), generator=g))
    seen = torch.randint(-1, total, (b, s), generator=g)
    return {"group": group, "n_items": n_items, "vectors": vectors, "beam_group": beam_group,
            "beam_logp": beam_logp, "v_hat": torch.randn(b, m, d, generator=g),
            "seen": seen if s or seed % 2 else None}


def check(case: dict, groups: GroupedItems, cfg: CobraInference, n: int) -> None:
    args = (case["beam_logp"], case["beam_group"], case["v_hat"], case["vectors"], n, cfg,
            case["seen"])
    items, scores = fuse_groups(groups, *args)
    want_items, want_scores = reference(case["group"].tolist(), *args)
    assert items.tolist() == want_items
    torch.testing.assert_close(scores.double(), torch.tensor(want_scores, dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from(MODES), st.integers(1, 6), st.integers(1, 15))
def test_group_retrieval_equals_a_loop_over_users_and_beams(seed, mode, neighbours, n):
    case = random_case(seed)
    groups = GroupedItems(case["group"])
    check(case, groups, CobraInference(mode=mode, neighbours=neighbours), n)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 30), st.sampled_from(MODES))
def test_items_added_after_the_groups_were_built_join_them(seed, added, mode):
    case = random_case(seed, added)
    first = case["n_items"]
    grown = GroupedItems(case["group"][:first]).extended(case["group"][first:], first)
    whole = GroupedItems(case["group"])
    assert torch.equal(grown.items, whole.items) and torch.equal(grown.offsets, whole.offsets)
    check(case, grown, CobraInference(mode=mode, neighbours=3), 10)


def test_members_and_padding_follow_only_the_groups_asked_for():
    groups = GroupedItems(torch.tensor([2, 0, 2, 1, 2, 2, 2]), n_groups=4)  # group 3 empty
    assert groups.sizes.tolist() == [1, 1, 5, 0]
    assert groups.padded(torch.tensor([1, -1, 0, 3, 7])).tolist() == [[3], [-1], [1], [-1],
                                                                       [-1]]
    items, query, slot = groups.members(torch.tensor([2, 0]))
    assert items.tolist() == [0, 2, 4, 5, 6, 1] and query.tolist() == [0] * 5 + [1]
    assert slot.tolist() == [0, 1, 2, 3, 4, 0]
