"""Constructor defaults and argument checks of every quantizer, the registry, and the shared argument helpers.

Every default is pinned against a table written here (with where the value comes from), every argument check
against its exact message, and every boundary with its last valid and first invalid value.
"""
from __future__ import annotations

import inspect
import math
import re
from statistics import NormalDist

import pytest
import torch

import quantizers
from quantizers import Quantizer, build_quantizer, default_codebook_dim, known_quantizers, register_quantizer
from quantizers import registry
from quantizers._utils import groups_for_channels, is_power_of_two, whole_bits
from quantizers.bsq import BinarySphericalQuant
from quantizers.fsq import FiniteScalarQuant
from quantizers.gq import GaussianQuant, gaussian_codebook
from quantizers.lfq import LookupFreeQuant
from quantizers.tdc import TargetDivergenceConstraint
from quantizers.tokenbridge import TokenBridge, truncated_normal_levels
from quantizers.vq import VectorQuant


def raises(message: str, exc: type[Exception] = ValueError):
    """pytest.raises that wants exactly `message`, nothing before or after it."""
    return pytest.raises(exc, match=rf"\A{re.escape(message)}\Z")


@pytest.fixture
def clean_registry():
    """Any registration a test makes is undone afterwards."""
    saved = dict(registry._REGISTRY)
    yield registry._REGISTRY
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


# ---------------------------------------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------------------------------------

CLASSES = {
    "gq": GaussianQuant, "vq": VectorQuant, "fsq": FiniteScalarQuant, "lfq": LookupFreeQuant,
    "bsq": BinarySphericalQuant, "tokenbridge": TokenBridge,
}

# Every keyword of every constructor, with its default (inspect.signature; "required" = no default).
SIGNATURES = {
    GaussianQuant: dict(
        codebook_size="required",
        codebook_dim=None,  # None -> log2 K dims, the paper's one bit per latent dim
        num_codebooks=1,
        beta=1.0,  # GQ authors: prior weight 1 in the selection
        seed=42,  # GQ reference code's codebook seed (index-compatible with its checkpoints)
        logvar_range=(-30.0, 20.0),  # reference clamp of log σ²
        kl_weight=0.1,  # reference `kl_loss` weight
        tolerance=0.5,  # paper's TDC dead band α
        lam_factor=1.01,  # paper's controller step f
        lam_min_range=(1e-3, 1.0),
        lam_max_range=(1.0, 1e3),
        tdc_updates_per_step=2,  # the reference's controller rate per autoencoder step (tdc docstring)
        regularizer="tdc",
        search_backend="auto",
        search_exact=True,
    ),
    VectorQuant: dict(
        codebook_size="required",
        codebook_dim=None,  # required in practice (checked)
        num_codebooks=1,
        commitment_weight=0.25,  # VQ-VAE paper / VQGAN β
        codebook_weight=1.0,
        legacy_loss=True,  # taming's default (bug-compatible) order
        l2_norm=False,
        ema_update=False,
        decay=0.99,  # usual EMA γ (VQ-VAE-2 / vector-quantize-pytorch)
        eps=1e-5,  # Laplace smoothing
        dead_code_threshold=0.0,  # 0 = restarts off
        init="uniform",  # VQGAN U(-1/K, 1/K)
        kmeans_iters=10,
        reduction="mean",  # taming: per-element means
        search_backend="auto",
        search_exact=True,
    ),
    FiniteScalarQuant: dict(
        codebook_size=None, codebook_dim=None, num_codebooks=1,
        levels=None,  # None = FSQ paper Table 1 for the codebook size
        levels_per_dim=None,  # None = Table 1; 16 = the GQ authors' 16⁴ (protocol=gq_paper)
        eps=1e-3,  # keeps every level reachable (module docstring)
    ),
    LookupFreeQuant: dict(
        codebook_size="required", codebook_dim=None, num_codebooks=1,
        commitment_weight=0.25,  # Open-MAGVIT2
        entropy_weight=0.1,
        sample_weight=1.0,
        codebook_weight=1.0,
        temperature=0.01,  # GQ authors' LFQ/BSQ baseline τ
        entropy_group_size=None,  # None = largest divisor of k that is <= 9
        entropy_ramp=0.0,  # Open-MAGVIT2 configs
        entropy_ramp_steps=2000,
        scale=1.0,
        reduction="mean",  # Open-MAGVIT2: per-element / per-token means
        sphere="token",  # BSQ only: one sphere over the token (official BSQ)
        straight_through_scale=True,  # BSQ only: gradient 1/√L (official BSQ)
    ),
    BinarySphericalQuant: dict(  # official BSQ-ViT: beta 0, inv_temperature 1, per-bit entropy, rampup x3
        commitment_weight=0.0, temperature=1.0, entropy_group_size=1, entropy_ramp=2.0, kwargs="**"),
    TokenBridge: dict(
        codebook_size="required", codebook_dim=None, num_codebooks=1,
        value_range=3.0,  # R = s: identity map (TokenBridge's own --range is 5)
        std_range=3.0,  # TokenBridge truncates at ±3 standard deviations
        vae_options="**",
    ),
    TargetDivergenceConstraint: dict(
        target_bits="required",
        tolerance=0.5,  # paper: little effect for α <= 0.5
        lam_factor=1.01,  # paper's f
        lam_min_range=(1e-3, 1.0),
        lam_max_range=(1.0, 1e3),
        updates_per_step=2,
    ),
}


@pytest.mark.parametrize("cls", list(SIGNATURES), ids=lambda c: c.__name__)
def test_constructor_signature_defaults(cls):
    got = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name == "self":
            continue
        if p.kind is p.VAR_KEYWORD:
            got[p.name] = "**"
        else:
            assert p.kind is p.KEYWORD_ONLY, p.name
            got[p.name] = "required" if p.default is p.empty else p.default
    assert got == SIGNATURES[cls]


def test_every_registered_quantizer_is_in_the_defaults_table():
    assert known_quantizers() == sorted(CLASSES)
    for name, cls in CLASSES.items():
        assert registry._REGISTRY[name] is cls


def attrs(obj, names):
    return {n: getattr(obj, n) for n in names}


def tdc_attrs(tdc):
    return dict(target_bits=tdc.target_bits, tolerance=tdc.tolerance, lam_factor=tdc.lam_factor,
                lam_min_range=tdc.lam_min_range, lam_max_range=tdc.lam_max_range)


