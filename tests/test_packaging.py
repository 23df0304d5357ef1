"""An installed copy (`pip install .`, as on a cluster) carries the Hydra tree and the sweeps and runs from any
folder: the wheel is built from this checkout, installed into a folder of its own, and a one-step job runs from
a folder outside the checkout with that copy first on the path."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

from conftest import FAST_OVERRIDES, ROOT


def test_every_config_group_is_packaged():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    conf = ROOT / "conf"  # every folder holding configs, nested ones too (recipe/<protocol>, preset/<method>)
    groups = {"gqbench_conf." + ".".join(p.relative_to(conf).parts) for p in conf.rglob("*") if p.is_dir()
              and (p.name == "experiment" or any(f.suffix == ".yaml" for f in p.iterdir()))}
    packaged = {p for p in setuptools["packages"] if p.startswith("gqbench_conf.")}
    assert groups == packaged, "list every conf/ group in pyproject.toml's [tool.setuptools] packages"
    assert setuptools["package-dir"]["gqbench_conf"] == "conf"
    code = {".".join(p.parent.relative_to(ROOT).parts) for top in ("gqbench", "quantizers", "kernels", "hydra_plugins")
            for p in (ROOT / top).rglob("__init__.py")}
    assert code <= set(setuptools["packages"]), f"list every Python package in pyproject.toml: {sorted(code)}"


@pytest.mark.job
@pytest.mark.timeout(600)
def test_the_installed_wheel_runs_a_job_from_any_folder(tmp_path):
    source, wheels, target, elsewhere = (tmp_path / d for d in ("source", "wheels", "site", "elsewhere"))
    elsewhere.mkdir()
    # a copy of the tracked files (with conf/experiment as the link it is): the build leaves build/ behind
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout: cannot tell which files a source distribution would hold")
    for name in tracked:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name, follow_symlinks=False)
    # --no-build-isolation: build with this environment's setuptools, so the test needs no network
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            str(source), "-w", str(wheels)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("gqbench-*.whl")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]

    env = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS="1")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=300)

    where = run("-c", "import gqbench.sweep as s; print(s.__file__); print(s.CONF_DIR)")
    module_file, conf_dir = where.stdout.split()
    assert module_file.startswith(str(target)) and conf_dir.startswith(str(target)), where.stdout + where.stderr

    composed = run("-m", "gqbench.sweep", "+experiment=codebook_sizes", "--cfg", "job")  # a sweep file, via the link
    assert composed.returncode == 0 and "quantizer:" in composed.stdout, composed.stderr[-3000:]

    runs = tmp_path / "runs"
    # a one-job sweep: the installed copy's sweeper (hydra_plugins.gqbench_sweeper) plans and launches it
    job = run("-m", "gqbench.sweep", "-m", *FAST_OVERRIDES, "train.max_steps=1", f"paths.runs={runs}",
              f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert job.returncode == 0, job.stderr[-3000:]
    assert "job 0" in job.stdout + job.stderr and "new" in job.stdout + job.stderr
    (record,) = runs.glob("jobs/*/metrics.json")
    assert json.loads(record.read_text())["status"] == "finished"
    plugin = run("-c", "import hydra_plugins.gqbench_sweeper as p; print(p.__file__)")
    assert plugin.stdout.startswith(str(target)), plugin.stdout + plugin.stderr
