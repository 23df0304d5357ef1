"""`python -m gqbench.evaluate ckpt=PATH [overrides]`: evaluate a checkpoint outside of training.

    python -m gqbench.evaluate ckpt=runs/jobs/<signature>/last.pt
    python -m gqbench.evaluate ckpt=runs/jobs/<signature> data=imagefolder data.root=/data/imagenet \\
        eval.num_images=50000 eval.inception_weights=/models/inception.pth        (evaluates root/val/)
    torchrun --nproc_per_node=8 -m gqbench.evaluate ckpt=... device=cuda      (shards the images over ranks)
    python -m gqbench.evaluate ckpt=sd3unet_gq_0.25.ckpt data=imagefolder ...  (the GQ authors' checkpoint)

The job is rebuilt from the config stored in the checkpoint (gqbench.job.assemble, as in training); overrides
change it: `group=option` picks another option of a conf/ group (data=imagefolder), `key=value` sets a key
(eval.num_images=100; an unknown key is an error). `out=DIR` is where metrics.json, the per-image CSV and the
grid go (default <paths.runs>/evaluations/<job>-<settings hash>/).

A checkpoint file is untrusted input: it is loaded with torch.load(weights_only=True) only (tensors and plain
containers; nothing in it is executed), and one that needs arbitrary unpickling is refused.

MLflow: with the job's own data and evaluation settings, the metrics go into the training job's run (found
through the job folder's run id file); with other settings (another dataset, more images) into a new run,
a child of the training run when there is one, so the training run's numbers are never replaced by another
protocol's.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from . import runtime
from .checkpoint import load_untrusted, write_json
from .config import flatten
from .evaluate import Evaluation, evaluate
from .jobdir import JobDir
from .metrics import RequiredMetricUnavailable, build_metrics

log = logging.getLogger("gqbench.evaluate")

# evaluation keys that do not change what is measured (where the weights come from, how fast, what is drawn)
COSMETIC_EVAL_KEYS = ("batch_size", "grid_images", "inception_weights", "lpips_weights", "download_weights",
                      "require_rfid", "require_lpips", "cache_dir")


class CheckpointError(ValueError):
    """The checkpoint cannot be evaluated; the message says why and what to do."""


def resolve_checkpoint_path(value: str) -> Path:
    path = Path(value).expanduser()
    return path / JobDir.CHECKPOINT if path.is_dir() else path


def split_arguments(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(ckpt/out options, config overrides)."""
    options, overrides = {}, []
    for arg in argv:
        if "=" not in arg:
            raise CheckpointError(f"argument {arg!r} is not key=value; usage: python -m gqbench.evaluate "
                                  "ckpt=PATH [group=option] [key=value] [out=DIR]")
        key, value = arg.split("=", 1)
        if key in ("ckpt", "out"):
            options[key] = value
        else:
            overrides.append(arg)
    if "ckpt" not in options:
        raise CheckpointError("ckpt=PATH is required (a checkpoint file, or a job folder holding last.pt)")
    return options, overrides


def apply_overrides(stored: DictConfig, overrides: list[str]) -> DictConfig:
    """The stored config with `group=option` choices composed from conf/ and `key=value` settings applied."""
    from hydra import compose, initialize_config_dir

    from .sweep import config_dir

    conf = config_dir()
    groups = {p.name for p in conf.iterdir() if p.is_dir()}
    choices = [o for o in overrides if o.split("=", 1)[0] in groups]
    settings = [o for o in overrides if o not in choices]
    cfg = stored.copy()
    if choices:
        chosen = [o.split("=", 1)[0] for o in choices]
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            composed = compose("config", overrides=choices + [s for s in settings if s.split(".", 1)[0] in chosen])
        for group in chosen:
            cfg[group] = composed[group]
            # the composed node's interpolations (seed, paths) resolve against the stored config
        settings = [s for s in settings if s.split(".", 1)[0] not in chosen]
    OmegaConf.set_struct(cfg, True)
    for setting in settings:
        key = setting.split("=", 1)[0]
        try:
            cfg.merge_with(OmegaConf.from_dotlist([setting]))
        except Exception as exc:
            parent = key.rsplit(".", 1)[0] if "." in key else None
            known = sorted(cfg[parent].keys()) if parent and OmegaConf.select(cfg, parent) is not None else sorted(cfg.keys())
            raise CheckpointError(f"override {setting!r}: {key!r} is not a key of the checkpoint's config "
                                  f"(known here: {', '.join(map(str, known))})") from exc
    OmegaConf.set_struct(cfg, False)
    return cfg


