"""Training-step speed of the six methods at 16 bits/token on the demo's backbone, side by side in one run.

    python tests/bench_train_step.py [--steps 10] [--batch 16 32]

Per method: ms per autoencoder step (forward, reconstruction loss + the quantizer's loss, backward, Adam) at the
demo's settings (tiny UNet, 32² patches, CPU threads as torch sets them), beside two layouts torch offers:
channels_last memory format, and one thread. Ratios are against the default layout of the same method. GQ's row
is the floor (the backbone plus a KL: no code search while training); the others add their search and losses.
`make demo`'s budget (6 jobs x 400 steps of batch 16) follows from the first column.
"""
from __future__ import annotations

import argparse
import time

import torch


def step_ms(method: str, batch: int, steps: int, channels_last: bool, threads: int | None) -> float:
    from hydra import compose, initialize_config_dir

    from conftest import CONF_DIR
    from gqbench.job import assemble
    from gqbench.sweep import register_sweeper
    from gqbench.train import TrainingParts

    register_sweeper()
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"quantizer={method}", "rate=16bits"])
    model = assemble(cfg).model.train()
    losses = TrainingParts(cfg.loss, torch.device("cpu"))
    x = torch.rand(batch, 3, 32, 32) * 2 - 1
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    for i in range(steps + 3):  # 3 warm-up steps
        if i == 3:
            start = time.perf_counter()
        out = model(x)
        loss = losses.reconstruction(x, out.x_hat)[0] + out.quant.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.set_num_threads(previous)
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 32])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per training step (ratio to default)")
    print(f"{'method':12} {'batch':>5} {'default':>9} {'channels_last':>15} {'1 thread':>10}")
    for batch in args.batch:
        for method in ("gq", "vq", "fsq", "lfq", "bsq", "tokenbridge"):
            base = step_ms(method, batch, args.steps, False, None)
            cl = step_ms(method, batch, args.steps, True, None)
            one = step_ms(method, batch, args.steps, False, 1)
            print(f"{method:12} {batch:>5} {base:9.1f} {cl:9.1f} ({cl / base:.2f}) {one:6.1f} ({one / base:.2f})")


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    main()
