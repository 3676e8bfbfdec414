"""Items added after training (`sidrec.catalogue`): placing SIDs when a prefix is full,
the persisted file, and the catalogue growth."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sid_catalogue
from hypothesis import given, settings
from hypothesis import strategies as st

from sidrec.catalogue import store
from sidrec.catalogue.encode import check_new
from sidrec.catalogue.place import place
from sidrec.catalogue.rows import NewItems, grow
from sidrec.errors import ItemError, SidrecError
from sidrec.models import get_model_class
from sidrec.models.beam import SidIndex
from sidrec.run import RunDir
from sidrec.tokenize.sids import extend_sids


def test_place_keeps_free_prefixes_and_moves_overflow_to_the_nearest_room() -> None:
    # limit 2: prefix (0,0) is full, (0,1) and (1,1) have one free place each
    existing = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 1, 0]])
    vectors = np.array([[1, 0], [1, 0], [0, 1], [1, 0.1]], dtype=np.float32)
    codes = np.array([[0, 1], [0, 0], [1, 0], [0, 0], [0, 0]])
    new_vectors = np.array([[0, 1], [1, 0], [0, 1], [0, 1], [1, 0]], dtype=np.float32)
    out = place(existing, vectors, codes[:4], new_vectors[:4], limit=2, ids=list("abcd"))
    assert out.tolist() == [
        [0, 1, 1],  # a: its own prefix has room (and is full after it)
        [1, 1, 1],  # b: (0,0) full; the prefix with room holding the most similar item
        [1, 0, 0],  # c: a prefix no item had
        [1, 0, 1],  # d: (0,0) full; (1,0) is the only one with room left
    ]
    SidIndex(torch.as_tensor(np.concatenate([existing, out])), (2, 2, 2))  # unique SIDs
    # sharing leading codes comes first: with (0,1) free, (0,0)'s overflow goes there
    out = place(existing, vectors, codes[4:], new_vectors[4:], limit=2, ids=["e"])
    assert out.tolist() == [[0, 1, 1]]


def test_place_refuses_only_when_every_prefix_is_full() -> None:
    existing = np.array([[0, 0], [1, 0]])
    with pytest.raises(ItemError, match=r"items\[0\] \('a'\): every semantic-ID prefix"):
        place(existing, None, np.array([[0]]), np.zeros((1, 2), np.float32), 1, ["a"])


def test_place_equals_extend_sids_when_nothing_is_full() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, (30, 2))
    existing = extend_sids(np.zeros((0, 3), np.int64), codes[:20])
    vectors = rng.normal(size=(30, 5)).astype(np.float32)
    expected = extend_sids(existing, codes[20:])
    got = place(existing, vectors[:20], codes[20:], vectors[20:], 99, [str(i) for i in range(10)])
    assert got.tolist() == expected.tolist()


def test_check_new_names_the_row() -> None:
    with pytest.raises(ItemError, match=r"items\[1\]: item id 'a' already exists") as e:
        check_new([{"id": "b", "text": "t"}, {"id": "a", "text": "t"}], {"a": 0})
    assert e.value.row == 1 and e.value.duplicate
    with pytest.raises(ItemError, match=r"items\[0\] \('c'\): empty text"):
        check_new([{"id": "c", "text": " "}], {})
    assert check_new([{"id": 7, "text": " x "}], {}) == (["7"], ["x"])
    for item, why in (({"id": None, "text": "t"}, "id None is a NoneType"),
                      ({"id": 7.0, "text": "t"}, "id 7.0 is a float"),
                      ({"id": True, "text": "t"}, "id True is a bool"),
                      ({"id": " 50", "text": "t"}, "id ' 50' has spaces at its ends"),
                      ({"id": "d", "text": ["a list"]}, "text is a list")):
        with pytest.raises(ItemError, match=rf"items\[0\]: {re.escape(why)}"):
            check_new([item], {})


def test_the_file_round_trips_and_grow_appends(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert store.read(run) is None
    items = NewItems(("n1", "n2"), ("Title: One", "Title: Two"),
                     np.arange(6, dtype=np.float32).reshape(2, 3), np.array([[3, 3, 0], [3, 3, 1]]))
    stamp = {"encoder": "e", "embeddings": "h1", "sids": "h2"}
    store.write(run, items, stamp)
    back, meta = store.read(run)
    assert back.ids == items.ids and back.texts == items.texts
    np.testing.assert_array_equal(back.vectors, items.vectors)
    np.testing.assert_array_equal(back.sids, items.sids)
    assert meta["fingerprint"] == stamp
    both = items + back.tail(1)
    assert both.ids == ("n1", "n2", "n2") and both.sids.shape == (3, 3)

    cat = sid_catalogue(n=5, sizes=(4, 4), text_dim=3)
    grown = grow(cat, items)
    assert grown.n_items == 7 and grown.cold[-2:].all() and grown.popularity[-2:].sum() == 0
    assert torch.equal(grown.sids[-2:], torch.as_tensor(items.sids))
    assert cat.n_items == 5  # the old catalogue is untouched


def test_an_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.added_items.write_bytes(b"not parquet")
    with pytest.raises(SidrecError, match="unreadable added items"):
        store.read(run)


def test_stored_items_are_re_derived_when_the_run_changed(served_run: Path,
                                                          tmp_path: Path) -> None:
    """Stored SIDs of another SID set (another model's tokenizer settings, a re-tokenized
    run) are computed again from the stored vectors; stale vectors (a re-embedded run) are
    encoded again from the texts, and the file is rewritten."""
    from serving import copy_of, load

    run = copy_of(served_run, tmp_path)
    rec = load(run / "models" / "liger")
    rec.add_items([{"id": "n1", "text": "Title: Arctic Expedition; Genres: documentary"},
                   {"id": "n2", "text": "Title: Jazz Piano Nights; Genres: music"}])
    sids = rec.model.catalogue.sids[-2:].clone()
    items, meta = store.read(RunDir(run))

    stale_sids = NewItems(items.ids, items.texts, items.vectors, np.zeros_like(items.sids))
    store.write(RunDir(run), stale_sids, {**meta["fingerprint"], "sids": "another-set"})
    again = load(run / "models" / "liger")
    assert again.catalogue.ids[-2:] == ["n1", "n2"]
    assert torch.equal(again.model.catalogue.sids[-2:], sids)
    assert store.read(RunDir(run))[1]["fingerprint"]["sids"] == "another-set"  # as is

    stale = NewItems(items.ids, items.texts, np.zeros_like(items.vectors), items.sids)
    store.write(RunDir(run), stale, {**meta["fingerprint"], "embeddings": "old"})
    third = load(run / "models" / "liger")
    np.testing.assert_allclose(third.model.catalogue.text_emb[-2:].numpy(), items.vectors,
                               atol=1e-5)
    assert store.read(RunDir(run))[1]["fingerprint"] == meta["fingerprint"]


def test_an_item_added_while_another_process_loads_is_read_by_its_next_refresh(
        served_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another server adds an item between this process reading added_items.parquet at
    load and stamping it: the stamp must be the file as read, so the next refresh reads
    the item (a stamp taken after the read would call the file read already)."""
    from serving import copy_of, load

    run = copy_of(served_run, tmp_path)
    other = load(run / "models" / "liger")
    other.add_items([{"id": "n1", "text": "Title: Arctic Expedition; Genres: documentary"}])
    read = store.read

    def read_then_another_adds(where: RunDir):  # noqa: ANN202
        found = read(where)
        monkeypatch.setattr(store, "read", read)
        other.add_items([{"id": "n2", "text": "Title: Jazz Piano Nights; Genres: music"}])
        return found

    monkeypatch.setattr(store, "read", read_then_another_adds)
    rec = load(run / "models" / "liger")
    assert rec.catalogue.ids[-1] == "n1"
    assert rec.catalogue.refresh() == 1 and rec.catalogue.ids[-2:] == ["n1", "n2"]


