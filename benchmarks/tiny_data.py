"""Not a benchmark: the tiny table the benchmarks' smallest sizes (`--smoke`) read."""

from __future__ import annotations

from pathlib import Path


def movielens_table(folder: Path, n_users: int, n_items: int, per_user: int = 10) -> str:
    """ratings.csv + movies.csv in MovieLens' csv layout; returns the ratings path.

    User u walks the items in steps of 7 from item 3u, so every item is read about
    n_users * per_user / n_items times (a 5-core filter keeps them all when that is >= 5)
    and no user repeats an item while per_user <= n_items and 7 does not divide n_items.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ratings = ["userId,movieId,rating,timestamp"] + [
        f"{u},{(3 * u + 7 * t) % n_items},4.0,{1000 + t}"
        for u in range(n_users) for t in range(per_user)]
    movies = ["movieId,title,genres"] + [
        f"{i},Film number {i} ({1990 + i % 20}),{'Drama' if i % 2 else 'Comedy'}"
        for i in range(n_items)]
    (folder / "ratings.csv").write_text("\n".join(ratings) + "\n")
    (folder / "movies.csv").write_text("\n".join(movies) + "\n")
    return str(folder / "ratings.csv")
