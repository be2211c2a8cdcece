"""The command line: protocol settings (merged onto conf/protocol.yaml) split from the `bench` overrides, and
the settings' checks, all before anything is composed or launched."""
from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from bench.config import CONF_DIR
from bench.errors import ConfigError
from bench.protocol.overrides import plain, yaml_scalar

PROTOCOL_FILE = CONF_DIR / "protocol.yaml"
# bench command-line keys that name the protocol's lists (a bench sweep over them reads naturally)
LIST_KEYS = {"task": "tasks", "model": "models", "method": "methods", "seed": "seeds"}
LIST_SETTINGS = {"tasks", "models", "methods", "seeds", "lr_factors"}
SET_BY_PROTOCOL = {"trainer.eval_split": "dev for trials, final_eval_split for finals",
                   "selection_file": "written by the protocol for the finals"}


def parse_args(argv: list[str]) -> tuple[DictConfig, list[str], set[str]]:
    """Split `key=value` items into protocol settings (merged onto conf/protocol.yaml) and bench overrides.

    Returns (settings, bench overrides, the protocol keys the command line set)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    settings = OmegaConf.load(PROTOCOL_FILE)
    try:
        parsed = OverridesParser.create().parse_overrides(list(argv))
    except HydraException as err:
        raise ConfigError(f"cannot parse the command line: {err}") from None
    given: dict[str, Any] = {}
    passthrough: list[str] = []
    for text, override in zip(argv, parsed):
        name = override.key_or_group
        plain_change = override.type == OverrideType.CHANGE and override.package is None
        values = [yaml_scalar(v) for v in override.sweep_string_iterator()] if override.is_sweep_override() else None
        if plain_change and name in settings:
            if values is not None and name not in LIST_SETTINGS:
                raise ConfigError(f"{name}: one value expected, got the sweep {text!r}")
            given[name] = values if values is not None else override.value()
        elif plain_change and name in LIST_KEYS:
            given[LIST_KEYS[name]] = values if values is not None else [override.value()]
        elif name in SET_BY_PROTOCOL:
            raise ConfigError(f"{name} is set by the protocol ({SET_BY_PROTOCOL[name]}); leave it out")
        elif override.is_sweep_override():
            raise ConfigError(f"{text!r}: the protocol runs its own search (lr grid, method.search or optuna); "
                              "a bench sweep over other keys is not allowed here")
        else:
            passthrough.append(text)
    if "seeds" in given and isinstance(given["seeds"], list):  # seed=0,1,2 or seeds=[0,1,2]: a list of seeds
        given["seeds"] = [int(s) for s in given["seeds"]]
    for key in ("tasks", "models", "methods", "lr_factors"):
        if key in given and not isinstance(given[key], (list, ListConfig)) and given[key] is not None:
            given[key] = [given[key]]
    merged = OmegaConf.merge(settings, OmegaConf.create({k: plain(v) for k, v in given.items()}))
    check_settings(merged)
    return merged, passthrough, set(given)


def check_settings(s: DictConfig) -> None:
    """ConfigError naming the first bad setting."""
    def require(cond: bool, key: str, message: str) -> None:
        if not cond:
            raise ConfigError(f"protocol {key}: {message}")

    require(s.search in ("grid", "optuna"), "search", f"must be grid or optuna, got {s.search!r}")
    require(s.final_eval_split in ("validation", "both"), "final_eval_split",
            f"must be validation or both, got {s.final_eval_split!r}")
    require(isinstance(s.max_parallel, int) and s.max_parallel >= 1, "max_parallel", "must be an integer >= 1")
    require(bool(s.lr_factors) and all(isinstance(f, (int, float)) and f > 0 for f in s.lr_factors),
            "lr_factors", f"must be a list of numbers > 0, got {s.lr_factors!r}")
    require(s.n_trials is None or (isinstance(s.n_trials, int) and s.n_trials >= 1), "n_trials",
            "must be null or an integer >= 1")
    require(s.grid_points is None or (isinstance(s.grid_points, int) and s.grid_points >= 1), "grid_points",
            "must be null or an integer >= 1")
    seeds = s.seeds
    require((isinstance(seeds, int) and seeds >= 1) or (isinstance(seeds, (list, ListConfig)) and len(seeds) > 0
                                                        and all(isinstance(x, int) for x in seeds)),
            "seeds", f"must be a count >= 1 or a list of integer seeds, got {seeds!r}")
    require(bool(re.fullmatch(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*", str(s.sweep))), "sweep",
            f"must be a folder name (letters, digits, _ . - /), got {s.sweep!r}")
    for key in ("tasks", "models", "methods"):
        require(s[key] is None or len(s[key]) > 0, key, "must be null or a non-empty list")
    require(isinstance(s.search_seed, int) and not isinstance(s.search_seed, bool), "search_seed",
            f"must be an integer, got {s.search_seed!r}")
    # a final with the search seed re-runs the winning trial: the luck that won on dev would reach validation
    require(s.search_seed not in seed_list(s), "search_seed",
            f"{s.search_seed} is also a final seed ({seed_list(s)}): the seed-{s.search_seed} final would be "
            "the winning trial's model again, so the luck that made it win on dev would carry into the "
            "reported scores; use a search seed outside the final seeds (the default is 1000)")


def seed_list(settings: DictConfig) -> list[int]:
    """The final seeds: a count N means 0..N-1."""
    return list(range(settings.seeds)) if isinstance(settings.seeds, int) else [int(x) for x in settings.seeds]
