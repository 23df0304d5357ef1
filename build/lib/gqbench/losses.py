"""Autoencoder loss pieces: reconstruction NLL with a learnable log-variance, and the PatchGAN terms.

Follows the GQ paper's `GeneralLPIPSWithDiscriminator` (arXiv 2512.06609, gq-reference §3.3), itself the
taming-transformers VQGAN loss (arXiv 2012.09841). Written from the description, not copied.

Reconstruction, per element of x ∈ R^{B×C×H×W}:

    r = |x − x̂|  (or (x − x̂)²)  +  w_p · P(x, x̂)            P: per-image perceptual distance (LPIPS), broadcast
    reduction="sum":   NLL = Σ_elements (r / e^s + s) / B      the paper's convention (s learnable, init 0)
    reduction="mean":  NLL = mean(r) / e^s + s                 the same up to the factor C·H·W

Without `learn_logvar`, s = 0 and the s term is dropped. Because "sum" scales with C·H·W, the other loss
weights (KL, GAN) mean different things under the two conventions; the adaptive GAN weight below is
invariant to that scale, the KL weight is not.

GAN (hinge), with D the PatchGAN logits:

    L_D = ½ (mean relu(1 − D(x)) + mean relu(1 + D(x̂)))
    L_G = −mean D(x̂)
    λ   = ‖∇_W NLL‖ / (‖∇_W L_G‖ + eps), clamped to [0, max_weight], no gradient   (W = decoder's last layer)
    generator total adds  disc_weight · disc_factor · λ · L_G   from step `start_step` on (0 before).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gqbench.models.discriminator import PatchDiscriminator
from gqbench.runtime import average_across_ranks_

__all__ = [
    "GANLoss",
    "ReconstructionLoss",
    "adaptive_gan_weight",
    "generator_adversarial_loss",
    "hinge_d_loss",
]

PerceptualFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# reconstruction


class ReconstructionLoss(nn.Module):
    """Pixel L1/L2 plus optional perceptual distance, as a Laplace/Gaussian-style NLL with a learnable scale.

    `perceptual` is any callable (x, x̂) -> per-image distance of shape (B,), (B, 1) or (B, 1, 1, 1), e.g. an
    `lpips.LPIPS` module (which expects inputs in [−1, 1]). It is held as a submodule when it is one, so it
    moves with `.to(device)` and appears in `state_dict()`. It is frozen in place (eval mode, requires_grad
    False), so `self.parameters()` trains only `logvar`; gradients still flow through it to x̂.
    """

    def __init__(
        self,
        *,
        kind: str = "l1",
        perceptual_weight: float = 0.0,  # paper: 1.0 with LPIPS-VGG
        perceptual: PerceptualFn | None = None,
        learn_logvar: bool = False,  # paper: True
        logvar_init: float = 0.0,
        reduction: str = "mean",  # paper: "sum" (over C·H·W, divided by B)
    ):
        super().__init__()
        if kind not in ("l1", "l2"):
            raise ValueError(f"ReconstructionLoss: kind={kind!r} is unknown; choose 'l1' or 'l2'")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"ReconstructionLoss: reduction={reduction!r} is unknown; choose 'mean' or 'sum'")
        if perceptual_weight < 0:
            raise ValueError(f"ReconstructionLoss: perceptual_weight={perceptual_weight} must be >= 0")
        if perceptual_weight > 0 and perceptual is None:
            raise ValueError(
                f"ReconstructionLoss: perceptual_weight={perceptual_weight} needs a perceptual module, but "
                f"perceptual=None; pass an lpips.LPIPS(net='vgg') built from local weights (they cannot be "
                f"downloaded here), or set perceptual_weight=0"
            )
        self.kind, self.reduction, self.perceptual_weight = kind, reduction, float(perceptual_weight)
        self.perceptual = perceptual
        if isinstance(perceptual, nn.Module):
            # a fixed metric: LPIPS leaves its linear heads trainable, which an optimizer over
            # `self.parameters()` (meant for logvar) would otherwise pick up
            perceptual.eval().requires_grad_(False)
        self.learn_logvar = learn_logvar
        # a 0-dim parameter so the autoencoder optimizer picks it up with the rest (the paper trains it with Adam)
        self.logvar = nn.Parameter(torch.tensor(float(logvar_init))) if learn_logvar else None

    def train(self, mode: bool = True) -> ReconstructionLoss:
        super().train(mode)
        # the perceptual net is a fixed metric: keep it in eval mode so e.g. LPIPS's dropout never fires
        if isinstance(self.perceptual, nn.Module):
            self.perceptual.eval()
        return self

    def _perceptual_per_image(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        p = self.perceptual(x.contiguous(), x_hat.contiguous())
        b = x.shape[0]
        if p.numel() != b:
            raise ValueError(
                f"ReconstructionLoss: the perceptual module returned shape {tuple(p.shape)}; expected one distance "
                f"per image, i.e. (B,), (B, 1) or (B, 1, 1, 1) with B={b}"
            )
        # (B, ...) -> (B, 1, ..., 1): a per-image scalar broadcast to every element
        return p.reshape(b, *([1] * (x.ndim - 1)))

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        if x.shape != x_hat.shape:
            raise ValueError(f"ReconstructionLoss: x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} differ in shape")
        diff = x - x_hat
        abs_err, sq_err = diff.abs(), diff.square()
        stats = {"rec_l1": abs_err.detach().mean(), "rec_l2": sq_err.detach().mean()}

        r = abs_err if self.kind == "l1" else sq_err
        if self.perceptual_weight > 0:
            p = self._perceptual_per_image(x, x_hat)
            r = r + self.perceptual_weight * p
            stats["perceptual"] = p.detach().mean()

        if self.logvar is not None:
            r = r / self.logvar.exp() + self.logvar
            stats["logvar"] = self.logvar.detach().clone()

        loss = r.sum() / x.shape[0] if self.reduction == "sum" else r.mean()
        stats["nll"] = loss.detach()
        return loss, stats


# GAN pieces


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """½ (mean relu(1 − D(x)) + mean relu(1 + D(x̂))): zero once real logits ≥ 1 and fake ≤ −1."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_adversarial_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """−mean D(x̂): the generator raises the discriminator's logits on its reconstructions."""
    return -logits_fake.mean()


