"""Same seed, same data, same results on CPU, with several threads, across processes.

Each model's gradients on one batch are hashed in two fresh processes with 2 CPU
threads; they must be bitwise equal. (Indexing a trained table, `vectors[ids]`, broke
this: its backward accumulates repeated rows in a different order on each run.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sidrec.models import available_models

SCRIPT = r"""
import dataclasses, hashlib, json, sys
import torch
sys.path.insert(0, sys.argv[1])
from conftest import sid_catalogue
from sidrec.models import available_models, get_model_class

torch.set_num_threads(2)
cat = sid_catalogue(n=300, sizes=(8, 8), n_cold=20, text_dim=32)
g = torch.Generator().manual_seed(0)
warm = (~cat.cold).nonzero()[:, 0]
batch = {"history": warm[torch.randint(0, len(warm), (96, 20), generator=g)],
         "target": warm[torch.randint(0, len(warm), (96,), generator=g)],
         "user": torch.arange(96)}
builds = [(name, get_model_class(name), {}) for name in available_models()]
builds.append(("sasrec-bce", get_model_class("sasrec"), {"loss": "bce"}))
out = {}
for name, cls, settings in builds:
    if not cls.trainable:
        continue
    torch.manual_seed(0)
    model = cls(dataclasses.replace(cls.Config(), **settings), cat).train()
    model(batch)["loss"].backward()
    grads = b"".join(p.grad.numpy().tobytes() for p in model.parameters() if p.grad is not None)
    out[name] = hashlib.sha256(grads).hexdigest()
print(json.dumps(out))
"""


def gradient_hashes() -> dict[str, str]:
    tests = str(Path(__file__).parent)
    done = subprocess.run([sys.executable, "-c", SCRIPT, tests], capture_output=True,
                          text=True, timeout=600, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_every_model_trains_the_same_in_two_processes_with_two_threads() -> None:
    first, second = gradient_hashes(), gradient_hashes()
    assert set(first) == {n for n in available_models() if n != "pop"} | {"sasrec-bce"}
    differ = sorted(name for name in first if first[name] != second[name])
    assert not differ, f"gradients differ between two identical runs: {differ}"
