"""Vector quantization (VQ-VAE / VQGAN) with a learned codebook, plus the usual modern switches.

van den Oord et al. 2017 (arXiv 1711.00937); Esser et al. 2021, VQGAN (arXiv 2012.09841).

Channels are cut into G = num_codebooks groups of m = codebook_dim dims (the strided map every method uses, see
_utils); all groups share one codebook e_1..e_K in R^m, as GQ's groups share its Gaussian codebook. Per group z:

    k*   = argmin_k ‖z − e_k‖²                    kernels.nearest_code: exact fp32, lowest index on ties
    z_q  = e_{k*};  the decoder reads z + sg(z_q − z) in training (straight-through), z_q in eval
    loss = codebook_weight · ‖sg(z) − z_q‖²  +  commitment_weight · ‖z − sg(z_q)‖²

Defaults = taming-transformers' VectorQuantizer2 as VQGAN trains it (β = 0.25, `legacy=True`, per-element
means, U(−1/K, 1/K) init). Switches (all constructor arguments):
- legacy_loss (default True, taming's default and the GQ authors' VQ baseline): taming's bug-compatible order,
  which puts β on the codebook term and 1.0 on the commitment term. False: β weights the commitment term, as in
  the VQ-VAE paper. Ignored with ema_update (no codebook term: β weights the commitment, as taming's EMA VQ).
- l2_norm: z and every e_k are projected onto the unit sphere before the search (cosine-similarity codes,
  ViT-VQGAN / LlamaGen); z_q is then a unit vector and the commitment error is bounded.
- ema_update: the codebook gets no gradient; it follows exponential moving averages of the assignments,
      N_k ← γ N_k + (1 − γ) n_k,   s_k ← γ s_k + (1 − γ) Σ_{i→k} z_i,   e_k = s_k / Ñ_k,
      Ñ_k = (N_k + ε) / (Σ N + K ε) · Σ N                                       (Laplace smoothing)
  and the loss keeps only the commitment term. N and s start at one pseudo-observation per codeword
  (N = 1, s = e), so an unused codeword stays where it is instead of being divided by ε.
- dead_code_threshold: after every training step, codewords whose EMA count N_k (tracked in every mode,
  decay γ) is below the threshold and that no row picked in the batch are re-seeded with random encoder
  outputs of the current batch.
- init: "uniform" (VQGAN, U(−1/K, 1/K)) or "kmeans" (k-means on the first training batch, seeded with distinct
  rows; with fewer rows than codewords the rows are tiled with 1e-3·std noise, so no two codewords are equal).

reduction="mean" (default) is taming's per-element mean: the weights mean what they mean in VQGAN relative to
a per-pixel reconstruction mean. "sum" (a named deviation) sums over latent elements and divides by the batch,
which multiplies every weight by the latent elements per image (C·h·w) relative to "mean".

Under torch.distributed, counts and sums are all-reduced, and k-means and re-seeding draw from the global batch's
rows (all-gathered) with the same RNG state on every rank, so all ranks hold the same codebook, the one a single
process would hold for the same global batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

import kernels

from ._utils import check, check_codebook_size, groups_to_channels, reduce_loss
from .base import Quantizer, QuantizerOutput
from .registry import register_quantizer


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce_sum_(*tensors: Tensor) -> None:
    if _distributed():
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def _counts(indices: Tensor, size: int) -> Tensor:
    """How often each of `size` codes occurs in `indices`, as float32. Unlike torch.bincount (which reads the
    maximum back to size its output on CUDA) this never syncs with the host; counts are exact below 2^24."""
    return torch.zeros(size, device=indices.device).index_add_(0, indices, torch.ones(indices.shape, device=indices.device))


def _forget_initialized_cache(module: "VectorQuant", _incompatible_keys) -> None:
    # a loaded state dict may say "not initialised yet": re-read the buffer on the next training forward
    module._initialized_cache = False


def _global_rows(z: Tensor) -> Tensor:
    """The rows of every rank's batch, in rank order (= the rows one process would see for the global batch);
    every rank gets the same tensor. Needs equal row counts on every rank (the trainer splits batches evenly)."""
    if not _distributed():
        return z
    parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, z.contiguous())
    return torch.cat(parts)


@register_quantizer("vq")
class VectorQuant(Quantizer):
    def __init__(
        self,
        *,
        codebook_size: int,
        codebook_dim: int | None = None,  # m; required (the encoder emits num_codebooks * m channels)
        num_codebooks: int = 1,  # groups per position, sharing the one codebook
        commitment_weight: float = 0.25,  # β
        codebook_weight: float = 1.0,
        legacy_loss: bool = True,  # taming's default order: β on the codebook term, 1.0 on the commitment
        l2_norm: bool = False,  # cosine-similarity codes on the unit sphere
        ema_update: bool = False,  # EMA codebook (no codebook gradient, commitment loss only)
        decay: float = 0.99,  # γ of the EMA counts (used by ema_update and dead-code detection)
        eps: float = 1e-5,  # Laplace smoothing of the EMA counts
        dead_code_threshold: float = 0.0,  # re-seed codewords whose EMA count falls below this; 0 = never
        init: str = "uniform",  # "uniform" (VQGAN) | "kmeans" (on the first training batch)
        kmeans_iters: int = 10,
        reduction: str = "mean",  # "mean": per element (taming); "sum": over latent elements / batch
        search_backend: str = "auto",  # kernels backend: "auto", "torch" or "triton"
        search_exact: bool = True,  # False allows the tensor-core candidate scan (re-ranked exactly)
    ):
        super().__init__()
        check_codebook_size(codebook_size)
        check(
            isinstance(codebook_dim, int) and codebook_dim >= 1,
            f"codebook_dim={codebook_dim!r} must be an integer >= 1 for VQ (the dims of one codeword)",
        )
        check(isinstance(num_codebooks, int) and num_codebooks >= 1, f"num_codebooks={num_codebooks!r} must be an integer >= 1")
        check(commitment_weight >= 0 and codebook_weight >= 0,
              f"commitment_weight={commitment_weight} and codebook_weight={codebook_weight} must be >= 0")
        check(0.0 < decay < 1.0, f"decay={decay} must be in (0, 1)")
        check(eps > 0, f"eps={eps} must be > 0")
        check(dead_code_threshold >= 0, f"dead_code_threshold={dead_code_threshold} must be >= 0 (0 turns restarts off)")
        check(init in ("uniform", "kmeans"), f"init={init!r} must be 'uniform' or 'kmeans'")
        check(isinstance(kmeans_iters, int) and kmeans_iters >= 1, f"kmeans_iters={kmeans_iters!r} must be an integer >= 1")
        check(reduction in ("sum", "mean"), f"reduction={reduction!r} must be 'sum' or 'mean'")
        check(search_backend in ("auto", "torch", "triton"), f"search_backend={search_backend!r} must be 'auto', 'torch' or 'triton'")

        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.num_codebooks = num_codebooks
        self.in_channels = self.out_channels = codebook_dim * num_codebooks
        self.commitment_weight = float(commitment_weight)
        self.codebook_weight = float(codebook_weight)
        self.legacy_loss = bool(legacy_loss) and not ema_update  # EMA: no codebook term, β on commitment
        self.l2_norm = bool(l2_norm)
        self.ema_update = bool(ema_update)
        self.decay = float(decay)
        self.eps = float(eps)
        self.dead_code_threshold = float(dead_code_threshold)
        self.init = init
        self.kmeans_iters = kmeans_iters
        self.reduction = reduction
        self.search_backend = search_backend
        self.search_exact = bool(search_exact)

        K, m = codebook_size, codebook_dim
        codebook = torch.empty(K, m).uniform_(-1.0 / K, 1.0 / K)
        self.codebook = nn.Parameter(codebook, requires_grad=not self.ema_update)
        self.register_buffer("cluster_size", torch.ones(K))  # EMA assignment counts N_k
        if self.ema_update:
            self.register_buffer("embed_sum", codebook.clone())  # EMA sums s_k
        self.register_buffer("initialized", torch.tensor(init == "uniform"))
        # python mirror of the buffer, so a training forward does not read it back (a host sync) every step
        self._initialized_cache = init == "uniform"
        self.register_load_state_dict_post_hook(_forget_initialized_cache)

    # -- the three interface methods ------------------------------------------------------------

    def forward(self, h: Tensor) -> QuantizerOutput:
        z = self._rows(h)  # (B*G*H*W, m) fp32
        if self.training and not self._initialized_cache:
            if not bool(self.initialized):
                self._kmeans_init(z.detach())
            self._initialized_cache = True
        codebook = self.codes()
        indices = self._search(z, codebook)
        z_q = codebook[indices]
        loss, stats = self._loss(z, z_q, batch=h.shape[0])
        grid = (h.shape[0], self.num_codebooks, h.shape[2], h.shape[3])
        idx = indices.view(grid)
        if not self.training:
            return QuantizerOutput(z_q=self._decode(idx), indices=idx, loss=loss, stats=stats)
        z_st = z + (z_q - z).detach()  # straight-through: identity gradient to the encoder
        self._update_codebook(z.detach(), indices, stats)
        return QuantizerOutput(z_q=groups_to_channels(z_st.view(*grid, self.codebook_dim)), indices=idx,
                               loss=loss, stats=stats)

    @torch.no_grad()
    def encode(self, h: Tensor) -> Tensor:
        grid = (h.shape[0], self.num_codebooks, h.shape[2], h.shape[3])
        return self._search(self._rows(h), self.codes()).view(grid)

    def _decode(self, indices: Tensor) -> Tensor:
        return groups_to_channels(self.codes()[indices])

    def codes(self) -> Tensor:
        """(K, m) codewords as the search and the decoder see them (unit vectors with l2_norm)."""
        return F.normalize(self.codebook, dim=-1) if self.l2_norm else self.codebook

    # -- internals -------------------------------------------------------------------------------

    def _rows(self, h: Tensor) -> Tensor:
        z = self.input_groups(h, f"{self.num_codebooks} group(s) of {self.codebook_dim} dims").reshape(-1, self.codebook_dim)
        return F.normalize(z, dim=-1) if self.l2_norm else z

    def _search(self, z: Tensor, codebook: Tensor) -> Tensor:
        # the codebook tensor itself (not a detached copy): the kernels cache its features by identity and
        # version, so they are rebuilt once per optimizer step rather than on every call
        return kernels.nearest_code(z.contiguous(), codebook.contiguous(),
                                    exact=self.search_exact, backend=self.search_backend)

    def _loss(self, z: Tensor, z_q: Tensor, batch: int) -> tuple[Tensor, dict[str, Tensor]]:
        def distance(a: Tensor, b: Tensor) -> Tensor:
            return reduce_loss((a - b).square(), batch, self.reduction)

        commitment = distance(z, z_q.detach())
        codebook_term = distance(z.detach(), z_q)  # equal in value; the gradient goes to the codebook
        w_codebook, w_commit = self.codebook_weight, self.commitment_weight
        if self.legacy_loss:
            w_codebook, w_commit = w_commit, w_codebook
        loss = w_commit * commitment
        if not self.ema_update:
            loss = loss + w_codebook * codebook_term
        stats = {"commitment": commitment.detach(), "vq_loss": loss.detach()}
        return loss, stats

    @torch.no_grad()
    def _update_codebook(self, z: Tensor, indices: Tensor, stats: dict[str, Tensor]) -> None:
        """EMA counts (every mode), the EMA codebook (ema_update), dead-code re-seeding (threshold > 0)."""
        K = self.codebook_size
        counts = _counts(indices, K)
        sums = torch.zeros_like(self.codebook).index_add_(0, indices, z) if self.ema_update else None
        _all_reduce_sum_(*[t for t in (counts, sums) if t is not None])
        stats["batch_usage"] = (counts > 0).float().mean()  # of the global batch
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.ema_update:
            self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            total = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (total + K * self.eps) * total
            self.codebook.copy_(self.embed_sum / smoothed[:, None])
        stats["active_codes"] = (self.cluster_size >= max(self.dead_code_threshold, 1e-3)).float().mean()
        stats["restarted_codes"] = self._restart_dead_codes(z, unused=counts == 0)

    def _restart_dead_codes(self, z: Tensor, unused: Tensor) -> Tensor:
        """Re-seed dead codewords with distinct batch rows; returns how many (a 0-dim tensor).

        Without a host sync: a candidate row is drawn for every codeword and torch.where keeps it only for
        the dead ones (the number of dead codes is never read back)."""
        if self.dead_code_threshold <= 0:
            return torch.zeros((), device=z.device)
        # Only codewords no row picked in this batch: their gradient in this step is exactly zero whatever
        # their value, so re-seeding them through .data (below) cannot corrupt the pending backward pass
        # (F.normalize saved the codebook for it when l2_norm is on).
        # identical on every rank: synced counts, the global batch's rows, the same RNG state (gqbench.runtime)
        dead = (self.cluster_size < self.dead_code_threshold) & unused
        fresh = self._sample_rows(_global_rows(z), self.codebook_size)
        column = dead[:, None]
        if self.l2_norm:
            # .data: F.normalize saved the codebook for the pending backward, and a version bump would make
            # autograd refuse it. The kernels' feature cache (keyed on the version) is not involved: with
            # l2_norm the search sees a new normalised tensor on every call.
            self.codebook.data.copy_(torch.where(column, fresh, self.codebook.data))
        else:
            self.codebook.copy_(torch.where(column, fresh, self.codebook))  # a version bump: features rebuilt
        self.cluster_size.copy_(torch.where(dead, self.dead_code_threshold, self.cluster_size))
        if self.ema_update:
            self.embed_sum.copy_(torch.where(column, fresh * self.dead_code_threshold, self.embed_sum))
        return dead.sum().float()

    def _sample_rows(self, z: Tensor, n: int) -> Tensor:
        """n distinct rows of z (no replacement), or, with fewer rows than n, z tiled plus small noise: the
        search breaks ties to the lowest index, so an exact duplicate codeword could never be picked."""
        if z.shape[0] >= n:
            return z[torch.randperm(z.shape[0], device=z.device)[:n]].clone()
        tiled = z[torch.arange(n, device=z.device) % z.shape[0]]
        noisy = tiled + 1e-3 * (z.std() + 1e-12) * torch.randn_like(tiled)
        return F.normalize(noisy, dim=-1) if self.l2_norm else noisy

    @torch.no_grad()
    def _kmeans_init(self, z: Tensor) -> None:
        """Lloyd's k-means on the first training batch (the global batch: every rank computes the same);
        empty clusters keep their seed."""
        K = self.codebook_size
        z = _global_rows(z)
        centers = self._sample_rows(z, K)
        for _ in range(self.kmeans_iters):
            assign = kernels.nearest_code(z.contiguous(), centers.contiguous(), backend=self.search_backend)
            counts = torch.bincount(assign, minlength=K).to(z.dtype)
            sums = torch.zeros_like(centers).index_add_(0, assign, z)
            centers = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centers)
            if self.l2_norm:
                centers = F.normalize(centers, dim=-1)
        self.codebook.copy_(centers)
        if self.ema_update:
            self.embed_sum.copy_(centers)
            self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    def extra_repr(self) -> str:
        switches = [s for s in ("legacy_loss", "l2_norm", "ema_update") if getattr(self, s)]
        return (super().extra_repr() + f", codebook_dim={self.codebook_dim}, commitment_weight={self.commitment_weight:g}"
                + f", init={self.init}" + "".join(f", {s}" for s in switches))
