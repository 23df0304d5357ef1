"""Evaluation metrics: one module per metric, each an accumulator (gqbench.metrics.base.Metric) that updates per
batch, merges across ranks and summarises. `build_metrics` is the list an evaluation loops over; a new metric is
a new module plus a line here. The name constants are the MLflow keys and the report's columns.

rFID and LPIPS need model weights. Where they are missing (offline, no file given) the metric is not built and
is recorded as unavailable with its reason — never a made-up number — unless eval.require_<metric>=true, which
makes that an error before training starts.
"""
from __future__ import annotations

from typing import Any, Callable

from .base import (UNAVAILABLE_TAG, EvalBatch, Metric, MetricUnavailable, PerImageValues, StatAccumulator,
                   as_numbers)
from .kl_distribution import KlDistribution
from .fid import RFID, ReferenceCache, Rfid, load_inception
from .lpips import LPIPS, Lpips, load_lpips_metric_net
from .quantizer_stats import QuantizerStats
from .reconstruction import (CONTINUOUS, PSNR, PSNR_STD, SSIM, SSIM_WINDOW, PsnrSsim, psnr_ssim_per_image,
                             psnr_ssim_skimage, psnr_ssim_tensors, summarize, to_uint8_scale)
from .usage import (BITS_PER_TOKEN, BPP, CODEBOOK_DIM, CODEBOOK_SIZE, CODEBOOK_USAGE, CODEBOOK_USAGE_MIN,
                    EFFECTIVE_RATE, EFFECTIVE_RATE_PLUGIN, INDEX_ENTROPY, INDICES_PER_CODE, NUM_CODEBOOKS, PERPLEXITY,
                    RATE_SAMPLE_LIMITED, TOKENS_PER_IMAGE, USAGE_IF_UNIFORM, USAGE_RELATIVE, CodebookCounter,
                    code_shape, rate)


def _rfid(eval_cfg, is_main: bool) -> Metric:
    extractor, ident = load_inception(eval_cfg.get("inception_weights"), eval_cfg.get("download_weights", True))
    return Rfid(extractor, ident, ReferenceCache(eval_cfg.get("cache_dir") or "runs/cache"), is_main=is_main)


def _lpips(eval_cfg, is_main: bool) -> Metric:
    net = eval_cfg.get("lpips_net", "alex")
    return Lpips(load_lpips_metric_net(net, eval_cfg.get("lpips_weights"), eval_cfg.get("download_weights", True)), net)


# metric name -> (builder, where its weights go when they are missing)
WEIGHTED_METRICS: dict[str, Callable[[Any, bool], Metric]] = {RFID: _rfid, LPIPS: _lpips}


class RequiredMetricUnavailable(RuntimeError):
    """eval.require_<metric>=true and the metric cannot be built."""


def build_metrics(eval_cfg, quantizer, *, is_main: bool = True) -> tuple[list[Metric], dict[str, MetricUnavailable]]:
    """The metrics an evaluation computes, and those it cannot (name -> why). Call it before training: a
    required metric that is unavailable raises RequiredMetricUnavailable here, naming the option and the file."""
    metrics: list[Metric] = [
        PsnrSsim(),
        PsnrSsim(output="x_hat_continuous", prefix=CONTINUOUS),
        CodebookCounter(quantizer.codebook_size, quantizer.num_codebooks),
        QuantizerStats(),
    ]
    kl = KlDistribution.of(quantizer)
    if kl is not None:
        metrics.append(kl)
    unavailable: dict[str, MetricUnavailable] = {}
    for name, build in WEIGHTED_METRICS.items():
        if not eval_cfg.get(name, True):
            continue
        try:
            metrics.append(build(eval_cfg, is_main))
        except MetricUnavailable as exc:
            if eval_cfg.get(f"require_{name}", False):
                raise RequiredMetricUnavailable(
                    f"eval.require_{name}=true but {name} cannot be computed: {exc.reason}. Provide the weights "
                    f"as the message says, or set eval.require_{name}=false to record it as unavailable") from exc
            unavailable[name] = exc
    return metrics, unavailable
