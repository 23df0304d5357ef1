"""The config tree composes for every option and experiment; the allow-list and the signature behave."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose_config
from omegaconf import DictConfig

from gqbench.config import SIGNATURE_EXCLUDED, SIGNATURE_KEYS, check_targets, flatten, quantizer_from_config, run_signature

GROUPS = {p.name: sorted(f.stem for f in p.glob("*.yaml")) for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "experiment"}


def test_config_groups_are_present():
    assert {"data", "model", "quantizer", "train", "loss", "eval", "tracking", "paths"} <= set(GROUPS)
    assert {"bundled", "imagefolder", "synthetic"} <= set(GROUPS["data"])
    assert {"unet_tiny", "unet_sd3"} <= set(GROUPS["model"])


PRIMARY = {"data", "model", "quantizer", "train", "loss", "eval", "tracking", "paths", "protocol", "rate"}  # conf/config.yaml defaults


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes_and_resolves(group, option, tmp_path):
    plus = "" if group in PRIMARY else "+"  # groups outside the defaults list are appended
    overrides = [f"{plus}{group}={option}"] + (["data.root=/some/where"] if option in ("imagefolder", "paper") else [])
    if group == "cluster":  # a cluster profile configures the SLURM launcher (tests below)
        overrides.append("hydra/launcher=submitit_slurm")
    cfg = compose_config(overrides, tmp_path)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    check_targets(cfg)


def test_a_cluster_profile_on_the_command_line_configures_the_slurm_launcher():
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=submitit_slurm", "+cluster=example"],
                      return_hydra_config=True)
        launcher = cfg.hydra.launcher
        assert launcher._target_.endswith("SlurmLauncher")
        assert (launcher.partition, launcher.max_num_timeout, launcher.signal_delay_s) == ("gpu", 3, 120)
        assert list(launcher.setup) == ["source ~/envs/gqbench/bin/activate"] and "cluster" not in cfg
        # with the basic launcher the profile's keys do not exist: an error at start, not a silently local sweep
        with pytest.raises(ConfigCompositionException):
            compose("config", overrides=["+cluster=example"], return_hydra_config=True)


@pytest.mark.parametrize("experiment", sorted(f.stem for f in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_composes(experiment, tmp_path):
    cfg = compose_config([f"+experiment={experiment}"], tmp_path)
    assert cfg.tracking.experiment == experiment
    assert cfg.model.z_channels in (None, quantizer_from_config(cfg).out_channels)  # None: the quantizer's width


RATES = sorted(f.stem for f in (CONF_DIR / "rate").glob("*bits.yaml"))


@pytest.mark.parametrize("protocol", ["official", "gq_paper"])
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("method", sorted(GROUPS["quantizer"]))
def test_every_equal_bits_preset_builds_within_a_quarter_bit(method, rate, protocol):
    cfg = compose_config([f"quantizer={method}", f"rate={rate}", f"protocol={protocol}"])
    bits = int(rate.removesuffix("bits"))
    assert cfg.rate.bits_per_token == bits
    q = quantizer_from_config(cfg)  # check_rate inside: an error beyond 0.25 bit
    assert cfg.model.z_channels in (None, q.out_channels) and abs(q.bits_per_token - bits) <= 0.25


def test_paper_scale_profile_overrides_an_experiments_cpu_settings(tmp_path):
    cfg = compose_config(["+experiment=main_table", "+scale=paper", "data.root=/data/imagenet", "rate=16bits"], tmp_path)
    assert (cfg.data._target_, cfg.data.image_size, cfg.model.name) == ("gqbench.data.imagefolder", 256, "unet_sd3")
    assert (cfg.train.max_steps, cfg.train.batch_size, cfg.train.lr) == (400000, 128, 1e-4)
    assert cfg.loss.gan.enabled and cfg.loss.learn_logvar and cfg.loss.perceptual_weight == 1.0
    assert cfg.tracking.experiment == "main_table" and quantizer_from_config(cfg).bits_per_token == 16


def test_fsq_levels_follow_the_protocol_at_equal_bits():
    official = quantizer_from_config(compose_config(["quantizer=fsq", "rate=16bits"]))
    paper = quantizer_from_config(compose_config(["quantizer=fsq", "rate=16bits", "protocol=gq_paper"]))
    assert (official.levels, official.out_channels) == ((8, 8, 8, 5, 5, 5), 6)  # FSQ paper Table 1 for 2^16
    assert (paper.levels, paper.out_channels, paper.bits_per_token) == ((16, 16, 16, 16), 4, 16.0)  # GQ authors' 16⁴


def test_a_preset_that_misses_its_bits_is_an_error():
    cfg = compose_config(["quantizer=fsq", "rate=16bits", "quantizer.codebook_size=1024", "model.z_channels=4"])
    with pytest.raises(ValueError, match=r"carries 9\.97 bits/token, not the intended 16 \(tolerance 0\.25 bit\)"):
        quantizer_from_config(cfg)
    cfg = compose_config(["quantizer=gq", "rate=32bits", "quantizer.num_codebooks=3", "model.z_channels=12"])
    with pytest.raises(ValueError, match=r"carries 24\.00 bits/token, not the intended 32"):
        quantizer_from_config(cfg)


def test_presets_and_recipes_cover_every_registered_method():
    from quantizers import known_quantizers

    for rate in RATES:
        assert {f.name for f in (CONF_DIR / "preset").iterdir() if (f / f"{rate}.yaml").exists()} == set(known_quantizers())
    for protocol in GROUPS["protocol"]:
        assert {f.stem for f in (CONF_DIR / "recipe" / protocol).glob("*.yaml")} == set(known_quantizers())


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


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "_x"
    if value is None:
        return 1
    return None


def _leaves(cfg, group):
    node = cfg[group]
    if not isinstance(node, DictConfig):
        return [(group, node)]
    return [(f"{group}.{k}", v) for k, v in flatten(node).items()]


@pytest.mark.parametrize("overrides", [[], ["loss.gan.enabled=true", "quantizer=vq"], ["model=vit_tiny", "quantizer=fsq"]])
def test_every_training_leaf_changes_the_signature_and_nothing_else_does(overrides, tmp_path):
    """A changed value anywhere under SIGNATURE_KEYS (except the excluded run-only keys) is a different job;
    a changed value anywhere else (eval, tracking, paths, device, ...) is the same job."""
    base = compose_config(overrides, tmp_path)
    signature = run_signature(base)
    excluded = {f"{g}.{k}" for g, keys in SIGNATURE_EXCLUDED.items() for k in keys}
    probed = 0
    for group in base:
        for key, value in _leaves(base, group):  # lists are leaves too (flatten keeps them as JSON text)
            new = _changed(value)
            if new is None or key.endswith("_target_"):
                continue
            cfg = base.copy()
            OmegaConf.update(cfg, key, new, force_add=True)
            same = run_signature(cfg) == signature
            training = group in SIGNATURE_KEYS and key not in excluded
            assert same != training, f"{key}: {value!r} -> {new!r} {'kept' if same else 'changed'} the signature"
            probed += training
    assert probed > 40  # the walk reached the nested groups (model, train.optimizer, loss.gan, quantizer)


def test_signature_is_stable_across_compositions_and_short(tmp_path):
    a, b = run_signature(compose_config([], tmp_path)), run_signature(compose_config([], tmp_path / "other"))
    assert a == b and len(a) == 12 and int(a, 16) >= 0


def test_flatten_for_mlflow_params():
    flat = flatten(OmegaConf.create({"a": {"b": 1, "c": [1, 2]}, "d": None}))
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "d": None}
    assert flatten(OmegaConf.create({"a": 3, "b": {"c": "${a}"}})) == {"a": 3, "b.c": 3}  # resolved


def test_signature_hashes_resolved_values_in_any_key_order_and_tolerates_missing_groups():
    a = OmegaConf.create({"seed": 0, "model": {"w": "${eval.n}", "ch": 2}, "eval": {"n": 3}})
    b = OmegaConf.create({"eval": {"n": 3}, "model": {"ch": 2, "w": 3}, "seed": 0})
    assert run_signature(a) == run_signature(b)  # interpolations are resolved, key order does not matter
    a.eval.n = 4
    assert run_signature(a) != run_signature(b)  # the resolved value changed
    # a config without a train group, or whose train group lacks the excluded keys, still hashes
    assert len(run_signature(OmegaConf.create({"seed": 1}))) == 12
    assert run_signature(OmegaConf.create({"seed": 1, "train": {"lr": 1}})) != run_signature(OmegaConf.create({"seed": 1}))


def test_target_messages_name_the_full_key_and_the_allowed_packages():
    allowed = "gqbench, quantizers, kernels, torch.optim"
    with pytest.raises(ValueError, match=rf"^config key x\._target_='os.system' is not allowed: configs may only instantiate objects from {allowed}$"):
        check_targets(OmegaConf.create({"x": {"_target_": "os.system"}}))
    with pytest.raises(ValueError, match=r"^config key data\._target_=5 is not allowed"):
        check_targets(OmegaConf.create({"_target_": 5}), path="data")
    with pytest.raises(ValueError, match=r"^config key x\._target_='gqbench.config.json' is not allowed"):
        check_targets(OmegaConf.create({"x": {"_target_": "gqbench.config.json"}}))  # a foreign module
    with pytest.raises(ValueError, match=r"^config key x\._target_='gqbench.config.SIGNATURE_KEYS' is not allowed"):
        check_targets(OmegaConf.create({"x": {"_target_": "gqbench.config.SIGNATURE_KEYS"}}))  # no module at all
    # defined in a package's __init__ (module name without a dot), or a module of ours: allowed
    check_targets(OmegaConf.create({"x": {"_target_": "kernels.gq_argmax"}, "y": {"_target_": "gqbench.data"}}))


def test_safe_instantiate_checks_then_passes_arguments_through():
    from gqbench.config import safe_instantiate

    weight = torch.nn.Parameter(torch.ones(2))
    opt = safe_instantiate(OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.5}), [weight], momentum=0.25)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.5 and opt.defaults["momentum"] == 0.25
    with pytest.raises(ValueError, match=r"^config key train\.optimizer\._target_='subprocess.call'"):
        safe_instantiate(OmegaConf.create({"_target_": "subprocess.call", "args": ["false"]}), path="train.optimizer")
    with pytest.raises(ValueError, match=r"^config key _target_='subprocess.call'"):  # top level: no path prefix
        safe_instantiate(OmegaConf.create({"_target_": "subprocess.call"}))


def test_hydra_flags_may_come_anywhere_among_the_overrides():
    from gqbench.sweep import hydra_flags_first

    assert hydra_flags_first(["+experiment=codebook_sizes", "-m", "hydra/launcher=submitit_slurm", "+cluster=mine"]) == [
        "-m", "+experiment=codebook_sizes", "hydra/launcher=submitit_slurm", "+cluster=mine"]
    assert hydra_flags_first(["a=1", "--cfg", "job", "b=-2", "--info", "defaults", "-cn", "other", "~c"]) == [
        "--cfg", "job", "--info", "defaults", "-cn", "other", "a=1", "b=-2", "~c"]
    assert hydra_flags_first(["--config-name=other", "x=1", "--multirun"]) == ["--config-name=other", "--multirun", "x=1"]
    assert hydra_flags_first(["x=1", "--info"]) == ["--info", "x=1"]
