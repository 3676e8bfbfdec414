"""The scale record (`scale.json`) as a table, the ratio lines and the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sidrec.scale.common import label
from sidrec.scale.driver import STAGES

METRICS = [  # (stage, key, label, format)
    ("synth", "interactions", "interactions", "{:,.0f}"),
    ("prepare", "seconds", "data prepare (s)", "{:.1f}"),
    ("embeddings", "seconds", "synthetic embeddings.npy (s)", "{:.1f}"),
    ("rqkmeans", "fit_seconds", "RQ-KMeans 3x256 balanced: fit (s)", "{:.0f}"),
    ("rqkmeans", "seconds", "RQ-KMeans: whole stage (s)", "{:.0f}"),
    ("rqkmeans", "collision_rate", "collision rate", "{:.3f}"),
    ("rqkmeans", "max_per_prefix", "max items per prefix", "{}"),
    ("rqvae", "seconds_per_epoch", "RQ-VAE 3x256: s per epoch", "{:.1f}"),
    ("rqvae", "collision_rate", "RQ-VAE collision rate", "{:.3f}"),
    ("trie", "seconds", "trie build, all + warm (s)", "{:.2f}"),
    ("trie", "index_mb", "trie size (MB)", "{:.0f}"),
    ("decode", "users_per_s", "TIGER constrained beam 20 (users/s)", "{:.1f}"),
    ("liger", "users_per_s", "LIGER hybrid K=20 (users/s)", "{:.1f}"),
    ("liger", "exact_users_per_s", "LIGER hybrid, exact scoring (users/s)", "{:.1f}"),
    ("liger", "recall", "LIGER hybrid recall of exact top-10", "{:.4f}"),
    ("liger", "index_users_per_s", "LIGER hybrid, cold-pool index forced (users/s)", "{:.1f}"),
    ("liger", "index_recall", "  its recall of the exact top-10", "{:.4f}"),
    ("liger", "index", "  what the cold-pool index chose", "{}"),
    ("cobra", "tables_seconds", "COBRA sparse-ID tables (s)", "{:.2f}"),
    ("cobra", "group_users_per_s", "COBRA per-sparse-ID (users/s)", "{:.1f}"),
    ("cobra", "global_index_seconds", "COBRA global index build (s)", "{:.1f}"),
    ("cobra", "global_index", "  what the global index chose", "{}"),
    ("cobra", "global_users_per_s", "COBRA global index (users/s)", "{:.1f}"),
    ("cobra", "global_recall", "COBRA global recall@10 (trained-like v̂)", "{:.4f}"),
    ("cobra", "global_recall_untrained", "  on the random weights' v̂", "{:.4f}"),
    ("dense", "dense.exact_users_per_s", "Dense top-10 exact (users/s)", "{:,.0f}"),
    ("dense", "dense.index_users_per_s", "Dense top-10 index (users/s)", "{:,.0f}"),
    ("dense", "dense.recall", "Dense index recall@10", "{:.4f}"),
    ("dense", "dense.index", "  what the index chose", "{}"),
    ("dense", "sasrec.exact_users_per_s", "SASRec-style top-10 exact (users/s)", "{:,.0f}"),
    ("dense", "sasrec.index_users_per_s", "SASRec-style top-10 index (users/s)", "{:,.0f}"),
    ("dense", "sasrec.recall", "SASRec-style index recall@10", "{:.4f}"),
    ("dense", "sasrec.index", "  what the index chose", "{}"),
    ("ratio", "tiger.users_per_s", "TIGER decode, 1 thread, CPU time (users/CPU-s)", "{:.1f}"),
    ("ratio", "tiger.small_users_per_s", "  10k interleaved with it (users/CPU-s)", "{:.1f}"),
    ("ratio", "tiger.ratio", "  ratio (CPU time)", "{:.2f}"),
    ("ratio", "tiger.wall_ratio", "  ratio (wall time)", "{:.2f}"),
    ("ratio", "liger.users_per_s", "LIGER hybrid, 1 thread, CPU time (users/CPU-s)", "{:.1f}"),
    ("ratio", "liger.small_users_per_s", "  10k interleaved with it (users/CPU-s)", "{:.1f}"),
    ("ratio", "liger.ratio", "  ratio (CPU time)", "{:.2f}"),
    ("ratio", "liger.wall_ratio", "  ratio (wall time)", "{:.2f}"),
    ("add", "text_items_per_s", "add_items: text encoding (items/s)", "{:,.0f}"),
    ("add", "sid_index_items_per_s", "add_items: SID + index update (items/s)", "{:,.0f}"),
    ("add", "sid_index_items_per_cpu_s", "  the same per CPU-second (items/CPU-s)", "{:,.0f}"),
    ("add", "catalogue_copy_seconds", "  Service's catalogue copy per add (s)", "{:.2f}"),
    ("add", "api_items_per_s", "add_items: Service end to end, no encoder (items/s)", "{:,.0f}"),
]


def get(row: dict[str, Any], stage: str, key: str) -> Any:
    value: Any = row.get(stage, {})
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def table(record: dict[str, Any]) -> str:
    sizes = sorted(record["sizes"], key=int)
    rows = record["sizes"]
    head = "| | " + " | ".join(label(int(n)) for n in sizes) + " |"
    lines = [head, "|---" * (len(sizes) + 1) + "|"]
    for stage, key, name, fmt in METRICS:
        cells = [get(rows[n], stage, key) for n in sizes]
        if all(c is None for c in cells):
            continue
        lines.append(f"| {name} | " + " | ".join("–" if c is None else fmt.format(c)
                                                 for c in cells) + " |")
    lines.append("| **peak RSS (GB)** | " + " | ".join("" for _ in sizes) + " |")
    for stage in STAGES:
        cells = [rows[n].get(stage, {}).get("peak_rss_gb") for n in sizes]
        if any(c is not None for c in cells):
            lines.append(f"| {stage} | " + " | ".join("–" if c is None else f"{c:.2f}"
                                                      for c in cells) + " |")
    return "\n".join(lines)


def ratios(record: dict[str, Any]) -> list[str]:
    """The last lines: users/s at the largest size over users/s at the smallest, from the
    interleaved `ratio` stage when it ran, else from the two sizes' own stages (COBRA's
    per-sparse-ID retrieval: always the latter); then dense top-10 through the index over
    exact search at the largest size, with the index's recall of the exact top-10."""
    sizes = sorted(record["sizes"], key=int)
    first, last = record["sizes"][sizes[0]], record["sizes"][sizes[-1]]
    big, small = label(int(sizes[-1])), label(int(sizes[0]))
    out = []
    for stage, key, model, what in (("decode", "users_per_s", "tiger", "decode"),
                                    ("liger", "users_per_s", "liger", "liger hybrid"),
                                    ("cobra", "group_users_per_s", None, "cobra")):
        paired = get(last, "ratio", f"{model}.ratio") if model else None
        a, b = get(first, stage, key), get(last, stage, key)
        value = paired if paired is not None else (b / a if a and b else None)
        text = "n/a" if value is None else f"{value:.2f}"
        unpaired = paired is None and value is not None and len(sizes) > 1
        out.append(f"{what} users/s at {big} items = {text} x at {small}"
                   + (" (separate runs, not interleaved)" if unpaired else ""))
    exact, index = (get(last, "dense", f"dense.{k}_users_per_s") for k in ("exact", "index"))
    hit = get(last, "dense", "dense.recall")
    out.append(f"dense top-10 users/s at {big} items = "
               + (f"{index / exact:.2f} x exact (recall@10 {hit:.4f})" if exact and index
                  else "n/a"))
    return out


