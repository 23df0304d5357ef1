"""Quantizer internals pinned to numbers written out from the module docstrings: every stats dict in full (keys and
values), VQ's loss and l2 rows, dead-code restarts and their seeds, TDC's statistics per group, GQ/TokenBridge
regularisers, the straight-through values of FSQ/LFQ, LFQ/BSQ entropies per group, the arguments the searches
forward to the kernels, the error messages, and the collectives run in this process on a one-rank gloo group
(with a simulated second rank where one rank alone cannot tell SUM from MIN/MAX)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import kernels
from quantizers import build_quantizer
from quantizers.gq import gaussian_codebook
from quantizers.tdc import TargetDivergenceConstraint, _global_stats
from quantizers.vq import _all_reduce_sum_, _global_rows

LN2 = math.log(2.0)


def one_group(rows):
    """(N, d) rows -> (1, d, N, 1) input for a single-group quantizer (channel d = dim d)."""
    v = torch.as_tensor(rows, dtype=torch.float32)
    return v.t().reshape(1, v.shape[1], v.shape[0], 1)


def group_rows(x, groups):
    """(B, m*G, H, W) -> (B, G, H, W, m) written out from the strided map: channel d*G + j is dim d of group j."""
    b, c, h, w = x.shape
    m = c // groups
    out = torch.empty(b, groups, h, w, m, dtype=x.dtype)
    for j in range(groups):
        for d in range(m):
            out[:, j, :, :, d] = x[:, d * groups + j]
    return out


def kl_bits(mu, logvar):
    return 0.5 * (mu.double() ** 2 + logvar.double().exp() - 1 - logvar.double()) / LN2


def tdc_expected(bits, target, tol, lam, lam_min, lam_max, per_group=True):
    """TDC's (loss, stats) from the docstring for (B, G, ...) bits in float64 (λs before the update)."""
    bits = bits.double()
    w = torch.where(bits > target + tol, torch.full_like(bits, lam_max), torch.ones_like(bits))
    w = torch.where(bits < target - tol, torch.full_like(bits, lam_min), w)
    loss = lam * (w * bits).sum().item() / bits.shape[0]
    flat = bits.flatten().tolist()
    stats = {"bits_mean": sum(flat) / len(flat), "bits_min": min(flat), "bits_max": max(flat),
             "bits_in_band": sum(abs(v - target) <= tol for v in flat) / len(flat),
             "lam": lam, "lam_min": lam_min, "lam_max": lam_max}
    if per_group:
        for j in range(bits.shape[1]):
            stats[f"bits_mean/{j}"] = bits[:, j].mean().item()
    return loss, stats


# ---------------------------------------------------------------------------------------- distributed (1 rank)

@pytest.fixture
def gloo_group(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    assert not dist.is_initialized()
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path / 'pg'}")
    try:
        yield
    finally:
        dist.destroy_process_group()


