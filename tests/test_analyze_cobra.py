"""`sidrec analyze cobra`: the two checks agree with COBRA's own decoding."""

from dataclasses import replace

import numpy as np
import pytest
from conftest import toy_dataset
from test_cobra import small_model

from sidrec.analyze_cobra import cobra_checks, summarise
from sidrec.errors import SidrecError


@pytest.mark.parametrize("beam,neighbours", [(3, 2), (16, 8)])
def test_a_fused_top10_hit_is_a_candidate_the_checks_found(beam, neighbours):
    model = small_model().eval()
    model.inference = replace(model.inference, beam=beam, neighbours=neighbours)
    values = cobra_checks(model, toy_dataset(n_users=40, n_items=24), batch_size=7)
    candidate = (values["beam_position"] >= 0) & (values["rank_in_group"] <= neighbours)
    hits = values["hit@10"]
    assert hits.any() and (~hits).any()  # both outcomes occur, so the test can fail
    # The teacher-forced v̂ is the v̂ of the beam holding the target's sparse ID, so a
    # target the fused list returns must be among the candidates the checks count.
    assert not (hits & ~candidate).any()
    assert ((values["rank_in_group"] >= 1)
            & (values["rank_in_group"] <= values["group_size"])).all()
    width = max(beam, -(-10 // neighbours))  # decoding a top 10 widens a narrow beam
    summary = summarise(values, width, neighbours)
    assert summary["users"] == 40
    assert summary["fused_top10 (recall@10)"] == pytest.approx(hits.mean())
    assert summary[f"sparse_id_in_{width}_beams"] >= summary["sparse_id_first_beam"]


def test_a_wide_beam_holds_every_sparse_id():
    model = small_model().eval()
    model.inference = replace(model.inference, beam=16)  # 16 sparse IDs in this catalogue
    values = cobra_checks(model, toy_dataset(n_users=20, n_items=24))
    assert (values["beam_position"] >= 0).all()
    assert np.median(values["group_size"]) > 1


def test_models_without_both_parts_are_refused():
    with pytest.raises(SidrecError, match="sparse and dense"):
        cobra_checks(small_model("cobra-no-dense"), toy_dataset(n_items=24))