def measured_settings(cfg: DictConfig) -> dict[str, Any]:
    """What decides the numbers an evaluation gives (besides the weights): data and evaluation settings."""
    evaluation = {k: v for k, v in OmegaConf.to_container(cfg.eval, resolve=True).items() if k not in COSMETIC_EVAL_KEYS}
    return {"data": OmegaConf.to_container(cfg.data, resolve=True), "eval": evaluation, "seed": cfg.seed}


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if "--bench" in argv:
        from .eval_bench import main as bench

        return bench([a for a in argv if a != "--bench"])
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        options, overrides = split_arguments(argv)
        evaluate_checkpoint(resolve_checkpoint_path(options["ckpt"]), overrides, options.get("out"))
    except (CheckpointError, RequiredMetricUnavailable, HydraException, OmegaConfBaseException, OSError,
            ValueError) as exc:
        cause = exc.__cause__ if isinstance(exc, HydraException) and exc.__cause__ is not None else exc
        print(f"error: {' '.join(str(cause).split())}", file=sys.stderr)
        return 2
    return 0


def evaluate_checkpoint(path: Path, overrides: list[str], out: str | None = None) -> Evaluation:
    from .authors_checkpoint import is_authors_checkpoint, job_from_authors_checkpoint, missing_is_allowed
    from .job import assemble
    from .tracking import silence_mlflow_noise

    state = load_untrusted(path, "ckpt")
    authors = is_authors_checkpoint(state)
    if authors:
        size = next((int(o.split("=", 1)[1]) for o in overrides if o.startswith("data.image_size=")), 256)
        stored, weights = job_from_authors_checkpoint(state, size)
        log.info("the GQ authors' checkpoint: model %s", dict(stored.model))
    elif "config" in state and "model" in state:
        stored, weights = OmegaConf.create(state["config"]), state["model"]
    else:
        raise CheckpointError(f"ckpt={path} is neither a gqbench checkpoint (keys 'config', 'model') nor the GQ "
                              f"authors' Lightning checkpoint (a 'state_dict' of encoder./decoder. weights); it "
                              f"has keys {sorted(state)[:10]}")
    cfg = apply_overrides(stored, overrides)
    ranks = runtime.ranks_from_environment()
    device = runtime.resolve_device(cfg.device, ranks)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    silence_mlflow_noise()
    with runtime.process_group(ranks, device, cfg.get("runtime", {}).get("collective_timeout_s", 600)):
        runtime.seed_everything(cfg.seed)
        with torch.random.fork_rng(devices=[]):  # as in training: the model's RNG stream is the job's
            metrics, unavailable = build_metrics(cfg.eval, _quantizer_of(cfg), is_main=ranks.is_main)
        parts = assemble(cfg)
        try:
            missing, unexpected = parts.model.load_state_dict(weights, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise CheckpointError(f"ckpt={path}: its weights do not fit the model its config builds "
                                  f"({' '.join(str(exc).split())[:400]} ...); model/quantizer overrides must match "
                                  "the checkpoint") from exc
        if unexpected or (missing and not (authors and missing_is_allowed(missing))):
            raise CheckpointError(f"ckpt={path}: its weights do not fit the model its config builds (missing "
                                  f"{missing[:5]}, unexpected {unexpected[:5]}); model/quantizer overrides must "
                                  "match the checkpoint")
        settings = measured_settings(cfg)
        jobdir = JobDir(path.parent)
        out_dir = Path(out) if out else Path(cfg.paths.runs) / "evaluations" / f"{path.parent.name}-{settings_hash(settings)}"
        log.info("evaluating %s (step %s) on %s -> %s", path, state.get("step", "?"), cfg.data.get("_target_"), out_dir)
        result = evaluate(
            parts.model, parts.data.val, num_images=cfg.eval.num_images, batch_size=cfg.eval.batch_size,
            grid_images=cfg.eval.grid_images, device=device, seed=cfg.seed, metrics=metrics, unavailable=unavailable,
            grid_file=out_dir / JobDir.GRID if ranks.is_main else None,
            per_image_file=out_dir / JobDir.PER_IMAGE if ranks.is_main else None,
            kl_file=out_dir / JobDir.KL_BITS if ranks.is_main else None,
        )
        if ranks.is_main:
            same_as_training = "config" in state and settings == measured_settings(OmegaConf.create(state["config"]))
            run_id = _log_to_mlflow(cfg, jobdir, result, same_as_training, path, out_dir)
            write_json(out_dir / JobDir.METRICS, {
                "status": "finished", "checkpoint": str(path), "step": state.get("step"), "mlflow_run_id": run_id,
                "metrics": result.metrics, "protocol": result.protocol, "unavailable": result.unavailable,
                "settings": settings})
            shown = {k: f"{result.metrics[k]:.4g}" if k in result.metrics else "n/a" for k in ("rfid", "lpips")}
            log.info("PSNR %.2f dB  SSIM %.4f  rFID %s  LPIPS %s  usage %.3f  effective bits %.2f -> %s",
                     result.metrics["psnr"], result.metrics["ssim"], shown["rfid"], shown["lpips"],
                     result.metrics["codebook_usage"],
                     result.metrics["effective_bits_per_token"], out_dir / JobDir.METRICS)
    return result


def _quantizer_of(cfg: DictConfig):
    """A quantizer built from the config, for the metrics' codebook shapes (before the model is built)."""
    from .config import quantizer_from_config

    return quantizer_from_config(cfg)


def _log_to_mlflow(cfg: DictConfig, jobdir: JobDir, result: Evaluation, same_as_training: bool, path: Path,
                   out_dir: Path) -> str | None:
    """Into the training job's run when the settings are the job's own, else a new (child) run; best effort."""
    from .tracking import Tracker

    try:
        tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, cfg.paths.runs, jobdir)
        id_file = jobdir.run_id_file(tracker.experiment_id)
        training_run = id_file.read_text().strip() if id_file.exists() else None
        if training_run:
            try:
                tracker.client.get_run(training_run)
            except Exception:  # noqa: BLE001  (a run id from another store)
                training_run = None
        step = int(cfg.train.max_steps) if "train" in cfg else 0
        if same_as_training and training_run:
            tracker.run_id = training_run
            log.info("MLflow: the job's own settings; logging into its training run %s", training_run)
        else:
            tags = {"checkpoint": str(path), "evaluation_of": training_run or "", "data": str(cfg.data.get("_target_"))}
            if training_run:
                tags["mlflow.parentRunId"] = training_run
            tracker.run_id = tracker.client.create_run(
                tracker.experiment_id, run_name=f"eval {cfg.get('job_name', path.parent.name)} ({out_dir.name})",
                tags=tags).info.run_id
            tracker.log_params(flatten(cfg))
            log.info("MLflow: new evaluation run %s%s", tracker.run_id,
                     f" (child of training run {training_run})" if training_run else "")
        tracker.log_metrics(result.metrics, step)
        tracker.set_tags(result.tags())
        for artifact in (out_dir / JobDir.PER_IMAGE, out_dir / JobDir.KL_BITS):
            if artifact.exists():
                tracker.log_artifact(artifact, "evaluation")
        if not (same_as_training and training_run):
            tracker.end("FINISHED")
        return tracker.run_id
    except Exception as exc:  # noqa: BLE001  (metrics.json is written regardless)
        log.error("MLflow: could not log the evaluation (%s)", exc)
        return None
