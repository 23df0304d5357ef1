"""Registers gqbench's sweeper with Hydra as `hydra/sweeper: gqbench` (the default in conf/config.yaml).

Hydra instantiates a sweeper only when its class is defined in the `hydra_plugins` namespace package, so the
class lives here and the logic in gqbench.sweeper.
"""
from dataclasses import dataclass
from typing import Dict, Optional

from hydra.core.config_store import ConfigStore

from gqbench.sweeper import IdempotentSweeper


class GqbenchSweeper(IdempotentSweeper):
    pass


@dataclass
class GqbenchSweeperConf:
    _target_: str = "hydra_plugins.gqbench_sweeper.GqbenchSweeper"
    max_batch_size: Optional[int] = None   # launch this many jobs at a time (null: all at once)
    params: Optional[Dict[str, str]] = None  # sweeps/*.yaml: key: "v1,v2,..."


ConfigStore.instance().store(group="hydra/sweeper", name="gqbench", node=GqbenchSweeperConf, provider="gqbench")
