"""RQ-VAE semantic IDs (TIGER: Rajput et al., "Recommender Systems with Generative
Retrieval", NeurIPS 2023, Sec. 3.1, Fig. 3, and the RQ-VAE paragraph of Sec. 4).

x (standardised item embedding, d) -> MLP encoder -> z (latent_dim) -> L residual levels:
r_1 = z, c_l = argmin_k ||r_l - e_{l,k}||, r_{l+1} = r_l - e_{l,c_l}; z_q = sum_l e_{l,c_l}
-> MLP decoder -> x_hat. Loss (per batch):

    L = ||x - x_hat||^2 + sum_l ( ||sg[r_l] - e_{l,c_l}||^2 + beta ||r_l - sg[e_{l,c_l}]||^2 )

with the straight-through estimator z_st = z + sg[z_q - z] feeding the decoder, beta=0.25.
Each level's codebook is initialised by k-means (faiss) on that level's residuals of the
first `max(batch_size, kmeans_init_items)` warm items of the first shuffle (TIGER: the
first batch), and a code unused for a whole epoch is reset to a residual drawn uniformly
from the whole epoch (a reservoir sample, `sample_residuals`; both against codebook
collapse, TIGER Sec. 4 "RQ-VAE"); resets stop after `reset_until` of the epochs. The
SIDs are the codes (c_1..c_L).

NOTE (deviations): squared errors are means over elements, not sums (a constant rescale
of each term); r_{l+1} uses sg[e_{l,c_l}], so codebook l is trained only by its own
codebook loss; the small preset uses Adam (lr 1e-3, 200 epochs) instead of TIGER's
Adagrad (lr 0.4, 20k epochs) -- the `paper` preset keeps TIGER's optimiser settings.
Both stop early (`EarlyStop`; config fields `patience`, `eval_every`, ...): a seeded
hold-out of the warm items is not trained on, and the weights of its lowest loss are kept,
so `epochs` is a ceiling (`patience: 0`: TIGER's fixed epochs, on every warm item). Dead-code
resets still stop at `reset_until` x `epochs`, so a fit that stops early may end inside
them; the kept weights are the best on the hold-out either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sidrec.tokenize.base import Standardizer, Tokenizer, kmeans
from sidrec.tokenize.config import RQVAEConfig


def mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)



def sample_residuals(
    sample: tuple[torch.Tensor, torch.Tensor] | None, residuals: torch.Tensor, size: int,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniform sample of `size` rows of every batch's residuals [L, B, latent] seen so far
    (reservoir sampling by random keys: the `size` smallest keys are kept), so a dead code
    is reset from the whole epoch, not from its last batch. Returns (rows [L, R, latent],
    keys [R])."""
    keys = torch.rand(residuals.shape[1], generator=gen).to(residuals.device)
    if sample is not None:
        residuals = torch.cat([sample[0], residuals], dim=1)
        keys = torch.cat([sample[1], keys])
    if len(keys) > size:
        keys, keep = keys.topk(size, largest=False)
        residuals = residuals[:, keep]
    return residuals, keys