def simulated_peer(monkeypatch, reduce_values=(), broadcast_values=()):
    """Wrap the real collectives (which check their arguments on the 1-rank group) with a second rank: the i-th
    all_reduce combines with reduce_values[i] by its op; the i-th broadcast from rank 0 delivers
    broadcast_values[i] (this process then plays a rank other than 0)."""
    real_all_reduce, real_broadcast = dist.all_reduce, dist.broadcast
    reduces, broadcasts = list(reduce_values), list(broadcast_values)
    ops = {dist.ReduceOp.SUM: torch.add, dist.ReduceOp.MIN: torch.minimum, dist.ReduceOp.MAX: torch.maximum}

    def all_reduce(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        real_all_reduce(tensor, op=op)
        peer = torch.as_tensor(reduces.pop(0), dtype=tensor.dtype)
        tensor.copy_(ops[op](tensor, peer))

    def broadcast(tensor, src=None, group=None, async_op=False):
        real_broadcast(tensor, src=src)
        tensor.copy_(torch.as_tensor(broadcasts.pop(0), dtype=tensor.dtype))

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(dist, "broadcast", broadcast)
    return reduces, broadcasts


def test_vq_collectives_sum_over_ranks_and_gather_the_global_rows_in_rank_order(gloo_group, monkeypatch):
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0])
    _all_reduce_sum_(a, b)  # one rank: the sum is its own tensors
    rows = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.equal(_global_rows(rows), rows)
    assert a.tolist() == [1.0, 2.0] and b.tolist() == [3.0]

    left = simulated_peer(monkeypatch, reduce_values=[[10.0, 20.0], [30.0]])
    _all_reduce_sum_(a, b)
    assert a.tolist() == [11.0, 22.0] and b.tolist() == [33.0]
    assert left == ([], [])
    peer_rows = torch.tensor([[5.0, 6.0], [7.0, 8.0]])  # rank 1's batch: it comes after ours, as in one process

    def all_gather(parts, tensor, group=None, async_op=False):
        parts[0].copy_(tensor)
        parts[1].copy_(peer_rows)

    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "all_gather", all_gather)
    assert _global_rows(rows).tolist() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]


def test_global_stats_are_the_mean_min_and_max_over_every_rank(gloo_group, monkeypatch):
    mine = torch.tensor([[3.0, 5.0], [2.0, 6.0]])
    assert _global_stats(mine) == pytest.approx((4.0, 2.0, 6.0), rel=1e-12)  # one rank: its own batch
    peer = [9.0, 1.5, 7.0]  # a second rank with another batch shape
    left = simulated_peer(monkeypatch, reduce_values=[[sum(peer), len(peer)], [min(peer)], [max(peer)]])
    everything = [3.0, 5.0, 2.0, 6.0] + peer
    want = (sum(everything) / len(everything), min(everything), max(everything))
    assert _global_stats(mine) == pytest.approx(want, rel=1e-12)
    assert left[0] == []
    # evaluation: ranks may see different batch counts, so no collective (a peer would be consumed here)
    assert _global_stats(mine, across_ranks=False) == pytest.approx((4.0, 2.0, 6.0), rel=1e-12)


def test_training_noise_is_the_global_batchs_slice_for_this_rank(gloo_group, monkeypatch):
    from quantizers._utils import batch_randn_like

    like = torch.zeros(3, 2, 4, dtype=torch.float64)
    torch.manual_seed(7)
    alone = batch_randn_like(like)  # one rank: plain randn_like
    torch.manual_seed(7)
    assert torch.equal(alone, torch.randn(3, 2, 4, dtype=torch.float64))
    torch.manual_seed(7)
    whole = torch.randn(3 * 2, 2, 4, dtype=torch.float64)  # what one process draws for the global batch
    after = torch.get_rng_state()
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    torch.manual_seed(7)
    mine = batch_randn_like(like)
    assert mine.dtype == like.dtype and mine.shape == like.shape
    assert torch.equal(mine, whole[3:6]) and torch.equal(torch.get_rng_state(), after)


# ---------------------------------------------------------------------------------------------- VQ

from test_vq import make as make_vq  # noqa: E402  (the VQ tests' seeded small instance)


def vq_rows_and_choice(q, h):
    """rows (B*G*H*W, m) and their nearest codewords, from the strided map, in float64."""
    z = group_rows(h, q.num_codebooks).reshape(-1, q.codebook_dim).double()
    c = q.codebook.detach().double()
    if q.l2_norm:
        z, c = F.normalize(z, dim=-1), F.normalize(c, dim=-1)
    idx = ((z[:, None] - c[None]) ** 2).sum(-1).argmin(1)
    return z, c, idx


