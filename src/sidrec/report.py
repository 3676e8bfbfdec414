"""Reporting, for `sidrec evaluate`, `sidrec bench` and the analyses: seed aggregation,
markdown tables, the results files and the figures.

`sidrec evaluate` records every evaluation in `metrics.json` and writes their table to
`results.md`; `sidrec bench` records its run in `bench.json` and writes its report,
rendered from that record alone (`render_bench`, also `sidrec report`), to `bench.md`, so
neither overwrites the other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sidrec.errors import SidrecError
from sidrec.io import atomic_path, exclusive, read_json, write_json, write_text
from sidrec.published import published_table
from sidrec.run import RunDir


def is_point_metric(name: str) -> bool:
    """True for a metric's own column (`recall@10`), not its interval or variants
    (`recall@10_lo`, `recall@10_ties_last`, `recall@10_sd`)."""
    return "@" in name and name.partition("@")[2].isdigit()


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample sd over seeds: same structure, each metric `m` plus `m_sd` (the
    interval bounds and tie variants are averaged, without an sd).

    Runs must be of one model on one split with the same rows; NaN rows stay NaN.
    `n_seeds` is added; a single run gets sd NaN.
    """
    if not runs:
        raise SidrecError("aggregate: no runs to aggregate")
    first = runs[0]
    keys = [(r["variant"], r["subset"]) for r in first["rows"]]
    for other in runs[1:]:
        if [(r["variant"], r["subset"]) for r in other["rows"]] != keys or other["split"] != first[
            "split"
        ]:
            raise SidrecError(
                f"aggregate: runs of {other['display_name']!r} do not have the same rows/split "
                f"as {first['display_name']!r}; aggregate one model and split at a time"
            )
    rows = []
    for i, template in enumerate(first["rows"]):
        row: dict[str, Any] = {"variant": template["variant"], "subset": template["subset"]}
        row["n"] = template["n"]
        for name in template:
            if "@" not in name:
                continue
            values = np.asarray([float(r["rows"][i][name]) for r in runs], dtype=np.float64)
            row[name] = float(values.mean())
            if is_point_metric(name):
                row[f"{name}_sd"] = (float(values.std(ddof=1)) if len(values) > 1
                                     else math.nan)
        rows.append(row)
    out = {k: v for k, v in first.items() if k not in ("rows", "users_per_s")}
    out["rows"] = rows
    out["n_seeds"] = len(runs)
    return out


