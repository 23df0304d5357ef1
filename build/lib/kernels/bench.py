"""Benchmark: python -m kernels.bench [--device cpu|cuda] [--quick] [...]

For each (N, m) at fixed K, times
  reference  the upstream algorithm (kernels.reference.upstream_gq_argmax):
             per-row broadcast of log N(c; mu, sigma^2) - beta log N(c; 0, 1)
             over all codewords, (rows, K, m) tensors, fp32. Timed on a row
             subset and extrapolated per row (it is far too slow otherwise).
  ours-torch the tiled torch path (CPU runs only)
  floor      (CPU) the same (N x 2m) . (2m x K) matmul in cache-sized tiles,
             results discarded: best over a few tile shapes
  unfused    (GPU) full N x K fp32 score matrix (one cuBLAS matmul) + argmax
  triton     (GPU) the exact fused kernel path, end to end and pass 1 alone
  triton-tc  (GPU) the bf16x3 tensor-core variant (exact=False), still exact
GPU runs also print a "host overhead" table: per shape, the full call
(gq_argmax, wall time between CUDA events, its one sync included) next to
the device time of the kernels it launches (core.triton_launches queued
behind a sleep kernel, so launch and Python costs are hidden) and their
difference.
FLOP/s count 2*N*K*(2m) (the useful GEMM; padding not counted).
Inputs mimic a trained GQ encoder at ~log2 K bits per group: sigma_d around
exp(-ln K / m), mu ~ sqrt(1 - sigma^2) N(0, 1), codebook ~ N(0, I).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

from . import gq_argmax, torch_search
from .features import gq_problem, ieee_fp32_matmul
from .reference import reference_gq_argmax, upstream_gq_argmax
from .core import search, triton_launches

FP32_PEAK = {"H100": 67e12, "H200": 67e12}  # dense fp32 (non tensor-core), datasheet


def make_inputs(N: int, K: int, m: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s0 = math.exp(-math.log(K) / m)
    sigma = (s0 * torch.exp(0.3 * torch.randn(N, m, generator=g))).clamp(max=0.99)
    mu = torch.sqrt(1 - sigma ** 2) * torch.randn(N, m, generator=g)
    cb = torch.randn(K, m, generator=g)
    return mu.to(device), sigma.to(device), cb.to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_it(fn, device, reps: int) -> float:
    """Seconds per call: best of `reps` wall times on CPU; on CUDA the mean of
    `reps` back-to-back calls between CUDA events (after one warm-up call)."""
    if device.type == "cuda":
        from .triton_search import cuda_time_ms

        return cuda_time_ms(fn, reps) / 1e3
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def device_time(fn, device, reps: int) -> tuple[float, bool]:
    """(seconds of device time per call of fn, queue_drained) on CUDA.

    fn must not sync. The calls are queued behind a sleep kernel longer than
    it takes the host to issue them, so the GPU runs their kernels back to
    back and the events time the kernels, not the host. queue_drained: the
    sleep ended before the last call was issued (then the time includes host
    gaps). Elsewhere: time_it, and False.
    """
    if device.type != "cuda":
        return time_it(fn, device, reps), False
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    host = time.perf_counter() - t0
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(int(2e9 * (2.0 * reps * host + 2e-3)))  # cycles; >= that many s at <= 2 GHz
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    drained = start.query()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps / 1e3, drained


def floor_cpu(prob, rows: int, tile: int) -> None:
    buf = torch.empty(rows * tile)
    with ieee_fp32_matmul():
        for r0 in range(0, prob.N, rows):
            r = min(rows, prob.N - r0)
            for k0 in range(0, prob.K, tile):
                kw = min(tile, prob.K - k0)
                torch.mm(prob.F[r0:r0 + r], prob.Gt[:, k0:k0 + kw], out=buf[:r * kw].view(r, kw))


def unfused_gpu(prob) -> torch.Tensor:
    with ieee_fp32_matmul():
        return torch.argmax(prob.F @ prob.Gt, dim=1)


def peak_extra(fn, device) -> int:
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) - base


def fmt_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:.1f} {unit}" if unit != "B" else f"{int(b)} B"
        b /= 1024
    return str(b)


def run_case(N, K, m, beta, device, args, rows_out, overhead_out):
    mu, sigma, cb = make_inputs(N, K, m, device, seed=args.seed)
    flops = 2.0 * N * K * (2 * m)
    prob = gq_problem(mu, sigma, cb, beta)
    res = {}
    idx = {}

    # Reference algorithm on a row subset, extrapolated per row.
    nr = min(N, args.ref_rows)
    sub = slice(0, nr)
    # The subset is one chunk (upstream uses N/8-row chunks: larger, not faster).
    t_ref = time_it(lambda: upstream_gq_argmax(mu[sub], sigma[sub], cb, beta, chunks=1),
                    device, max(1, args.reps // 2)) * N / nr
    ref_idx = upstream_gq_argmax(mu[sub], sigma[sub], cb, beta, chunks=1)
    oracle = reference_gq_argmax(mu[sub], sigma[sub], cb, beta)
    # Upstream: 8 chunks of N/8 rows, each a (N/8, K, m) fp32 tensor (+ same-size temporaries).
    res["reference"] = (t_ref, -(-N // 8) * K * m * 4, f"timed on {nr} rows (one chunk), scaled to N; mem = one upstream (N/8,K,m) fp32 chunk, computed")

    stats = {}
    if not args.gpu_methods:
        fn = lambda: gq_argmax(mu, sigma, cb, beta, backend="torch")  # features included
        t = time_it(fn, device, args.reps)
        idx["ours-torch"] = search(prob, backend="torch", stats=stats)
        res["ours-torch"] = (t, torch_search.tile_bytes(prob), "tile buffers, computed")
        tf = float("inf")
        shape_best = None
        for rows, tile in ((512, 512), (1024, 256), (256, 1024), (2048, 128), (1024, 512)):
            tt = time_it(lambda: floor_cpu(prob, rows, tile), device, args.reps)
            if tt < tf:
                tf, shape_best = tt, (rows, tile)
        res["floor"] = (tf, 4 * min(N, shape_best[0]) * shape_best[1],
                        f"best of 5 tile shapes: {shape_best[0]}x{shape_best[1]}, computed")
    else:
        res["unfused"] = (time_it(lambda: unfused_gpu(prob), device, args.reps),
                          peak_extra(lambda: unfused_gpu(prob), device), "max_memory_allocated")
        idx["unfused"] = unfused_gpu(prob)
        from . import triton_search as ts
        for name, exact in (("triton", True), ("triton-tc", False)):
            fn = lambda: gq_argmax(mu, sigma, cb, beta, exact=exact, backend="triton")
            t = time_it(fn, device, args.reps)
            st = {}
            # The same path as fn (rows built by the prepare kernel), with stats.
            idx[name] = search(gq_problem(mu, sigma, cb, beta, defer=True), backend="triton",
                               exact=exact, stats=st)
            stats[name] = st
            res[name] = (t, peak_extra(fn, device),
                          f"end to end; max_memory_allocated; fallback rows {st['fallback_rows']}")
            t_scan = time_it(lambda: ts.scan(prob, tc=not exact), device, args.reps)
            cfg = ts.pick_config(prob, not exact)
            res[name + " pass1"] = (t_scan, 0, f"scan kernel only, config {cfg}")
            t_kern, drained = device_time(
                lambda: triton_launches(gq_problem(mu, sigma, cb, beta, defer=True), exact),
                device, args.reps)
            overhead_out.append(dict(N=N, m=m, method=name, full=t, kernels=t_kern,
                                     unfused=res["unfused"][0], drained=drained,
                                     fallback=st["fallback_rows"]))

    # Correctness: every method vs the fp64 oracle (subset) and vs the exact one (all rows).
    exact_names = [k for k in idx if k != "unfused"]
    base_name = exact_names[0]
    base = idx[base_name]
    checks, ok = [], True
    for k, v in idx.items():
        eq = bool((v[sub] == oracle).all())
        checks.append(f"{k} == fp64 oracle on {nr} rows: {eq}")
        if k != base_name:
            mism = int((v != base).sum())
            checks.append(f"{k} == {base_name} on {N} rows: {mism} mismatches")
            ok &= k == "unfused" or mism == 0
        ok &= eq or k == "unfused"
    checks.append(f"reference == {base_name} on {nr} rows: {int((ref_idx != base[sub]).sum())} mismatches")

    for name, (t, mem, note) in res.items():
        rows_out.append(dict(N=N, K=K, m=m, method=name, t=t, flops=flops / t,
                             vs_ref=res["reference"][0] / t,
                             vs_floor=(t / res["floor"][0]) if "floor" in res else None,
                             mem=mem, note=note))
    return checks, stats, ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    ap.add_argument("--N", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--K", type=int, default=65536)
    ap.add_argument("--m", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--ref-rows", type=int, default=64, help="rows the reference is timed on")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for this run (default: leave torch's choice); "
                         "on a CPU shared with other busy processes, OpenMP with >1 thread can "
                         "slow down 100x, so 1 gives meaningful numbers there")
    ap.add_argument("--gpu-methods", action=argparse.BooleanOptionalAction, default=None,
                    help="time unfused/triton/triton-tc instead of the CPU methods (default: on "
                         "for CUDA; on CPU it needs TRITON_INTERPRET=1 and is only a smoke run)")
    args = ap.parse_args(argv)
    if args.gpu_methods is None:
        args.gpu_methods = args.device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.N, args.K, args.ref_rows, args.reps = [256], 8192, 16, 1
    elif args.device.startswith("cuda"):
        args.reps = max(args.reps, 10)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# kernels.bench  device={name}  torch={torch.__version__}  threads={torch.get_num_threads()}"
          f"  K={args.K}  beta={args.beta}")
    if device.type == "cpu" and hasattr(os, "getloadavg"):
        print(f"# load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus "
              "(timings are best-of-reps wall clock)")
    rows = []
    overhead = []
    all_checks = []
    for m in args.m:
        for N in args.N:
            checks, stats, ok_case = run_case(N, args.K, m, args.beta, device, args, rows, overhead)
            all_checks.append((N, m, checks, stats, ok_case))
    print()
    print("| N | m | method | time | ×ref speed-up | ÷floor | FLOP/s | peak extra mem | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        vf = f"{r['vs_floor']:.2f}" if r["vs_floor"] is not None else "-"
        mem = fmt_bytes(r["mem"]) if r["mem"] else "-"
        print(f"| {r['N']} | {r['m']} | {r['method']} | {r['t'] * 1e3:.2f} ms | {r['vs_ref']:.1f} | {vf} | "
              f"{r['flops'] / 1e9:.1f} G | {mem} | {r['note']} |")
    if device.type == "cuda":
        peak = next((v for k, v in FP32_PEAK.items() if k in name), None)
        if peak:
            print(f"\n% of fp32 non-tensor peak ({peak / 1e12:.0f} TFLOP/s):")
            for r in rows:
                if r["method"].startswith("triton"):
                    print(f"  N={r['N']} m={r['m']} {r['method']}: {100 * r['flops'] / peak:.1f} %")
    if overhead:
        print("\nhost overhead: full call vs the device time of the kernels it launches")
        print("| N | m | method | full call | kernels only | host overhead | unfused | note |")
        print("|---|---|---|---|---|---|---|---|")
        for r in overhead:
            note = f"fallback rows {r['fallback']}"
            if r["drained"]:
                note += "; launch queue drained: kernels-only time includes host gaps"
            if device.type != "cuda":
                note += "; no GPU: wall-clock times"
            print(f"| {r['N']} | {r['m']} | {r['method']} | {r['full'] * 1e3:.3f} ms | "
                  f"{r['kernels'] * 1e3:.3f} ms | {(r['full'] - r['kernels']) * 1e3:.3f} ms | "
                  f"{r['unfused'] * 1e3:.3f} ms | {note} |")
    print("\nindex checks:")
    ok = True
    for N, m, checks, stats, ok_case in all_checks:
        for c in checks:
            print(f"  N={N} m={m}: {c}")
        print(f"  N={N} m={m}: search stats {stats}")
        ok &= ok_case
    print("\nall exact-path indices equal the fp64 oracle (and each other):", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
