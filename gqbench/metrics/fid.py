"""rFID: the Fréchet distance between Inception features of the reconstructions and of the originals of the
same evaluation images, with torch-fidelity's InceptionV3 ("inception-v3-compat", pool3, 2048-d).

Protocol (recorded beside every number, tag `protocol.rfid`), and where it differs from the GQ reference (§4):
- Inputs are uint8: round((x + 1) · 127.5) clamped to [0, 255], for originals and reconstructions alike;
  torch-fidelity's extractor takes uint8 only and resizes to 299 with its TF1-compatible bilinear (no antialias).
  The reference feeds unclamped float [−1, 1] to pytorch-fid's Inception (same weights, torch bilinear resize):
  clamping and rounding change rFID slightly, mostly for reconstructions that overshoot [−1, 1].
- Reference set: the originals of the evaluated images (the reference's choice too; its N is 49,920 because of
  drop_last, ours is eval.num_images or the whole split).
- Statistics: mean and covariance (N − 1 normalisation, as numpy.cov) accumulated per rank in float64 (Chan's
  pairwise update), merged across ranks; the distance is torch-fidelity's `fid_statistics_to_metric`.

Reference statistics are cached in `eval.cache_dir` as `fid-reference-<key>.pt`, keyed by the evaluated images'
content (file names, sizes and mtimes for an image folder; the pixels otherwise), their number and resolution,
the preprocessing, and the extractor (torch-fidelity version, layer, a hash of the weights file). Writes are
atomic, so concurrent jobs and sweeps share the cache; a hit skips the originals' Inception pass.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from ..checkpoint import atomic_write_bytes, load_untrusted
from ..runtime import broadcast_object
from .base import EvalBatch, Metric, MetricUnavailable

log = logging.getLogger(__name__)

RFID = "rfid"
EXTRACTOR = "inception-v3-compat"
FEATURE = "2048"
WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's name, in $TORCH_HOME/hub/checkpoints
PREPROCESSING = "uint8 = round(clamp((x + 1) * 127.5, 0, 255)); torch-fidelity TF1-bilinear resize to 299"


def to_uint8(x: Tensor) -> Tensor:
    return ((x.detach().float() + 1) * 127.5).clamp(0, 255).round().to(torch.uint8)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hub_file(name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def find_inception_weights(path: str | None, download: bool) -> Path:
    """The Inception weights file: `eval.inception_weights`, else torch-fidelity's file in the torch hub cache,
    else downloaded there (where there is network); MetricUnavailable when none of those works."""
    if path:
        return Path(path).expanduser()
    cached = hub_file(WEIGHTS_FILE)
    if cached.is_file():
        return cached
    where = (f"put {WEIGHTS_FILE} in {cached.parent} (or set TORCH_HOME), or pass eval.inception_weights=PATH "
             f"(the file is torch-fidelity's {_weights_url()})")
    if not download:
        raise MetricUnavailable(RFID, "no Inception weights", f"eval.download_weights=false and no file; {where}")
    try:
        torch.hub.load_state_dict_from_url(_weights_url(), progress=False, weights_only=True)
    except Exception as exc:  # no network, proxy, disk
        raise MetricUnavailable(RFID, "no Inception weights",
                                f"download failed ({type(exc).__name__}: {str(exc)[:200]}); {where}") from exc
    return cached


def _weights_url() -> str:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return URL_INCEPTION_V3


def load_inception(path: str | None, download: bool = True) -> tuple[torch.nn.Module, str]:
    """torch-fidelity's FID Inception with its 2048-d pool3 output, and an id of (version, layer, weights hash)."""
    import torch_fidelity
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    weights = find_inception_weights(path, download)
    load_untrusted(weights, "eval.inception_weights")  # torch-fidelity itself loads with weights_only=False
    extractor = FeatureExtractorInceptionV3(EXTRACTOR, [FEATURE], feature_extractor_weights_path=str(weights))
    ident = f"torch-fidelity {torch_fidelity.__version__} {EXTRACTOR} {FEATURE}-d weights sha256:{file_sha256(weights)[:16]}"
    return extractor, ident


class GaussianMoments:
    """Running mean and scatter matrix of feature vectors (float64), mergeable exactly (Chan et al. 1979)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def update(self, features: Tensor) -> None:
        f = features.detach().double()
        other = GaussianMoments()
        other.n, other.mean = len(f), f.mean(0)
        centred = f - other.mean
        other.m2 = centred.T @ centred
        self.add(other)

    def add(self, other: "GaussianMoments") -> None:
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean.clone(), other.m2.clone()
            return
        other_mean, other_m2 = other.mean.to(self.mean.device), other.m2.to(self.m2.device)
        n = self.n + other.n
        delta = other_mean - self.mean
        self.m2 = self.m2 + other_m2 + torch.outer(delta, delta) * (self.n * other.n / n)
        self.mean = self.mean + delta * (other.n / n)
        self.n = n

    def state(self) -> tuple[int, Tensor | None, Tensor | None]:
        return self.n, None if self.mean is None else self.mean.cpu(), None if self.m2 is None else self.m2.cpu()

    @classmethod
    def merged(cls, states: list[tuple]) -> "GaussianMoments":
        total = cls()
        for n, mean, m2 in states:
            part = cls()
            part.n, part.mean, part.m2 = n, mean, m2
            total.add(part)
        return total

    def statistics(self) -> dict[str, np.ndarray]:
        """torch-fidelity's {'mu', 'sigma'} (sigma with N − 1, as numpy.cov)."""
        if self.n < 2:
            raise MetricUnavailable(RFID, "too few images", f"{self.n} image(s); a covariance needs at least 2")
        return {"mu": self.mean.cpu().numpy(), "sigma": (self.m2 / (self.n - 1)).cpu().numpy()}