def format_table(metrics: dict[str, Any] | Sequence[dict[str, Any]], digits: int = 4) -> str:
    """A markdown table with one line per (model, variant, subset) row."""
    runs = [metrics] if isinstance(metrics, dict) else list(metrics)
    if not runs:
        return ""
    columns: list[str] = []
    for run in runs:
        for row in run["rows"]:
            for name in row:
                if is_point_metric(name) and name not in columns:
                    columns.append(name)
    columns.sort(key=_column_order)
    header = ["model", "split", "subset", "n", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        label = run["display_name"]
        if run.get("name", run["model"]) != run["model"]:  # e.g. "sasrec-seed1: sasrec (CE)"
            label = f"{run['name']}: {label}"
        seeds = run.get("n_seeds")
        if seeds and seeds > 1:
            label += f" ×{seeds} seeds"
        for row in run["rows"]:
            name = f"{label} [{row['variant']}]" if row["variant"] else label
            cells = [name, run["split"], row["subset"], str(row["n"])]
            for col in columns:
                cells.append(_cell(row.get(col), row.get(f"{col}_sd"), digits))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_summary(metrics: dict[str, Any] | Sequence[dict[str, Any]], k: int = 10,
                   digits: int = 4) -> str:
    """One line per (model, variant): NDCG@k overall and in-set, in-set Recall@k, cold
    Recall@k with its 95 % interval and its chance level, and cold items per top k (the
    README's table; `format_table` and `format_intervals` hold every row)."""
    runs = [metrics] if isinstance(metrics, dict) else list(metrics)
    header = ["model", f"N@{k}", f"N@{k} in-set", f"R@{k} in-set",
              f"R@{k} cold [95 % CI]", f"random_cold@{k}", f"cold slots@{k}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        by = {(row["variant"], row["subset"]): row for row in run["rows"]}
        for variant in dict.fromkeys(row["variant"] for row in run["rows"]):
            overall, inset, cold = (by[(variant, s)] for s in ("overall", "in-set", "cold"))
            name = run["display_name"] + (f" [{variant}]" if variant else "")
            lines.append("| " + " | ".join([
                name, _cell(overall[f"ndcg@{k}"], None, digits),
                _cell(inset[f"ndcg@{k}"], None, digits), _cell(inset[f"recall@{k}"], None, digits),
                _cell(cold[f"recall@{k}"], None, digits) + _interval(cold, f"recall@{k}", digits),
                _cell(cold.get(f"random_cold@{k}"), None, digits),
                _cell(cold.get(f"cold_slots@{k}"), None, 2)]) + " |")
    return "\n".join(lines) + "\n"


def format_intervals(metrics: dict[str, Any] | Sequence[dict[str, Any]], k: int = 10,
                     digits: int = 4) -> str:
    """How sure each row is: a markdown table of its users, Recall@k and NDCG@k with their
    95 % bootstrap intervals, NDCG@k with ties ranked last, and, on cold rows, the cold
    pool, the cold items per top-k and the chance level `random_cold@k`."""
    runs = [metrics] if isinstance(metrics, dict) else list(metrics)
    header = ["model", "subset", "n", f"recall@{k} [95 % CI]", f"ndcg@{k} [95 % CI]",
              f"ndcg@{k} ties last", "cold pool", f"cold slots@{k}", f"random_cold@{k}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        for row in run["rows"]:
            if f"recall@{k}" not in row:
                continue
            name = run["display_name"] + (f" [{row['variant']}]" if row["variant"] else "")
            cells = [name, row["subset"], str(row["n"])]
            for metric in (f"recall@{k}", f"ndcg@{k}"):
                cells.append(_cell(row[metric], None, digits) + _interval(row, metric, digits))
            cells.append(_cell(row.get(f"ndcg@{k}_ties_last"), None, digits))
            cold = row["subset"] == "cold"
            cells += [f"{run.get('cold_pool', 0):,}" if cold else "",
                      _cell(row.get(f"cold_slots@{k}"), None, 2) if cold else "",
                      _cell(row.get(f"random_cold@{k}"), None, digits) if cold else ""]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _interval(row: dict[str, Any], metric: str, digits: int) -> str:
    lo, hi = row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
    if lo is None or hi is None or math.isnan(float(lo)):
        return ""
    return f" [{float(lo):.{digits}f}, {float(hi):.{digits}f}]"


def save_metrics(run_dir: str | Path | RunDir, metrics: dict[str, Any], name: str) -> None:
    """Record `metrics` of model directory `name` in `run_dir/metrics.json` and rewrite
    `results.md` with every recorded model (both files written atomically)."""
    run = RunDir(run_dir)
    path = run.metrics
    with exclusive(run.metrics_lock, path.name):  # two evaluations never lose a row
        store = _recorded(path)
        models = store["models"]
        models.setdefault(name, {})[metrics["split"]] = {**metrics, "name": name}
        write_json(path, store)
        runs = [m for splits in models.values() for m in splits.values()]
        title = (
            f"# Results: {run.root.name}\n\nFull ranking over the whole catalogue, "
            "leave-one-out; tied scores count by their expected rank.\n\n"
        )
        write_text(run.results, title + format_table(runs) + "\n" + format_intervals(runs))


def _recorded(path: Path) -> dict[str, Any]:
    """metrics.json ({"models": {model: {split: metrics}}}), or a SidrecError saying how
    to fix it."""
    fix = "move it away (sidrec evaluate records every model anew)"
    if not path.is_file():
        return {"models": {}}
    try:
        store = read_json(path)
    except (OSError, ValueError) as e:
        raise SidrecError(f"{path}: unreadable JSON ({e}); {fix}") from None
    models = store.setdefault("models", {}) if isinstance(store, dict) else None
    if not isinstance(models, dict) or not all(isinstance(v, dict) for v in models.values()):
        raise SidrecError(f"{path}: not a mapping of model -> split -> metrics; {fix}")
    return store


def _cell(value: Any, sd: Any, digits: int) -> str:
    if value is None:
        return ""
    value = float(value)
    if math.isnan(value):
        return "–"
    text = f"{value:.{digits}f}"
    if sd is not None and not math.isnan(float(sd)):
        text += f" ± {float(sd):.{digits}f}"
    return text


def _column_order(name: str) -> tuple[int, int, int]:
    # recall@5, ndcg@5, recall@10, ndcg@10, ..., then coverage and filled
    kind, _, k = name.partition("@")
    order = {"recall": (0, 0), "ndcg": (0, 1), "coverage": (1, 0), "filled": (2, 0),
             "invalid": (2, 1), "cold_slots": (3, 0), "random_cold": (3, 1)}
    group, within = order.get(kind, (4, 0))
    return (group, int(k) if k.isdigit() else 0, within)


def render_bench(record: dict[str, Any]) -> str:
    """The bench's report (`bench.md`) from its record (`bench.json`) alone: `sidrec bench`
    writes it with this, `sidrec report` re-renders it, and docs/results/ holds both.

    Raises a SidrecError when `record` is not a bench.json this version writes (one from
    before `sidrec report` lacks the dataset and run records)."""
    try:
        return _render_bench(record)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
        raise SidrecError(
            f"not a bench record this sidrec can render (missing or malformed {e}); re-run "
            "`sidrec bench` with the same settings (it reuses every finished stage)") from None


def _earlier_runs(record: dict[str, Any]) -> list[str]:
    """Models an earlier bench of the same settings measured (`bench.merge_records`)."""
    made = record["run"]
    earlier = [f"`{name}` {m['run']['date']}"
               + (f" (`{m['run']['command']}`)" if m["run"].get("command") else "")
               for name, m in record["models"].items() if m.get("run", made) != made]
    return ["Measured by earlier benches of the same settings: " + "; ".join(earlier) + "."
            ] if earlier else []


def _render_bench(record: dict[str, Any]) -> str:
    cfg, data, made = record["config"], record["dataset"], record["run"]
    results = [m["aggregate"] for m in record["models"].values()]
    c, cold_mode = data["counts"], cfg["prepare"]["cold_mode"]
    tok, embed = cfg["tokenize"], cfg["embed"]
    vectors = embed.get("vectors")  # given vectors replace the encoder (`embed --vectors`)
    settings = (
        (f"Item vectors from `{Path(vectors).name}`" if vectors
         else f"Encoder `{embed['encoder']}`") + f", tokenizer `{tok['method']}` "
        f"(`{tok['preset']}`), model presets `{cfg['preset']}`, seeds "
        f"{', '.join(map(str, cfg['seeds']))} (mean ± sd when more than one)"
        + ("; each seed draws its own holdout cold items (its own run directory), so the "
           "± covers which items went cold." if data["splits"] > 1 else ".")
    )
    workers, threads = record["workers"], record["threads"]
    parallelism = f"{workers} at a time" + (f", {threads} CPU thread(s) each" if threads else "")
    command = f": `{made['command']}`" if made.get("command") else ""
    lines = [
        f"# sidrec bench: {data['name']}",
        "",
        f"Run {made['date']} on {made['machine']}, sidrec {made['version']}{command}.",
        *_earlier_runs(record),
        "",
        f"Dataset: {c['users']:,} users, {c['items']:,} items, {c['interactions']:,} "
        f"interactions; leave-one-out, full ranking over all items; cold start "
        f"`{cold_mode}` ({c['cold_items']:,} cold items, {c['cold_test_users']:,} cold "
        f"test users). {settings}",
        "",
        "Rows: overall / in-set (test target seen in training) / cold (target never seen "
        "in training). Generative models: items the beam does not return are misses. "
        "Tied scores count by the target's expected rank under random tie-breaking. "
        "Rows labelled `excl. history` mask every item of the user's history before the "
        "target, not only the model's input window (masked inside the beam search); every "
        "other row does not (TIGER's protocol, the headline). `invalid@K`: share of the "
        "top-K slots holding a generated SID that is no item (unconstrained decoding). "
        "`cold_slots@10`: cold items per top-10; "
        f"`random_cold@10`: the cold recall@10 that filling those slots at random from the "
        f"{results[0].get('cold_pool', 0) if results else 0:,} cold items would reach, the "
        "chance level for the cold rows. Variants marked `(inference)` switch a part off "
        "in one trained model; the trained ablations are models of their own.",
        "",
        "At a glance (every row and metric follows):",
        "",
        format_summary(results),
        "",
        format_table(results),
        "",
        *_published_lines(results, f"{data.get('reader', '')} {data['name']}"),
        "How sure each row is (95 % intervals: bootstrap over the row's users, 1,000 "
        "resamples; with several seeds, each bound is the mean over seeds):",
        "",
        format_intervals(results),
        "",
        *diagnostics_lines(results),
        f"Models trained and evaluated {parallelism}"
        + ("; decode speeds are measured beside the other workers, so they are below an "
           "idle machine's." if workers > 1 else "."),
        "",
        "| model | train s (mean over seeds) | evaluation users/s (mean over seeds, every "
        "variant) |",
        "|---|---|---|",
    ]
    for r in results:
        ups = r["users_per_s"]
        lines.append(f"| {r['display_name']} | {r['train_seconds']:.0f} | "
                     f"{'∞' if math.isinf(ups) else f'{ups:,.0f}'} |")
    timings = record["timings"]
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()),
              f"Total wall time: {record['total_seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def _published_lines(results: list[dict[str, Any]], dataset: str) -> list[str]:
    table = published_table(results, dataset)
    if not table:
        return []
    return ["Beside the published rows (Amazon 2014 5-core, leave-one-out, full ranking, no "
            "history mask; the published SASRec used the BCE loss):", "", table, ""]


def diagnostics_lines(results: list[dict[str, Any]]) -> list[str]:
    """One line per model that reports facts to read its rows with (`diagnostics()`)."""
    lines = []
    for r in results:
        facts = r.get("diagnostics") or {}
        if facts:
            text = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in facts.items())
            lines.append(f"- {r['display_name']}: {text}")
    return [*lines, ""] if lines else []


def write_plots(run: RunDir, results: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run.plots.mkdir(parents=True, exist_ok=True)
    out = []

    def label(r: dict, row: dict) -> str:
        return f"{r['display_name']} [{row['variant']}]" if row["variant"] else r["display_name"]

    fig, ax = plt.subplots(figsize=(8, 5))
    overall = [(r, row) for r in results for row in r["rows"] if row["subset"] == "overall"]
    colors = plt.cm.tab20(np.linspace(0, 1, max(len(overall), 2)))  # distinct per line
    for n, (r, row) in enumerate(overall):
        ks = sorted(int(k.split("@")[1]) for k in row if k.startswith("recall@")
                    and is_point_metric(k))
        ax.plot(ks, [row[f"recall@{k}"] for k in ks], marker="os^dv"[n % 5], color=colors[n],
                label=label(r, row))
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (overall)")
    ax.set_title(f"{run.root.name}: Recall@K")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    out.append(save_figure(fig, run.plot("recall_at_k")))

    names, inset, cold = [], [], []
    for r in results:
        by = {(row["variant"], row["subset"]): row for row in r["rows"]}
        for variant in dict.fromkeys(row["variant"] for row in r["rows"]):
            names.append(label(r, {"variant": variant}))
            inset.append(by[(variant, "in-set")].get("recall@10", math.nan))
            cold.append(by[(variant, "cold")].get("recall@10", math.nan))
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(names)), 5))
    x = np.arange(len(names))
    ax.bar(x - 0.2, np.nan_to_num(inset), 0.4, label="in-set")
    ax.bar(x + 0.2, np.nan_to_num(cold), 0.4, label="cold-start")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("Recall@10")
    ax.set_title(f"{run.root.name}: in-set vs cold-start Recall@10")
    ax.legend()
    fig.tight_layout()
    out.append(save_figure(fig, run.plot("inset_vs_cold")))
    usage = run.plot("codebook_usage")
    if usage.is_file():
        out.append(str(usage))
    return out


def save_figure(fig: Any, path: Path) -> str:
    """Write a matplotlib figure as a PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return str(path)


