"""`bench_decode.decode_flops`, the FLOPs behind the decoding headline's "fraction of the
machine's limit", counts what TIGER's decode actually runs: within 5 % of torch's own
FlopCounterMode on the same model, constrained or not, at several beam widths."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from sidrec.models.tiger import TIGER, TIGERConfig, TIGERInference

_SPEC = importlib.util.spec_from_file_location(
    "bench_decode", Path(__file__).parents[1] / "benchmarks" / "bench_decode.py")
bench_decode = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench_decode)

# Attention is a large share at these widths (81-token memory against d_model 32), so
# leaving it (or the cross-attention, or the step-0 row) out of the count fails the test.
CFG = TIGERConfig(d_model=32, n_heads=2, head_dim=16, d_ff=64, n_encoder_layers=2,
                  n_decoder_layers=3, max_history=20, user_buckets=50)


@pytest.mark.parametrize(("beam", "constrained"), [(4, True), (10, False), (24, True)])
def test_decode_flops_match_torch_flop_counter(beam: int, constrained: bool) -> None:
    torch.manual_seed(0)
    cat = bench_decode.synthetic_catalogue(400, levels=3, size=8)
    model = TIGER(CFG, cat).eval()
    users = 6
    history = torch.randint(0, 400, (users, CFG.max_history))
    inference = TIGERInference(beam=beam, constrained=constrained)
    # FlopCounterMode has no formula for CPU's fused attention kernel (it counts 0 there);
    # the math backend runs the same attention as matrix products it does count.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.generate(history, torch.arange(users), inference)
    expected = users * bench_decode.decode_flops(CFG, cat.codebook_sizes, CFG.max_history, beam)
    assert counter.get_total_flops() == pytest.approx(expected, rel=0.05)