def dates(record: dict[str, Any]) -> list[str]:
    """When each stage was measured, when the record holds stages of more than one run
    (it keeps every stage it ever ran; older records: the run's date)."""
    when: dict[str, list[str]] = {}
    for n in sorted(record["sizes"], key=int):
        for stage, result in record["sizes"][n].items():
            stamp = result.get("date", record.get("date", "?"))
            when.setdefault(stamp, []).append(f"{stage}@{label(int(n))}")
    if len(when) < 2:
        return []
    return [f"measured {stamp}: {', '.join(stages)}" for stamp, stages in sorted(when.items())]


def plot(record: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sizes = sorted(record["sizes"], key=int)
    rows = record["sizes"]
    xs = [int(n) for n in sizes]
    fig = Figure(figsize=(12, 5))
    FigureCanvasAgg(fig)
    ax, mem = fig.subplots(1, 2)
    costs = [("data prepare (s)", "prepare", "seconds", 1.0),
             ("RQ-KMeans fit (s)", "rqkmeans", "fit_seconds", 1.0),
             ("trie build (s)", "trie", "seconds", 1.0),
             ("TIGER decode (ms/user)", "decode", "users_per_s", -1),
             ("LIGER hybrid (ms/user)", "liger", "users_per_s", -1),
             ("LIGER exact scoring (ms/user)", "liger", "exact_users_per_s", -1),
             ("COBRA per-sparse-ID (ms/user)", "cobra", "group_users_per_s", -1),
             ("COBRA global index (ms/user)", "cobra", "global_users_per_s", -1),
             ("Dense top-10 exact (ms/user)", "dense", "dense.exact_users_per_s", -1),
             ("Dense top-10 index (ms/user)", "dense", "dense.index_users_per_s", -1),
             ("add_items SID + index (ms/1k items)", "add", "sid_index_items_per_s", -2)]
    colours = [f"C{i}" for i in range(10)] + ["black", "olive"]
    for i, (name, stage, key, kind) in enumerate(costs):
        ys = [get(rows[n], stage, key) for n in sizes]
        pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y]
        if not pts:
            continue
        conv = {1.0: lambda v: v, -1: lambda v: 1000.0 / v, -2: lambda v: 1e6 / v}[kind]
        ax.plot([p[0] for p in pts], [conv(p[1]) for p in pts], marker="osv^D"[i % 5],
                color=colours[i % len(colours)], linestyle="-" if kind > 0 else "--",
                label=name)
    for name, model, style in (("TIGER decode, 1 thread (CPU ms/user)", "tiger", "red"),
                               ("LIGER hybrid, 1 thread (CPU ms/user)", "liger", "purple")):
        pts = [(int(sizes[0]), get(rows[sizes[-1]], "ratio", f"{model}.small_users_per_s"))]
        pts += [(int(n), get(rows[n], "ratio", f"{model}.users_per_s")) for n in sizes[1:]]
        pts = [(x, 1000.0 / y) for x, y in pts if y]
        if len(pts) > 1:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=style, linestyle=":",
                    marker="x", label=name)
    if len(xs) > 1:  # what growing with the catalogue looks like
        ax.plot(xs, [0.1 * x / xs[0] for x in xs], color="grey", linestyle=":",
                label="slope 1 (linear in items)")
    for i, stage in enumerate(STAGES):
        pts = [(x, rows[n].get(stage, {}).get("peak_rss_gb")) for x, n in zip(xs, sizes,
                                                                              strict=True)]
        pts = [p for p in pts if p[1]]
        if pts:
            mem.plot([p[0] for p in pts], [p[1] for p in pts], marker="osv^D"[i % 5],
                     color=colours[i % len(colours)], label=stage)
    mem.axhline(24, color="grey", linestyle=":", label="24 GB")
    ax.set(xscale="log", yscale="log", xlabel="catalogue items", ylabel="cost",
           title="cost vs catalogue size (flat = does not grow with the catalogue)")
    mem.set(xscale="log", yscale="log", xlabel="catalogue items", ylabel="peak RSS (GB)",
            title="peak memory per stage (own process)")
    for a in (ax, mem):
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(f"sidrec at scale, {record.get('date', '')}, {record.get('cpus')} CPU cores")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
