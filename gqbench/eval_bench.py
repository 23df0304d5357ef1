"""`python -m gqbench.evaluate --bench`: is evaluation what the device waits for?

Prints images/s, measured side by side in one run on the same images and model:
- forward     the floor: the autoencoder's forward pass alone (what evaluation cannot be faster than);
- ours        gqbench.evaluate with PSNR/SSIM (on the device), usage and quantizer stats, and rFID + LPIPS when
              weight files are given (--inception-weights / --lpips-weights; random ones time the same);
- skimage     the forward pass plus scikit-image PSNR/SSIM per image on the CPU, serially (the reference
              implementation, and what evaluation cost before the metrics moved to the device);
with the ratios ours/forward (target ≥ 0.8) and skimage/forward.

    python -m gqbench.evaluate --bench [--device cuda] [--sizes 32,256] [--images 64,8] [--batch-size 16]
"""
from __future__ import annotations

import argparse
import time

import torch
from omegaconf import OmegaConf

# the model each size is timed with: the CPU default at 32², the paper's UNet + GQ (K = 2^16, m = 16) at 256²
MODELS = {
    32: ["model=unet_tiny", "quantizer=gq"],
    256: ["model=unet_sd3", "quantizer=gq", "quantizer.codebook_size=65536", "quantizer.codebook_dim=16"],
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def bench_size(size: int, images: int, batch_size: int, device: torch.device, inception: str | None,
               lpips_weights: str | None) -> dict[str, float]:
    from hydra import compose, initialize_config_dir

    from . import metrics as M
    from .data.synthetic_images import TensorImageDataset, _smooth_images
    from .evaluate import evaluate
    from .job import assemble
    from .sweep import config_dir

    overrides = MODELS.get(size, MODELS[32]) + [f"data.image_size={size}", "data=synthetic", "data.num_train=8",
                                                 f"data.num_val={images}", f"device={device}"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    torch.manual_seed(0)
    model = assemble(cfg).model.to(device).eval()
    val = TensorImageDataset(_smooth_images(images, size, torch.Generator().manual_seed(1)))
    batches = [torch.stack([val[i] for i in range(s, min(s + batch_size, images))]).to(device)
               for s in range(0, images, batch_size)]
    eval_cfg = OmegaConf.create({"rfid": inception is not None, "lpips": lpips_weights is not None,
                                 "inception_weights": inception, "lpips_weights": lpips_weights,
                                 "cache_dir": None, "download_weights": False})

    @torch.no_grad()
    def forward() -> None:
        for x in batches:
            model(x)

    @torch.no_grad()
    def with_skimage() -> None:
        for x in batches:
            out = model(x)
            M.psnr_ssim_skimage(x, out.x_hat)

    def ours() -> None:
        import tempfile

        metrics, _ = M.build_metrics(OmegaConf.merge(eval_cfg, {"cache_dir": tempfile.mkdtemp()}), model.quantizer)
        evaluate(model, val, num_images=None, batch_size=batch_size, grid_images=0, device=device, grid_file=None,
                 seed=0, metrics=metrics)

    forward()  # warm-up: kernels, allocator, Triton compilation
    t_forward = _timed(forward, device)
    t_ours = _timed(ours, device)
    t_skimage = _timed(with_skimage, device)
    return {"forward": images / t_forward, "ours": images / t_ours, "skimage": images / t_skimage}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gqbench.evaluate --bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="32,256", help="image sizes, comma-separated")
    parser.add_argument("--images", default=None, help="images per size, comma-separated (default: 256,64 on "
                                                       "CUDA, 64,4 on CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 on CUDA, 16 on CPU")
    parser.add_argument("--inception-weights", default=None, help="time rFID too (any file of the right shapes)")
    parser.add_argument("--lpips-weights", default=None, help="time LPIPS-AlexNet too")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    sizes = [int(s) for s in args.sizes.split(",")]
    default_images = [256, 64] if device.type == "cuda" else [64, 4]
    images = [int(n) for n in args.images.split(",")] if args.images else default_images[: len(sizes)]
    batch_size = args.batch_size or (64 if device.type == "cuda" else 16)
    with_weights = " + rFID" * bool(args.inception_weights) + " + LPIPS" * bool(args.lpips_weights)
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {batch_size}; ours = PSNR/SSIM/usage"
          f"{with_weights}")
    print(f"{'size':>5} {'images':>6} {'model':>9} {'forward img/s':>14} {'ours img/s':>11} {'skimage img/s':>14} "
          f"{'ours/fwd':>9} {'skimage/fwd':>12}")
    for size, n in zip(sizes, images):
        r = bench_size(size, n, min(batch_size, n), device, args.inception_weights, args.lpips_weights)
        model = MODELS.get(size, MODELS[32])[0].split("=")[1]
        print(f"{size:>5} {n:>6} {model:>9} {r['forward']:>14.2f} {r['ours']:>11.2f} {r['skimage']:>14.2f} "
              f"{r['ours'] / r['forward']:>9.2f} {r['skimage'] / r['forward']:>12.2f}", flush=True)
    return 0