def test_an_add_never_drops_items_another_process_wrote(served_run: Path,
                                                       tmp_path: Path) -> None:
    """A file rewritten under a server (moved away and started over by another) is not
    overwritten by that server's next add: the add is refused, the other's items stay."""
    from serving import copy_of, load

    run = copy_of(served_run, tmp_path)
    first = load(run / "models" / "liger")
    first.add_items([{"id": "a1", "text": "Title: Arctic Expedition; Genres: documentary"}])
    RunDir(run).added_items.rename(tmp_path / "moved.parquet")
    second = load(run / "models" / "liger")
    second.add_items([{"id": "x", "text": "Title: Jazz Piano Nights; Genres: music"}])
    with pytest.warns(UserWarning, match="rewritten by another process"):
        first.catalogue.refresh()  # as a server does before every batch: the file is read now
    for _ in range(2):  # and stays refused, though unchanged since
        with pytest.raises(SidrecError, match="rewritten by another process .* would drop"):
            first.add_items([{"id": "y", "text": "Title: Yodel Summer; Genres: music"}])
    assert store.read(RunDir(run))[0].ids == ("x",)
    assert "y" not in first.catalogue


def test_new_items_are_never_coded_by_a_tokenizer_the_run_does_not_record(
        served_run: Path, tmp_path: Path) -> None:
    from serving import copy_of, load

    run = copy_of(served_run, tmp_path)
    rec = load(run / "models" / "liger")
    rec.add_items([{"id": "n0", "text": "Title: Polar Night; Genres: documentary"}])
    changed = sorted(p for p in RunDir(run).tokenizer.rglob("*") if p.is_file())[0]
    changed.write_bytes(changed.read_bytes() + b" ")  # as a half-finished tokenize leaves it
    with pytest.raises(SidrecError, match="not the tokenizer tokenizer.json records"):
        rec.add_items([{"id": "n1", "text": "Title: Arctic Expedition; Genres: documentary"}])
    assert "n1" not in rec.catalogue and store.read(RunDir(run))[0].ids == ("n0",)


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 9), st.integers(1, 5)), min_size=1, max_size=12))
def test_grow_copies_only_new_rows_and_never_changes_an_older_catalogue(steps) -> None:
    # Each step grows one of the catalogues so far (the newest, or an older one, as after
    # a rolled-back add) by m items; every catalogue must keep equalling its reference.
    base = sid_catalogue(n=6, text_dim=3)
    kept = [(base, base.text_emb.clone(), base.sids.clone())]
    for pick, m in steps:
        cat, emb, sids = kept[min(pick, len(kept) - 1)]
        new = NewItems(tuple(f"n{len(kept)}-{i}" for i in range(m)), ("t",) * m,
                       np.random.default_rng(len(kept)).normal(size=(m, 3)).astype(np.float32),
                       np.full((m, 3), len(kept), dtype=np.int64))
        grown = grow(cat, new)
        kept.append((grown, torch.cat([emb, torch.as_tensor(new.vectors)]),
                     torch.cat([sids, torch.as_tensor(new.sids)])))
        for c, e, s in kept:
            assert torch.equal(c.text_emb, e) and torch.equal(c.sids, s)
            assert len(c.cold) == len(c.popularity) == c.n_items == len(e)