def test_vq_eval_loss_and_stats():
    q = make_vq().eval()
    with torch.no_grad():
        q.codebook.normal_()
    h = torch.randn(3, 6, 2, 4)
    out = q(h)
    z, c, idx = vq_rows_and_choice(q, h)
    assert out.indices.reshape(-1).tolist() == idx.tolist()
    sq = ((z - c[idx]) ** 2).mean().item()  # reduction="mean" (taming): per element
    assert out.loss.item() == pytest.approx(1.25 * sq, rel=1e-5)  # β·commitment + 1·codebook, equal values
    assert out.stats == pytest.approx({"commitment": sq, "vq_loss": 1.25 * sq}, rel=1e-5)


@pytest.mark.parametrize("threshold", [0.0, 0.1])  # restarts off; on, but no codeword falls below 0.1
def test_vq_training_stats_with_l2_rows(threshold):
    q = make_vq(l2_norm=True, dead_code_threshold=threshold).train()
    with torch.no_grad():
        q.codebook.normal_()
    h = torch.randn(2, 6, 3, 2) * 3
    z, c, idx = vq_rows_and_choice(q, h)
    out = q(h)
    assert out.indices.reshape(-1).tolist() == idx.tolist()
    sq = ((z - c[idx]) ** 2).mean().item()  # unit rows against unit codewords, per element
    used = len(set(idx.tolist()))
    assert out.stats == pytest.approx({"commitment": sq, "vq_loss": 1.25 * sq, "batch_usage": used / 16,
                                       "active_codes": 1.0, "restarted_codes": 0.0}, rel=1e-5)
    assert out.loss.item() == pytest.approx(1.25 * sq, rel=1e-5)
    assert torch.allclose(group_rows(out.z_q.detach(), 2).reshape(-1, 3).double(), c[idx], atol=1e-6)


def test_vq_l2_rows_error_names_the_layout():
    with pytest.raises(ValueError, match=r"^VectorQuant input of shape \(1, 5, 2, 2\) must be "
                                         r"\(B, in_channels=6, H, W\): 2 group\(s\) of 3 dims$"):
        make_vq()(torch.randn(1, 5, 2, 2))


def restart_case():
    """K = 4 codewords, decay ½, threshold 1. Before the step N = (0, 2, 1, 1); the batch picks codeword 0 once and
    codeword 3 five times, so N becomes (½, 1, ½, 3). Dead = N < 1 and unused in the batch: only codeword 2
    (0 is below but used, 1 sits exactly on the threshold)."""
    q = make_vq(codebook_size=4, codebook_dim=2, num_codebooks=1, decay=0.5, dead_code_threshold=1.0).train()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[5.0, 5.0], [100.0, 100.0], [-100.0, 100.0], [0.0, 0.0]]))
        q.cluster_size.copy_(torch.tensor([0.0, 2.0, 1.0, 1.0]))
    rows = torch.randn(6, 2) * 0.01
    rows[0] += 5.0
    h = rows.t().reshape(1, 2, 2, 3)  # rows in (H, W) order, channel d = dim d
    before = q.codebook.detach().clone()
    out = q(h)
    assert out.indices.flatten().tolist() == [0, 3, 3, 3, 3, 3]
    sq = ((rows - before[[0, 3, 3, 3, 3, 3]]) ** 2).mean().item()  # taming: per-element mean
    assert out.stats == pytest.approx({"commitment": sq, "vq_loss": 1.25 * sq, "batch_usage": 0.5,
                                       "active_codes": 0.5, "restarted_codes": 1.0}, rel=1e-5)
    new = q.codebook.detach()
    assert torch.equal(new[[0, 1, 3]], before[[0, 1, 3]])
    assert (new[2] == rows).all(dim=1).sum() == 1  # re-seeded with one of this batch's rows
    assert q.cluster_size.tolist() == [0.5, 1.0, 1.0, 3.0]


def test_vq_restarts_only_unused_codewords_strictly_below_the_threshold():
    restart_case()


def test_vq_restarts_under_a_process_group(gloo_group):
    restart_case()  # the dead mask and the fresh rows go through the collectives (one rank: unchanged)