def test_gq_defaults_as_stored():
    q = GaussianQuant(codebook_size=256)
    assert attrs(q, ["codebook_size", "codebook_dim", "num_codebooks", "in_channels", "out_channels", "beta", "seed",
                     "logvar_range", "kl_weight", "search_backend", "search_exact"]) == dict(
        codebook_size=256, codebook_dim=8, num_codebooks=1, in_channels=16, out_channels=8, beta=1.0, seed=42,
        logvar_range=(-30.0, 20.0), kl_weight=0.1, search_backend="auto", search_exact=True)
    assert type(q.search_exact) is bool
    assert tdc_attrs(q.tdc) == dict(target_bits=8.0, tolerance=0.5, lam_factor=1.01, lam_min_range=(1e-3, 1.0),
                                    lam_max_range=(1.0, 1e3))
    assert torch.equal(q.codebook, gaussian_codebook(256, 8, 42))


def test_gq_non_defaults_are_stored_and_reach_the_tdc():
    q = GaussianQuant(codebook_size=16, codebook_dim=3, num_codebooks=2, beta=0.5, seed=7, logvar_range=(-5, 4),
                      kl_weight=0.2, tolerance=0.25, lam_factor=1.05, lam_min_range=[0.01, 2.0],
                      lam_max_range=[0.5, 100.0], search_backend="torch", search_exact=False)
    assert attrs(q, ["codebook_size", "codebook_dim", "num_codebooks", "in_channels", "out_channels", "beta", "seed",
                     "logvar_range", "kl_weight", "search_backend", "search_exact"]) == dict(
        codebook_size=16, codebook_dim=3, num_codebooks=2, in_channels=12, out_channels=6, beta=0.5, seed=7,
        logvar_range=(-5.0, 4.0), kl_weight=0.2, search_backend="torch", search_exact=False)
    assert tdc_attrs(q.tdc) == dict(target_bits=4.0, tolerance=0.25, lam_factor=1.05, lam_min_range=(0.01, 2.0),
                                    lam_max_range=(0.5, 100.0))
    assert q.codebook.shape == (16, 3)
    assert torch.equal(q.codebook, gaussian_codebook(16, 3, 7))
    assert not torch.equal(q.codebook, gaussian_codebook(16, 3, 42))
    assert GaussianQuant(codebook_size=16, search_backend="triton").search_backend == "triton"


VQ_STORED = ["codebook_size", "codebook_dim", "num_codebooks", "in_channels", "out_channels", "commitment_weight",
             "codebook_weight", "legacy_loss", "l2_norm", "ema_update", "decay", "eps", "dead_code_threshold", "init",
             "kmeans_iters", "reduction", "search_backend", "search_exact"]


def test_vq_defaults_as_stored():
    q = VectorQuant(codebook_size=16, codebook_dim=4)
    assert attrs(q, VQ_STORED) == dict(
        codebook_size=16, codebook_dim=4, num_codebooks=1, in_channels=4, out_channels=4, commitment_weight=0.25,
        codebook_weight=1.0, legacy_loss=True, l2_norm=False, ema_update=False, decay=0.99, eps=1e-5,
        dead_code_threshold=0.0, init="uniform", kmeans_iters=10, reduction="mean", search_backend="auto",
        search_exact=True)
    assert type(q.search_exact) is bool
    assert q.codebook.requires_grad and bool(q.initialized)
    assert torch.equal(q.cluster_size, torch.ones(16))
    assert not hasattr(q, "embed_sum")


def test_vq_non_defaults_are_stored():
    q = VectorQuant(codebook_size=32, codebook_dim=3, num_codebooks=2, commitment_weight=0.5, codebook_weight=0.75,
                    legacy_loss=False, l2_norm=True, decay=0.9, eps=1e-4, dead_code_threshold=0.5, init="kmeans",
                    kmeans_iters=3, reduction="sum", search_backend="torch", search_exact=False)
    assert attrs(q, VQ_STORED) == dict(
        codebook_size=32, codebook_dim=3, num_codebooks=2, in_channels=6, out_channels=6, commitment_weight=0.5,
        codebook_weight=0.75, legacy_loss=False, l2_norm=True, ema_update=False, decay=0.9, eps=1e-4,
        dead_code_threshold=0.5, init="kmeans", kmeans_iters=3, reduction="sum", search_backend="torch",
        search_exact=False)
    assert not bool(q.initialized)  # k-means runs on the first training batch
    e = VectorQuant(codebook_size=16, codebook_dim=2, ema_update=True, legacy_loss=False, search_backend="triton")
    assert e.ema_update is True and e.search_backend == "triton"
    assert not e.codebook.requires_grad
    assert torch.equal(e.embed_sum, e.codebook.detach())


def test_vq_default_codebook_lies_in_plus_minus_one_over_k_and_fills_it():
    # VQGAN: U(-1/K, 1/K). 16 x 64 = 1024 draws: both signs and nearly the whole interval are hit.
    torch.manual_seed(0)
    K = 16
    c = VectorQuant(codebook_size=K, codebook_dim=64).codebook.detach()
    assert c.min() >= -1.0 / K and c.max() <= 1.0 / K
    assert c.min() < -0.9 / K and c.max() > 0.9 / K
    assert (c < 0).sum() > 400 and (c > 0).sum() > 400
    assert c.unique().numel() > 1000


def test_fsq_defaults_as_stored():
    q = FiniteScalarQuant(codebook_size=256)
    assert attrs(q, ["levels", "codebook_dim", "num_codebooks", "codebook_size", "in_channels", "out_channels",
                     "eps"]) == dict(levels=(8, 6, 5), codebook_dim=3, num_codebooks=1, codebook_size=240,
                                     in_channels=3, out_channels=3, eps=1e-3)


def test_fsq_non_defaults_are_stored():
    q = FiniteScalarQuant(codebook_size=None, codebook_dim=2, num_codebooks=3, levels=[5, 4], eps=0.0)
    assert attrs(q, ["levels", "codebook_dim", "num_codebooks", "codebook_size", "in_channels", "out_channels",
                     "eps"]) == dict(levels=(5, 4), codebook_dim=2, num_codebooks=3, codebook_size=20, in_channels=6,
                                     out_channels=6, eps=0.0)


