"""The live catalogue (`sidrec.catalogue.LiveCatalogue`) and the model it keeps in step:
each add reaches the model once, through `items_added` with the first new row; an add made
by another process is applied by `refresh`, and the answers then equal a fresh load's; an
add that cannot be persisted leaves the model and the catalogue as they were."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from serving import N_ITEMS, copy_of, load

from sidrec.catalogue import store
from sidrec.errors import SidrecError
from sidrec.models.liger import LIGER

ARCTIC = {"id": "n1", "text": "Title: Arctic Expedition; Genres: documentary"}
JAZZ = {"id": "n2", "text": "Title: Jazz Piano Nights; Genres: music"}
YODEL = {"id": "n3", "text": "Title: Yodel Summer; Genres: music"}
HISTORY = ["i01", "i03", "i05"]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(catalogue size, first_new) of every `LIGER.items_added` call in the test."""
    seen: list[tuple[int, int]] = []
    real = LIGER.items_added

    def items_added(self: LIGER, catalogue, first_new: int) -> None:  # noqa: ANN001
        seen.append((catalogue.n_items, first_new))
        real(self, catalogue, first_new)

    monkeypatch.setattr(LIGER, "items_added", items_added)
    return seen


def add_in_another_process(model_dir: Path, items: list[dict]) -> None:
    """`sidrec.load(model_dir).add_items(items)` in a process of its own."""
    code = "import json, sys, sidrec; sidrec.load(sys.argv[1]).add_items(json.loads(sys.argv[2]))"
    subprocess.run([sys.executable, "-c", code, str(model_dir), json.dumps(items)], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)


def test_each_add_reaches_the_model_once_with_its_first_new_row(
        served_run: Path, tmp_path: Path, calls: list[tuple[int, int]]) -> None:
    run = copy_of(served_run, tmp_path)
    rec = load(run / "models" / "liger")
    assert calls == []  # nothing added yet: the load tells the model nothing
    rec.add_items([ARCTIC, JAZZ])
    rec.add_items([YODEL])
    assert rec.catalogue.refresh() == 0  # its own adds: nothing new in the file
    assert calls == [(N_ITEMS + 2, N_ITEMS), (N_ITEMS + 3, N_ITEMS + 2)]
    assert rec.model.catalogue is rec.catalogue.rows
    calls.clear()
    again = load(run / "models" / "liger")  # the stored items, applied in one call
    assert calls == [(N_ITEMS + 3, N_ITEMS)]
    assert again.catalogue.ids[N_ITEMS:] == ["n1", "n2", "n3"]


def test_an_add_from_another_process_is_applied_by_refresh(
        served_run: Path, tmp_path: Path, calls: list[tuple[int, int]]) -> None:
    run = copy_of(served_run, tmp_path)
    model_dir = run / "models" / "liger"
    rec = load(model_dir)
    rec.add_items([ARCTIC])
    add_in_another_process(model_dir, [JAZZ])
    assert "n2" not in rec.catalogue  # until it reads the file
    calls.clear()
    assert rec.catalogue.refresh() == 1
    assert calls == [(N_ITEMS + 2, N_ITEMS + 1)]
    assert rec.catalogue.ids[N_ITEMS:] == ["n1", "n2"]
    assert rec.catalogue.item("n2")["added"] is True
    rec.add_items([YODEL])  # after the other's item, which the file keeps
    fresh = load(model_dir)
    assert fresh.catalogue.ids[N_ITEMS:] == ["n1", "n2", "n3"]
    everything = {"k": N_ITEMS + 3, "inference": {"mode": "dense"}}
    got, want = rec.recommend(HISTORY, **everything), fresh.recommend(HISTORY, **everything)
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-5)


