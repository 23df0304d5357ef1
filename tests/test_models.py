"""Encoder / Decoder / PatchDiscriminator: shapes, structure, gradients, determinism, argument errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gqbench.models import Decoder, Encoder, PatchDiscriminator
from gqbench.models.discriminator import ActNorm
from gqbench.models.unet import AttnBlock, ResnetBlock, group_norm

# the CPU default config (conf: unet_tiny)
TINY = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=32)
# the paper's structure (4 levels, 2 blocks, attention at the 32-px-of-256 level) shrunk to stay fast
SD3_SMALL = dict(ch=32, ch_mult=(1, 2, 4, 4), num_res_blocks=2, attn_resolutions=(8,), resolution=64)
# the paper's config (conf: unet_sd3); only ever built on the meta device here
SD3 = dict(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, attn_resolutions=(32,), resolution=256)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def attn_input_sizes(module: nn.Module, x: torch.Tensor) -> list[tuple[int, int]]:
    """Spatial size seen by every AttnBlock during one forward."""
    sizes: list[tuple[int, int]] = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, args: sizes.append(tuple(args[0].shape[-2:])))
        for m in module.modules()
        if isinstance(m, AttnBlock)
    ]
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    return sizes


# shapes and structure


@pytest.mark.parametrize(
    "cfg, image, factor",
    [(TINY, 32, 4), (SD3_SMALL, 64, 8)],
    ids=["tiny", "sd3_small"],
)
def test_encoder_decoder_shapes(cfg, image, factor):
    enc, dec = Encoder(out_channels=10, **cfg), Decoder(in_channels=5, **cfg)
    assert enc.downsample_factor == dec.downsample_factor == factor
    x = torch.randn(2, 3, image, image)
    h = enc(x)
    assert h.shape == (2, 10, image // factor, image // factor)
    x_hat = dec(h[:, :5])
    assert x_hat.shape == x.shape


def test_no_tanh_output_is_unbounded():
    dec = Decoder(in_channels=4, **TINY)
    with torch.no_grad():
        dec.conv_out.bias.fill_(3.0)  # a tanh would squash this below 1
        out = dec(torch.randn(1, 4, 8, 8))
    assert out.max() > 1.5


def test_last_layer_is_decoder_conv_out_weight():
    dec = Decoder(in_channels=4, **TINY)
    assert dec.last_layer is dec.conv_out.weight
    assert dec.last_layer.shape[0] == 3


@pytest.mark.parametrize("cfg, image", [(TINY, 32), (SD3_SMALL, 64)], ids=["tiny", "sd3_small"])
def test_attention_only_at_requested_resolutions(cfg, image):
    enc, dec = Encoder(out_channels=8, **cfg), Decoder(in_channels=4, **cfg)
    r = cfg["attn_resolutions"][0]
    nrb, levels = cfg["num_res_blocks"], len(cfg["ch_mult"])
    # every attention runs at the requested size; one per block of that level, none in the mid block
    enc_sizes = attn_input_sizes(enc, torch.randn(1, 3, image, image))
    dec_sizes = attn_input_sizes(dec, torch.randn(1, 4, image // 2 ** (levels - 1), image // 2 ** (levels - 1)))
    assert enc_sizes == [(r, r)] * nrb
    assert dec_sizes == [(r, r)] * (nrb + 1)
    assert enc.mid.attn_1 is None and dec.mid.attn_1 is None


def test_attention_moves_with_attn_resolutions_and_mid_attention():
    cfg = dict(SD3_SMALL, attn_resolutions=(64, 16))
    enc = Encoder(out_channels=8, mid_attention=True, **cfg)
    sizes = attn_input_sizes(enc, torch.randn(1, 3, 64, 64))
    # 2 at 64², 2 at 16², then the mid attention at the latent size 8²
    assert sizes == [(64, 64)] * 2 + [(16, 16)] * 2 + [(8, 8)]
    assert len(Encoder(out_channels=8, **dict(SD3_SMALL, attn_resolutions=())).state_dict()) < len(enc.state_dict())


def test_decoder_blocks_per_level_and_state_dict_names():
    dec = Decoder(in_channels=4, **SD3_SMALL)
    assert all(len(level.block) == SD3_SMALL["num_res_blocks"] + 1 for level in dec.up)
    keys = dec.state_dict().keys()
    # SGM / taming layout: level 0 (full resolution) has no upsampler, the others do
    assert "up.1.upsample.conv.weight" in keys and not any(k.startswith("up.0.upsample") for k in keys)
    assert "up.3.attn.2.q.weight" in keys and "mid.block_2.conv2.weight" in keys
    enc_keys = Encoder(out_channels=8, **SD3_SMALL).state_dict().keys()
    assert "down.2.downsample.conv.weight" in enc_keys and not any(k.startswith("down.3.downsample") for k in enc_keys)


def test_sd3_config_param_count_and_latent_shape_on_meta():
    # meta tensors: shapes and parameter counts without allocating or computing anything
    with torch.device("meta"):
        enc, dec = Encoder(out_channels=32, **SD3), Decoder(in_channels=16, **SD3)
        h = enc(torch.empty(1, 3, 256, 256))
        x_hat = dec(torch.empty(1, 16, 32, 32))
    assert h.shape == (1, 32, 32, 32) and x_hat.shape == (1, 3, 256, 256)
    assert enc.downsample_factor == 8
    assert (n_params(enc), n_params(dec)) == (35_325_856, 51_648_771)


def test_sd_vae_layout_reproduces_known_parameter_count():
    # Independent check of the whole block layout: with attention only in the mid block and z = 4, this is the
    # Stable Diffusion AutoencoderKL, whose published size is 83,653,863 parameters including its two 1×1
    # quant convs (8·8+8 and 4·4+4 parameters).
    with torch.device("meta"):
        enc = Encoder(out_channels=8, mid_attention=True, **dict(SD3, attn_resolutions=()))
        dec = Decoder(in_channels=4, mid_attention=True, **dict(SD3, attn_resolutions=()))
    assert n_params(enc) + n_params(dec) + (8 * 8 + 8) + (4 * 4 + 4) == 83_653_863


def test_tiny_config_param_count():
    enc, dec = Encoder(out_channels=32, **TINY), Decoder(in_channels=16, **TINY)
    assert (n_params(enc), n_params(dec)) == (381_120, 610_883)


# blocks


def test_group_norm_groups():
    assert group_norm(128).num_groups == 32
    assert group_norm(32).num_groups == 32
    assert group_norm(8).num_groups == 8
    assert group_norm(48).num_groups == 16  # gcd, so the channels always divide evenly
    with pytest.raises(ValueError, match="channels"):
        group_norm(0)


def test_resnet_block_shortcut_only_on_width_change():
    assert ResnetBlock(16, 16).nin_shortcut is None
    block = ResnetBlock(16, 32)
    assert isinstance(block.nin_shortcut, nn.Conv2d) and block.nin_shortcut.kernel_size == (1, 1)
    assert block(torch.randn(2, 16, 4, 4)).shape == (2, 32, 4, 4)


def test_attn_block_matches_explicit_softmax():
    torch.manual_seed(0)
    attn = AttnBlock(8)
    x = torch.randn(2, 8, 3, 5)
    hn = attn.norm(x)
    q, k, v = (m(hn).flatten(2) for m in (attn.q, attn.k, attn.v))  # (b, c, n)
    w = torch.softmax(torch.einsum("bcn,bcm->bnm", q, k) / 8**0.5, dim=-1)
    out = torch.einsum("bnm,bcm->bcn", w, v).reshape(2, 8, 3, 5)
    torch.testing.assert_close(attn(x), x + attn.proj_out(out), rtol=1e-5, atol=1e-5)


def test_downsample_and_upsample_sizes():
    from gqbench.models.unet import Downsample, Upsample

    down = Downsample(4)
    x = torch.randn(1, 4, 16, 12)
    y = down(x)
    assert y.shape == (1, 4, 8, 6)
    # padding only on the right / bottom: output (0, 0) sees input rows and columns 0..2, no zero padding
    top_left = torch.nn.functional.conv2d(x[..., :3, :3], down.conv.weight, down.conv.bias)
    torch.testing.assert_close(y[..., :1, :1], top_left)
    assert Upsample(4)(torch.randn(1, 4, 8, 6)).shape == (1, 4, 16, 12)


# training behaviour


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    cfg = dict(SD3_SMALL, ch=16)  # same structure, a quarter of the compute
    enc, dec = Encoder(out_channels=8, **cfg), Decoder(in_channels=4, **cfg)
    x = torch.randn(1, 3, 64, 64)
    (dec(enc(x)[:, :4]) - x).abs().mean().backward()
    for name, p in [*enc.named_parameters(), *dec.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        # biases right before a GroupNorm (and attention's key bias) get ~0 gradient by construction; weights must not
        if p.ndim == 4:
            assert p.grad.abs().sum() > 0, name


def test_deterministic_under_seed():
    def build_and_run():
        torch.manual_seed(123)
        enc, dec = Encoder(out_channels=8, **TINY), Decoder(in_channels=4, **TINY)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            return enc.state_dict(), dec(enc(x)[:, :4])

    (sd_a, out_a), (sd_b, out_b) = build_and_run(), build_and_run()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert torch.equal(out_a, out_b)


def test_dropout_is_active_only_in_train_mode():
    torch.manual_seed(0)
    enc = Encoder(out_channels=8, dropout=0.5, **TINY)
    x = torch.randn(1, 3, 32, 32)
    enc.eval()
    with torch.no_grad():
        assert torch.equal(enc(x), enc(x))
        enc.train()
        assert not torch.equal(enc(x), enc(x))


# argument errors


@pytest.mark.parametrize("cls, io", [(Encoder, "out_channels"), (Decoder, "in_channels")])
@pytest.mark.parametrize(
    "override, match",
    [
        (dict(ch_mult=()), "ch_mult is empty"),
        (dict(resolution=34), r"resolution=34 is not divisible by the downsample factor 4"),
        (dict(attn_resolutions=(7,)), r"contains 7, which never occurs.*\[32, 16, 8\]"),
        (dict(num_res_blocks=0), "num_res_blocks=0"),
        (dict(ch=0), "ch=0"),
        (dict(dropout=1.0), "dropout=1.0"),
        (dict(ch_mult=(1, 0)), "ch_mult"),
    ],
)
def test_invalid_arguments_raise(cls, io, override, match):
    with pytest.raises(ValueError, match=match):
        cls(**{io: 8}, **dict(TINY, **override))


def test_missing_io_channels_is_a_type_error():
    with pytest.raises(TypeError):
        Encoder(**TINY)  # out_channels has no default: it is the quantizer's width
    with pytest.raises(ValueError, match="out_channels=0"):
        Encoder(out_channels=0, **TINY)


def test_bad_inputs_raise():
    enc, dec = Encoder(out_channels=8, **TINY), Decoder(in_channels=4, **TINY)
    with pytest.raises(ValueError, match=r"not divisible by the downsample factor 4"):
        enc(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\(b, 3, h, w\)"):
        enc(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(b, 4, h, w\)"):
        dec(torch.randn(1, 8, 8, 8))


# discriminator


@pytest.mark.parametrize("size, n_layers, out", [(32, 3, 2), (64, 3, 6), (16, 2, 2), (192, 6, 1), (256, 6, 2)])
def test_discriminator_output_size(size, n_layers, out):
    with torch.device("meta") if size > 64 else torch.device("cpu"):
        disc = PatchDiscriminator(ndf=8, n_layers=n_layers, use_actnorm=size <= 64)
        logits = disc(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 1, out, out)


def test_discriminator_paper_config_on_meta():
    with torch.device("meta"):
        disc = PatchDiscriminator(ndf=160, n_layers=6, use_actnorm=False)
        assert disc(torch.empty(1, 3, 256, 256)).shape == (1, 1, 2, 2)
    widths = [m.out_channels for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [160, 320, 640, 1280, 1280, 1280, 1280, 1]  # multiplier capped at 8


def test_discriminator_too_small_input_raises():
    disc = PatchDiscriminator(ndf=8, n_layers=3)
    with pytest.raises(ValueError, match=r"\(16, 16\) is too small for n_layers=3.*24×24"):
        disc(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="n_layers=0"):
        PatchDiscriminator(n_layers=0)


def test_discriminator_init_and_norm_choice():
    torch.manual_seed(0)
    disc = PatchDiscriminator(ndf=64, n_layers=3)
    first = disc.main[0].weight
    assert abs(first.std().item() - 0.02) < 0.002 and abs(first.mean().item()) < 0.002
    assert sum(isinstance(m, ActNorm) for m in disc.modules()) == 3
    bn = PatchDiscriminator(ndf=8, n_layers=3, use_actnorm=False)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 3
    assert not any(isinstance(m, ActNorm) for m in bn.modules())


def test_actnorm_data_dependent_init_once_and_persisted():
    torch.manual_seed(0)
    norm = ActNorm(4)
    x = torch.randn(8, 4, 5, 5) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1) + 7.0
    y = norm(x)
    # first batch comes out standardised per channel
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(4), atol=1e-4, rtol=0)
    assert norm.initialized.item() == 1
    # later batches use the stored statistics instead of re-initialising
    loc = norm.loc.detach().clone()
    norm(torch.randn(8, 4, 5, 5))
    assert torch.equal(norm.loc.detach(), loc)
    # a fresh module loading the state does not re-init from its first batch
    other = ActNorm(4)
    other.load_state_dict(norm.state_dict())
    other(torch.randn(8, 4, 5, 5) * 10)
    assert torch.equal(other.loc.detach(), loc)
    # loading an uninitialised state makes the next forward initialise again
    norm.load_state_dict(ActNorm(4).state_dict())
    norm(x)
    torch.testing.assert_close(norm.loc.detach(), loc)
    assert norm.initialized.item() == 1
