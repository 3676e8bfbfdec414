"""Cost vs catalogue size, 10k -> 100k -> 1M items: which part of sidrec breaks first.

The library of `benchmarks/bench_scale.py` (the command), tested at 10k by
tests/test_scale.py. Per size N: `sidrec data synth` (N items, 10 N interactions,
`sidrec.data.synth`) -> `data prepare` (holdout: 10 % of the items cold) -> the vectors as
`embeddings.npy` (encoder "synthetic") -> the stages below. Each stage runs in its own
subprocess (`driver.run_stage`), so the peak RSS it reports is its own.

- prepare: `sidrec.data.prepare` on the generated tables (time, memory).
- rqkmeans: balanced RQ-KMeans 3 x 256 + collision token (`run_tokenize`): fit time, whole
  stage, collision rate, most items per prefix. rqvae (100k only): RQ-VAE 3 x 256.
- trie: `SidIndex` of all items + the warm items' index with its mask tables.
- decode: TIGER `cpu` sizes, random weights (cost does not depend on what was learned),
  constrained beam 20, top-10: users/s.
- liger: LIGER `cpu` sizes, random weights, hybrid K = 20 over the 10 % cold pool: users/s
  of the default path (an index over the cold pool from `cold_index_min` = 50k cold items
  on) and of exact scoring, and the recall of the exact top-10.
- cobra: COBRA `cpu` sizes: the sparse-ID tables, BeamFusion with per-sparse-ID
  neighbours, and with the global index (`ItemIndex.of`: from 200k items an IVF calibrated
  on trained-like queries, or exact where that is not faster), what it chose, its recall
  of the exact top-10 on trained-like queries and on the random weights' v̂.
- dense: top-10 over all items for Dense (cosine) and SASRec-style (inner product)
  vectors: exact chunked matmul vs `ItemIndex` left to choose at every size (IVF or
  exact, by measuring both on calibration queries), what it chose, its recall.

Random weights set the cost of decoding but not where an index's queries fall: the
indexes calibrate and are measured on queries like a trained model's, the mean of the
vectors of a user's last 5 items (`common.recent_mean`): calibrated on users that are not
timed, measured on those that are.
- add: `add_items` at N: text encoding (all-MiniLM-L6-v2, once; it does not depend on N)
  apart from SID assignment (tokenizer + collision token) + index update
  (`items_added`: SID trie, item vectors, cold-pool index), and `LiveCatalogue.add`
  end to end with the encoder stubbed out (it also copies the catalogue's arrays).

- ratio: TIGER decoding and the LIGER hybrid at N and at 10k, their batches interleaved in
  one single-threaded process, timed in its CPU time (and wall time): on a shared machine
  the load varies by minutes, and other stages' users/s are wall-clock, 2 threads.

The report's last lines compare constrained decoding and the LIGER hybrid (from the
interleaved ratio stage) and COBRA's per-sparse-ID retrieval at the largest size with 10k,
and dense top-10 through the index with exact search at the largest size. Results go to
`<work>/scale.json`.

Modules: `common` (sizes, options, timing, random-weight models, recall), `data_stages`,
`recommend_stages`, `add_stage`, `driver` (runs them, writes scale.json), `report`
(table, ratio lines, plot).
"""

from sidrec.scale.common import SIZES, Options
from sidrec.scale.driver import STAGES, run_all
from sidrec.scale.report import dates, plot, ratios, table

__all__ = ["SIZES", "STAGES", "Options", "dates", "plot", "ratios", "run_all", "table"]