def test_vq_ema_restart_seeds_the_sums_with_threshold_pseudo_counts():
    q = make_vq(codebook_size=4, codebook_dim=2, num_codebooks=1, ema_update=True, decay=0.5,
                dead_code_threshold=2.0).train()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, 100.0], [100.0, -100.0]]))
        q.embed_sum.copy_(q.codebook)
    rows = torch.randn(6, 2) * 0.01  # every row picks codeword 0; 1..3 are unused with N = ½ < 2
    out = q(rows.t().reshape(1, 2, 2, 3))
    assert out.stats["restarted_codes"] == 3.0
    new = q.codebook.detach()
    for k in (1, 2, 3):
        assert (new[k] == rows).all(dim=1).sum() == 1
    assert torch.equal(q.embed_sum[1:], new[1:] * 2.0)  # s_k = fresh · threshold, N_k = threshold
    assert q.cluster_size[1:].tolist() == [2.0, 2.0, 2.0]


def test_sample_rows_with_as_many_rows_as_needed_is_a_permutation():
    q = make_vq()
    z = torch.randn(5, 3)
    got = q._sample_rows(z, 5)
    which = [int(torch.nonzero((z == row).all(dim=1)).flatten()[0]) for row in got]
    assert sorted(which) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("zero_spread", [False, True])
def test_sample_rows_tiles_the_rows_with_scaled_noise(zero_spread):
    q = make_vq(codebook_dim=2)
    z = torch.zeros(3, 2) if zero_spread else torch.randn(3, 2)
    torch.manual_seed(7)
    got = q._sample_rows(z, 7)
    torch.manual_seed(7)
    noise = torch.randn(7, 2)
    sigma = 1e-3 * (z.std() + 1e-12)  # 1e-3·std, floored so equal rows still separate
    want = z[[i % 3 for i in range(7)]] + sigma * noise
    assert torch.allclose(got, want, rtol=1e-5, atol=0.0 if zero_spread else 1e-8)


def test_sample_rows_on_the_sphere_are_unit_rows():
    q = make_vq(codebook_dim=4, l2_norm=True)
    z = F.normalize(torch.randn(3, 4), dim=-1)
    torch.manual_seed(3)
    got = q._sample_rows(z, 7)
    torch.manual_seed(3)
    noisy = z[[i % 3 for i in range(7)]] + 1e-3 * (z.std() + 1e-12) * torch.randn(7, 4)
    want = noisy / noisy.norm(dim=1, keepdim=True)
    assert torch.allclose(got, want, atol=1e-7)


def spy_on(monkeypatch, name):
    real, calls = getattr(kernels, name), []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels, name, spy)
    return calls


@pytest.mark.parametrize("name, kwargs, kernel", [
    ("vq", dict(codebook_size=16, codebook_dim=2), "nearest_code"),
    ("gq", dict(codebook_size=16, codebook_dim=2), "gq_argmax"),
    ("tokenbridge", dict(codebook_size=4), "nearest_code"),
])
def test_searches_forward_the_exact_flag_and_the_backend(name, kwargs, kernel, monkeypatch):
    q = build_quantizer(name, num_codebooks=2, search_exact=False, search_backend="torch", **kwargs).eval()
    calls = spy_on(monkeypatch, kernel)
    q.encode(torch.randn(1, q.in_channels, 2, 2))
    assert len(calls) == 1 and calls[0]["exact"] is False and calls[0]["backend"] == "torch"
    # backend="triton" reaches the kernels: on CPU tensors without the interpreter they refuse it
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = build_quantizer(name, num_codebooks=2, search_backend="triton", **kwargs).eval()
    with pytest.raises(ValueError, match="backend='triton' on cpu tensors needs TRITON_INTERPRET=1"):
        q.encode(torch.randn(1, q.in_channels, 2, 2))


# ---------------------------------------------------------------------------------------------- base

