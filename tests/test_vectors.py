"""`sidrec embed RUN --vectors FILE`: item vectors computed elsewhere (`sidrec.vectors`), and
the items added to such a run, which bring their own vector."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sidrec.data import Dataset
from sidrec.embed import FROM_FILE
from sidrec.errors import SidrecError
from sidrec.run import RunDir

ITEMS = ["w", "x", "y", "z"]


@pytest.fixture
def run(cli: Callable, tmp_path: Path) -> Path:
    """A run prepared from an interactions table alone: no item text, so vectors or nothing."""
    inter = tmp_path / "e.csv"
    inter.write_text("user,item,time\na,w,0\na,x,1\na,y,2\na,z,3\nb,w,0\nb,z,1\nb,x,2\nb,y,3\n")
    assert cli("data", "prepare", inter, "--run-dir", tmp_path / "run").code == 0
    return tmp_path / "run"


def vectors_of(ids: list[str], d: int = 3) -> np.ndarray:
    return np.array([[ord(i), n, 0.5][:d] for n, i in enumerate(ids)], dtype=np.float32)


def write_file(kind: str, folder: Path, ids: list[str], vectors: np.ndarray) -> list[str]:
    """The file in format `kind`; returns the embed arguments that name it."""
    if kind == "npy":
        np.save(folder / "v.npy", vectors)
        (folder / "v.ids").write_text("".join(f"{i}\n" for i in ids))
        return ["--vectors", str(folder / "v.npy"), "--ids", str(folder / "v.ids")]
    if kind == "parquet":
        pd.DataFrame({"item_id": ids, "embedding": list(vectors)}).to_parquet(
            folder / "v.parquet")
        return ["--vectors", str(folder / "v.parquet")]
    table = pd.DataFrame(vectors, columns=[f"v{n}" for n in range(vectors.shape[1])])
    table.insert(0, "id", ids)
    table.to_csv(folder / "v.csv", index=False)
    return ["--vectors", str(folder / "v.csv")]


@pytest.mark.parametrize("kind", ["npy", "parquet", "csv"])
def test_vectors_from_a_file_in_any_row_order(cli: Callable, run: Path, tmp_path: Path,
                                              kind: str) -> None:
    shuffled = ["z", "x", "w", "y"]
    args = write_file(kind, tmp_path, shuffled, vectors_of(shuffled))
    result = cli("embed", run, *args)
    assert result.code == 0, result.err
    assert "embeddings: 4 x 3 from" in result.out
    ds = Dataset.load(run)
    expected = vectors_of(shuffled)[[shuffled.index(i) for i in ds.item_ids]]
    np.testing.assert_array_equal(RunDir(run).load_embeddings(ds.n_items, ds.item_text),
                                  expected)
    info = json.loads((run / "embeddings.json").read_text())
    assert info["encoder"] == FROM_FILE and info["dim"] == 3


def test_a_changed_file_is_read_again(cli: Callable, run: Path, tmp_path: Path) -> None:
    from sidrec.embed import EmbedConfig, embed

    args = write_file("npy", tmp_path, ITEMS, vectors_of(ITEMS))
    cfg = EmbedConfig(vectors=args[1], ids=args[3])
    assert not embed(run, cfg)["cached"]
    assert embed(run, cfg)["cached"]  # unchanged: reused
    write_file("npy", tmp_path, ITEMS, vectors_of(ITEMS) * 2)
    info = embed(run, cfg)
    assert not info["cached"]
    np.testing.assert_array_equal(np.load(run / "embeddings.npy")[0], vectors_of(ITEMS)[0] * 2)


@pytest.mark.parametrize(("ids", "change", "needle"), [
    (ITEMS[:3], None, "no vector for item 'z' (1 catalogue item(s) missing)"),
    ([*ITEMS, "q"], None, "item 'q' is not in the prepared catalogue"),
    ([*ITEMS, "x"], None, "item 'x' has two vectors (rows 2 and 5)"),
    (ITEMS, "inf", "the vector of item 'x' holds NaN or inf"),
])
def test_bad_vectors_are_one_line_naming_the_item(cli: Callable, run: Path, tmp_path: Path,
                                                  ids: list[str], change: str | None,
                                                  needle: str) -> None:
    vectors = vectors_of(ids)
    if change == "inf":
        vectors[1, 2] = np.inf
    for kind in ("npy", "csv"):
        result = cli("embed", run, *write_file(kind, tmp_path, ids, vectors))
        assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result
        assert needle in result.err and "Traceback" not in result.err
        assert not (run / "embeddings.npy").exists()


def test_a_file_of_mixed_dimensions_or_no_ids_is_refused(cli: Callable, run: Path,
                                                         tmp_path: Path) -> None:
    pd.DataFrame({"item_id": ITEMS, "vector": [[1.0, 2.0], [1.0], [1.0, 2.0], [3.0, 4.0]]}
                 ).to_parquet(tmp_path / "v.parquet")
    result = cli("embed", run, "--vectors", tmp_path / "v.parquet")
    assert result.code == 2 and "row 2 ('x') has 1 values, row 1 has 2" in result.err
    np.save(tmp_path / "v.npy", vectors_of(ITEMS))
    result = cli("embed", run, "--vectors", tmp_path / "v.npy")
    assert result.code == 2 and "a .npy file holds no item ids; pass --ids IDS" in result.err


def test_items_added_to_a_vectors_run_bring_their_vector(served_run: Path,
                                                         tmp_path: Path) -> None:
    from serving import copy_of, load

    from sidrec.embed import EmbedConfig, embed
    from sidrec.errors import ItemError
    from sidrec.serve.schemas import NewItem

    run = copy_of(served_run, tmp_path)
    ds = Dataset.load(run)
    vectors = RunDir(run).load_embeddings(ds.n_items)  # the same vectors, from a file
    args = write_file("npy", tmp_path, [str(i) for i in ds.item_ids], vectors)
    embed(run, EmbedConfig(vectors=args[1], ids=args[3]))
    rec = load(run / "models" / "liger")
    text_only = {"id": "n1", "text": "Title: Arctic Expedition"}
    with pytest.raises(ItemError, match=r"items\[0\] \('n1'\): no vector; this run's item "
                                        r"vectors came from .*v\.npy") as e:
        rec.add_items([text_only])
    assert e.value.field == "vector" and "n1" not in rec.catalogue
    with pytest.raises(ItemError, match=r"vector has shape \[2\]; this run's item vectors "
                                        rf"have {vectors.shape[1]} values"):
        rec.add_items([{**text_only, "vector": [1.0, 2.0]}])
    own = vectors[3] + 0.01
    assert rec.add_items([{**text_only, "vector": own.tolist()}]) == ["n1"]
    np.testing.assert_allclose(rec.model.catalogue.text_emb[-1].numpy(), own, atol=1e-6)
    assert load(run / "models" / "liger").catalogue.ids[-1] == "n1"  # persisted with its vector
    assert NewItem(id="n2", text="t", vector=[1.0]).vector == [1.0]  # POST /v1/items takes it
    with pytest.raises(SidrecError):
        embed(run, EmbedConfig(vectors=str(tmp_path / "missing.npy"), ids=args[3]))