class RQVAE(nn.Module):
    """The network. Inputs are already standardised vectors [B, d]."""

    def __init__(self, input_dim: int, cfg: RQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = mlp([input_dim, *cfg.hidden, cfg.latent_dim])
        self.decoder = mlp([cfg.latent_dim, *reversed(cfg.hidden), input_dim])
        # Overwritten by the k-means initialisation when cfg.kmeans_init is set.
        self.codebooks = nn.Parameter(
            torch.randn(cfg.levels, cfg.codebook_size, cfg.latent_dim) * 0.1
        )  # [L, K, latent]

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes [B, L], chosen code vectors [L, B, latent], residuals [L, B, latent])."""
        residual = z  # [B, latent]
        codes, chosen, residuals = [], [], []
        for level in range(self.cfg.levels):
            book = self.codebooks[level]  # [K, latent]
            r = residual.detach()
            dist = (
                (r**2).sum(1, keepdim=True) - 2 * r @ book.detach().T + (book.detach() ** 2).sum(1)
            )
            code = dist.argmin(dim=1)  # [B]
            e = book[code]  # [B, latent]
            codes.append(code)
            chosen.append(e)
            residuals.append(residual)
            residual = residual - e.detach()
        return torch.stack(codes, 1), torch.stack(chosen), torch.stack(residuals)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for a batch x [B, d]; also the codes [B, L] and residuals [L, B, latent]."""
        z = self.encoder(x)  # [B, latent]
        codes, chosen, residuals = self.quantize(z)
        z_q = chosen.sum(0)  # [B, latent]
        z_st = z + (z_q - z).detach()  # straight-through: decoder grads flow into z
        x_hat = self.decoder(z_st)  # [B, d]
        recon = F.mse_loss(x_hat, x)
        codebook = F.mse_loss(chosen, residuals.detach())
        commit = F.mse_loss(residuals, chosen.detach())
        # mse_loss averages over levels; x L makes it the sum over levels of the paper.
        levels = self.cfg.levels
        loss = recon + levels * (codebook + self.cfg.beta * commit)
        return {
            "loss": loss,
            "recon": recon.detach(),
            "codebook": codebook.detach(),
            "commit": commit.detach(),
            "codes": codes,
            "residuals": residuals.detach(),
        }

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize(self.encoder(x))[0]  # [B, L]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantize(self.encoder(x))[1].sum(0))  # [B, d]


class EarlyStop:
    """Keeps the weights of the lowest validation loss and says when to stop: after
    `cfg.patience` evaluations in a row that did not beat the best by `cfg.min_improvement`
    (relative). Weights are kept on any lower loss; only the count needs the margin, so a
    loss still creeping down by less than it does not hold the fit open."""

    def __init__(self, cfg: RQVAEConfig, n_valid: int, n_warm: int) -> None:
        self.cfg, self.n_valid, self.n_warm = cfg, n_valid, n_warm
        self.best = self.to_beat = float("inf")
        self.best_epoch: int | None = None
        self.bad = 0
        self.stopped = False
        self.best_state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, loss: float, model: nn.Module) -> bool:
        """Record the validation `loss` after (0-based) `epoch`; True = stop now."""
        if loss < self.best:
            self.best, self.best_epoch = loss, epoch + 1
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if loss < self.to_beat:
            self.to_beat, self.bad = loss * (1 - self.cfg.min_improvement), 0
        else:
            self.bad += 1
        self.stopped = self.bad >= self.cfg.patience
        return self.stopped

    def record(self, epochs_run: int) -> dict[str, object]:
        """For `tokenizer.json`: epochs are counted from 1 (epochs completed)."""
        cfg = self.cfg
        if self.stopped:
            why = (f"validation loss not {cfg.min_improvement:.1%} below its best for "
                   f"{cfg.patience} evaluations ({cfg.patience * cfg.eval_every} epochs)")
        elif cfg.patience == 0:
            why = "early stopping off (patience 0): ran all epochs"
        elif self.n_valid == 0:
            why = (f"{self.n_warm} warm items are too few to hold out a validation set: "
                   "ran all epochs")
        else:
            why = "reached the maximum epochs before the patience ran out"
        return {"epochs_run": epochs_run, "max_epochs": cfg.epochs, "n_valid": self.n_valid,
                "best_epoch": self.best_epoch if self.n_valid else epochs_run,
                "best_valid_loss": self.best if self.n_valid else None,
                "stopped_early": self.stopped, "why": why}