def test_input_errors_name_the_class():
    q = build_quantizer("fsq", codebook_size=None, levels=[5, 3])
    with pytest.raises(ValueError, match=r"^FiniteScalarQuant input of shape \(1, 3, 2, 2\) must be "
                                         r"\(B, in_channels=2, H, W\): 1 group\(s\) of len\(levels\)=2 dims$"):
        q(torch.randn(1, 3, 2, 2))
    h = torch.zeros(1, 2, 2, 2)
    h[0, 1, 1, 1] = float("inf")
    with pytest.raises(ValueError, match=r"^FiniteScalarQuant input contains NaN or inf$"):
        q(h)
    lfq = build_quantizer("lfq", codebook_size=16, num_codebooks=2)
    with pytest.raises(ValueError, match=r"^LookupFreeQuant input of shape \(1, 4, 1, 1\) must be "
                                         r"\(B, in_channels=8, H, W\): 2 group\(s\) of 4 bits$"):
        lfq(torch.randn(1, 4, 1, 1))


def test_check_indices_messages():
    q = build_quantizer("vq", codebook_size=16, codebook_dim=2)
    with pytest.raises(ValueError, match=r"^indices must be an integer tensor \(int64\), got torch.bool$"):
        q.decode(torch.zeros(1, 1, 2, 2, dtype=torch.bool))
    idx = torch.zeros(1, 1, 2, 2, dtype=torch.long)
    idx[0, 0, 1, 1] = 16
    with pytest.raises(ValueError, match=r"^indices range over \[0, 16\] but codebook_size=16 allows \[0, 15\]$"):
        q.decode(idx)


# ---------------------------------------------------------------------------------------------- TDC

def test_tdc_loss_and_stats_per_group_over_a_batch():
    tdc = TargetDivergenceConstraint(target_bits=4, tolerance=0.5, updates_per_step=1)
    tdc.lam.fill_(1.5)
    tdc.lam_min.fill_(0.5)
    tdc.lam_max.fill_(2.0)
    bits = torch.tensor([[3.0, 4.2, 5.0], [4.4, 7.0, 1.0]])  # (B=2, G=3)
    loss, stats = tdc(bits)
    want_loss, want_stats = tdc_expected(bits, 4.0, 0.5, 1.5, 0.5, 2.0)
    assert loss.item() == pytest.approx(want_loss, rel=1e-6)
    assert stats == pytest.approx(want_stats, rel=1e-6)
    assert stats["bits_mean/0"] == pytest.approx(3.7) and stats["bits_mean/1"] == pytest.approx(5.6)
    # training mode: mean 4.1 > T (λ up), max above the band (λ_max up), min below it (λ_min down)
    assert tdc.lam.item() == pytest.approx(1.5 * 1.01) and tdc.lam_max.item() == pytest.approx(2.0 * 1.01)
    assert tdc.lam_min.item() == pytest.approx(0.5 / 1.01)


@pytest.mark.parametrize("shape, per_group", [((4,), False), ((4, 1), False), ((2, 2), True), ((2, 1, 2), False)])
def test_tdc_per_group_means_only_with_more_than_one_group(shape, per_group):
    tdc = TargetDivergenceConstraint(target_bits=2, tolerance=0.25).eval()
    bits = torch.tensor([1.0, 2.1, 3.5, 2.0]).reshape(shape)
    loss, stats = tdc(bits)
    want_loss, want_stats = tdc_expected(bits, 2.0, 0.25, 1.0, 1.0, 1.0, per_group=per_group)
    assert loss.item() == pytest.approx(want_loss, rel=1e-6)
    assert stats == pytest.approx(want_stats, rel=1e-6)


def test_tdc_weights_keep_the_dtype_of_the_bits():
    tdc = TargetDivergenceConstraint(target_bits=4, tolerance=0.5)
    tdc.lam_min.fill_(0.3)
    tdc.lam_max.fill_(3.0)
    for value, want in ((9.0, 3.0), (1.0, 0.3), (4.0, 1.0)):
        w = tdc.weights(torch.tensor(value))  # a single group: a 0-dim tensor
        assert w.dtype == torch.float32 and w.item() == pytest.approx(want, rel=1e-6)
    w = tdc.weights(torch.tensor([9.0, 1.0], dtype=torch.float64))
    assert w.dtype == torch.float64 and w.tolist() == [3.0, 0.3]


