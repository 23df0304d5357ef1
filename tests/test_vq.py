"""VQ (quantizers/vq.py): exact nearest-codeword selection, straight-through, loss order, EMA, restarts, k-means."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import compose_config
from quantizers import build_quantizer
from quantizers._utils import channels_to_groups


def make(**kw):
    torch.manual_seed(0)
    args = dict(codebook_size=16, codebook_dim=3, num_codebooks=2)
    args.update(kw)
    return build_quantizer("vq", **args)


def brute_force_nearest(q, h):
    """fp64 argmin over the (normalised) codebook, lowest index on ties, per strided group."""
    z = channels_to_groups(h.double(), q.num_codebooks)  # (B, G, H, W, m)
    c = q.codes().detach().double()
    if q.l2_norm:
        z = F.normalize(z, dim=-1)
    d = ((z[..., None, :] - c) ** 2).sum(-1)  # (B, G, H, W, K)
    return d.argmin(-1)  # first minimum


@pytest.mark.parametrize("l2_norm", [False, True])
def test_selection_is_the_exact_nearest_codeword_and_eval_decode_of_encode_equals_forward(l2_norm):
    q = make(l2_norm=l2_norm, codebook_size=64).eval()
    with torch.no_grad():
        q.codebook.normal_()
    h = torch.randn(2, 6, 5, 7)
    out = q(h)
    assert out.indices.dtype == torch.int64 and out.indices.shape == (2, 2, 5, 7)
    assert torch.equal(out.indices, brute_force_nearest(q, h))
    assert torch.equal(q.encode(h), out.indices)
    assert torch.equal(q.decode(out.indices), out.z_q)
    assert out.continuous is None
    if l2_norm:
        norms = channels_to_groups(out.z_q, 2).norm(dim=-1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)


def test_ties_pick_the_lowest_index():
    q = make(codebook_size=4, codebook_dim=1, num_codebooks=1).eval()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[1.0], [-1.0], [1.0], [-1.0]]))
    h = torch.tensor([0.0, 0.9, -0.9, 0.0]).view(1, 1, 2, 2)
    assert q.encode(h).flatten().tolist() == [0, 0, 1, 0]


def test_straight_through_passes_an_identity_gradient_and_the_value_of_the_codeword():
    q = make(commitment_weight=0.0, codebook_weight=0.0).train()
    h = torch.randn(2, 6, 4, 4, requires_grad=True)
    out = q(h)
    assert torch.allclose(out.z_q, q.decode(out.indices), atol=1e-6)
    out.z_q.mul(torch.arange(6.0).view(1, 6, 1, 1)).sum().backward()
    assert torch.equal(h.grad, torch.arange(6.0).view(1, 6, 1, 1).expand_as(h))


@pytest.mark.parametrize("legacy", [False, True])
def test_loss_terms_weights_and_their_gradients(legacy):
    beta = 0.25
    q = make(commitment_weight=beta, codebook_weight=1.0, legacy_loss=legacy).train()
    h = torch.randn(3, 6, 4, 4, requires_grad=True)
    out = q(h)
    z = channels_to_groups(h.detach(), 2).reshape(-1, 3)
    # rows of z are (B, G, H, W)-ordered; the indices flatten in the same order
    z_q = q.codebook.detach()[out.indices.reshape(-1)]
    n = z.numel()
    # taming's VectorQuantizer2 (default reduction="mean"): legacy  mean((sg(z_q) - z)^2) + β mean((z_q - sg(z))^2),
    # else β on the first term
    sq = ((z - z_q) ** 2).mean()
    w_commit, w_codebook = (1.0, beta) if legacy else (beta, 1.0)
    assert out.loss.item() == pytest.approx((w_commit + w_codebook) * sq.item(), rel=1e-5)
    assert out.stats["commitment"] == pytest.approx(sq.item(), rel=1e-5)

    out.loss.backward()
    # encoder side: only the commitment term, d/dz w mean(z - sg(z_q))^2
    got_h = channels_to_groups(h.grad, 2).reshape(-1, 3)
    assert torch.allclose(got_h, w_commit * 2 * (z - z_q) / n, atol=1e-7)
    # codebook side: only the codebook term
    expected_c = torch.zeros_like(q.codebook).index_add_(0, out.indices.reshape(-1), w_codebook * 2 * (z_q - z) / n)
    assert torch.allclose(q.codebook.grad, expected_c, atol=1e-7)


def test_mean_reduction_is_the_per_element_mean():
    h = torch.randn(2, 6, 4, 4)
    summed = make(reduction="sum").train()(h).loss
    mean = make(reduction="mean").train()(h).loss
    assert mean.item() == pytest.approx(summed.item() * 2 / h.numel(), rel=1e-5)


def test_ema_update_follows_the_smoothed_moving_average_and_the_codebook_has_no_gradient():
    decay, eps = 0.9, 1e-5
    q = make(ema_update=True, decay=decay, eps=eps, codebook_size=8).train()
    assert not q.codebook.requires_grad
    before = q.codebook.detach().clone()
    h = torch.randn(4, 6, 3, 3)
    out = q(h)
    z = channels_to_groups(h, 2).reshape(-1, 3)
    idx = out.indices.reshape(-1)
    counts = torch.bincount(idx, minlength=8).float()
    n = decay * 1.0 + (1 - decay) * counts  # counts start at one pseudo-observation
    s = decay * before + (1 - decay) * torch.zeros_like(before).index_add_(0, idx, z)
    smoothed = (n + eps) / (n.sum() + 8 * eps) * n.sum()
    assert torch.allclose(q.cluster_size, n)
    assert torch.allclose(q.codebook.detach(), s / smoothed[:, None], atol=1e-6)
    unused = counts == 0
    assert unused.any(), "need an unused codeword to check it stays put"
    assert torch.allclose(q.codebook.detach()[unused], before[unused], rtol=1e-3)
    # only the commitment term: beta * ||z - sg(z_q)||^2 / B
    assert out.loss.item() == pytest.approx(0.25 * float(out.stats["commitment"]), rel=1e-6)


def test_dead_codes_are_reseeded_with_encoder_outputs():
    q = make(codebook_size=16, codebook_dim=3, num_codebooks=1, dead_code_threshold=0.95, decay=0.5).train()
    with torch.no_grad():
        q.codebook.copy_(torch.randn(16, 3) * 100)
        q.codebook[0] = 0.0
    h = torch.randn(2, 3, 4, 4) * 0.01  # every row picks codeword 0
    out = q(h)
    assert (out.indices == 0).all()
    rows = channels_to_groups(h, 1).reshape(-1, 3)
    assert out.stats["restarted_codes"] == 15
    for k in range(1, 16):  # each re-seeded codeword is one of this batch's vectors
        assert (q.codebook.detach()[k] == rows).all(dim=1).any()
    assert torch.equal(q.cluster_size[1:], torch.full((15,), 0.95))
    assert q(h).stats["restarted_codes"] < 15  # seeded codes now win some rows


def test_restarts_with_l2_codes_keep_the_backward_pass_valid():
    q = make(codebook_size=16, codebook_dim=2, num_codebooks=1, l2_norm=True, dead_code_threshold=0.9,
             decay=0.5).train()
    h = torch.randn(2, 2, 3, 3, requires_grad=True)
    used_before = q.codes().detach().clone()
    out = q(h)
    assert out.stats["restarted_codes"] > 0
    (out.z_q.sum() + out.loss).backward()  # the codebook changed in place after the forward
    used = out.indices.unique()
    assert torch.equal(q.codes().detach()[used], used_before[used])  # picked codewords are never re-seeded
    unused = torch.ones(16, dtype=torch.bool)
    unused[used] = False
    assert (q.codebook.grad[unused] == 0).all()


@pytest.mark.parametrize("optimizer_step", [False, True])
def test_search_sees_every_codebook_change_through_the_feature_cache(optimizer_step):
    q = make(codebook_size=8, codebook_dim=2, num_codebooks=1, dead_code_threshold=0.9, decay=0.5).train()
    opt = torch.optim.SGD(q.parameters(), lr=10.0)
    restarted = 0
    for step in range(4):  # re-seeding (and optimizer steps) change the codebook in place
        h = torch.randn(2, 2, 3, 3, requires_grad=True)
        out = q(h)
        restarted += out.stats["restarted_codes"]
        if optimizer_step:
            (out.z_q.sum() + out.loss).backward()
            opt.step()
            opt.zero_grad()
        q.eval()
        assert torch.equal(q.encode(h), brute_force_nearest(q, h.detach())), step
        q.train()
    assert restarted > 0


def test_kmeans_init_runs_once_on_the_first_training_batch_and_survives_a_checkpoint():
    q = make(init="kmeans", codebook_size=8, codebook_dim=2, num_codebooks=1, kmeans_iters=20).train()
    assert not bool(q.initialized)
    h = torch.cat([torch.randn(1, 2, 8, 8) + 10 * torch.tensor([i % 2, i // 2]).view(1, 2, 1, 1)
                   for i in range(4)])
    q(h)
    assert bool(q.initialized)
    centers = q.codebook.detach().clone()
    rows = channels_to_groups(h, 1).reshape(-1, 2)
    assign = ((rows[:, None] - centers) ** 2).sum(-1).argmin(1)
    for k in assign.unique():  # a fixed point of Lloyd's step: every used centre is its cluster's mean
        assert torch.allclose(centers[k], rows[assign == k].mean(0), atol=1e-4)

    fresh = make(init="kmeans", codebook_size=8, codebook_dim=2, num_codebooks=1).train()
    fresh.load_state_dict(q.state_dict())
    with torch.no_grad():
        fresh(h * 0 + 123.0)  # a different batch: no second k-means
    assert torch.allclose(fresh.codebook.detach(), centers)


def test_kmeans_and_restarts_never_create_duplicate_codewords():
    q = make(init="kmeans", codebook_size=64, codebook_dim=2, num_codebooks=1, dead_code_threshold=2.0).train()
    h = torch.randn(1, 2, 4, 4)  # 16 rows for 64 codewords: the seeds must be tiled with noise
    q(h)
    assert torch.unique(q.codebook.detach(), dim=0).shape[0] == 64
    q(torch.randn(1, 2, 2, 2))  # 4 rows re-seed the many dead codes
    assert torch.unique(q.codebook.detach(), dim=0).shape[0] == 64


def test_training_continues_identically_from_a_state_dict():
    kw = dict(init="kmeans", ema_update=True, dead_code_threshold=0.5)
    a = make(**kw).train()
    batches = [torch.randn(2, 6, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    torch.manual_seed(1)
    for x in batches[:3]:
        a(x)
    b = make(**kw).train()
    b.load_state_dict(a.state_dict())
    rng = torch.get_rng_state()
    out_a = [a(x).indices for x in batches[3:]]
    torch.set_rng_state(rng)
    out_b = [b(x).indices for x in batches[3:]]
    assert all(torch.equal(x, y) for x, y in zip(out_a, out_b))
    assert torch.equal(a.codebook, b.codebook) and torch.equal(a.cluster_size, b.cluster_size)


@pytest.mark.parametrize("kwargs, message", [
    (dict(codebook_dim=None), "codebook_dim=None"),
    (dict(init="random"), "init='random'"),
    (dict(decay=1.0), "decay=1.0"),
    (dict(reduction="max"), "reduction='max'"),
    (dict(codebook_size=100), "codebook_size=100"),
])
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make(**kwargs)


def test_bad_input_shape_names_the_expected_channels():
    with pytest.raises(ValueError, match="in_channels=6"):
        make()(torch.randn(1, 5, 2, 2))


def test_config_builds_the_quantizer_with_its_own_reduction_whatever_the_reconstruction_uses():
    from gqbench.config import quantizer_from_config

    for protocol, rec in (("official", "mean"), ("gq_paper", "sum")):
        cfg = compose_config(["quantizer=vq", f"protocol={protocol}"])
        q = quantizer_from_config(cfg)
        assert (q.reduction, cfg.loss.reduction) == ("mean", rec)  # taming's per-element VQ terms either way
        assert q.num_codebooks * q.codebook_dim == cfg.model.z_channels
