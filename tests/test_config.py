"""The config tree composes for every option and experiment; the allow-list and the signature behave."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose_config
from gqbench.config import check_targets, flatten, quantizer_kwargs, run_signature

GROUPS = {p.name: sorted(f.stem for f in p.glob("*.yaml")) for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "experiment"}


def test_config_groups_are_present():
    assert {"data", "model", "quantizer", "train", "loss", "eval", "tracking", "paths"} <= set(GROUPS)
    assert {"bundled", "imagefolder", "synthetic"} <= set(GROUPS["data"])
    assert {"unet_tiny", "unet_sd3"} <= set(GROUPS["model"])


PRIMARY = {"data", "model", "quantizer", "train", "loss", "eval", "tracking", "paths"}  # conf/config.yaml defaults


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes_and_resolves(group, option, tmp_path):
    plus = "" if group in PRIMARY else "+"  # groups outside the defaults list are appended
    overrides = [f"{plus}{group}={option}"] + (["data.root=/some/where"] if option == "imagefolder" else [])
    cfg = compose_config(overrides, tmp_path)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    check_targets(cfg)


@pytest.mark.parametrize("experiment", sorted(f.stem for f in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_composes(experiment, tmp_path):
    cfg = compose_config([f"+experiment={experiment}"], tmp_path)
    assert cfg.tracking.experiment == experiment
    kwargs = quantizer_kwargs(cfg.quantizer, cfg.model.z_channels)
    assert kwargs["num_codebooks"] * kwargs["codebook_dim"] == cfg.model.z_channels


@pytest.mark.parametrize("method", GROUPS["at16bits"])
def test_equal_bits_sweep_sizes_every_method_to_16_bits_per_token(method):
    from quantizers import build_quantizer

    cfg = compose_config(["+experiment=baselines_16bit", f"+at16bits={method}"])
    assert cfg.quantizer.name == method
    q = build_quantizer(**quantizer_kwargs(cfg.quantizer, cfg.model.z_channels))
    assert q.out_channels == cfg.model.z_channels
    assert abs(q.bits_per_token - 16) < 0.25


def test_equal_bits_sweep_covers_every_registered_method():
    from quantizers import known_quantizers

    assert set(GROUPS["at16bits"]) == set(known_quantizers())


def test_paper_backbone_config():
    cfg = compose_config(["model=unet_sd3"])
    assert (cfg.model.ch, list(cfg.model.ch_mult), cfg.model.z_channels, list(cfg.model.attn_resolutions)) == (128, [1, 2, 4, 4], 16, [32])


def test_target_allow_list():
    check_targets(OmegaConf.create({"opt": {"_target_": "torch.optim.Adam"}, "d": {"_target_": "gqbench.data.synthetic"}}))
    with pytest.raises(ValueError, match=r"a\.b\[0\]\._target_='subprocess.call' is not allowed"):
        check_targets(OmegaConf.create({"a": {"b": [{"_target_": "subprocess.call"}]}}))
    with pytest.raises(ValueError, match="torch.nn.Linear"):  # torch, but not an optimiser
        check_targets(OmegaConf.create({"x": {"_target_": "torch.nn.Linear"}}))
    # an allowed prefix that reaches a foreign object through a module attribute
    with pytest.raises(ValueError, match=r"x._target_='gqbench.tracking.os.system' is not allowed"):
        check_targets(OmegaConf.create({"x": {"_target_": "gqbench.tracking.os.system", "_args_": ["true"]}}))
    with pytest.raises(ValueError, match="names nothing importable"):
        check_targets(OmegaConf.create({"x": {"_target_": "gqbench.no_such_thing"}}))


def test_signature_tracks_training_config_only(tmp_path):
    base = compose_config([], tmp_path)
    assert run_signature(base) == run_signature(compose_config(["eval.num_images=5", "tracking.experiment=x"], tmp_path))
    assert run_signature(base) == run_signature(compose_config(["train.num_workers=4", "train.log_every=1"], tmp_path))
    assert run_signature(base) != run_signature(compose_config(["seed=1"], tmp_path))
    assert run_signature(base) != run_signature(compose_config(["quantizer.codebook_size=64"], tmp_path))


def test_flatten_for_mlflow_params():
    flat = flatten(OmegaConf.create({"a": {"b": 1, "c": [1, 2]}, "d": None}))
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "d": None}