# ---------------------------------------------------------------------------------------------- GQ

def gq_case(name="gq", **kw):
    torch.manual_seed(0)
    q = build_quantizer(name, num_codebooks=2, **kw)
    q.tdc.lam.fill_(1.5)
    q.tdc.lam_min.fill_(0.5)
    q.tdc.lam_max.fill_(2.0)
    m = q.codebook_dim
    mu = torch.randn(2, m * 2, 1, 3) * 2.5  # W = 3 differs from m and from G
    logvar = torch.randn(2, m * 2, 1, 3)
    group_bits = group_rows(kl_bits(mu, logvar), 2).sum(-1)  # (B, G, H, W)
    return q, torch.cat([mu, logvar], 1), group_bits


@pytest.mark.parametrize("training", [False, True])
def test_gq_loss_and_stats(training):
    q, h, group_bits = gq_case(codebook_size=16, codebook_dim=2, kl_weight=0.2)
    q.train(training)
    out = q(h)
    tdc_loss, stats = tdc_expected(group_bits, 4.0, 0.5, 1.5, 0.5, 2.0)
    stats["kl_loss"] = 0.2 * tdc_loss
    assert out.loss.item() == pytest.approx(0.2 * tdc_loss, rel=1e-5)
    assert out.stats == pytest.approx(stats, rel=1e-5)
    assert (out.indices is None) == training


def test_gaussian_codebook_is_sobol_in_float64_through_the_normal_quantile():
    engine = torch.quasirandom.SobolEngine(3, scramble=True, seed=5)
    want = torch.special.ndtri(engine.draw(64, dtype=torch.float64)).float()
    assert torch.equal(gaussian_codebook(64, 3, 5), want)


def test_gaussian_codebook_refuses_non_finite_points(monkeypatch):
    class Corner:  # a Sobol point on the unit cube's corner: Φ⁻¹(1) = +inf
        def __init__(self, dim, scramble, seed):
            self.dim = dim

        def draw(self, n, dtype=torch.float32):
            return torch.ones(n, self.dim, dtype=dtype)

    monkeypatch.setattr(torch.quasirandom, "SobolEngine", Corner)
    with pytest.raises(ValueError) as err:
        gaussian_codebook(4, 2, 7)
    assert str(err.value) == ("the Gaussian codebook for codebook_size=4, codebook_dim=2, seed=7 has non-finite "
                              "entries; choose another seed")


# ---------------------------------------------------------------------------------------------- TokenBridge

def test_tokenbridge_tdc_regularizer_is_gqs():
    q, h, group_bits = gq_case("tokenbridge", codebook_size=16)
    q.eval()
    out = q(h)
    tdc_loss, stats = tdc_expected(group_bits, 4.0, 0.5, 1.5, 0.5, 2.0)
    stats["kl_loss"] = 0.1 * tdc_loss  # GQ's default kl_weight
    assert out.loss.item() == pytest.approx(0.1 * tdc_loss, rel=1e-5)
    assert out.stats == pytest.approx(stats, rel=1e-5)


def test_tokenbridge_kl_regularizer_stats():
    q, h, group_bits = gq_case("tokenbridge", codebook_size=16, regularizer="kl", kl_weight=0.5)
    q.train()
    out = q(h)
    flat = group_bits.flatten().tolist()
    loss = 0.5 * sum(flat) / 2
    assert out.loss.item() == pytest.approx(loss, rel=1e-5)
    assert out.stats == pytest.approx({"bits_mean": sum(flat) / len(flat), "bits_min": min(flat),
                                       "bits_max": max(flat), "kl_loss": loss}, rel=1e-5)