def adaptive_gan_weight(
    rec_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer: torch.Tensor,
    *,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> torch.Tensor:
    """λ = ‖∇_W rec_loss‖ / (‖∇_W g_loss‖ + eps) at W = `last_layer`, clamped to [0, max_weight], detached.

    Balances the two gradients at the decoder output so the GAN term neither dominates nor vanishes,
    whatever the scale of the reconstruction loss. In a multi-process job both gradients are averaged over
    ranks first, so λ is that of the global batch (taming computes it per rank). Both graphs are kept (retain_graph) for the real
    backward pass that follows. Returns 0 when no graph exists (eval or `torch.no_grad()`), where no
    gradient step will be taken anyway.
    """
    zero = torch.zeros((), device=g_loss.device, dtype=g_loss.dtype)
    if not torch.is_grad_enabled() or not (rec_loss.requires_grad and g_loss.requires_grad):
        return zero
    grads = []
    for name, loss in (("rec_loss", rec_loss), ("g_loss", g_loss)):
        (g,) = torch.autograd.grad(loss, last_layer, retain_graph=True, allow_unused=True)
        if g is None:
            raise ValueError(
                f"adaptive_gan_weight: {name} does not depend on last_layer; pass the weight of the layer that "
                f"produces x_hat (e.g. Decoder.last_layer)"
            )
        grads.append(g)
    # each rank holds the gradient of its slice's mean loss: their average is the global batch's gradient
    average_across_ranks_(*grads)
    weight = grads[0].norm() / (grads[1].norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


class GANLoss(nn.Module):
    """PatchGAN with hinge loss and the VQGAN adaptive weight, switched on at `start_step`.

    Trainer contract (the paper alternates the two updates by batch):
      - autoencoder step:  total = rec_loss + gan.generator_loss(x_hat, rec_loss, decoder.last_layer, step)[0] + ...
        This backward also leaves gradients on the discriminator; zero them before its own step.
      - discriminator step:  gan.discriminator_loss(x, x_hat.detach(), step)[0].backward(), step D's optimizer.
    Before `start_step` neither method runs the discriminator, so ActNorm initialises on the first active
    batch, from reconstructions of an already-trained decoder.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        ndf: int = 64,  # paper: 160
        n_layers: int = 3,  # paper: 6 (needs inputs >= 3·2^n_layers px)
        use_actnorm: bool = True,
        disc_weight: float = 0.75,
        disc_factor: float = 1.0,
        start_step: int = 20001,  # paper: the GAN is off for steps < 20001
        max_weight: float = 1e4,
        eps: float = 1e-4,
    ):
        super().__init__()
        if disc_weight < 0 or disc_factor < 0:
            raise ValueError(
                f"GANLoss: disc_weight={disc_weight} and disc_factor={disc_factor} must be >= 0 (0 disables the GAN)"
            )
        if start_step < 0:
            raise ValueError(f"GANLoss: start_step={start_step} must be >= 0")
        self.discriminator = PatchDiscriminator(
            in_channels=in_channels, ndf=ndf, n_layers=n_layers, use_actnorm=use_actnorm
        )
        self.disc_weight, self.disc_factor, self.start_step = float(disc_weight), float(disc_factor), int(start_step)
        self.max_weight, self.eps = float(max_weight), float(eps)

    def is_active(self, step: int) -> bool:
        return step >= self.start_step and self.disc_factor > 0

    def generator_loss(
        self, x_hat: torch.Tensor, rec_loss: torch.Tensor, last_layer: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """disc_factor · disc_weight · λ · (−mean D(x̂)); a zero tensor before `start_step`."""
        if not self.is_active(step):
            return x_hat.new_zeros(()), {"g_loss": 0.0, "d_weight": 0.0}
        g_loss = generator_adversarial_loss(self.discriminator(x_hat))
        d_weight = self.disc_weight * adaptive_gan_weight(
            rec_loss, g_loss, last_layer, max_weight=self.max_weight, eps=self.eps
        )
        loss = self.disc_factor * d_weight * g_loss
        return loss, {"g_loss": g_loss.detach(), "d_weight": d_weight.detach()}

    def discriminator_loss(
        self, x: torch.Tensor, x_hat_detached: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """disc_factor · hinge loss on real x and fake x̂; before `start_step` a zero that still supports .backward()."""
        if not self.is_active(step):
            # requires_grad so a trainer can call .backward() unconditionally; D gets no gradient and Adam skips it
            zero = torch.zeros((), device=x.device, dtype=x.dtype, requires_grad=True)
            return zero, {"d_loss": 0.0, "logits_real": 0.0, "logits_fake": 0.0}
        logits_real = self.discriminator(x.detach())
        logits_fake = self.discriminator(x_hat_detached.detach())
        loss = self.disc_factor * hinge_d_loss(logits_real, logits_fake)
        return loss, {
            "d_loss": loss.detach(),
            "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean(),
        }
