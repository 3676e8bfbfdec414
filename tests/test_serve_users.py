"""Train/serve skew of the user token (TIGER, LIGER): user-token dropout trains a reserved
anonymous token, which users unknown to training read at serving time; known users read
their own hashed bucket."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import sid_batch, sid_catalogue
from serving import load

from sidrec.models.sid_parts import SIDEncoder, SIDTokens, user_bucket
from sidrec.models.tiger import TIGER, TIGERConfig
from sidrec.models.transformer import StackConfig

TINY = TIGERConfig(d_model=16, n_heads=2, head_dim=8, d_ff=32, n_encoder_layers=1,
                   n_decoder_layers=1, dropout=0.0, user_buckets=50, max_history=6)


def test_unknown_users_read_the_anonymous_token() -> None:
    codes = torch.zeros(4, 2, dtype=torch.int64)
    tokens = SIDTokens(codes, (2, 2), 8, user_buckets=10, anonymous_user=True)
    assert tokens.emb.num_embeddings == tokens.first_user + 10 + 1
    out = tokens.user_tokens(torch.tensor([-1, 0, 7]))
    expected = tokens.first_user + user_bucket(torch.tensor([0, 0, 7]), 10)
    assert out.tolist() == [tokens.anonymous, *expected[1:].tolist()]
    legacy = SIDTokens(codes, (2, 2), 8, user_buckets=10)  # trained before dropout existed
    assert legacy.emb.num_embeddings == legacy.first_user + 10
    user_0 = legacy.first_user + int(user_bucket(torch.tensor(0), 10))
    assert legacy.user_tokens(torch.tensor([-1])).tolist() == [user_0]
    with pytest.raises(ValueError, match="anonymous_user=True"):
        SIDEncoder(legacy, StackConfig(1, 8, 2, 4, 16, 0.0), 4, user_dropout=0.1)


def test_dropout_swaps_user_tokens_in_training_only() -> None:
    torch.manual_seed(0)
    cat = sid_catalogue()
    model = TIGER(replace(TINY, user_dropout=0.5), cat)
    batch = sid_batch(cat)
    users = torch.full((len(batch["history"]),), 3)
    anonymous = -torch.ones_like(users)
    model.eval()
    as_user = model.encoder(batch["history"], users)[0]
    as_anonymous = model.encoder(batch["history"], anonymous)[0]
    assert not torch.allclose(as_user, as_anonymous)
    model.train()  # no other dropout in TINY: each row is one of the two
    mixed = model.encoder(batch["history"], users)[0]
    anon_rows = [torch.allclose(m, a, atol=1e-6) for m, a in zip(mixed, as_anonymous, strict=True)]
    user_rows = [torch.allclose(m, u, atol=1e-6) for m, u in zip(mixed, as_user, strict=True)]
    assert all(a != u for a, u in zip(anon_rows, user_rows, strict=True))
    assert any(anon_rows) and any(user_rows)
    # the anonymous token is trained
    before = model.tokens.emb.weight[model.tokens.anonymous].clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        model({**batch, "user": users})["loss"].backward()
        opt.step()
    assert not torch.equal(before, model.tokens.emb.weight[model.tokens.anonymous])


@pytest.mark.parametrize("name", ["tiger", "liger"])
def test_api_reads_the_user_token(served_run: Path, name: str) -> None:
    rec = load(served_run / "models" / name)
    assert rec.model.cfg.user_dropout > 0  # the cpu preset trains the anonymous token
    history = ["i01", "i03", "i05"]
    encoded = torch.tensor([[rec.catalogue.index[i] for i in history]])

    def offline(user: int) -> list[str]:
        items, _ = rec.model.recommend(encoded, torch.tensor([user]), 5)
        return [rec.catalogue.ids[i] for i in items[0].tolist() if i >= 0]

    known = rec.recommend(history, k=5, user_id="u7")
    assert [i for i, _ in known] == offline(rec.user_index["u7"])
    for who in (None, "someone-new"):
        assert [i for i, _ in rec.recommend(history, k=5, user_id=who)] == offline(-1)
    anonymous = rec.recommend(history, k=5)
    assert [s for _, s in known] != [s for _, s in anonymous]  # the token matters
