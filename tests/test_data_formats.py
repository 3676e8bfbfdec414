"""The datasets people use, each from fixture files in its real format: Amazon Reviews 2023
(and the lab's split CSVs), MovieLens-1M (`::`, latin-1) and -20M/25M/32M (CSV), Steam
(Python literals), generic tables with detected columns. Exact splits and texts; every bad
input through the CLI is one line naming the file, line and field, exit code 2."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from sidrec.data import Dataset, PrepareConfig, prepare
from sidrec.data.readers import common

SplitById = dict[str, tuple[list[str], str, str]]


def split_by_id(ds: Dataset) -> SplitById:
    ids = ds.item_ids
    return {str(u): ([str(x) for x in ids[t]], str(ids[v]), str(ids[s]))
            for u, t, v, s in zip(ds.user_ids, ds.train, ds.valid, ds.test, strict=True)}


def write(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(line + "\n" for line in lines).encode(encoding)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def prepared(source: Path, tmp_path: Path, **settings: object) -> Dataset:
    prepare(tmp_path / "run", PrepareConfig(source=str(source), **settings))  # type: ignore[arg-type]
    return Dataset.load(tmp_path / "run")


@pytest.fixture
def fail(cli: Callable, tmp_path: Path) -> Callable[..., str]:
    """`fail(source, *extra)`: prepare must stop with one line on stderr and exit code 2."""

    def _fail(source: Path, *extra: str) -> str:
        result = cli("data", "prepare", str(source), "--run-dir", str(tmp_path / "run"), *extra)
        lines = result.err.strip().splitlines()
        assert result.code == 2 and len(lines) == 1, result
        assert lines[0].startswith("sidrec: error: ") and "Traceback" not in result.err
        assert not (tmp_path / "run" / "dataset").exists()
        return lines[0]

    return _fail


# ---------------------------------------------------------------- Amazon Reviews 2023

T0 = 1_600_000_000_000  # ms


def review(user: str, item: str, ms: int, **extra: object) -> str:
    return json.dumps({"rating": 5.0, "title": "t", "text": "ok", "images": [], "asin": "c",
                       "parent_asin": item, "user_id": user, "timestamp": ms,
                       "verified_purchase": True, **extra}, ensure_ascii=False)


REVIEWS_2023 = [
    review("U1", "P3", T0 + 3000, text="Tr\u00e8s bien \u2713"),
    review("U1", "P1", T0 + 900),  # 0.4 s after the kept P3 review: ms decide the order
    review("U2", "P2", T0 + 2000),
    review("U1", "P3", T0 + 500),  # repeated (U1, P3), earlier: this one is kept
    review("U1", "P2", T0 + 2000),
    review("U2", "P1", T0 + 1000),
    review("U2", "P4", T0 + 9000),
    review("U2", "P2", T0 + 2000),  # repeated at the same time: the first in the file stays
    review("U3", "P1", T0 + 5000),  # one review: too short to split
]
META_2023 = [
    json.dumps({"main_category": "Musical Instruments", "title": "Fender \u2013 Sunburst",
                "average_rating": 4.5, "features": ["Solid body", "Maple  neck"],
                "description": [], "price": 499.99, "store": "Fender",
                "categories": ["Musical Instruments", "Guitars"], "details": {"w": "3 kg"},
                "parent_asin": "P1"}, ensure_ascii=False),
    json.dumps({"title": "Drumsticks \U0001f941", "features": [], "price": None, "store": None,
                "description": ["Pair of sticks.", "x" * 2000], "categories": [],
                "parent_asin": "P2"}, ensure_ascii=False),
    json.dumps({"title": "", "price": "None", "store": "Yamaha",
                "categories": ["Musical Instruments"], "parent_asin": "P3"}),
    json.dumps({"title": "Never reviewed", "parent_asin": "P9"}),
]  # P4 has no meta line
TEXTS_2023 = {
    "P1": "Title: Fender \u2013 Sunburst; Store: Fender; Categories: Musical Instruments, "
          "Guitars; Price: 499.99; Features: Solid body, Maple neck",
    "P2": "Title: Drumsticks \U0001f941; Description: Pair of sticks., " + "x" * 985,
    "P3": "Store: Yamaha; Categories: Musical Instruments",
    "P4": "Item: P4",
}


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl"])
def test_amazon_2023_reviews_and_meta(tmp_path: Path, suffix: str) -> None:
    folder = tmp_path / "raw"
    write(folder / f"Musical_Instruments{suffix}", REVIEWS_2023)
    write(folder / f"meta_Musical_Instruments{suffix}", META_2023)
    ds = prepared(folder, tmp_path)  # the folder: format and meta file found
    assert list(ds.item_ids) == ["P1", "P2", "P3", "P4"]
    assert split_by_id(ds) == {"U1": (["P3"], "P1", "P2"), "U2": (["P1"], "P2", "P4")}
    assert ds.item_text == [TEXTS_2023[i] for i in ds.item_ids]
    assert ds.cold.tolist() == [False, True, False, True]
    m = ds.manifest
    assert m["dataset"] == "amazon-2023/Musical_Instruments"
    assert m["source"]["format"] == "amazon-2023"
    assert (m["source"]["repeated_reviews_dropped"], m["source"]["items_without_meta"]) == (2, 1)
    assert (m["counts"]["interactions"], m["counts"]["dropped_short_users"]) == (6, 1)


def test_amazon_2023_5core_after_keeping_the_earliest_review(tmp_path: Path) -> None:
    # U repeats item A three times: one interaction, so A is below 2-core and goes, then U
    lines = [review("U", "A", T0 + i) for i in range(3)] + [review("U", "B", T0 + 9)] + [
        review(u, i, T0 + t) for t, (u, i) in enumerate(
            [("V", "B"), ("V", "C"), ("V", "D"), ("W", "B"), ("W", "C"), ("W", "D")])]
    write(tmp_path / "x" / "Toys.jsonl.gz", lines)
    write(tmp_path / "x" / "meta_Toys.jsonl.gz",
          [json.dumps({"parent_asin": i, "title": i}) for i in "ABCD"])
    ds = prepared(tmp_path / "x" / "Toys.jsonl.gz", tmp_path, kcore=2)
    assert split_by_id(ds) == {"V": (["B"], "C", "D"), "W": (["B"], "C", "D")}


@pytest.mark.parametrize("csv", [".csv", ".csv.gz"])
def test_amazon_2023_lab_split_files_give_back_the_lab_split(tmp_path: Path, csv: str) -> None:
    folder = tmp_path / "benchmark" / "5core" / "last_out_w_his"
    head = "user_id,parent_asin,rating,timestamp,history"
    write(folder / f"All_Beauty.train{csv}", [head, "A,X1,5.0,1000,", "A,X2,4.0,2000,X1",
                                              "B,X2,3.0,1500,", "B,X3,3.0,1500,X2"])
    write(folder / f"All_Beauty.valid{csv}", [head, "A,X3,5.0,3000,X1 X2",
                                              "B,X1,2.0,1500,X2 X3"])  # same ms as train
    write(folder / f"All_Beauty.test{csv}", [head, "A,X4,1.0,4000,X1 X2 X3",
                                             "B,X4,1.0,1600,X2 X3 X1"])
    write(folder / "meta_All_Beauty.jsonl",
          [json.dumps({"parent_asin": f"X{i}", "title": f"Lipstick n\u00b0{i}"})
           for i in range(1, 5)])
    ds = prepared(folder / f"All_Beauty.test{csv}", tmp_path)
    assert split_by_id(ds) == {"A": (["X1", "X2"], "X3", "X4"), "B": (["X2", "X3"], "X1", "X4")}
    assert ds.item_text[0] == "Title: Lipstick n\u00b01"
    assert ds.manifest["dataset"] == "amazon-2023/All_Beauty"
    assert ds.manifest["source"]["variant"] == "last_out_w_his"


# ---------------------------------------------------------------- MovieLens-1M / 20M+

RATINGS_DAT = ["1::1193::5::978300760", "1::661::3::978302109", "1::914::3::978301968",
               "2::1193::4::978298413", "2::661::5::978300000", "2::3408::4::978299000",
               "2::914::2::978299000"]  # 914 ties 3408: the file order
MOVIES_DAT = ["1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
              "661::James and the Giant Peach (1996)::Animation|Children's|Musical",
              "914::My Fair Lady (1964)::Musical|Romance",
              "3408::Mis\u00e9rables, Les (1998)::Drama"]


def test_movielens_1m(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    write(folder / "ratings.dat", RATINGS_DAT)
    write(folder / "movies.dat", MOVIES_DAT, "latin-1")
    ds = prepared(folder, tmp_path)
    assert list(ds.item_ids) == ["661", "914", "1193", "3408"]  # numeric order
    assert split_by_id(ds) == {"1": (["1193"], "914", "661"),
                               "2": (["1193", "3408"], "914", "661")}
    assert ds.item_text == [
        "Title: James and the Giant Peach; Year: 1996; Genres: Animation, Children's, Musical",
        "Title: My Fair Lady; Year: 1964; Genres: Musical, Romance",
        "Title: One Flew Over the Cuckoo's Nest; Year: 1975; Genres: Drama",
        "Title: Mis\u00e9rables, Les; Year: 1998; Genres: Drama"]
    assert ds.manifest["dataset"] == "movielens-1m"


@pytest.mark.parametrize("release", ["ml-20m", "ml-25m", "ml-32m"])
def test_movielens_csv_releases(tmp_path: Path, release: str) -> None:
    folder = tmp_path / release
    write(folder / "ratings.csv", ["userId,movieId,rating,timestamp", "1,17,4.0,944249077",
                                   "1,25,1.0,944250228", "1,29,2.0,943230976", "2,17,3.5,1000",
                                   "2,29,5.0,1000", "2,131,4.0,999"])
    write(folder / "movies.csv", [
        "movieId,title,genres", "17,Sense and Sensibility (1995),Drama|Romance",
        '25,"Leaving Las Vegas (1995)",Drama|Romance',
        '29,"City of Lost Children, The (Cit\u00e9 des enfants perdus, La) (1995)",'
        "Adventure|Sci-Fi", "131,Frankie Starlight (1995),(no genres listed)"])
    ds = prepared(folder / "ratings.csv", tmp_path)
    assert split_by_id(ds) == {"1": (["29"], "17", "25"), "2": (["131"], "17", "29")}
    assert ds.item_text[2:] == [
        "Title: City of Lost Children, The (Cit\u00e9 des enfants perdus, La); Year: 1995; "
        "Genres: Adventure, Sci-Fi", "Title: Frankie Starlight; Year: 1995"]
    assert ds.manifest["dataset"] == f"movielens-{release[3:]}"
    assert ds.manifest["source"]["format"] == "movielens-csv"


# ---------------------------------------------------------------- Steam (LIGER)

STEAM_REVIEWS = [
    "{'username': 'Chaos Syren', 'hours': 0.1, 'product_id': '725280', 'page_order': 0, "
    "'date': '2017-12-17', 'text': 'Not acceptable', 'early_access': False, 'page': 1}",
    "{'username': \"Ol' Joe\", 'product_id': '35140', 'date': '2018-01-04', "
    "'text': 'Tr\u00e8s dr\u00f4le \U0001f602', 'early_access': False}",
    "{'username': 'Chaos Syren', 'product_id': '35140', 'date': '2017-12-17'}",  # tie
    "{'username': \"Ol' Joe\", 'product_id': '725280', 'date': '2017-01-01', 'user_id': '76'}",
    "{'username': 'Chaos Syren', 'product_id': '440', 'date': '2018-02-01'}",
    "{'username': \"Ol' Joe\", 'product_id': '440', 'date': '2018-01-05'}",
]
STEAM_GAMES = [
    "{'publisher': 'Kotoshiro', 'genres': ['Action', 'Casual'], 'app_name': 'Lost Kitty', "
    "'title': 'Lost Kitty', 'tags': ['Strategy', 'Action'], 'price': 4.99, "
    "'early_access': False, 'id': '725280', 'developer': 'Kotoshiro'}",
    "{'app_name': 'Half-Life', 'genres': ['Action'], 'id': '35140', 'tags': []}",
    "{'title': 'A game without an id', 'genres': ['Indie']}",
    "{'title': 'Team Fortress Classic', 'id': '440', 'developer': 'Valve', "
    "'tags': ['FPS', 'Multiplayer'], 'metascore': 'NA', 'discount_price': None}",
]


def test_steam(tmp_path: Path) -> None:
    write(tmp_path / "steam" / "steam_reviews.json.gz", STEAM_REVIEWS)
    write(tmp_path / "steam" / "steam_games.json.gz", STEAM_GAMES)
    ds = prepared(tmp_path / "steam", tmp_path)
    assert list(ds.item_ids) == ["440", "35140", "725280"]
    assert split_by_id(ds) == {"Chaos Syren": (["725280"], "35140", "440"),
                               "Ol' Joe": (["725280"], "35140", "440")}
    assert ds.item_text == [
        "Title: Team Fortress Classic; Tags: FPS, Multiplayer; Developer: Valve",
        "Title: Half-Life; Genres: Action",
        "Title: Lost Kitty; Genres: Action, Casual; Tags: Strategy, Action; Developer: Kotoshiro"]
    assert ds.manifest["dataset"] == "steam"


# ---------------------------------------------------------------- generic tables, detected

ITEMS_CSV = ["item,title", "x,X", "y,Y", "z,Z"]


def test_csv_with_user_item_timestamp_needs_no_column_names(cli: Callable,
                                                            tmp_path: Path) -> None:
    inter = write(tmp_path / "events.csv", ["user,item,timestamp", "a,x,3", "a,y,1", "a,z,2",
                                            "b,z,1", "b,x,2", "b,y,3"])
    items = write(tmp_path / "items.csv", ITEMS_CSV)
    result = cli("data", "prepare", inter, "--items", items, "--run-dir", tmp_path / "run")
    assert result.code == 0, result.err
    assert "columns detected: user='user', item='item', time='timestamp'" in result.out
    assert split_by_id(Dataset.load(tmp_path / "run")) == {"a": (["y"], "z", "x"),
                                                           "b": (["z"], "x", "y")}


def test_detected_columns_with_iso_dates(tmp_path: Path) -> None:
    inter = write(tmp_path / "log.csv", [
        "userId,movieId,date,rating", "1,x,2020-01-02,5", "1,y,2020-01-01T12:00:00,5",
        "1,z,2020-01-01 11:00:00+00:00,5", "2,x,2019-12-31,1", "2,y,2020-01-01,1",
        "2,z,2020-01-01T00:00:00Z,1"])  # the last ties with the one before: file order
    items = write(tmp_path / "movies.csv", ["movieId,title", "x,X", "y,Y", "z,Z"])
    ds = prepared(inter, tmp_path, items=str(items))
    assert split_by_id(ds) == {"1": (["z"], "y", "x"), "2": (["x"], "y", "z")}
    assert ds.manifest["source"]["columns"] == {"user": "userId", "item": "movieId",
                                                "time": "date", "item_id": "movieId"}


def test_two_columns_that_could_match_are_refused(fail: Callable, tmp_path: Path) -> None:
    inter = write(tmp_path / "e.csv", ["user,user_id,item,timestamp", "a,1,x,1"])
    items = write(tmp_path / "items.csv", ITEMS_CSV)
    msg = fail(inter, "--items", str(items))
    assert f"{inter}: columns 'user' and 'user_id' could both be the user column" in msg
    assert "user_col=NAME" in msg
    inter = write(tmp_path / "e.csv", ["who,item,timestamp", "a,x,1"])
    assert f"{inter}: no user column found" in fail(inter, "--items", str(items))


def test_a_named_column_settles_it(tmp_path: Path) -> None:
    inter = write(tmp_path / "e.csv", ["user,user_id,item,ts", "a,1,x,1", "a,1,y,2", "b,1,z,3"])
    items = write(tmp_path / "items.csv", ITEMS_CSV)
    ds = prepared(inter, tmp_path, items=str(items), user_col="user_id")
    assert split_by_id(ds) == {"1": (["x"], "y", "z")}


@pytest.mark.parametrize("which", ["interactions", "items"])
def test_a_column_name_given_twice_is_refused(fail: Callable, tmp_path: Path,
                                              which: str) -> None:
    # pandas reads the second as `item_id.1`: the first would be read without a word
    events = ["user_id,item_id,item_id,timestamp", "a,x,y,1", "a,y,z,2", "a,z,x,3"]
    inter = write(tmp_path / "e.csv", events if which == "interactions" else
                  ["user_id,item_id,timestamp", "a,x,1", "a,y,2", "a,z,3"])
    items = write(tmp_path / "items.csv", ["item_id,title,item_id", "x,X,1", "y,Y,2", "z,Z,3"]
                  if which == "items" else ["item_id,title", "x,X", "y,Y", "z,Z"])
    where = inter if which == "interactions" else items
    column = "columns 2 and 3" if which == "interactions" else "columns 1 and 3"
    assert (f"{where}: column 'item_id' appears twice in the header ({column}); rename or "
            "drop one") in fail(inter, "--items", str(items))


def test_a_json_lines_table_is_read_as_one(cli: Callable, tmp_path: Path) -> None:
    rows = [("a", "x", 3), ("a", "y", 1), ("a", "z", 2), ("b", "z", 1), ("b", "x", 2),
            ("b", "y", 3)]
    lines = [json.dumps({"user_id": u, "item_id": i, "timestamp": t}) for u, i, t in rows]
    inter = write(tmp_path / "events.jsonl", [*lines[:3], "", *lines[3:]])  # a blank line
    items = write(tmp_path / "items.jsonl", [json.dumps({"item_id": "x", "title": "X"}),
                                             json.dumps({"item_id": "y", "title": "Y"}),
                                             json.dumps({"item_id": "z"})])
    for extra in ([], ["--format", "table"]):  # detected: not taken for Amazon 2023
        result = cli("data", "prepare", inter, "--items", items, "--run-dir", tmp_path / "run",
                     "--force", *extra)
        assert result.code == 0, result.err
        ds = Dataset.load(tmp_path / "run")
        assert ds.manifest["source"]["format"] == "table"
        assert split_by_id(ds) == {"a": (["y"], "z", "x"), "b": (["z"], "x", "y")}
        assert dict(zip(ds.item_ids, ds.item_text, strict=True)) == {
            "x": "Title: X", "y": "Title: Y", "z": "Item: z"}


@pytest.mark.parametrize(("line", "needle"), [
    ('{"user_id": "b", "item_id": "x", "item_id": "y", "timestamp": 4}',
     ":3: field 'item_id' is given twice"),
    ('{"user_id": "b", "timestamp": 4}', ":3: no field 'item_id', which the first line has"),
    ('{"user_id": "b", "item_id": "x", "timestamp": "soon"}', ":3: column 'timestamp' is not"),
])
def test_bad_json_lines_table(fail: Callable, tmp_path: Path, line: str, needle: str) -> None:
    good = [json.dumps({"user_id": "a", "item_id": i, "timestamp": t}) for i, t in
            (("x", 1), ("y", 2))]
    inter = write(tmp_path / "events.jsonl", [*good, line])
    items = write(tmp_path / "items.csv", ["item_id,title", "x,X", "y,Y"])
    assert f"{inter}{needle}" in fail(inter, "--items", str(items))


def test_an_interactions_table_alone_prepares_without_text(cli: Callable,
                                                           tmp_path: Path) -> None:
    inter = write(tmp_path / "e.csv", ["user,item,time", "a,w,0", "a,x,1", "a,y,2", "a,z,3",
                                       "b,w,0", "b,z,1", "b,x,2", "b,y,3"])
    run = tmp_path / "run"
    result = cli("data", "prepare", inter, "--run-dir", run)
    assert result.code == 0, result.err
    ds = Dataset.load(run)
    assert not ds.has_text and split_by_id(ds) == {"a": (["w", "x"], "y", "z"),
                                                   "b": (["w", "z"], "x", "y")}
    result = cli("train", run, "--model", "pop")  # Pop (and SASRec) need no text
    assert result.code == 0, result.err
    result = cli("embed", run)  # the text stages say what they need
    assert result.code == 2 and "Traceback" not in result.err
    assert f"{run}: prepared without an items table" in result.err
    assert "--items ITEMS_TABLE" in result.err and not (run / "embeddings.npy").exists()


def test_dataset_name_can_be_given(tmp_path: Path) -> None:
    inter = write(tmp_path / "e.csv", ["user,item,time", "a,x,1", "a,y,2", "a,z,3"])
    items = write(tmp_path / "items.csv", ITEMS_CSV)
    assert prepared(inter, tmp_path, items=str(items)).manifest["dataset"] == "table/e"
    ds = prepared(inter, tmp_path, items=str(items), dataset="my-shop-2024")
    assert ds.manifest["dataset"] == "my-shop-2024"


def test_progress_bar_reader_reads_every_byte(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "PROGRESS_MIN_BYTES", 0)  # the counted path, on tiny files
    for name in ("r.jsonl.gz", "r.jsonl"):
        path = write(tmp_path / name, REVIEWS_2023 * 500)
        assert [line for _, line in common.numbered_lines(path)] == [
            r + "\n" for r in REVIEWS_2023 * 500]


# ---------------------------------------------------------------- bad input, per format


def test_bad_ratings_dat(fail: Callable, tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    write(folder / "movies.dat", MOVIES_DAT, "latin-1")
    ratings = write(folder / "ratings.dat", [RATINGS_DAT[0], "1::661::3"])
    assert f"{ratings}:2: expected 4 '::'-separated fields" in fail(folder)
    write(folder / "ratings.dat", [RATINGS_DAT[0], "1::661::3::soon"])
    assert f"{ratings}:2: field 'Timestamp' is not numeric ('soon')" in fail(folder)
    write(folder / "ratings.dat", RATINGS_DAT)
    movies = write(folder / "movies.dat", ["661::No genres field"], "latin-1")
    assert f"{movies}:1: expected 3 '::'-separated fields" in fail(folder)


def test_bad_ratings_csv(fail: Callable, tmp_path: Path) -> None:
    write(tmp_path / "ml" / "movies.csv", ["movieId,title,genres", "1,A (1990),Drama"])
    ratings = write(tmp_path / "ml" / "ratings.csv",
                    ["userId,movieId,rating,timestamp", "1,1,4,10", "1,1,4,later"])
    assert f"{ratings}:3: field 'timestamp' is not numeric ('later')" in fail(tmp_path / "ml")
    write(ratings, ["userId,item,rating,timestamp", "1,1,4,10"])
    assert f"{ratings}: unknown column 'movieId'" in fail(tmp_path / "ml")


@pytest.mark.parametrize(("line", "needle"), [
    (review("U1", "P1", T0)[:-5], ":2: not valid JSON"),
    (json.dumps({"user_id": "U1", "timestamp": T0}), ":2: review lacks field 'parent_asin'"),
    (review("U1", "P1", "yesterday"), ":2: field 'timestamp' is not numeric ('yesterday')"),  # type: ignore[arg-type]
    ("[1, 2]", ":2: expected a JSON object {...}, got an array"),
])
def test_bad_amazon_2023_review(fail: Callable, tmp_path: Path, line: str, needle: str) -> None:
    reviews = write(tmp_path / "a" / "Toys.jsonl.gz", [REVIEWS_2023[0], line])
    write(tmp_path / "a" / "meta_Toys.jsonl.gz", META_2023)
    assert f"{reviews}{needle}" in fail(reviews)


def test_bad_amazon_2023_meta(fail: Callable, tmp_path: Path) -> None:
    reviews = write(tmp_path / "a" / "Toys.jsonl", REVIEWS_2023)
    assert "no file matching 'meta_Toys.jsonl*'; pass the meta file with --items" in fail(
        reviews)
    meta = write(tmp_path / "a" / "meta_Toys.jsonl", [META_2023[0], '{"parent_asin": "P2", '])
    assert f"{meta}:2: not valid JSON" in fail(reviews)
    write(meta, [json.dumps({"parent_asin": "Q1", "title": "other category"})])
    assert f"{meta}: none of the 4 reviewed items has a meta line" in fail(reviews)


def test_missing_lab_split_file(fail: Callable, tmp_path: Path) -> None:
    write(tmp_path / "s" / "Toys.train.csv", ["user_id,parent_asin,rating,timestamp", "A,X,1,1"])
    write(tmp_path / "s" / "meta_Toys.jsonl", [json.dumps({"parent_asin": "X"})])
    assert f"{tmp_path / 's' / 'Toys.valid.csv'}: file not found" in fail(tmp_path / "s")


@pytest.mark.parametrize(("line", "needle"), [
    ("{'username': 'u', 'product_id': '1', 'date': '2017-13-45'}",
     ":2: field 'date' is not a date ('2017-13-45')"),
    ("{'username': 'u', 'date': '2017-01-01'}", ":2: review lacks field 'product_id'"),
    ("{'username': 'u', 'product_id': __import__('os').getcwd()}", ":2: not a Python dict"),
    ('{"username": "u", "product_id": "1", "date": "2017-01-01", "ok": true}',
     ":2: not a Python dict literal"),  # JSON's `true` is not Python
])
def test_bad_steam_review(fail: Callable, tmp_path: Path, line: str, needle: str) -> None:
    reviews = write(tmp_path / "st" / "steam_reviews.json.gz", [STEAM_REVIEWS[0], line])
    write(tmp_path / "st" / "steam_games.json.gz", STEAM_GAMES)
    assert f"{reviews}{needle}" in fail(tmp_path / "st")


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_gzip(fail: Callable, tmp_path: Path, damage: str) -> None:
    reviews = write(tmp_path / "a" / "Toys.jsonl.gz", REVIEWS_2023 * 50)
    data = reviews.read_bytes()
    middle = len(data) // 2
    reviews.write_bytes(data[:-40] if damage == "truncated" else
                        data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64])
                        + data[middle + 64:])
    write(tmp_path / "a" / "meta_Toys.jsonl.gz", META_2023)
    msg = fail(reviews)  # a corrupt block may decode to garbage first: any one-line error
    assert f"{reviews}: cannot read" in msg if damage == "truncated" else str(reviews) in msg


def test_bad_iso_date_in_a_table(fail: Callable, tmp_path: Path) -> None:
    inter = write(tmp_path / "e.csv", ["user,item,date", "a,x,2020-01-01", "a,y,soon"])
    items = write(tmp_path / "items.csv", ITEMS_CSV)
    assert f"{inter}:3: column 'date' is not an ISO date ('soon')" in fail(
        inter, "--items", str(items))
