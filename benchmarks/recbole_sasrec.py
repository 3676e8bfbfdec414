"""Our SASRec against RecBole's SASRec on MovieLens-100k, one protocol for both.

    python3 -m venv /tmp/recbole-venv
    /tmp/recbole-venv/bin/pip install CPU_TORCH_WHEEL recbole==1.2.1  # a +cpu torch wheel
    /tmp/recbole-venv/bin/pip install "numpy<2" "pandas<2.3" "scipy<1.15"  # RecBole: numpy 1
    .venv/bin/python benchmarks/recbole_sasrec.py --recbole-python /tmp/recbole-venv/bin/python
    .venv/bin/python benchmarks/recbole_sasrec.py --smoke   # our side only, a tiny table

Reference: RecBole 1.2.1 (Zhao et al., CIKM 2021/2022), `recbole.model.sequential_recommender.
SASRec` with loss_type CE, run in its own interpreter (it needs numpy 1, pandas 2) on the
ml-100k atomic files its wheel ships, the same file `sidrec data prepare ml-100k` reads.

Protocol on both sides: no filtering (943 users, 1,682 items, 100,000 interactions),
per-user chronological leave-one-out (last item = test, second last = valid), full
ranking over all items, softmax cross-entropy over all items, histories of at most 50
items, model chosen by validation NDCG@10 with early stopping, test Recall@10 / NDCG@10.
Model: d = 64, feed-forward 64, 2 blocks, 1 head, dropout 0.2, lr 0.001, batch 256, seed 0.

Rows printed:
- RecBole SASRec (CE): Adam at a constant lr, every prefix of the training part as one
  example with the loss on its last position (~380 optimiser steps per epoch here).
- ours, matched: the same sizes and a constant-lr Adam without warm-up or clipping; our
  trainer puts the loss on every position of a window instead (~10 steps per epoch),
  so an "epoch" sees each training target once on both sides.
- ours, cpu preset: `--preset cpu` as shipped (only max_history = 50 changed).

Also reports how many users' valid/test targets and histories differ between the two
splits. On one CPU thread a RecBole epoch takes minutes: `--recbole-budget-s` stops it
between epochs (the best checkpoint so far is tested; the table says so), and
`--recbole-result` reuses the JSON of an earlier RecBole run instead of training again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tiny_data import movielens_table

from sidrec.checkpoint import load_model
from sidrec.data import Dataset, PrepareConfig, prepare
from sidrec.evaluate import evaluate
from sidrec.presets import resolve_config
from sidrec.train import train

# Runs inside the RecBole interpreter: this process's numpy/pandas are too new for it.
RECBOLE_RUNNER = r'''
import json
import os
import sys
import time

import torch

torch.set_num_threads(1)

_torch_load = torch.load


def _load_own_checkpoint(*args, **kwargs):
    # torch >= 2.6 defaults to weights_only=True, which rejects the Config object and RNG
    # states RecBole pickles into the checkpoint it has just written itself.
    kwargs.setdefault("weights_only", False)
    return _torch_load(*args, **kwargs)


torch.load = _load_own_checkpoint

import recbole  # noqa: E402
from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.model.sequential_recommender import SASRec  # noqa: E402
from recbole.trainer import Trainer  # noqa: E402
from recbole.utils import init_logger, init_seed  # noqa: E402


class OutOfTime(Exception):
    pass


class CountingTrainer(Trainer):
    """Counts epochs, logs validation per epoch, stops between epochs past a time budget."""

    epochs_run = 0
    budget_s = 0.0
    started = 0.0
    log_path = ""

    def _train_epoch(self, *args, **kwargs):
        if self.budget_s and time.perf_counter() - self.started > self.budget_s:
            raise OutOfTime
        type(self).epochs_run += 1
        return super()._train_epoch(*args, **kwargs)

    def _valid_epoch(self, *args, **kwargs):
        score, result = super()._valid_epoch(*args, **kwargs)
        entry = {"epoch": self.epochs_run, "seconds": time.perf_counter() - self.started}
        entry.update({k: float(v) for k, v in result.items()})
        with open(self.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        return score, result


def exact_order_copy(src_dir, name):
    """ml-100k.inter with each timestamp replaced by its dense rank, as dataset `name`.

    RecBole min-max normalises float fields and keeps them as float32, whose step near 1.0
    is ~1.1 s of ML-100k's 7 months: interactions 1 s apart become ties, which its stable
    sort then orders by file position. Ranks (< 2**24, not normalised) stay exact.
    """
    import pandas as pd

    inter = pd.read_csv(os.path.join(src_dir, "ml-100k.inter"), sep="\t")
    ts = "timestamp:float"
    inter[ts] = inter[ts].rank(method="dense").astype("int64")
    os.makedirs(os.path.join("data", name), exist_ok=True)
    inter.to_csv(os.path.join("data", name, name + ".inter"), sep="\t", index=False)
    return os.path.abspath("data")


def main(out_path, settings):
    config_dict = {
        "checkpoint_dir": os.path.abspath("saved"),
        "use_gpu": False,
        "gpu_id": "",
        "seed": settings["seed"],
        "reproducibility": True,
        "state": "INFO",
        "show_progress": False,
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
        "user_inter_num_interval": None,
        "item_inter_num_interval": None,
        "val_interval": None,
        "rm_dup_inter": None,
        "MAX_ITEM_LIST_LENGTH": settings["max_len"],
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full",
                      "group_by": "user"},
        "metrics": ["Recall", "NDCG"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "hidden_size": settings["d_model"],
        "inner_size": settings["d_ff"],
        "n_layers": settings["n_layers"],
        "n_heads": settings["n_heads"],
        "hidden_dropout_prob": settings["dropout"],
        "attn_dropout_prob": settings["dropout"],
        "learning_rate": settings["lr"],
        "train_batch_size": settings["batch_size"],
        "eval_batch_size": 2048,
        "epochs": settings["max_epochs"],
        "stopping_step": settings["patience"],
        "eval_step": 1,
        "worker": 0,
    }
    # RecBole always reads "ml-100k" from its own dataset_example/ (data_path is ignored
    # for that name), so the rank copy needs a name of its own.
    dataset_name = "ml-100k"
    if settings["exact_order"]:
        dataset_name = "ml-100k-rank"
        src = os.path.join(os.path.dirname(recbole.__file__), "dataset_example", "ml-100k")
        config_dict["data_path"] = exact_order_copy(src, dataset_name)
        config_dict["normalize_all"] = False
    config = Config(model="SASRec", dataset=dataset_name, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    trainer = CountingTrainer(config, model)
    t0 = time.perf_counter()
    CountingTrainer.started = t0
    CountingTrainer.budget_s = settings["budget_s"]
    CountingTrainer.log_path = out_path + ".epochs.jsonl"
    out_of_time = False
    try:
        trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    except OutOfTime:
        out_of_time = True
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    seconds = time.perf_counter() - t0
    checkpoint = torch.load(trainer.saved_model_file, map_location="cpu")

    def examples(split_data):
        inter = split_data._dataset.inter_feat
        users = dataset.id2token("user_id", inter["user_id"].numpy())
        items = dataset.id2token("item_id", inter["item_id"].numpy())
        lists, lengths = inter["item_id_list"].numpy(), inter["item_length"].numpy()
        return {
            u: [t, dataset.id2token("item_id", lists[r, : lengths[r]]).tolist()]
            for r, (u, t) in enumerate(zip(users.tolist(), items.tolist()))
        }

    summary = {
        "recall@10": float(test["recall@10"]),
        "ndcg@10": float(test["ndcg@10"]),
        "best_valid_ndcg@10": float(checkpoint["best_valid_score"]),
        "best_epoch": int(checkpoint["epoch"]) + 1,  # RecBole counts epochs from 0
        "epochs": CountingTrainer.epochs_run,
        "steps_per_epoch": len(train_data),
        "out_of_time": out_of_time,
        "seconds": seconds,
        "users": dataset.user_num - 1,  # minus RecBole's padding id
        "items": dataset.item_num - 1,
        "train_sequences": len(train_data._dataset),
        "valid": examples(valid_data),
        "test": examples(test_data),
        "settings": settings,
        "versions": {"recbole": recbole.__version__, "torch": torch.__version__},
    }
    with open(out_path, "w") as f:
        json.dump(summary, f)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
'''

MODEL = {"d_model": 64, "d_ff": 64, "n_layers": 2, "n_heads": 1, "dropout": 0.2, "loss": "ce"}


def run_recbole(python: str, work: Path, settings: dict) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    (work / "runner.py").write_text(RECBOLE_RUNNER)
    out = work / "recbole.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(work / "recbole.log", "w") as log:
        proc = subprocess.run(
            [python, "runner.py", str(out), json.dumps(settings)],
            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    if proc.returncode != 0:
        tail = (work / "recbole.log").read_text().splitlines()[-15:]
        sys.exit(f"RecBole run failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return json.loads(out.read_text())


def run_ours(run_dir: Path, name: str, args: argparse.Namespace, matched: bool) -> dict:
    model_over: dict = {}
    train_over: dict = {"device": "cpu", "num_threads": 1, "seed": args.seed}
    if args.smoke:
        train_over["max_epochs"] = 1
    if matched:
        model_over = {**MODEL, "max_len": args.max_len}
        train_over.update(
            lr=args.lr, batch_size=args.batch_size, max_epochs=args.max_epochs,
            patience=args.patience, weight_decay=0.0, grad_clip=0.0, warmup_steps=0,
            schedule="constant",
        )
    t0 = time.perf_counter()
    summary = train(resolve_config("sasrec", "cpu", model_over, train_over), run_dir, name=name,
                    resume=False, progress=False)
    ds = Dataset.load(run_dir)
    model = load_model(summary["model_dir"], run_dir, dataset=ds)
    metrics = evaluate(model, ds, "test", ks=(10,), device="cpu")
    seconds = time.perf_counter() - t0
    overall = next(r for r in metrics["rows"] if r["subset"] == "overall")
    state = json.loads((Path(summary["model_dir"]) / "state.json").read_text())
    return {
        "recall@10": overall["recall@10"],
        "ndcg@10": overall["ndcg@10"],
        "best_valid_ndcg@10": summary["best_valid"],
        "best_epoch": summary["best_epoch"],
        "epochs": summary["epochs"],
        "steps": state["step"],
        "seconds": seconds,
    }


def split_differences(ds: Dataset, recbole: dict, max_len: int) -> dict[str, tuple[int, int]]:
    """Per split: (users whose target differs, users whose history differs)."""
    out = {}
    ids = [str(i) for i in ds.item_ids]
    for split, targets in (("valid", ds.valid), ("test", ds.test)):
        bad_target = bad_history = 0
        for u, user in enumerate(ds.user_ids):
            seq = ds.train[u] if split == "valid" else np.append(ds.train[u], ds.valid[u])
            target, history = recbole[split][str(user)]
            bad_target += target != ids[targets[u]]
            bad_history += history != [ids[i] for i in seq[-max_len:]]
        out[split] = (bad_target, bad_history)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recbole-python", default="/tmp/recbole-venv/bin/python",
                        help="interpreter with recbole==1.2.1 installed")
    parser.add_argument("--recbole-result", help="JSON of an earlier RecBole run: reuse it")
    parser.add_argument("--recbole-budget-s", type=float, default=0.0,
                        help="stop RecBole between epochs after this long (0 = no limit)")
    parser.add_argument("--exact-order", action="store_true",
                        help="RecBole on timestamp ranks: no float32 ties (see the runner)")
    parser.add_argument("--work-dir", help="keep run files here (default: a temp dir)")
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="smallest size (seconds): our side only (RecBole reads its own "
                             "ml-100k files in its own venv), a 48-item table, 1 epoch")
    args = parser.parse_args()
    if args.smoke:
        args.max_epochs = 1
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        settings = {
            **MODEL, "max_len": args.max_len, "lr": args.lr, "batch_size": args.batch_size,
            "max_epochs": args.max_epochs, "patience": args.patience, "seed": args.seed,
            "budget_s": args.recbole_budget_s, "exact_order": args.exact_order,
        }
        if args.smoke:
            rb = None
            source = movielens_table(work / "tiny", n_users=60, n_items=48)
        else:
            source = "ml-100k"
            rb = (json.loads(Path(args.recbole_result).read_text()) if args.recbole_result
                  else run_recbole(args.recbole_python, work / "recbole", settings))

        run_dir = work / "ours"
        prepare(run_dir, PrepareConfig(source=source, max_history=args.max_len))
        ds = Dataset.load(run_dir)
        diffs = split_differences(ds, rb, args.max_len) if rb else {}
        matched = run_ours(run_dir, "sasrec-matched", args, matched=True)
        plain = run_ours(run_dir, "sasrec-cpu", args, matched=False)

    rows = [("ours sasrec (CE), matched", matched), ("ours sasrec (CE), cpu preset", plain)]
    if rb is None:
        print(f"a tiny table: ours {ds.n_users} users, {ds.n_items} items; no RecBole run")
        rb = {"recall@10": float("nan"), "ndcg@10": float("nan")}
    else:
        rb["steps"] = rb["epochs"] * rb["steps_per_epoch"]
        print(
            f"ML-100k: ours {ds.n_users} users, {ds.n_items} items; RecBole {rb['users']} "
            f"users, {rb['items']} items, {rb['train_sequences']} training sequences "
            f"(RecBole {rb['versions']['recbole']}, torch {rb['versions']['torch']})"
        )
        stopped = " (time budget hit)" if rb["out_of_time"] else ""
        rows.insert(0, (f"RecBole SASRec (CE){stopped}", rb))
    for split, (targets, histories) in diffs.items():
        print(f"{split}: {targets} users' targets and {histories} users' histories differ")
    print("\n| model | R@10 | N@10 | valid N@10 | R@10 / RecBole | N@10 / RecBole "
          "| best epoch | epochs | steps | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, r in rows:
        print(
            f"| {label} | {r['recall@10']:.4f} | {r['ndcg@10']:.4f} "
            f"| {r['best_valid_ndcg@10']:.4f} | {r['recall@10'] / rb['recall@10']:.3f} "
            f"| {r['ndcg@10'] / rb['ndcg@10']:.3f} | {r['best_epoch']} | {r['epochs']} "
            f"| {r['steps']} | {r['seconds']:.0f} |"
        )
    print("(test split, full ranking over all items; wall s: training + test, 1 CPU thread)")


if __name__ == "__main__":
    main()
