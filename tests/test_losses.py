"""Reconstruction NLL conventions, hinge / generator losses, adaptive GAN weight, GANLoss schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gqbench.losses import (
    GANLoss,
    ReconstructionLoss,
    adaptive_gan_weight,
    generator_adversarial_loss,
    hinge_d_loss,
)

# hand-made batch: B = 2 images of 1×2×2; |x − x̂| = [[1, 2, 3, 4], [0, 0, 0, 2]]
X = torch.zeros(2, 1, 2, 2)
X_HAT = torch.tensor([1.0, -2.0, 3.0, -4.0, 0.0, 0.0, 0.0, 2.0]).reshape(2, 1, 2, 2)
ABS_SUM, SQ_SUM, N_ELEM = 12.0, 34.0, 8


class FixedPerceptual(nn.Module):
    """Stand-in for LPIPS: a known per-image distance with a gradient path to x_hat, shaped like LPIPS (B,1,1,1)."""

    def __init__(self, values):
        super().__init__()
        self.values = torch.tensor(values)
        self.calls = 0

    def forward(self, x, x_hat):
        self.calls += 1
        return (self.values + 0.0 * x_hat.sum()).reshape(-1, 1, 1, 1)


# reconstruction


def test_l1_and_l2_mean_and_sum_conventions():
    for kind, total in (("l1", ABS_SUM), ("l2", SQ_SUM)):
        mean_loss, stats = ReconstructionLoss(kind=kind, reduction="mean")(X, X_HAT)
        sum_loss, _ = ReconstructionLoss(kind=kind, reduction="sum")(X, X_HAT)
        assert mean_loss.item() == pytest.approx(total / N_ELEM)
        assert sum_loss.item() == pytest.approx(total / 2)  # Σ over elements, / B
        assert stats["rec_l1"] == pytest.approx(ABS_SUM / N_ELEM)
        assert stats["rec_l2"] == pytest.approx(SQ_SUM / N_ELEM)
        assert "logvar" not in stats and "perceptual" not in stats


def test_perceptual_is_broadcast_to_every_element():
    p = FixedPerceptual([0.5, 1.5])
    loss_sum, stats = ReconstructionLoss(perceptual_weight=2.0, perceptual=p, reduction="sum")(X, X_HAT)
    # each image's distance counts once per element (4 per image here): (12 + 2·(0.5·4 + 1.5·4)) / 2
    assert loss_sum.item() == pytest.approx((ABS_SUM + 2.0 * (0.5 + 1.5) * 4) / 2)
    loss_mean, _ = ReconstructionLoss(perceptual_weight=2.0, perceptual=p, reduction="mean")(X, X_HAT)
    assert loss_mean.item() == pytest.approx(ABS_SUM / N_ELEM + 2.0 * (0.5 + 1.5) / 2)
    assert stats["perceptual"] == pytest.approx(1.0)


def test_perceptual_accepts_flat_shape_and_is_skipped_at_weight_zero():
    flat = lambda x, x_hat: torch.tensor([0.5, 1.5])  # noqa: E731  (B,) is accepted too
    loss, _ = ReconstructionLoss(perceptual_weight=1.0, perceptual=flat, reduction="mean")(X, X_HAT)
    assert loss.item() == pytest.approx(ABS_SUM / N_ELEM + 1.0)
    p = FixedPerceptual([0.5, 1.5])
    _, stats = ReconstructionLoss(perceptual_weight=0.0, perceptual=p)(X, X_HAT)
    assert p.calls == 0 and "perceptual" not in stats


def test_learned_logvar_sum_and_mean_conventions_and_gradient():
    s = 0.5
    for reduction, expected, ds in (
        # Σ (r / e^s + s) / B   and   d/ds = (−Σr e^{−s} + N) / B
        ("sum", (ABS_SUM * math.exp(-s) + s * N_ELEM) / 2, (-ABS_SUM * math.exp(-s) + N_ELEM) / 2),
        # mean(r) / e^s + s     and   d/ds = 1 − mean(r) e^{−s}
        ("mean", ABS_SUM / N_ELEM * math.exp(-s) + s, 1 - ABS_SUM / N_ELEM * math.exp(-s)),
    ):
        rec = ReconstructionLoss(learn_logvar=True, logvar_init=s, reduction=reduction)
        loss, stats = rec(X, X_HAT)
        assert loss.item() == pytest.approx(expected, rel=1e-6)
        assert stats["logvar"] == pytest.approx(s)
        loss.backward()
        assert rec.logvar.grad.item() == pytest.approx(ds, rel=1e-5)
    assert [n for n, _ in ReconstructionLoss(learn_logvar=True).named_parameters()] == ["logvar"]
    assert ReconstructionLoss(learn_logvar=True).logvar.item() == 0.0  # the paper's init


def test_reconstruction_gradient_reaches_x_hat():
    x_hat = X_HAT.clone().requires_grad_(True)
    ReconstructionLoss(kind="l2", reduction="sum")(X, x_hat)[0].backward()
    torch.testing.assert_close(x_hat.grad, 2 * X_HAT / 2)  # d/dx̂ Σ (x̂ − x)² / B


def test_reconstruction_errors():
    with pytest.raises(ValueError, match="perceptual_weight=1.0 needs a perceptual module"):
        ReconstructionLoss(perceptual_weight=1.0)
    with pytest.raises(ValueError, match="kind='l3'"):
        ReconstructionLoss(kind="l3")
    with pytest.raises(ValueError, match="reduction='none'"):
        ReconstructionLoss(reduction="none")
    bad = ReconstructionLoss(perceptual_weight=1.0, perceptual=lambda x, y: torch.zeros(2, 1, 2, 2))
    with pytest.raises(ValueError, match="one distance per image"):
        bad(X, X_HAT)
    with pytest.raises(ValueError, match="differ in shape"):
        ReconstructionLoss()(X, X_HAT[:1])


@pytest.mark.filterwarnings("ignore::UserWarning")  # torchvision's deprecation notes for lpips' `pretrained=`
def test_with_lpips_module_random_backbone():
    lpips = pytest.importorskip("lpips")
    torch.manual_seed(0)
    # calibration weights ship inside the lpips package; the AlexNet backbone is random (no download possible),
    # so only the interface is under test: LPIPS's (B, 1, 1, 1) output broadcast over C·H·W elements
    metric = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    assert any(p.requires_grad for p in metric.parameters())  # LPIPS leaves its linear heads trainable
    x, x_hat = torch.rand(2, 3, 32, 32) * 2 - 1, (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    loss, stats = ReconstructionLoss(perceptual_weight=1.0, perceptual=metric, reduction="sum")(x, x_hat)
    with torch.no_grad():
        d = metric(x, x_hat)
        expected = ((x - x_hat).abs().sum() + d.sum() * 3 * 32 * 32) / 2
    assert d.shape == (2, 1, 1, 1) and (d > 0).all()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert stats["perceptual"] == pytest.approx(d.mean().item(), rel=1e-5)
    loss.backward()
    assert x_hat.grad is not None
    # LPIPS's linear heads carry dropout: it must stay off when the trainer calls .train() on the loss
    rec = ReconstructionLoss(perceptual_weight=1.0, perceptual=metric).train()
    assert rec.training and not metric.training
    # the metric is frozen: an optimizer over the loss's parameters would see nothing to train but logvar
    assert not any(p.requires_grad for p in rec.parameters())


# GAN pieces


def test_hinge_and_generator_losses_on_hand_made_logits():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 − real) = [0, 0.5, 2]
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + fake) = [0, 1, 2]
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 3.0 / 3))
    # confident and correct discriminator: no loss
    assert hinge_d_loss(torch.full((4,), 1.5), torch.full((4,), -1.5)).item() == 0.0
    assert generator_adversarial_loss(fake).item() == pytest.approx(1.0 / 3)


def test_adaptive_weight_equals_gradient_norm_ratio():
    # a one-layer linear "decoder": x̂ = W h, W ∈ R^{2×3}
    W = nn.Parameter(torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, 1.0]]))
    h = torch.tensor([1.0, 2.0, 3.0])
    t = torch.tensor([0.0, 1.0])
    x_hat = W @ h  # [0.5, 7.0]
    rec = ((x_hat - t) ** 2).sum()  # ∇_W = 2 (x̂ − t) hᵀ
    g = -3.0 * x_hat.sum()  # ∇_W = −3 · 1 hᵀ
    grad_rec = 2 * torch.outer(x_hat.detach() - t, h)
    grad_g = -3.0 * torch.outer(torch.ones(2), h)
    expected = grad_rec.norm() / (grad_g.norm() + 1e-4)
    weight = adaptive_gan_weight(rec, g, W)
    assert weight.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not weight.requires_grad
    # the graph is retained, so the trainer's backward still works
    (rec + weight * g).backward()
    torch.testing.assert_close(W.grad, grad_rec + expected * grad_g)


def test_adaptive_weight_clamps_and_returns_zero_without_grad():
    W = nn.Parameter(torch.ones(2))
    rec = (W * 5.0).sum()
    g = (W * 1e-9).sum()  # a vanishing GAN gradient would blow the ratio up
    assert adaptive_gan_weight(rec, g, W, max_weight=100.0).item() == 100.0
    with torch.no_grad():
        rec0, g0 = (W * 5.0).sum(), (W * 2.0).sum()
        assert adaptive_gan_weight(rec0, g0, W).item() == 0.0


def test_adaptive_weight_rejects_a_layer_outside_the_graph():
    W, other = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="does not depend on last_layer"):
        adaptive_gan_weight((W * 2).sum(), (W * 3).sum(), other)


def _tiny_gan(start_step=5, **kw):
    torch.manual_seed(0)
    return GANLoss(ndf=8, n_layers=2, start_step=start_step, **kw)


def test_gan_loss_off_before_start_step():
    gan = _tiny_gan(start_step=5)
    last = nn.Parameter(torch.ones(1, 3, 1, 1))
    x = torch.rand(2, 3, 16, 16)
    x_hat = x * last
    rec = (x - x_hat).abs().sum()
    g_loss, g_stats = gan.generator_loss(x_hat, rec, last, step=4)
    d_loss, d_stats = gan.discriminator_loss(x, x_hat.detach(), step=4)
    assert g_loss.item() == 0.0 and d_loss.item() == 0.0
    assert g_stats["d_weight"] == 0.0 and d_stats["d_loss"] == 0.0
    d_loss.backward()  # a trainer may call backward unconditionally
    # the discriminator was never run: no gradients, ActNorm still waiting for real data
    assert all(p.grad is None for p in gan.discriminator.parameters())
    assert all(b.item() == 0 for n, b in gan.discriminator.named_buffers() if n.endswith("initialized"))


def test_gan_loss_on_from_start_step():
    gan = _tiny_gan(start_step=5, disc_weight=0.75)
    last = nn.Parameter(torch.ones(1, 3, 1, 1))
    torch.manual_seed(1)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    x_hat = torch.tanh(x * last + 0.3)
    rec = (x - x_hat).abs().sum() / 2

    d_loss, d_stats = gan.discriminator_loss(x, x_hat.detach(), step=5)
    assert d_loss.item() > 0 and d_stats["d_loss"] == pytest.approx(d_loss.item())
    d_loss.backward()
    assert all(p.grad is not None for p in gan.discriminator.parameters())
    assert last.grad is None  # x̂ was detached: the discriminator step must not train the decoder

    g_loss, g_stats = gan.generator_loss(x_hat, rec, last, step=5)
    assert g_loss.item() != 0.0
    # d_weight is disc_weight × the adaptive ratio, computed independently here
    logits = gan.discriminator(x_hat)
    (gr,) = torch.autograd.grad(rec, last, retain_graph=True)
    (gg,) = torch.autograd.grad(-logits.mean(), last, retain_graph=True)
    assert g_stats["d_weight"] == pytest.approx(0.75 * (gr.norm() / (gg.norm() + 1e-4)).item(), rel=1e-4)
    assert g_loss.item() == pytest.approx(float(g_stats["d_weight"] * g_stats["g_loss"]), rel=1e-5)
    g_loss.backward()
    assert last.grad is not None and last.grad.abs().sum() > 0


def test_gan_loss_errors_and_paper_defaults():
    with pytest.raises(ValueError, match="disc_weight=-1"):
        GANLoss(disc_weight=-1)
    with pytest.raises(ValueError, match="start_step=-3"):
        GANLoss(start_step=-3)
    gan = GANLoss(ndf=8)
    assert (gan.disc_weight, gan.start_step) == (0.75, 20001)
    assert not gan.is_active(20000) and gan.is_active(20001)