class RQVAETokenizer(Tokenizer):
    method = "rqvae"
    Config = RQVAEConfig

    def __init__(self, cfg: RQVAEConfig, device: str | torch.device | None = None) -> None:
        super().__init__(cfg, device)
        self.scaler: Standardizer | None = None
        self.model: RQVAE | None = None
        self.valid_rows: np.ndarray | None = None  # after fit: the warm rows held out

    def _fit(self, warm: np.ndarray, progress: bool) -> None:
        with cpu_threads(self.device, self._step_flops(min(self.cfg.batch_size, len(warm)))):
            self._train(warm, progress)

    def _step_flops(self, batch: int) -> float:
        widths = [self.input_dim, *self.cfg.hidden, self.cfg.latent_dim]
        macs = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=False))
        return 2 * 3 * 2 * batch * macs  # encoder + decoder, forward + 2x backward

    def _train(self, warm: np.ndarray, progress: bool) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # module initialisation
        gen = torch.Generator().manual_seed(cfg.seed)  # shuffling and code resets
        draw = torch.Generator().manual_seed(cfg.seed + 1)  # the epoch's residual sample
        # The hold-out has its own generator: patience 0 (no hold-out) draws exactly what
        # the fixed-epoch fit always drew.
        n_valid = cfg.holdout_size(len(warm))
        order = torch.randperm(len(warm), generator=torch.Generator().manual_seed(cfg.seed + 2))
        self.valid_rows = order[:n_valid].sort().values.numpy()  # rows of `warm` held out
        # The z-score is every warm item's, as documented: a fixed input transform, not
        # something the hold-out is there to judge.
        self.scaler = Standardizer.fit(warm, cfg.standardize)
        valid = warm[self.valid_rows]  # [n_valid, d]
        if n_valid:  # the held-out items are not trained on
            warm = warm[order[n_valid:].sort().values.numpy()]
        x = torch.from_numpy(self.scaler(warm)).to(self.device)  # [n, d]
        x_valid = torch.from_numpy(self.scaler(valid)).to(self.device)  # [n_valid, d]
        n_warm = n_valid + len(warm)
        n = len(x)
        bs = min(cfg.batch_size, n)
        self.model = model = RQVAE(x.shape[1], cfg).to(self.device)
        if cfg.optimizer == "adam":
            opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.Adagrad(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        perm = torch.randperm(n, generator=gen).to(self.device)
        if cfg.kmeans_init:
            self._kmeans_init(x[perm[: max(bs, cfg.kmeans_init_items)]])
        reset_epochs = int(cfg.reset_until * cfg.epochs) if cfg.dead_code_reset else 0
        resets = 0
        log: list[dict[str, float]] = []
        stop = EarlyStop(cfg, n_valid, n_warm)
        bar = tqdm(range(cfg.epochs), desc="rq-vae", unit="epoch", disable=not progress)
        for epoch in bar:
            if epoch > 0:
                perm = torch.randperm(n, generator=gen).to(self.device)
            usage = torch.zeros(cfg.levels, cfg.codebook_size, device=self.device)  # [L, K]
            totals = torch.zeros(4, device=self.device)
            sample: tuple[torch.Tensor, torch.Tensor] | None = None  # residuals, their keys
            for start in range(0, n, bs):
                out = model(x[perm[start : start + bs]])
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                opt.step()
                codes = out["codes"]  # [B, L]
                usage.scatter_add_(1, codes.T, torch.ones_like(codes.T, dtype=usage.dtype))
                weight = len(codes) / n
                terms = [out["loss"].detach(), out["recon"], out["codebook"], out["commit"]]
                totals += weight * torch.stack(terms)
                if epoch < reset_epochs:
                    sample = sample_residuals(sample, out["residuals"].detach(), bs, draw)
            if epoch < reset_epochs:
                resets += self._reset_dead_codes(usage, sample[0], gen)
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs - 1:
                row = dict(
                    zip(("loss", "recon", "codebook", "commit"), totals.tolist(), strict=True)
                )
                shown = {"loss": f"{row['loss']:.4f}", "recon": f"{row['recon']:.4f}"}
                if n_valid:
                    row["valid"] = self._valid_loss(x_valid)
                    shown["valid"] = f"{row['valid']:.4f}"
                log.append({"epoch": epoch + 1, **row})  # epochs completed
                bar.set_postfix(shown)
                if n_valid and stop.update(epoch, row["valid"], model):
                    break
        if stop.best_state is not None:
            model.load_state_dict(stop.best_state)
        model.eval()
        self.fit_log = {
            "n_fit": n,
            "final": {k: v for k, v in log[-1].items() if k != "epoch"},
            "first": {k: v for k, v in log[0].items() if k != "epoch"},
            "dead_code_resets": resets,
            "early_stopping": stop.record(log[-1]["epoch"]),
            "curve": log,
        }

    @torch.no_grad()
    def _valid_loss(self, x: torch.Tensor) -> float:
        """Mean squared error of held-out rows [m, d] decoded from their codes.

        The decoder reads the quantised latent, so this already pays for bad codes. The
        full objective adds the quantisation error, which is not comparable across epochs:
        ~0 right after the k-means initialisation, then growing with the latents' scale. On
        a toy catalogue that sum was lowest after epoch 1 while this fell 5x over 200 epochs
        (measured), so stopping on the sum would keep untrained weights."""
        total = 0.0
        for i in range(0, len(x), 8192):
            chunk = x[i : i + 8192]
            total += self.model(chunk)["recon"].item() * len(chunk)
        return total / len(x)

    @torch.no_grad()
    def _kmeans_init(self, batch: torch.Tensor) -> None:
        """Each level's codebook = k-means of that level's residuals on one batch."""
        model = self.model
        residual = model.encoder(batch)  # [B, latent]
        for level in range(self.cfg.levels):
            r = residual.cpu().numpy()
            centroids = kmeans(
                r, self.cfg.codebook_size, self.cfg.kmeans_iters, self.cfg.seed + level
            )
            book = torch.from_numpy(centroids).to(residual)  # [K, latent]
            model.codebooks.data[level] = book
            code = torch.cdist(residual, book).argmin(1)  # [B]
            residual = residual - book[code]

    @torch.no_grad()
    def _reset_dead_codes(
        self, usage: torch.Tensor, residuals: torch.Tensor, gen: torch.Generator
    ) -> int:
        """Move codes unused in the epoch onto random residuals of the epoch's sample
        `residuals` [L, R, latent]."""
        n_reset = 0
        batch = residuals.shape[1]
        for level in range(self.cfg.levels):
            dead = torch.nonzero(usage[level] == 0).flatten()
            if len(dead) == 0:
                continue
            if len(dead) <= batch:
                pick = torch.randperm(batch, generator=gen)[: len(dead)]
            else:
                pick = torch.randint(batch, (len(dead),), generator=gen)
            self.model.codebooks.data[level, dead] = residuals[level, pick.to(residuals.device)]
            n_reset += len(dead)
        return n_reset

    def _encode(self, vectors: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(self.scaler(vectors)).to(self.device)
        with cpu_threads(self.device, self._step_flops(len(x)) / 3):
            return self.model.encode(x).cpu().numpy()

    def _reconstruct(self, vectors: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(self.scaler(vectors)).to(self.device)
        with cpu_threads(self.device, self._step_flops(len(x)) / 3):
            return self.scaler.inverse(self.model.reconstruct(x).cpu().numpy())

    def _tensors(self) -> dict[str, torch.Tensor]:
        state = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        return {
            "mean": torch.from_numpy(self.scaler.mean),
            "std": torch.from_numpy(self.scaler.std),
            **state,
        }

    def _load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.scaler = Standardizer(tensors["mean"].numpy(), tensors["std"].numpy())
        self.model = RQVAE(self.input_dim, self.cfg)
        state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(state)
        self.model.to(self.device).eval()


# Below this many floating-point operations per step, CPU training runs on one thread.
# Small steps parallelise badly, and when the cores are shared (several processes, each
# with its own thread pool) the pool's spinning makes them far slower: measured on a busy
# 2-core machine, the small preset on MovieLens-100k (0.2 GFLOP/step) took 30 s on one
# thread and 3-8x longer on two. The `paper` preset (2.2 GFLOP/step) keeps torch's default.
SINGLE_THREAD_FLOPS = 1e9


@contextlib.contextmanager
def cpu_threads(device: torch.device, flops_per_step: float) -> Iterator[None]:
    before = torch.get_num_threads()
    single = device.type == "cpu" and flops_per_step < SINGLE_THREAD_FLOPS
    if single:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if single:
            torch.set_num_threads(before)
