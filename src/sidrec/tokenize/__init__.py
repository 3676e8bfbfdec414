"""Semantic IDs: RQ-VAE (TIGER) and RQ-KMeans tokenizers and collision tokens.

cfg = tokenizer_config("rqvae", "small", {"epochs": 500})
info = run_tokenize("runs/ml-100k", cfg)        # writes sids.npy, tokenizer/, ...
sids, sizes = RunDir("runs/ml-100k").load_sids()  # [n_items, L+1], vocab per position
index = SidIndex(torch.from_numpy(sids), sizes)   # exact SID -> item (sidrec.models.beam)
tok = load_tokenizer("runs/ml-100k/tokenizer")
new = sids_for_new_items(tok, sids, vectors)    # add_items: no refitting
"""

from sidrec.tokenize.base import Tokenizer
from sidrec.tokenize.config import (
    PRESETS,
    RQKMeansConfig,
    RQVAEConfig,
    TokenizerConfig,
    tokenizer_config,
)
from sidrec.tokenize.diagnostics import diagnostics_markdown, plot_codebook_usage, sid_diagnostics
from sidrec.tokenize.rqkmeans import RQKMeansTokenizer
from sidrec.tokenize.rqvae import RQVAE, RQVAETokenizer
from sidrec.tokenize.sids import (
    add_collision_tokens,
    assign_sids,
    codebook_sizes,
    collision_tokens,
    extend_sids,
)
from sidrec.tokenize.stage import (
    build_tokenizer,
    load_tokenizer,
    run_tokenize,
    sids_for_new_items,
)

__all__ = [
    "PRESETS",
    "RQVAE",
    "RQKMeansConfig",
    "RQKMeansTokenizer",
    "RQVAEConfig",
    "RQVAETokenizer",
    "Tokenizer",
    "TokenizerConfig",
    "add_collision_tokens",
    "assign_sids",
    "build_tokenizer",
    "codebook_sizes",
    "collision_tokens",
    "diagnostics_markdown",
    "extend_sids",
    "load_tokenizer",
    "plot_codebook_usage",
    "run_tokenize",
    "sid_diagnostics",
    "sids_for_new_items",
    "tokenizer_config",
]
