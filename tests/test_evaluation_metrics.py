"""The evaluation metrics against their libraries and definitions: on-device PSNR/SSIM = scikit-image, rFID and
LPIPS with generated weight files (zero on identical sets, growing with noise), the reference-statistics cache,
weights that are missing or unsafe, and the effective rate."""
from __future__ import annotations

import math
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gqbench import metrics as M
from gqbench.data import bundled
from gqbench.metrics.fid import GaussianMoments, ReferenceCache, Rfid, load_inception


def natural_images(size: int, count: int = 6) -> torch.Tensor:
    val = bundled(image_size=size, seed=0).val
    return torch.stack([val[i] for i in range(min(count, len(val)))])


def evaluate_once(metric, x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, float]:
    """One batch through the metric's whole life cycle on one rank."""
    metric.begin(list(x), torch.device("cpu"))
    metric.update(M.EvalBatch(0, x, SimpleNamespace(x_hat=x_hat)))
    metric.merge([metric.state()])
    return metric.summary()


@pytest.mark.parametrize("height, width", [(10, 16), (11, 11), (16, 13), (33, 40), (64, 64)])
def test_on_device_psnr_and_ssim_equal_scikit_image_on_natural_images(height, width):
    x = natural_images(64)[..., :height, :width].contiguous()
    g = torch.Generator().manual_seed(height)
    for x_hat in (x + 0.05 * torch.randn(x.shape, generator=g),  # noise
                  torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False),  # blur
                  x * 1.3 - 0.1):  # contrast change that leaves [-1, 1] (no clamping anywhere)
        psnr, ssim = M.psnr_ssim_tensors(x, x_hat)
        want_psnr, want_ssim = M.psnr_ssim_skimage(x, x_hat)
        assert psnr.dtype == torch.float64 and ssim.shape == (len(x),)
        np.testing.assert_allclose(psnr.numpy(), want_psnr, rtol=0, atol=1e-9)
        np.testing.assert_allclose(ssim.numpy(), want_ssim, rtol=0, atol=1e-9)  # NaN below the 11-px window
    assert np.isnan(want_ssim).all() == (min(height, width) < 11)


def test_gaussian_moments_merged_in_any_split_equal_numpy_mean_and_cov():
    features = torch.randn(50, 7, dtype=torch.float64) * torch.arange(1, 8) + 3
    want = {"mu": features.mean(0).numpy(), "sigma": np.cov(features.numpy(), rowvar=False)}
    for cuts in ([0, 50], [0, 3, 20, 50], [0, 1, 2, 49, 50]):
        parts = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            part = GaussianMoments()
            part.update(features[a:b])
            parts.append(part.state())
        got = GaussianMoments.merged(parts[::-1] + [GaussianMoments().state()]).statistics()
        np.testing.assert_allclose(got["mu"], want["mu"], rtol=1e-12)
        np.testing.assert_allclose(got["sigma"], want["sigma"], rtol=1e-10, atol=1e-12)
    one = GaussianMoments()
    one.update(features[:1])
    with pytest.raises(M.MetricUnavailable, match="at least 2"):
        one.statistics()


@pytest.mark.timeout(300)
def test_rfid_is_zero_for_a_set_against_itself_grows_with_noise_and_caches_the_reference(weight_files, tmp_path, caplog):
    extractor, ident = load_inception(str(weight_files["inception"]))
    cache = ReferenceCache(tmp_path / "cache")
    x = natural_images(32, count=12)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g)
    values, hits = [], []
    for sigma in (0.0, 0.1, 0.3, 0.9):
        metric = Rfid(extractor, ident, cache)
        values.append(evaluate_once(metric, x, x + sigma * noise)[M.RFID])
        hits.append(metric.protocol()["rfid_reference_cache"])
    assert abs(values[0]) < 1e-6 * values[1], values
    assert values == sorted(values) and len(set(values)) == 4, values
    assert hits == ["miss", "hit", "hit", "hit"]  # the originals' statistics are computed once
    assert len(list((tmp_path / "cache").glob("fid-reference-*.pt"))) == 1
    protocol = metric.protocol()["protocol.rfid"]
    assert "torch-fidelity 0.4.0 inception-v3-compat 2048-d" in protocol and "12 images at 32 px" in protocol
    # a change of resolution (or of the images, or of the weights) is another key: a miss
    smaller = Rfid(extractor, ident, cache)
    evaluate_once(smaller, natural_images(16, count=12), natural_images(16, count=12))
    assert smaller.protocol()["rfid_reference_cache"] == "miss"
    other_weights = Rfid(extractor, ident.replace("sha256:", "sha256:0"), cache)
    evaluate_once(other_weights, x, x)
    assert other_weights.protocol()["rfid_reference_cache"] == "miss"
    assert len(list((tmp_path / "cache").glob("fid-reference-*.pt"))) == 3


