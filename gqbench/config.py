"""Config helpers: the `_target_` allow-list, the run signature, flattening for MLflow, quantizer kwargs."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

# Configs may come from other people, and `_target_` runs arbitrary importable code: only our own packages
# and torch's optimisers may be instantiated.
ALLOWED_TARGET_PREFIXES = ("gqbench.", "quantizers.", "kernels.", "torch.optim.")

# The keys that decide what training produces; two jobs with equal values share checkpoints (resume/skip).
SIGNATURE_KEYS = ("seed", "data", "model", "quantizer", "train", "loss")


def _find_targets(node: Any, path: str):
    if isinstance(node, (DictConfig, dict)):
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield sub, value
            else:
                yield from _find_targets(value, sub)
    elif isinstance(node, (ListConfig, list, tuple)):
        for i, value in enumerate(node):
            yield from _find_targets(value, f"{path}[{i}]")


def _defining_module(obj: Any) -> str:
    return getattr(obj, "__module__", None) or getattr(obj, "__name__", "") or ""


def check_targets(node: Any, path: str = "") -> None:
    """Refuse any `_target_` outside ALLOWED_TARGET_PREFIXES, naming the key and the value.

    The name alone is not enough: `gqbench.tracking.os.system` starts with an allowed prefix but reaches
    `os.system` through a module attribute. So the object is located (only for allowed names, which import
    only our packages or torch) and the module that *defines* it must be allowed too.
    """
    allowed = ", ".join(p.rstrip(".") for p in ALLOWED_TARGET_PREFIXES)
    for key, target in _find_targets(node, path):
        refused = ValueError(
            f"config key {key}={target!r} is not allowed: configs may only instantiate objects from {allowed}"
        )
        if not isinstance(target, str) or not target.startswith(ALLOWED_TARGET_PREFIXES):
            raise refused
        try:
            obj = get_object(target)
        except Exception as exc:
            raise ValueError(f"config key {key}={target!r} names nothing importable ({exc})") from exc
        if not (_defining_module(obj) + ".").startswith(ALLOWED_TARGET_PREFIXES):
            raise refused


def safe_instantiate(node: Any, *args, path: str = "", **kwargs):
    """hydra.utils.instantiate after check_targets."""
    check_targets(node, path)
    return instantiate(node, *args, **kwargs)


# ... minus the keys that change how a job runs but not what it produces
SIGNATURE_EXCLUDED = {"train": ("num_workers", "log_every", "checkpoint_every"), "loss": ("perceptual_weights",),
                      "data": ("cache_dir",)}


def run_signature(cfg: DictConfig) -> str:
    """12 hex chars of sha1 over the resolved training-relevant config (SIGNATURE_KEYS minus SIGNATURE_EXCLUDED)."""
    payload = {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], (DictConfig, ListConfig)) else cfg[k]
               for k in SIGNATURE_KEYS if k in cfg}
    for group, keys in SIGNATURE_EXCLUDED.items():
        for key in keys:
            payload.get(group, {}).pop(key, None)
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay whole (as their JSON text)."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    out: dict[str, Any] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    else:
        out[prefix] = json.dumps(node) if isinstance(node, (list, tuple)) else node
    return out


def quantizer_from_config(cfg: DictConfig):
    """The job's quantizer: `quantizer` node's keys as build_quantizer's arguments, sized for model.z_channels
    (null: the quantizer's own width), checked against rate.bits_per_token when an equal-bits preset set it."""
    from quantizers import build_quantizer, check_rate

    options = OmegaConf.to_container(cfg.quantizer, resolve=True)
    quantizer = build_quantizer(channels=cfg.model.get("z_channels"), **options)
    bits = OmegaConf.select(cfg, "rate.bits_per_token")
    if bits is not None:
        check_rate(quantizer, bits)
    return quantizer
