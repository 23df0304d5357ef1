"""GPU smoke check for the training/eval path (run by hand on a CUDA machine; not collected by pytest).

    python3 tests/device_smoke.py

Needs only torch (+ triton): builds the paper's backbone shape class at small width, trains a few steps
with bf16 autocast (the quantizer stays fp32) and one more with CUDA's sync debug mode raising on any host sync,
then checks on CUDA that the Triton search returns the same indices as the torch path and that
decode(encode(x)) equals the eval forward.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gqbench.models.autoencoder import build_autoencoder  # noqa: E402
from quantizers import build_quantizer  # noqa: E402


def main() -> None:
    assert torch.cuda.is_available(), "needs CUDA"
    device = torch.device("cuda")
    torch.manual_seed(0)
    print(torch.__version__, torch.cuda.get_device_name())
    q = build_quantizer("gq", codebook_size=2**16, codebook_dim=16, num_codebooks=1)
    model_cfg = SimpleNamespace(z_channels=16, ch=64, ch_mult=[1, 2, 4, 4], num_res_blocks=1, attn_resolutions=[32], dropout=0.0)
    model = build_autoencoder(model_cfg, q, image_size=256).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(8, 3, 256, 256, device=device) * 2 - 1
    model.train()
    for step in range(5):
        t = time.time()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
            rec = (x - out.x_hat.float()).abs().sum() / len(x)
        assert out.quant.z_q.dtype == torch.float32, out.quant.z_q.dtype
        loss = rec + out.quant.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        print(f"train step {step}: loss {loss.item():.1f} bits {out.quant.stats['bits_mean']:.3f} {time.time() - t:.3f}s")
    training_step_without_host_sync(model, opt, x)
    model.eval()
    with torch.no_grad():
        h = model.encoder(x).float()
        t = time.time()
        idx_triton = q.encode(h)
        torch.cuda.synchronize()
        t_triton = time.time() - t
        q.search_backend = "torch"
        t = time.time()
        idx_torch = q.encode(h)
        torch.cuda.synchronize()
        t_torch = time.time() - t
        q.search_backend = "auto"
        assert torch.equal(idx_triton, idx_torch), (idx_triton != idx_torch).sum()
        out = model(x)
        assert torch.equal(model.decode(model.encode(x)), model.decoder(out.quant.z_q))
    print(f"eval: {idx_triton.numel()} tokens, triton {t_triton * 1e3:.1f} ms vs torch {t_torch * 1e3:.1f} ms, identical indices")
    every_method_on_cuda(device)
    print("DEVICE SMOKE OK")


def training_step_without_host_sync(model, opt, x) -> None:
    """The GPU side of tests/test_multiprocess.py's sync count: with CUDA's sync debug mode at "error", any call
    that waits for the device (.item(), bool(t), nonzero, a device->host copy) raises inside a GQ training step."""
    model.train()
    model.quantizer.check_finite_inputs = False  # as gqbench.train does: the loss is checked on logging steps
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
            rec = (x - out.x_hat.float()).abs().sum() / len(x)
        loss = rec + out.quant.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
        model.quantizer.check_finite_inputs = True
    print("a GQ training step ran with no host sync (CUDA sync debug mode 'error')")


def every_method_on_cuda(device: torch.device) -> None:
    """Each registered quantizer at the paper's 16 bits/token: a bf16-autocast training forward/backward, then
    eval; searching methods must give the same indices on the Triton and the torch backends."""
    from quantizers import known_quantizers

    sizes = {"gq": dict(codebook_size=2**16, codebook_dim=16), "vq": dict(codebook_size=2**16, codebook_dim=16, init="kmeans"),
             "fsq": dict(codebook_size=2**16), "lfq": dict(codebook_size=2**16), "bsq": dict(codebook_size=2**16),
             "tokenbridge": dict(codebook_size=2, num_codebooks=16)}
    for name in known_quantizers():
        torch.manual_seed(0)
        q = build_quantizer(name, **sizes[name]).to(device)
        h = torch.randn(16, q.in_channels, 32, 32, device=device, requires_grad=True)
        q.train()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = q(h)
        (out.z_q.float().square().mean() + out.loss).backward()
        assert torch.isfinite(h.grad).all(), name
        q.eval()
        with torch.no_grad():
            t = time.time()
            idx = q.encode(h)
            torch.cuda.synchronize()
            elapsed = time.time() - t
            same = True
            if hasattr(q, "search_backend"):
                q.search_backend = "torch"
                same = torch.equal(idx, q.encode(h))
                q.search_backend = "auto"
            assert same, f"{name}: Triton and torch indices differ"
            assert torch.equal(q.decode(idx), q(h).z_q), name
        print(f"{name}: {idx.numel()} indices in {elapsed * 1e3:.1f} ms, bits/token {q.bits_per_token:.2f}, backends agree")


if __name__ == "__main__":
    main()