def test_tokenbridge_clamps_far_latents_to_the_end_levels():
    q = build_quantizer("tokenbridge", codebook_size=8, num_codebooks=2).eval()
    mu = torch.tensor([3e38, -3e38, 1e17, -1e17]).view(1, 2, 1, 2)  # the largest finite float32 magnitudes
    h = torch.cat([mu, torch.zeros_like(mu)], 1)
    assert q.encode(h).flatten().tolist() == [7, 0, 7, 0]


# ---------------------------------------------------------------------------------------------- FSQ

@pytest.mark.parametrize("training", [False, True])
def test_fsq_values_indices_and_zero_loss(training):
    levels = [5, 4]
    q = build_quantizer("fsq", codebook_size=None, levels=levels, num_codebooks=2).train(training)
    h = torch.randn(2, 4, 3, 2) * 2
    out = q(h)
    z = group_rows(h, 2).double()
    L = torch.tensor(levels, dtype=torch.float64)
    half, offset = (L - 1) * (1 - 1e-3) / 2, torch.tensor([0.0, 0.5], dtype=torch.float64)
    level = torch.round(torch.tanh(z + torch.atanh(offset / half)) * half - offset)
    assert torch.allclose(group_rows(out.z_q, 2).double(), level / torch.tensor([2.0, 2.0]), atol=1e-6)
    index = (level[..., 0] + 2) + (level[..., 1] + 2) * 5  # dim 0 least significant
    assert out.indices.tolist() == index.long().tolist()
    assert out.loss.dim() == 0 and out.loss.item() == 0.0 and out.stats == {}


def test_fsq_level_errors():
    with pytest.raises(ValueError) as err:
        build_quantizer("fsq", codebook_size=100)
    assert str(err.value).endswith("or use one of: 256 -> [8, 6, 5], 1024 -> [8, 5, 5, 5], "
                                   "4096 -> [7, 5, 5, 5, 5], 16384 -> [8, 8, 8, 6, 5], 65536 -> [8, 8, 8, 5, 5, 5]")
    with pytest.raises(ValueError) as err:
        build_quantizer("fsq", codebook_size=None, levels=[8, 2])
    assert str(err.value) == ("levels=[8, 2] must be a non-empty list of integers >= 3 (2 levels would be the "
                              "asymmetric {-1, 0} and has no finite shift with the paper's (1 - eps) bound; "
                              "use lfq for 1-bit dims)")
    with pytest.raises(ValueError) as err:
        build_quantizer("fsq", codebook_size=256, levels=[8, 5, 5, 5])
    assert str(err.value) == ("codebook_size=256 does not match levels=[8, 5, 5, 5] (∏ = 1000); "
                              "set codebook_size to 1000 or null")
    q = build_quantizer("fsq", codebook_size=120, levels=[8, 5, 3])  # a matching product is accepted
    assert q.codebook_size == 120 and q.levels == (8, 5, 3)


# ---------------------------------------------------------------------------------------------- LFQ / BSQ

def codes(bits, scale):
    return torch.tensor(list(itertools.product((-1.0, 1.0), repeat=bits)), dtype=torch.float64) * scale


def entropies_by_hand(z, scale, tau):
    """z (tokens, G, k): H_s from the explicit 2^k softmax; H_c per group (one sub-group), averaged over groups."""
    c = codes(z.shape[-1], scale)
    p = torch.softmax(2 * z.double() @ c.t() / tau, -1)  # (tokens, G, 2^k)
    h_s = -(p * p.clamp_min(1e-300).log()).sum(-1).mean()
    mean = p.mean(0)  # (G, 2^k)
    h_c = -(mean * mean.clamp_min(1e-300).log()).sum(-1).mean()
    return h_s.item(), h_c.item()