@pytest.mark.parametrize("eps", [1e-3, 1e-2, 0.1, 0.3])
def test_fsq_buffers_equal_the_float64_formulas(eps):
    # half = (L-1)(1-eps)/2, offset = 1/2 for even L, shift = artanh(offset / half), all in double then float32
    levels = list(range(3, 17))
    q = FiniteScalarQuant(codebook_size=None, levels=levels, eps=eps)
    half = [(L - 1) * (1 - eps) / 2 for L in levels]
    offset = [0.5 if L % 2 == 0 else 0.0 for L in levels]
    f32 = lambda xs: torch.tensor(xs, dtype=torch.float64).float()  # noqa: E731
    assert torch.equal(q.half_range, f32(half))
    assert torch.equal(q.offset, f32(offset))
    assert torch.equal(q.shift, f32([math.atanh(o / h) for o, h in zip(offset, half)]))
    assert torch.equal(q.half_width, f32([L // 2 for L in levels]))
    assert q.num_levels.dtype == torch.int64 and q.num_levels.tolist() == levels
    assert q.basis.dtype == torch.int64 and q.basis.tolist() == [math.prod(levels[:i]) for i in range(len(levels))]


LFQ_STORED = ["codebook_size", "codebook_dim", "num_codebooks", "in_channels", "out_channels", "commitment_weight",
              "entropy_weight", "sample_weight", "codebook_weight", "temperature", "entropy_group_size",
              "entropy_ramp", "entropy_ramp_steps", "scale", "reduction", "sphere", "sphere_dims",
              "straight_through_scale"]
LFQ_DEFAULTS = dict(codebook_size=256, codebook_dim=8, num_codebooks=1, in_channels=8, out_channels=8,
                    commitment_weight=0.25, entropy_weight=0.1, sample_weight=1.0, codebook_weight=1.0,
                    temperature=0.01, entropy_group_size=8, entropy_ramp=0.0, entropy_ramp_steps=2000, scale=1.0,
                    reduction="mean", sphere="token", sphere_dims=8, straight_through_scale=False)


def test_lfq_defaults_as_stored():
    q = LookupFreeQuant(codebook_size=256)
    assert attrs(q, LFQ_STORED) == LFQ_DEFAULTS
    assert q.train_steps.dtype == torch.int64 and int(q.train_steps) == 0
    assert q.bit_weights.tolist() == [128, 64, 32, 16, 8, 4, 2, 1]
    assert q.sub_codes.shape == (256, 8)


def test_bsq_defaults_as_stored():
    q = BinarySphericalQuant(codebook_size=256)
    assert attrs(q, LFQ_STORED) == dict(LFQ_DEFAULTS, commitment_weight=0.0, scale=1 / math.sqrt(8), temperature=1.0,
                                        entropy_group_size=1, entropy_ramp=2.0, straight_through_scale=True)
    wide = BinarySphericalQuant(codebook_size=16, num_codebooks=3)  # one sphere over the token's 12 bits
    assert (wide.sphere_dims, wide.scale) == (12, 1 / math.sqrt(12))
    grouped = BinarySphericalQuant(codebook_size=16, num_codebooks=3, sphere="group", straight_through_scale=False)
    assert (grouped.sphere_dims, grouped.scale, grouped.straight_through_scale) == (4, 0.5, False)
    assert q.spherical and not LookupFreeQuant.spherical


def test_lfq_non_defaults_are_stored():
    q = LookupFreeQuant(codebook_size=64, codebook_dim=6, num_codebooks=2, commitment_weight=0.025,
                        entropy_weight=0.2, sample_weight=0.5, codebook_weight=2.0, temperature=0.5,
                        entropy_group_size=2, entropy_ramp=3.0, entropy_ramp_steps=7, scale=0.5, reduction="sum")
    assert attrs(q, LFQ_STORED) == dict(sphere="token", sphere_dims=6, straight_through_scale=False,
        codebook_size=64, codebook_dim=6, num_codebooks=2, in_channels=12, out_channels=12, commitment_weight=0.025,
        entropy_weight=0.2, sample_weight=0.5, codebook_weight=2.0, temperature=0.5, entropy_group_size=2,
        entropy_ramp=3.0, entropy_ramp_steps=7, scale=0.5, reduction="sum")
    assert q.sub_codes.tolist() == [[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]]


@pytest.mark.parametrize("bits, group", [(1, 1), (2, 2), (8, 8), (9, 9), (10, 5), (11, 1), (12, 6), (14, 7),
                                         (16, 8), (18, 9)])
def test_lfq_default_entropy_group_is_the_largest_divisor_up_to_9(bits, group):
    assert LookupFreeQuant(codebook_size=2 ** bits).entropy_group_size == group


def test_tokenbridge_defaults_as_stored():
    q = TokenBridge(codebook_size=16)
    assert attrs(q, ["codebook_size", "codebook_dim", "num_codebooks", "in_channels", "out_channels", "value_range",
                     "std_range", "regularizer", "kl_weight", "search_exact"]) == dict(
        codebook_size=16, codebook_dim=1, num_codebooks=1, in_channels=2, out_channels=1, value_range=3.0,
        std_range=3.0, regularizer="tdc", kl_weight=0.1, search_exact=True)
    assert tdc_attrs(q.tdc) == dict(target_bits=4.0, tolerance=0.5, lam_factor=1.01, lam_min_range=(1e-3, 1.0),
                                    lam_max_range=(1.0, 1e3))


def truncated_normal_means(num_levels, s):
    """The N(0,1) mean of each equal-probability bin clamped to ±s, from the stdlib normal distribution."""
    nd = NormalDist()
    t = [max(-s, min(s, nd.inv_cdf(j / num_levels))) if 0 < j < num_levels else (-s if j == 0 else s)
         for j in range(num_levels + 1)]
    return [(nd.pdf(a) - nd.pdf(b)) / (nd.cdf(b) - nd.cdf(a)) for a, b in zip(t[:-1], t[1:])]


def test_tokenbridge_non_defaults_are_stored():
    q = TokenBridge(codebook_size=8, codebook_dim=1, num_codebooks=5, value_range=5.0, std_range=2.0,
                    regularizer="kl", kl_weight=0.3, tolerance=0.1, search_exact=False)
    assert attrs(q, ["codebook_size", "codebook_dim", "num_codebooks", "in_channels", "out_channels", "value_range",
                     "std_range", "regularizer", "kl_weight", "search_exact"]) == dict(
        codebook_size=8, codebook_dim=1, num_codebooks=5, in_channels=10, out_channels=5, value_range=5.0,
        std_range=2.0, regularizer="kl", kl_weight=0.3, search_exact=False)
    assert q.tdc.tolerance == 0.1
    expected = torch.tensor(truncated_normal_means(8, 2.0), dtype=torch.float64)
    assert torch.allclose(q.codebook[:, 0].double(), expected, rtol=0, atol=1e-6)
    assert torch.allclose(truncated_normal_levels(8, 2.0), expected, rtol=0, atol=1e-12)


def test_tdc_defaults_and_non_defaults_as_stored():
    t = TargetDivergenceConstraint(target_bits=4)
    assert tdc_attrs(t) == dict(target_bits=4.0, tolerance=0.5, lam_factor=1.01, lam_min_range=(1e-3, 1.0),
                                lam_max_range=(1.0, 1e3))
    for buf in (t.lam, t.lam_min, t.lam_max):  # the controller starts at λ = λ_min = λ_max = 1, float64
        assert buf.dtype == torch.float64 and buf.item() == 1.0
    t = TargetDivergenceConstraint(target_bits=2.5, tolerance=0.0, lam_factor=1.5, lam_min_range=(0.1, 1.0),
                                   lam_max_range=(1.0, 10.0))
    assert tdc_attrs(t) == dict(target_bits=2.5, tolerance=0.0, lam_factor=1.5, lam_min_range=(0.1, 1.0),
                                lam_max_range=(1.0, 10.0))


# Checkpoints hold only what cannot be regenerated from the arguments.
@pytest.mark.parametrize("make, keys", [
    (lambda: FiniteScalarQuant(codebook_size=256), set()),
    (lambda: LookupFreeQuant(codebook_size=16), {"train_steps"}),
    (lambda: BinarySphericalQuant(codebook_size=16), {"train_steps"}),
    (lambda: GaussianQuant(codebook_size=16), {"tdc.lam", "tdc.lam_min", "tdc.lam_max"}),
    (lambda: TokenBridge(codebook_size=16), {"tdc.lam", "tdc.lam_min", "tdc.lam_max"}),
    (lambda: VectorQuant(codebook_size=16, codebook_dim=2), {"codebook", "cluster_size", "initialized"}),
    (lambda: VectorQuant(codebook_size=16, codebook_dim=2, ema_update=True),
     {"codebook", "cluster_size", "initialized", "embed_sum"}),
], ids=["fsq", "lfq", "bsq", "gq", "tokenbridge", "vq", "vq_ema"])
def test_state_dict_holds_only_the_persistent_state(make, keys):
    assert set(make().state_dict()) == keys


def test_extra_repr_lists_the_arguments():
    assert GaussianQuant(codebook_size=256).extra_repr() == (
        "in_channels=16, out_channels=8, codebook_size=256, num_codebooks=1, bits_per_token=8, codebook_dim=8, "
        "beta=1, seed=42")
    assert FiniteScalarQuant(codebook_size=None, levels=[5, 4], num_codebooks=2).extra_repr() == (
        f"in_channels=4, out_channels=4, codebook_size=20, num_codebooks=2, bits_per_token={2 * math.log2(20):g}, "
        "levels=[5, 4]")
    assert LookupFreeQuant(codebook_size=256).extra_repr() == (
        "in_channels=8, out_channels=8, codebook_size=256, num_codebooks=1, bits_per_token=8, entropy_weight=0.1, "
        "temperature=0.01, entropy_group_size=8")
    assert TokenBridge(codebook_size=16, num_codebooks=4).extra_repr() == (
        "in_channels=8, out_channels=4, levels=16, channels=4, bits_per_token=16, value_range=3, std_range=3, "
        "regularizer=tdc")
    assert VectorQuant(codebook_size=16, codebook_dim=4, num_codebooks=2).extra_repr() == (
        "in_channels=8, out_channels=8, codebook_size=16, num_codebooks=2, bits_per_token=8, codebook_dim=4, "
        "commitment_weight=0.25, init=uniform, legacy_loss")
    assert VectorQuant(codebook_size=16, codebook_dim=4, num_codebooks=2, l2_norm=True, ema_update=True,
                       init="kmeans").extra_repr() == (
        "in_channels=8, out_channels=8, codebook_size=16, num_codebooks=2, bits_per_token=8, codebook_dim=4, "
        "commitment_weight=0.25, init=kmeans, l2_norm, ema_update")
    assert TargetDivergenceConstraint(target_bits=4).extra_repr() == "target_bits=4, tolerance=0.5, lam_factor=1.01, updates_per_step=2"


# ---------------------------------------------------------------------------------------------------------
# Argument checks: each bad value raises ValueError with exactly its message; boundaries both sides
# ---------------------------------------------------------------------------------------------------------

# (class, base kwargs) per method, small enough to build in a few milliseconds
BASE = {
    "gq": (GaussianQuant, dict(codebook_size=16)),
    "vq": (VectorQuant, dict(codebook_size=16, codebook_dim=2)),
    "fsq": (FiniteScalarQuant, dict(codebook_size=None, levels=[5, 4])),
    "lfq": (LookupFreeQuant, dict(codebook_size=16)),
    "bsq": (BinarySphericalQuant, dict(codebook_size=16)),
    "tokenbridge": (TokenBridge, dict(codebook_size=16)),
}


def build(name, **kw):
    cls, base = BASE[name]
    return cls(**{**base, **kw})


@pytest.mark.parametrize("name", sorted(BASE))
@pytest.mark.parametrize("bad", [0, -1, 1.5, 2.0, "2", None])
def test_num_codebooks_must_be_an_integer_at_least_1(name, bad):
    with raises(f"num_codebooks={bad!r} must be an integer >= 1"):
        build(name, num_codebooks=bad)


@pytest.mark.parametrize("name", sorted(BASE))
def test_num_codebooks_1_is_valid(name):
    assert build(name, num_codebooks=1).num_codebooks == 1


CODEBOOK_SIZE_METHODS = ["gq", "vq", "lfq", "bsq", "tokenbridge"]


@pytest.mark.parametrize("name", CODEBOOK_SIZE_METHODS)
@pytest.mark.parametrize("bad", [1, 0, -4, True, False, 4.0, 2.5, "16", None])
def test_codebook_size_must_be_an_integer_at_least_2(name, bad):
    with raises(f"codebook_size={bad!r} must be an integer >= 2"):
        build(name, codebook_size=bad)


@pytest.mark.parametrize("name", CODEBOOK_SIZE_METHODS)
@pytest.mark.parametrize("bad, lower", [(3, 2), (6, 4), (12, 8), (1000, 512)])
def test_codebook_size_must_be_a_power_of_two(name, bad, lower):
    with raises(f"codebook_size={bad} is not a power of 2, so a token's bits are not whole; "
                f"use {lower} or {2 * lower}"):
        build(name, codebook_size=bad)


@pytest.mark.parametrize("name", CODEBOOK_SIZE_METHODS)
def test_codebook_size_2_is_valid(name):
    q = build(name, codebook_size=2, **({"codebook_dim": 2} if name == "vq" else {}))
    assert q.codebook_size == 2 and q.bits_per_token == 1.0


@pytest.mark.parametrize("name", ["gq", "vq", "tokenbridge"])  # LFQ and BSQ have no search
@pytest.mark.parametrize("bad", ["auto_", "cuda", "Torch", "TRITON", "", None])
def test_search_backend_must_be_auto_torch_or_triton(name, bad):
    with raises(f"search_backend={bad!r} must be 'auto', 'torch' or 'triton'"):
        build(name, search_backend=bad)


@pytest.mark.parametrize("name", ["gq", "vq", "tokenbridge"])
@pytest.mark.parametrize("backend", ["auto", "torch", "triton"])
def test_every_search_backend_name_is_accepted(name, backend):
    assert build(name, search_backend=backend).search_backend == backend


# -- GQ / TokenBridge / TDC ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, -2, 1.5, 2.0, "2"])
def test_gq_codebook_dim_must_be_an_integer_at_least_1(bad):
    with raises(f"codebook_dim={bad!r} must be an integer >= 1"):
        GaussianQuant(codebook_size=16, codebook_dim=bad)


def test_gq_codebook_dim_1_is_valid():
    assert GaussianQuant(codebook_size=16, codebook_dim=1).codebook.shape == (16, 1)


@pytest.mark.parametrize("name", ["gq", "tokenbridge"])
@pytest.mark.parametrize("bad", [(5.0, 5.0), (1, 0), [2.0, -3.0]])
def test_logvar_range_must_be_increasing(name, bad):
    with raises(f"logvar_range={tuple(bad)} must be (low, high) with low < high"):
        build(name, logvar_range=bad)


@pytest.mark.parametrize("name", ["gq", "tokenbridge"])
def test_kl_weight_must_be_non_negative_and_0_is_valid(name):
    assert build(name, kl_weight=0).kl_weight == 0.0
    with raises("kl_weight=-0.1 must be >= 0"):
        build(name, kl_weight=-0.1)


@pytest.mark.parametrize("kw, message", [
    (dict(target_bits=0), "target_bits=0 must be > 0"),
    (dict(target_bits=-1.0), "target_bits=-1.0 must be > 0"),
    (dict(target_bits=4, tolerance=-0.1), "tolerance=-0.1 must be >= 0 bits"),
    (dict(target_bits=4, lam_factor=1.0), "lam_factor=1.0 must be > 1 (it multiplies or divides the λs)"),
    (dict(target_bits=4, lam_factor=0.99), "lam_factor=0.99 must be > 1 (it multiplies or divides the λs)"),
    (dict(target_bits=4, lam_min_range=(1.5, 2.0)), "lam_min_range=(1.5, 2.0) must contain 1"),
    (dict(target_bits=4, lam_min_range=(0.1, 0.5)), "lam_min_range=(0.1, 0.5) must contain 1"),
    (dict(target_bits=4, lam_max_range=(1.5, 2.0)), "lam_max_range=(1.5, 2.0) must contain 1"),
    (dict(target_bits=4, lam_max_range=(0.1, 0.5)), "lam_max_range=(0.1, 0.5) must contain 1"),
])
def test_tdc_rejects(kw, message):
    with raises(message):
        TargetDivergenceConstraint(**kw)


@pytest.mark.parametrize("kw", [
    dict(target_bits=0.5), dict(target_bits=1e-3), dict(target_bits=1),
    dict(target_bits=4, tolerance=0),
    dict(target_bits=4, lam_factor=1.0001),
    dict(target_bits=4, lam_min_range=(1.0, 1.0)), dict(target_bits=4, lam_min_range=(1.0, 2.0)),
    dict(target_bits=4, lam_min_range=(0.5, 1.0)), dict(target_bits=4, lam_min_range=(0.5, 2.0)),
    dict(target_bits=4, lam_max_range=(1.0, 1.0)), dict(target_bits=4, lam_max_range=(1.0, 1.5)),
    dict(target_bits=4, lam_max_range=(0.5, 1.0)), dict(target_bits=4, lam_max_range=(0.5, 2.0)),
])
def test_tdc_boundaries_are_valid(kw):
    t = TargetDivergenceConstraint(**kw)
    for key, value in kw.items():
        assert getattr(t, key) == (tuple(value) if isinstance(value, tuple) else value)


def test_gq_tdc_checks_reach_through_gq():
    with raises("lam_factor=1.0 must be > 1 (it multiplies or divides the λs)"):
        GaussianQuant(codebook_size=16, lam_factor=1.0)
    with raises("lam_min_range=(2.0, 3.0) must contain 1"):
        GaussianQuant(codebook_size=16, lam_min_range=[2.0, 3.0])
    with raises("tolerance=-1 must be >= 0 bits"):
        TokenBridge(codebook_size=16, tolerance=-1)
    assert GaussianQuant(codebook_size=16, tolerance=0).tdc.tolerance == 0.0


def test_gaussian_codebook_is_the_float64_normal_quantile_of_the_sobol_points():
    K, m, seed = 4096, 4, 3
    u = torch.quasirandom.SobolEngine(m, scramble=True, seed=seed).draw(K, dtype=torch.float64)
    nd = NormalDist()
    expected = torch.tensor([[nd.inv_cdf(x) for x in row] for row in u.tolist()], dtype=torch.float64)
    c = gaussian_codebook(K, m, seed)
    assert c.dtype == torch.float32 and c.shape == (K, m)
    # float32 Sobol draws would be off by ~1e-4 in the tails
    assert torch.allclose(c.double(), expected, rtol=1e-6, atol=1e-6)


def test_gaussian_codebook_refuses_non_finite_entries(monkeypatch):
    class EdgeSobol:  # a point on the unit cube's edge: Φ⁻¹(1) = +inf
        def __init__(self, dim, scramble, seed):
            self.dim = dim

        def draw(self, n, dtype):
            u = torch.full((n, self.dim), 0.5, dtype=dtype)
            u[1, 0] = 1.0
            return u

    monkeypatch.setattr(torch.quasirandom, "SobolEngine", EdgeSobol)
    with raises("the Gaussian codebook for codebook_size=4, codebook_dim=2, seed=7 has non-finite entries; "
                "choose another seed"):
        gaussian_codebook(4, 2, 7)


@pytest.mark.parametrize("bad", [2, 0, 4])
def test_tokenbridge_codebook_dim_must_be_1(bad):
    with raises(f"codebook_dim={bad} must be 1 (or null): TokenBridge quantizes each channel on its own"):
        TokenBridge(codebook_size=16, codebook_dim=bad)
    assert TokenBridge(codebook_size=16, codebook_dim=1).codebook_dim == 1


def test_tokenbridge_regularizer_must_be_tdc_or_kl():
    with raises("regularizer='TDC' must be 'tdc' or 'kl'"):
        TokenBridge(codebook_size=16, regularizer="TDC")
    assert TokenBridge(codebook_size=16, regularizer="kl").regularizer == "kl"


@pytest.mark.parametrize("value_range, std_range", [(0.0, 3.0), (-1.0, 3.0), (3.0, 0.0), (3.0, -2.0), (0.0, 0.0)])
def test_tokenbridge_ranges_must_be_positive(value_range, std_range):
    with raises(f"value_range={value_range} and std_range={std_range} must be > 0"):
        TokenBridge(codebook_size=16, value_range=value_range, std_range=std_range)


def test_tokenbridge_small_positive_ranges_are_valid():
    for value_range, std_range, levels in [(0.5, 0.5, 2), (1.0, 1.0, 4), (0.25, 2.0, 4)]:
        q = TokenBridge(codebook_size=levels, value_range=value_range, std_range=std_range)
        assert (q.value_range, q.std_range) == (value_range, std_range)
        expected = torch.tensor(truncated_normal_means(levels, std_range), dtype=torch.float64)
        assert torch.allclose(q.codebook[:, 0].double(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("option", ["beta", "seed"])
def test_tokenbridge_refuses_gq_codebook_options(option):
    with raises(f"{option}= is a GQ option; TokenBridge has no Gaussian codebook"):
        TokenBridge(codebook_size=16, **{option: 1})


# -- VQ -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    (dict(codebook_dim=None), "codebook_dim=None must be an integer >= 1 for VQ (the dims of one codeword)"),
    (dict(codebook_dim=0), "codebook_dim=0 must be an integer >= 1 for VQ (the dims of one codeword)"),
    (dict(codebook_dim=2.0), "codebook_dim=2.0 must be an integer >= 1 for VQ (the dims of one codeword)"),
    (dict(commitment_weight=-0.1), "commitment_weight=-0.1 and codebook_weight=1.0 must be >= 0"),
    (dict(codebook_weight=-0.1), "commitment_weight=0.25 and codebook_weight=-0.1 must be >= 0"),
    (dict(decay=0.0), "decay=0.0 must be in (0, 1)"),
    (dict(decay=1.0), "decay=1.0 must be in (0, 1)"),
    (dict(decay=-0.5), "decay=-0.5 must be in (0, 1)"),
    (dict(eps=0.0), "eps=0.0 must be > 0"),
    (dict(eps=-1e-5), "eps=-1e-05 must be > 0"),
    (dict(dead_code_threshold=-1.0), "dead_code_threshold=-1.0 must be >= 0 (0 turns restarts off)"),
    (dict(init="normal"), "init='normal' must be 'uniform' or 'kmeans'"),
    (dict(kmeans_iters=0), "kmeans_iters=0 must be an integer >= 1"),
    (dict(kmeans_iters=1.5), "kmeans_iters=1.5 must be an integer >= 1"),
    (dict(kmeans_iters=2.0), "kmeans_iters=2.0 must be an integer >= 1"),
    (dict(reduction="max"), "reduction='max' must be 'sum' or 'mean'"),
])
def test_vq_rejects(kw, message):
    with raises(message):
        VectorQuant(**{"codebook_size": 16, "codebook_dim": 2, **kw})


@pytest.mark.parametrize("kw", [
    dict(codebook_dim=1), dict(commitment_weight=0.0, codebook_weight=0.0), dict(decay=1e-6), dict(decay=0.999999),
    dict(eps=1e-12), dict(dead_code_threshold=0.0), dict(kmeans_iters=1), dict(init="kmeans"),
    dict(reduction="mean"), dict(legacy_loss=True), dict(ema_update=True),
])
def test_vq_boundaries_are_valid(kw):
    q = VectorQuant(**{"codebook_size": 16, "codebook_dim": 2, **kw})
    for key, value in kw.items():
        assert getattr(q, key) == value


# -- FSQ ----------------------------------------------------------------------------------------------------

def test_fsq_without_levels_needs_a_recommended_size():
    known = ("256 -> [8, 6, 5], 1024 -> [8, 5, 5, 5], 4096 -> [7, 5, 5, 5, 5], 16384 -> [8, 8, 8, 6, 5], "
             "65536 -> [8, 8, 8, 5, 5, 5]")
    for bad in (None, 100, 512):
        with raises(f"FSQ has no recommended levels for codebook_size={bad!r}; give levels explicitly "
                    f"(e.g. levels=[8,5,5,5]) or use one of: {known}"):
            FiniteScalarQuant(codebook_size=bad)


@pytest.mark.parametrize("size, levels", [(2 ** 8, (8, 6, 5)), (2 ** 10, (8, 5, 5, 5)), (2 ** 12, (7, 5, 5, 5, 5)),
                                          (2 ** 14, (8, 8, 8, 6, 5)), (2 ** 16, (8, 8, 8, 5, 5, 5))])
def test_fsq_recommended_levels_are_the_papers_table_1(size, levels):
    q = FiniteScalarQuant(codebook_size=size)
    assert q.levels == levels and q.codebook_size == math.prod(levels) and q.codebook_dim == len(levels)


@pytest.mark.parametrize("bad", [[], [2, 5], [5, 1], [5, 4.0], [5, "5"], [-3]])
def test_fsq_levels_must_be_integers_at_least_3(bad):
    with raises(f"levels={list(bad)} must be a non-empty list of integers >= 3 (2 levels would be the asymmetric "
                "{-1, 0} and has no finite shift with the paper's (1 - eps) bound; use lfq for 1-bit dims)"):
        FiniteScalarQuant(codebook_size=None, levels=bad)


def test_fsq_levels_3_are_valid_and_may_come_with_their_product():
    assert FiniteScalarQuant(codebook_size=None, levels=[3]).codebook_size == 3
    q = FiniteScalarQuant(codebook_size=125, levels=(5, 5, 5))
    assert q.levels == (5, 5, 5) and q.codebook_size == 125


def test_fsq_codebook_size_must_match_the_levels():
    with raises("codebook_size=100 does not match levels=[5, 5, 5] (∏ = 125); set codebook_size to 125 or null"):
        FiniteScalarQuant(codebook_size=100, levels=[5, 5, 5])


def test_fsq_codebook_dim_must_be_the_number_of_levels():
    with raises("codebook_dim=4 must equal len(levels)=3 for FSQ (levels=[8, 6, 5]), or be null"):
        FiniteScalarQuant(codebook_size=256, codebook_dim=4)
    assert FiniteScalarQuant(codebook_size=256, codebook_dim=3).codebook_dim == 3


@pytest.mark.parametrize("bad", [0.5, 0.75, 1.0, 1.5, -0.1])
def test_fsq_eps_must_be_in_0_to_half(bad):
    with raises(f"eps={bad} must be in [0, 0.5)"):
        FiniteScalarQuant(codebook_size=256, eps=bad)


@pytest.mark.parametrize("eps", [0.0, 0.49])
def test_fsq_eps_boundaries_are_valid(eps):
    assert FiniteScalarQuant(codebook_size=256, eps=eps).eps == eps


# -- LFQ / BSQ ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lfq", "bsq"])
@pytest.mark.parametrize("kw, message", [
    (dict(codebook_dim=3), "codebook_dim=3 must equal log2(codebook_size)=4: each dim is one bit"),
    (dict(codebook_dim=16), "codebook_dim=16 must equal log2(codebook_size)=4: each dim is one bit"),
    (dict(entropy_group_size=3), "entropy_group_size=3 must divide codebook_dim=4 and be in [1, 12]"),
    (dict(entropy_group_size=0), "entropy_group_size=0 must divide codebook_dim=4 and be in [1, 12]"),
    (dict(entropy_group_size=2.0), "entropy_group_size=2.0 must divide codebook_dim=4 and be in [1, 12]"),
    (dict(temperature=0.0), "temperature=0.0 must be > 0"),
    (dict(temperature=-0.01), "temperature=-0.01 must be > 0"),
    (dict(commitment_weight=-0.5), "commitment_weight=-0.5 must be a number >= 0"),
    (dict(entropy_weight=-0.5), "entropy_weight=-0.5 must be a number >= 0"),
    (dict(sample_weight=-0.5), "sample_weight=-0.5 must be a number >= 0"),
    (dict(codebook_weight=-0.5), "codebook_weight=-0.5 must be a number >= 0"),
    (dict(entropy_ramp=-0.5), "entropy_ramp=-0.5 must be a number >= 0"),
    (dict(entropy_weight="0.1"), "entropy_weight='0.1' must be a number >= 0"),
    (dict(entropy_ramp_steps=0), "entropy_ramp_steps=0 must be an integer >= 1"),
    (dict(entropy_ramp_steps=1.5), "entropy_ramp_steps=1.5 must be an integer >= 1"),
    (dict(entropy_ramp_steps=10.0), "entropy_ramp_steps=10.0 must be an integer >= 1"),
    (dict(reduction="max"), "reduction='max' must be 'sum' or 'mean'"),
])
def test_lfq_and_bsq_reject(name, kw, message):
    with raises(message):
        build(name, **kw)


@pytest.mark.parametrize("bits, group", [(12, 12), (12, 1), (4, 4), (13, 13)])
def test_lfq_entropy_group_size_range_is_1_to_12(bits, group):
    if group > 12:
        with raises(f"entropy_group_size={group} must divide codebook_dim={bits} and be in [1, 12]"):
            LookupFreeQuant(codebook_size=2 ** bits, entropy_group_size=group)
    else:
        q = LookupFreeQuant(codebook_size=2 ** bits, entropy_group_size=group)
        assert q.entropy_group_size == group and q.sub_codes.shape == (2 ** group, group)


def test_lfq_boundaries_are_valid():
    q = LookupFreeQuant(codebook_size=16, commitment_weight=0, entropy_weight=0, sample_weight=0, codebook_weight=0,
                        entropy_ramp=0, entropy_ramp_steps=1, temperature=1e-6, scale=1e-6)
    assert (q.entropy_ramp_steps, q.temperature, q.scale) == (1, 1e-6, 1e-6)
    assert LookupFreeQuant(codebook_size=16, codebook_dim=4).codebook_dim == 4


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_lfq_scale_must_be_positive(bad):
    with raises(f"scale={bad} must be > 0"):
        LookupFreeQuant(codebook_size=16, scale=bad)


@pytest.mark.parametrize("value", [1.0, 2.0, 0.0])
def test_bsq_refuses_any_scale(value):
    with raises(f"scale={value!r}: BSQ codes are fixed at ±1/√L; remove the scale option"):
        BinarySphericalQuant(codebook_size=16, scale=value)


# -- shared input checks (quantizers.base) -------------------------------------------------------------------

@pytest.mark.parametrize("name, layout", [
    ("fsq", "2 group(s) of len(levels)=2 dims"), ("lfq", "2 group(s) of 4 bits"), ("bsq", "2 group(s) of 4 bits"),
    ("vq", "2 group(s) of 2 dims"),
])
def test_input_checks_name_the_class(name, layout):
    q = build(name, num_codebooks=2)
    cls = type(q).__name__
    with raises(f"{cls} input of shape (1, {q.in_channels + 1}, 2, 2) must be "
                f"(B, in_channels={q.in_channels}, H, W): {layout}"):
        q(torch.zeros(1, q.in_channels + 1, 2, 2))
    h = torch.zeros(1, q.in_channels, 2, 2)
    h[0, 0, 1, 1] = float("nan")
    with raises(f"{cls} input contains NaN or inf"):
        q(h)


@pytest.mark.parametrize("name", sorted(BASE))
def test_decode_index_checks(name):
    q = build(name).eval()
    K = q.codebook_size
    with raises("indices must be an integer tensor (int64), got torch.bool"):
        q.decode(torch.zeros(1, 1, 2, 2, dtype=torch.bool))
    with raises("indices must be an integer tensor (int64), got torch.float32"):
        q.decode(torch.zeros(1, 1, 2, 2))
    with raises(f"indices range over [0, {K}] but codebook_size={K} allows [0, {K - 1}]"):
        q.decode(torch.tensor([[[[0, K]]]]))
    with raises(f"indices range over [-1, 0] but codebook_size={K} allows [0, {K - 1}]"):
        q.decode(torch.tensor([[[[-1, 0]]]]))
    assert q.decode(torch.tensor([[[[0, K - 1]]]])).shape == (1, q.out_channels, 1, 2)


# ---------------------------------------------------------------------------------------------------------
# Registry and helpers
# ---------------------------------------------------------------------------------------------------------

class _Probe(Quantizer):
    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs


class _OtherProbe(Quantizer):
    pass


@pytest.mark.parametrize("bad", ["Gq", "GQ", "1gq", "_gq", "g-q", "g q", "", "gq!", "ä"])
def test_register_refuses_a_name_that_is_not_a_lowercase_identifier(bad, clean_registry):
    with raises(f"quantizer name {bad!r} must be a lowercase identifier like 'gq' or 'fsq'"):
        register_quantizer(bad)
    assert bad not in clean_registry


@pytest.mark.parametrize("good", ["zz_probe", "z", "zz9", "z_1_b"])
def test_register_accepts_lowercase_identifiers_and_build_finds_them(good, clean_registry):
    assert register_quantizer(good)(_Probe) is _Probe
    assert clean_registry[good] is _Probe
    assert good in known_quantizers()
    q = build_quantizer(good, codebook_size=8, codebook_dim=3, num_codebooks=2, extra=1)
    assert isinstance(q, _Probe)
    assert q.kwargs == dict(codebook_size=8, codebook_dim=3, num_codebooks=2, extra=1)
    assert build_quantizer(good, codebook_size=8).kwargs == dict(codebook_size=8, codebook_dim=None, num_codebooks=1)
    assert default_codebook_dim(good, 8) is None  # the base class has no default


@pytest.mark.parametrize("bad", [int, torch.nn.Module, 3, "gq", None, torch.nn.Identity()])
def test_register_refuses_what_is_not_a_quantizer_class(bad, clean_registry):
    with raises(f"{bad!r} registered as 'zz_probe' is not a subclass of quantizers.Quantizer", TypeError):
        register_quantizer("zz_probe")(bad)
    assert "zz_probe" not in clean_registry


def test_register_refuses_a_taken_name_but_allows_the_same_class_again(clean_registry):
    with raises("quantizer name 'gq' is already registered to GaussianQuant"):
        register_quantizer("gq")(_Probe)
    assert clean_registry["gq"] is GaussianQuant
    assert register_quantizer("gq")(GaussianQuant) is GaussianQuant
    assert clean_registry["gq"] is GaussianQuant
    register_quantizer("zz_probe")(_Probe)
    assert register_quantizer("zz_probe")(_Probe) is _Probe
    with raises("quantizer name 'zz_probe' is already registered to _Probe"):
        register_quantizer("zz_probe")(_OtherProbe)
    assert clean_registry["zz_probe"] is _Probe


def test_unknown_names_list_the_known_ones_sorted(clean_registry):
    clean_registry.clear()
    clean_registry.update({"vq": VectorQuant, "fsq": FiniteScalarQuant, "gq": GaussianQuant})
    message = "unknown quantizer 'nope'; known quantizers: fsq, gq, vq"
    with raises(message):
        build_quantizer("nope", codebook_size=16)
    with raises(message):
        default_codebook_dim("nope", 16)
    with raises("unknown quantizer 'lfq'; known quantizers: fsq, gq, vq"):
        build_quantizer("lfq", codebook_size=16)


@pytest.mark.parametrize("name, size, options, dim", [
    ("gq", 256, {}, 8), ("gq", 2, {}, 1), ("gq", 6, {}, None), ("gq", 0, {}, None), ("gq", 1, {}, 0),
    ("lfq", 1024, {}, 10), ("lfq", 12, {}, None), ("bsq", 65536, {}, 16), ("bsq", 3, {}, None),
    ("tokenbridge", 256, {}, 1), ("tokenbridge", 4, {}, 1),
    ("vq", 256, {}, None),
    ("fsq", 256, {}, 3), ("fsq", 1024, {}, 4), ("fsq", 65536, {}, 6),
    ("fsq", None, {"levels": [5, 5, 5]}, 3), ("fsq", 125, {"levels": [5, 5, 5]}, 3),
    ("fsq", None, {"levels": [8, 8]}, 2),
])
def test_default_codebook_dim_per_method_with_options(name, size, options, dim):
    assert default_codebook_dim(name, size, **options) == dim


def test_default_codebook_dim_checks_fsq_options():
    with raises("codebook_size=100 does not match levels=[5, 5, 5] (∏ = 125); set codebook_size to 125 or null"):
        default_codebook_dim("fsq", 100, levels=[5, 5, 5])


@pytest.mark.parametrize("n, expected", [(1, True), (2, True), (4, True), (1024, True), (2 ** 40, True),
                                         (0, False), (-1, False), (-2, False), (-4, False), (3, False), (5, False),
                                         (6, False), (12, False), (2 ** 40 + 1, False), (2.0, False), (4.0, False),
                                         ("4", False), (None, False)])
def test_is_power_of_two(n, expected):
    assert is_power_of_two(n) is expected


@pytest.mark.parametrize("n, expected", [(1, 0), (2, 1), (256, 8), (2 ** 20, 20), (0, None), (-8, None), (3, None),
                                         (6, None), (1000, None)])
def test_whole_bits(n, expected):
    assert whole_bits(n) == expected


def test_groups_for_channels():
    assert groups_for_channels(8, 2) == 4
    assert groups_for_channels(8, 8) == 1
    assert groups_for_channels(3, 1) == 3
    with raises("codebook_dim=0 must be >= 1"):
        groups_for_channels(8, 0)
    with raises("codebook_dim=-2 must be >= 1"):
        groups_for_channels(8, -2)
    with raises("latent channels=8 are not divisible by codebook_dim=3; choose a codebook_dim that divides 8 "
                "or change model.z_channels"):
        groups_for_channels(8, 3)


def test_package_exports():
    assert quantizers.__all__ == ["RATE_TOLERANCE_BITS", "Quantizer", "QuantizerOutput", "build_quantizer",
                                  "check_rate", "default_codebook_dim", "known_quantizers", "official_defaults",
                                  "register_quantizer"]