def test_lpips_is_zero_for_identical_images_and_grows_with_noise(weight_files):
    net = M.load_lpips_metric_net("alex", str(weight_files["alex"]))
    x = natural_images(32)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    values = [evaluate_once(M.Lpips(net, "alex"), x, x + s * noise)[M.LPIPS] for s in (0.0, 0.05, 0.2, 0.6)]
    assert values[0] == pytest.approx(0.0, abs=1e-7)
    assert values == sorted(values) and len(set(values)) == 4, values
    too_small = M.Lpips(net, "alex")
    with pytest.raises(M.MetricUnavailable, match="needs at least 32 px"):
        too_small.begin(list(natural_images(16)), torch.device("cpu"))


class _RunsCode:
    """Unpickling this runs a shell command: what a malicious weights file or checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_weight_files_that_need_unpickling_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "code-ran"
    bad = tmp_path / "weights.pth"
    with open(bad, "wb") as f:
        pickle.dump({"conv.weight": _RunsCode(marker)}, f)
    with pytest.raises(ValueError, match=r"eval.inception_weights=.*weights_only=True"):
        load_inception(str(bad))
    with pytest.raises(ValueError, match=r"eval.lpips_weights=.*weights_only=True"):
        M.load_lpips_metric_net("alex", str(bad))
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"eval.inception_weights=.*does not exist"):
        load_inception(str(tmp_path / "nowhere.pth"))
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "vgg.pth")
    with pytest.raises(ValueError, match=r"lacks 'features.0.bias'.*alexnet-owt-7be5be79.pth"):
        M.load_lpips_metric_net("alex", str(tmp_path / "vgg.pth"))


def test_missing_weights_are_unavailable_with_the_reason_or_an_error_when_required(tmp_path, monkeypatch):
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    quantizer = SimpleNamespace(codebook_size=4, num_codebooks=1)
    built, unavailable = M.build_metrics({"download_weights": False}, quantizer)
    assert set(unavailable) == {M.RFID, M.LPIPS}
    assert unavailable[M.RFID].label == "no Inception weights"
    assert "weights-inception-2015-12-05-6726825d.pth" in unavailable[M.RFID].reason
    assert unavailable[M.LPIPS].label == "no LPIPS-alex weights"
    assert "alexnet-owt-7be5be79.pth" in unavailable[M.LPIPS].reason
    assert not any(isinstance(m, (Rfid, M.Lpips)) for m in built)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    _, unavailable = M.build_metrics({"lpips": False}, quantizer)
    assert "download failed (URLError" in unavailable[M.RFID].reason
    with pytest.raises(M.RequiredMetricUnavailable, match=r"eval.require_rfid=true.*eval.inception_weights=PATH"):
        M.build_metrics({"lpips": False, "require_rfid": True}, quantizer)
    _, unavailable = M.build_metrics({"rfid": False, "lpips": False, "require_rfid": True}, quantizer)
    assert unavailable == {}  # a metric that is off is neither computed nor missing


def counts_metric(codebook_size: int, indices: np.ndarray) -> dict[str, float]:
    counter = M.CodebookCounter(codebook_size, indices.shape[0])
    counter.update(torch.from_numpy(indices).reshape(1, indices.shape[0], 1, -1))
    return counter.summary()


def test_effective_rate_corrects_the_sample_size_effect_and_usage_is_shown_beside_a_uniform_code():
    rng = np.random.default_rng(0)
    uniform = counts_metric(65536, rng.integers(0, 65536, (1, 114_688)))
    # a perfectly uniform 16-bit code seen through 114,688 indices: usage ~0.83, plug-in entropy ~0.47 bit low
    assert uniform[M.CODEBOOK_USAGE] == pytest.approx(0.827, abs=0.005)
    assert uniform[M.USAGE_IF_UNIFORM] == pytest.approx(1 - (1 - 1 / 65536) ** 114_688, rel=1e-12)
    assert uniform[M.USAGE_RELATIVE] == pytest.approx(1.0, abs=0.01)
    assert uniform[M.EFFECTIVE_RATE_PLUGIN] == pytest.approx(15.53, abs=0.02)
    assert 15.8 < uniform[M.EFFECTIVE_RATE] <= 16.0
    assert uniform[M.RATE_SAMPLE_LIMITED] == 1.0 and uniform[M.INDICES_PER_CODE] == pytest.approx(1.75, abs=1e-9)
    # plenty of indices: no flag, estimate = plug-in ≈ nominal, summed over sub-codebooks
    two = counts_metric(4, rng.integers(0, 4, (2, 4000)))
    assert two[M.RATE_SAMPLE_LIMITED] == 0.0 and two[M.EFFECTIVE_RATE] == pytest.approx(4.0, abs=0.01)
    assert two[M.EFFECTIVE_RATE] > two[M.EFFECTIVE_RATE_PLUGIN]
    # a collapsed code: one index used; usage far below what a uniform code would show at this N
    collapsed = counts_metric(256, np.full((1, 5000), 7))
    assert collapsed[M.EFFECTIVE_RATE] == 0.0 and collapsed[M.CODEBOOK_USAGE] == 1 / 256
    assert collapsed[M.USAGE_RELATIVE] == pytest.approx(1 / 256, rel=1e-6)
    # Miller–Madow never claims more than the nominal log2 K
    tiny = counts_metric(4, np.array([[0, 1, 2, 3]]))
    assert tiny[M.EFFECTIVE_RATE] == 2.0


def test_usage_merged_from_two_shards_equals_one_counter():
    rng = np.random.default_rng(1)
    indices = torch.from_numpy(rng.integers(0, 8, (6, 2, 3, 3)))
    one = M.CodebookCounter(8, 2)
    one.update(indices)
    shards = []
    for part in (indices[:1], indices[1:]):
        counter = M.CodebookCounter(8, 2)
        counter.update(part)
        shards.append(counter.state())
    merged = M.CodebookCounter(8, 2)
    merged.merge(shards)
    assert merged.summary() == one.summary()
    assert math.isclose(sum(merged.counts[0].tolist()), 6 * 9)


def test_the_reference_key_follows_the_evaluated_images_content(tmp_path):
    import os

    from torch.utils.data import Subset

    from gqbench.data import ImageFolderDataset, TensorImageDataset
    from gqbench.metrics.fid import dataset_fingerprint

    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(b"x" * (i + 1))
    folder = ImageFolderDataset(files, image_size=32)
    before = dataset_fingerprint(folder)
    assert dataset_fingerprint(ImageFolderDataset(list(files), image_size=32)) == before  # no decoding, stable
    assert dataset_fingerprint(Subset(folder, [0, 1])) != before
    assert dataset_fingerprint(Subset(Subset(folder, [2, 1, 0]), [2])) == dataset_fingerprint(Subset(folder, [0]))
    os.utime(files[1], ns=(1, 1))  # a replaced file (same name) is other images
    assert dataset_fingerprint(folder) != before
    pixels = torch.zeros(2, 3, 8, 8)
    in_memory = dataset_fingerprint(TensorImageDataset(pixels))
    pixels[1, 0, 0, 0] = 0.5
    assert dataset_fingerprint(TensorImageDataset(pixels)) != in_memory


def test_psnr_ssim_metric_merges_shards_back_into_dataset_order():
    x = natural_images(32, count=6)
    x_hat = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    shards = []
    for numbers in ([0, 2], [1]):  # rank 0 takes batches 0 and 2, rank 1 batch 1 (two images each)
        metric = M.PsnrSsim()
        for b in numbers:
            metric.update(M.EvalBatch(b, x[2 * b: 2 * b + 2], SimpleNamespace(x_hat=x_hat[2 * b: 2 * b + 2])))
        shards.append(metric.state())
    merged = M.PsnrSsim()
    merged.merge(shards)
    psnr, ssim = M.psnr_ssim_skimage(x, x_hat)
    np.testing.assert_allclose(merged.per_image()["psnr"], psnr, rtol=0, atol=1e-9)
    np.testing.assert_allclose(merged.per_image()["ssim"], ssim, rtol=0, atol=1e-9)
    summary = merged.summary()
    assert summary["psnr"] == pytest.approx(psnr.mean(), abs=1e-9) and summary["psnr_std"] == pytest.approx(psnr.std(), abs=1e-9)
    assert summary["ssim"] == pytest.approx(ssim.mean(), abs=1e-9)
    assert "valid positions" in merged.protocol()["protocol.psnr_ssim"]
    continuous = M.PsnrSsim(output="x_hat_continuous", prefix=M.CONTINUOUS)
    continuous.update(M.EvalBatch(0, x, SimpleNamespace(x_hat=x_hat, x_hat_continuous=None)))  # a method without one
    continuous.merge([continuous.state()])
    assert continuous.summary() == {} and continuous.per_image() == {} and continuous.protocol() == {}
    continuous.update(M.EvalBatch(0, x, SimpleNamespace(x_hat=x, x_hat_continuous=x_hat)))
    continuous.merge([continuous.state()])
    assert set(continuous.summary()) == {"continuous_psnr", "continuous_psnr_std", "continuous_ssim"}
    assert continuous.summary()["continuous_psnr"] == pytest.approx(psnr.mean(), abs=1e-9)
    empty = M.PerImageValues()
    assert empty.values().shape == (0,) and empty.values().dtype == torch.float64


def test_quantizer_stats_average_over_images_and_a_single_image_is_its_own_mean():
    one = M.StatAccumulator()
    one.update({"bits_mean": 7.0, "bits_min": 2.0}, 1)
    assert one.summary() == {"bits_mean": 7.0, "bits_min": 2.0}
    metric = M.QuantizerStats()
    for n, bits in ((3, 1.0), (1, 5.0)):
        metric.update(M.EvalBatch(0, torch.zeros(n, 3, 2, 2), SimpleNamespace(quant=SimpleNamespace(
            stats={"bits_mean": torch.tensor(bits), "bits_max": torch.tensor(bits)}))))
    metric.merge([metric.state(), M.StatAccumulator()])
    assert metric.summary() == {"q_bits_mean": 2.0, "q_bits_max": 5.0}


def test_kl_histogram_counts_every_group_in_its_bin_merges_shards_and_keeps_the_band():
    from quantizers import build_quantizer

    gq = build_quantizer("gq", 256, 8, 2)
    metric = M.KlDistribution.of(gq)
    assert M.KlDistribution.of(build_quantizer("vq", 256, 8)) is None  # no posterior, no histogram
    assert (metric.target_bits, metric.tolerance) == (8.0, 0.5)
    values = torch.tensor([0.0, 0.1, 0.125, 7.9, 8.0, 8.06, 100.0]).view(1, 7, 1, 1)  # (B, G, H, W)
    shards = []
    for half in (values[:, :4], values[:, 4:]):
        shard = M.KlDistribution.of(gq)
        shard.update(M.EvalBatch(0, torch.zeros(1), SimpleNamespace(quant=SimpleNamespace(group_bits=half))))
        shards.append(shard.state())
    metric.merge(shards)
    table = metric.table()
    counts = dict(zip(table["bin_lo"], table["count"]))
    assert counts[0.0] == 2 and counts[0.125] == 1 and counts[7.875] == 1 and counts[8.0] == 2
    assert table["count"].iloc[-1] == 1 and table["bin_hi"].iloc[-1] >= 8.5 + 4  # overflow lands in the last bin
    assert table["count"].sum() == 7 and set(table["target_bits"]) == {8.0} and set(table["tolerance_bits"]) == {0.5}


def test_reference_cache_keys_ignore_field_order_and_round_trip(tmp_path, caplog):
    cache = ReferenceCache(tmp_path)
    fields = {"count": 3, "resolution": 32, "images": "abc"}
    key = cache.key(fields)
    assert key == cache.key(dict(reversed(list(fields.items())))) and len(key) == 16
    assert key != cache.key({**fields, "count": 4})
    stats = {"mu": np.arange(3.0), "sigma": np.eye(3) * 2}
    assert cache.load(key) is None
    cache.save(key, stats, fields)
    loaded = cache.load(key)
    np.testing.assert_array_equal(loaded["mu"], stats["mu"]) and np.testing.assert_array_equal(loaded["sigma"], stats["sigma"])
    cache.path(key).write_bytes(b"not a torch file")
    assert cache.load(key) is None and "unreadable" in caplog.text


def test_weights_in_the_torch_hub_cache_are_found_without_a_path(weight_files, tmp_path, monkeypatch):
    from gqbench.metrics.fid import WEIGHTS_FILE, find_inception_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / WEIGHTS_FILE).symlink_to(weight_files["inception"])
    assert find_inception_weights(None, download=False) == tmp_path / "hub" / "checkpoints" / WEIGHTS_FILE
    counter = M.CodebookCounter(4, 1)
    assert "all evaluated indices" in counter.protocol()["protocol.usage"]