@pytest.mark.parametrize("name", ["lfq", "bsq"])
@pytest.mark.parametrize("training", [False, True])
def test_lfq_bsq_loss_stats_and_values(name, training):
    torch.manual_seed(0)
    tau = 0.7
    # the named options "sum" reduction and, for BSQ, one sphere per group without ramp (the defaults: elsewhere)
    bsq_options = dict(sphere="group", entropy_ramp=0.0, entropy_group_size=4) if name == "bsq" else {}
    q = build_quantizer(name, codebook_size=16, num_codebooks=2, temperature=tau, commitment_weight=0.25,
                        entropy_weight=0.1, reduction="sum", **bsq_options).train(training)
    h = torch.randn(2, 8, 3, 5)
    h[0, 0, 0, 0] = 0.0  # exactly zero: the code is −scale
    if name == "bsq":
        h[0, 2, 0, 0] = h[0, 4, 0, 0] = h[0, 6, 0, 0] = 0.0  # a zero vector stays zero on the "sphere"
    z = group_rows(h, 2).double()  # (B, G, H, W, 4)
    scale = 0.5 if name == "bsq" else 1.0
    if name == "bsq":
        z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    code = torch.where(z > 0, scale, -scale).double()
    commitment = ((z - code) ** 2).sum().item() / 2
    h_s, h_c = entropies_by_hand(z.movedim(1, -2).reshape(-1, 2, 4), scale, tau)
    per_image = 2 * 3 * 5  # groups x positions
    loss = 0.25 * commitment + 0.1 * per_image * (h_s - h_c)
    out = q(h)
    assert out.stats == pytest.approx({"commitment": commitment, "sample_entropy": h_s, "codebook_entropy": h_c,
                                       "aux_loss": loss}, rel=1e-4, abs=1e-6)
    assert out.loss.item() == pytest.approx(loss, rel=1e-4, abs=1e-6)
    assert torch.allclose(group_rows(out.z_q, 2).double(), code, atol=1e-6)
    assert code[0, 0, 0, 0, 0] == -scale
    index = ((z > 0).long() * torch.tensor([8, 4, 2, 1])).sum(-1)  # dim 0 most significant
    assert out.indices.tolist() == index.tolist()


@pytest.mark.parametrize("name", ["gq", "tokenbridge-kl"])
def test_evaluation_forwards_make_no_collective(name, gloo_group, monkeypatch):
    """Ranks may see different numbers of evaluation batches: a collective in an eval forward could hang."""
    q = (build_quantizer("tokenbridge", codebook_size=4, num_codebooks=2, regularizer="kl") if name != "gq"
         else build_quantizer("gq", codebook_size=16, codebook_dim=2, num_codebooks=2))
    left = simulated_peer(monkeypatch)  # any all_reduce would pop from an empty list
    q.eval()(torch.randn(2, q.in_channels, 3, 3))
    assert left == ([], [])
    with pytest.raises(IndexError):  # while training the batch statistics are all-reduced
        q.train()(torch.randn(2, q.in_channels, 3, 3))


def test_vq_without_restarts_or_kmeans_draws_no_random_numbers():
    q = build_quantizer("vq", codebook_size=16, codebook_dim=2, num_codebooks=2).train()
    before = torch.get_rng_state()
    q(torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(torch.get_rng_state(), before)  # the trajectory of GQ-free jobs is not shifted


def test_vq_kmeans_runs_in_training_only_and_again_after_loading_an_uninitialised_state():
    q = build_quantizer("vq", codebook_size=4, codebook_dim=2, num_codebooks=1, init="kmeans")
    fresh = {k: v.clone() for k, v in q.state_dict().items()}
    h = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(2))
    q.eval()(h)
    assert not bool(q.initialized)  # evaluation never initialises
    q.train()(h)
    assert bool(q.initialized)
    q.load_state_dict(fresh)  # e.g. a checkpoint written before the first training step
    q.train()(h * 3)
    assert bool(q.initialized) and not torch.equal(q.codebook, fresh["codebook"])