def test_appends_reuse_the_spare_rows() -> None:
    cat = sid_catalogue(n=64, text_dim=2)
    new = NewItems(("a",), ("t",), np.ones((1, 2), np.float32), np.zeros((1, 3), np.int64))
    first = grow(cat, new)  # moves the rows into a reserve with 1/8 to spare
    second = grow(first, NewItems(("b",), ("t",), 2 * new.vectors, new.sids + 1))
    assert second.text_emb.data_ptr() == first.text_emb.data_ptr()  # no copy
    assert torch.equal(first.text_emb[-1], torch.ones(2)) and len(first.text_emb) == 65
    again = grow(first, NewItems(("c",), ("t",), 3 * new.vectors, new.sids + 2))
    assert again.text_emb.data_ptr() != first.text_emb.data_ptr()  # not the newest: a copy
    assert torch.equal(second.text_emb[-1], 2 * torch.ones(2))


def test_a_model_between_adds_projects_only_the_new_items() -> None:
    # ItemVectors caches LIGER's projected item vectors by the text table's version: an
    # append must not look like an in-place change of the older catalogue's table.
    cat = sid_catalogue(n=64, text_dim=8)
    cls = get_model_class("liger")
    torch.manual_seed(0)
    model = cls(cls.Config(), cat).eval()
    projected: list[int] = []
    project = model.dense_items.project
    model.dense_items.project = lambda text: (projected.append(len(text)), project(text))[1]
    history, users, dense = torch.tensor([[-1, 10, 11, 12]]), torch.tensor([0]), {"mode": "dense"}
    model.recommend(history, users, 5, dense)
    used = {tuple(row) for row in cat.sids.tolist()}
    free = [s for s in itertools.product(range(4), range(4), range(5))
            if s not in used][:3]
    per_add = []
    for step, sid in enumerate(free):
        projected.clear()
        new = NewItems((f"n{step}",), ("t",), np.ones((1, 8), np.float32), np.array([sid]))
        model.items_added(grow(model.catalogue, new), model.catalogue.n_items)
        model.recommend(history, users, 5, dense)
        per_add.append(sum(projected))
    assert per_add == [1, 1, 1]


def test_tiger_warns_that_it_will_not_return_added_items(served_run: Path,
                                                         tmp_path: Path) -> None:
    """TIGER takes new items (their SIDs are known) but its default beam decodes warm SIDs
    only: the add says so, and with include_cold=True it does not (its beam reaches them)."""
    import warnings

    from serving import copy_of, load

    import sidrec

    run = copy_of(served_run, tmp_path)
    item = {"id": "n1", "text": "Title: Arctic Expedition; Genres: documentary"}
    with pytest.warns(UserWarning, match=r"'tiger' .* will not return the added items; pass "
                                         r"include_cold=True"):
        assert load(run / "models" / "tiger").add_items([item]) == ["n1"]
    reaching = sidrec.load(run / "models" / "tiger", inference={"include_cold": True})
    assert reaching.catalogue.ids[-1] == "n1"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reaching.add_items([{"id": "n2", "text": "Title: Jazz Piano Nights; Genres: music"}])
    assert not [w for w in caught if "include_cold" in str(w.message)]
    assert "n2" in [i for i, _ in reaching.recommend(["n1"], k=len(reaching.catalogue))]