def test_a_refresh_in_progress_reads_as_stale(
        served_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server checks `stale` without the lock before it calls a history item unknown:
    while another request's refresh is applying the items, it must still read as stale
    (and so wait for the refresh), or that item is a 400 on a Ray replica."""
    run = copy_of(served_run, tmp_path)
    model_dir = run / "models" / "liger"
    rec = load(model_dir)
    add_in_another_process(model_dir, [JAZZ])
    during: list[bool] = []
    real = LIGER.items_added

    def items_added(self: LIGER, catalogue, first_new: int) -> None:  # noqa: ANN001
        during.append(rec.catalogue.stale())
        real(self, catalogue, first_new)

    monkeypatch.setattr(LIGER, "items_added", items_added)
    assert rec.catalogue.refresh() == 1
    assert during == [True]
    assert not rec.catalogue.stale() and "n2" in rec.catalogue


def test_an_add_that_cannot_be_persisted_changes_nothing(
        served_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = copy_of(served_run, tmp_path)
    rec = load(run / "models" / "liger")
    before = rec.recommend(HISTORY, k=10)

    def disk_full(*args: object) -> None:
        raise SidrecError("cannot persist the added items (disk full)")

    with monkeypatch.context() as m:
        m.setattr(store, "write", disk_full)
        with pytest.raises(SidrecError, match="disk full"):
            rec.add_items([ARCTIC])
    assert "n1" not in rec.catalogue and len(rec.catalogue) == N_ITEMS
    assert rec.model.catalogue.n_items == N_ITEMS and rec.model.text_emb.shape[0] == N_ITEMS
    after = rec.recommend(HISTORY, k=10)
    assert [i for i, _ in after] == [i for i, _ in before]
    assert [s for _, s in after] == pytest.approx([s for _, s in before], abs=1e-5)
    assert rec.add_items([ARCTIC]) == ["n1"]  # and the next add goes through
    assert store.read(rec.catalogue.run)[0].ids == ("n1",)


def test_a_vector_the_tokenizer_cannot_place_is_the_callers_fault(served_run: Path,
                                                                 tmp_path: Path) -> None:
    """Values so large that the tokenizer's distances overflow give no code of its codebooks:
    the item is refused, naming its vector, before the model sees it."""
    from sidrec.errors import ItemError

    rec = load(copy_of(served_run, tmp_path) / "models" / "liger")
    dim, required = rec.catalogue.vector_rule()
    assert (dim, required) == (384, False)
    with pytest.raises(ItemError, match=r"items\[1\] \('huge'\): the tokenizer cannot place") \
            as e:
        rec.add_items([ARCTIC, {"id": "huge", "text": "Title: Huge", "vector": [3e38] * dim}])
    assert e.value.field == "vector" and len(rec.catalogue) == N_ITEMS


def test_an_add_retried_with_the_same_text_succeeds_and_adds_nothing(
        served_run: Path, tmp_path: Path, calls: list[tuple[int, int]]) -> None:
    """A client that did not get the answer to its add may send it again: the same id
    and text is a success that adds nothing; another text for the id stays a duplicate;
    rows of a refused add name the request's items, repeats counted."""
    from sidrec.errors import ItemError

    rec = load(copy_of(served_run, tmp_path) / "models" / "liger")
    assert rec.add_items([ARCTIC]) == ["n1"]
    assert rec.add_items([ARCTIC]) == ["n1"]
    assert rec.add_items([ARCTIC, JAZZ]) == ["n1", "n2"]  # the new one is added alone
    assert calls == [(N_ITEMS + 1, N_ITEMS), (N_ITEMS + 2, N_ITEMS + 1)]
    assert store.read(rec.catalogue.run)[0].ids == ("n1", "n2")
    with pytest.raises(ItemError, match=r"items\[0\]: item id 'n1' already exists") as e:
        rec.add_items([{**ARCTIC, "text": "Title: Another Film"}])
    assert e.value.duplicate
    with pytest.raises(ItemError, match=r"items\[0\]: item id 'i01' already exists"):
        rec.add_items([{"id": "i01", "text": rec.catalogue.rows.item_text[1]}])  # trained
    dim = rec.catalogue.vector_rule()[0]
    with pytest.raises(ItemError, match=r"items\[2\] \('x'\): the tokenizer cannot place"):
        rec.add_items([ARCTIC, YODEL, {"id": "x", "text": "Title: X", "vector": [3e38] * dim}])
    assert len(rec.catalogue) == N_ITEMS + 2