def dataset_fingerprint(dataset: Dataset) -> str:
    """sha1 of what the evaluated images are: for files, their paths, sizes and mtimes (decoding 50k JPEGs to
    hash them would cost minutes); otherwise the pixels themselves."""
    indices = None
    while isinstance(dataset, Subset):
        indices = [dataset.indices[i] for i in indices] if indices is not None else list(dataset.indices)
        dataset = dataset.dataset
    indices = indices if indices is not None else range(len(dataset))
    digest = hashlib.sha1(type(dataset).__name__.encode())
    files = getattr(dataset, "files", None)
    if files is not None:
        for i in indices:
            st = os.stat(files[i])
            digest.update(f"{os.path.abspath(files[i])}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        for i in indices:
            digest.update(to_uint8(dataset[i]).numpy().tobytes())
    return digest.hexdigest()


class ReferenceCache:
    """Atomic files of reference statistics, keyed by a dict of protocol fields."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def key(fields: dict[str, Any]) -> str:
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def path(self, key: str) -> Path:
        return self.root / f"fid-reference-{key}.pt"

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            return {"mu": saved["mu"].numpy(), "sigma": saved["sigma"].numpy()}
        except Exception as exc:  # a foreign or damaged file: recompute (and overwrite it)
            log.warning("rFID reference cache %s unreadable (%s); recomputing", path, exc)
            return None

    def save(self, key: str, stats: dict[str, np.ndarray], fields: dict[str, Any]) -> None:
        payload = {"mu": torch.from_numpy(stats["mu"]), "sigma": torch.from_numpy(stats["sigma"]),
                   "fields": json.dumps(fields, sort_keys=True)}
        atomic_write_bytes(self.path(key), lambda f: torch.save(payload, f))


class Rfid(Metric):
    """rFID of the quantized reconstructions against the originals (see the module docstring)."""

    def __init__(self, extractor: torch.nn.Module, extractor_id: str, cache: ReferenceCache, *, is_main: bool = True):
        self.extractor, self.extractor_id, self.cache, self.is_main = extractor, extractor_id, cache, is_main
        self.reconstructions, self.originals = GaussianMoments(), GaussianMoments()
        self.reference: dict[str, np.ndarray] | None = None
        self.fields: dict[str, Any] = {}
        self.cache_hit = False

    def begin(self, val_set: Dataset, device: torch.device) -> None:
        """Look the reference statistics up (rank 0 decides, so every rank agrees on whether to compute them)."""
        self.extractor.to(device)
        image_size = int(val_set[0].shape[-1])
        self.fields = {"images": dataset_fingerprint(val_set), "count": len(val_set), "resolution": image_size,
                       "split": "val", "preprocessing": PREPROCESSING, "extractor": self.extractor_id}
        self.reference = broadcast_object(self.cache.load(self.cache.key(self.fields)) if self.is_main else None)
        self.cache_hit = self.reference is not None
        log.info("rFID reference statistics: cache %s (%s)", "hit" if self.cache_hit else "miss",
                 self.cache.path(self.cache.key(self.fields)))

    def update(self, batch: EvalBatch) -> None:
        self.reconstructions.update(self.extractor(to_uint8(batch.out.x_hat))[0])
        if self.reference is None:
            self.originals.update(self.extractor(to_uint8(batch.x))[0])

    def state(self):
        return self.reconstructions.state(), self.originals.state()

    def merge(self, states) -> None:
        self.reconstructions = GaussianMoments.merged([s[0] for s in states])
        self.originals = GaussianMoments.merged([s[1] for s in states])

    def summary(self) -> dict[str, float]:
        from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

        if self.reference is None:
            self.reference = self.originals.statistics()
            if self.is_main:
                self.cache.save(self.cache.key(self.fields), self.reference, self.fields)
        fid = fid_statistics_to_metric(self.reconstructions.statistics(), self.reference, verbose=False)
        return {RFID: float(fid[KEY_METRIC_FID])}

    def protocol(self) -> dict[str, str]:
        return {
            "protocol.rfid": f"{self.extractor_id}; {PREPROCESSING}; reconstructions vs originals of the same "
                             f"{self.fields.get('count')} images at {self.fields.get('resolution')} px",
            "rfid_reference": self.cache.key(self.fields),
            "rfid_reference_cache": "hit" if self.cache_hit else "miss",
        }
