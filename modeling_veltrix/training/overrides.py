"""Recipe overrides shared by the command-line scripts: `--set FIELD=VALUE` items and `--quick`'s tiny settings."""

import json
from dataclasses import asdict
from typing import Any

from .recipe import RECIPE_STAGES, VeltrixTrainingRecipe

# `--quick`: a handful of short trajectories and a few steps per stage, to run a whole script in seconds.
QUICK_RECIPE = {
    "num_train_trajectories": 8,
    "num_eval_trajectories": 4,
    "trajectory_length": 6,
    "context_length": 2,
    "rollout_window": 2,
    "decoder_frames_per_trajectory": 2,
    "engram_batch_size": 4,
}
QUICK_STAGE = {"max_steps": 2, "batch_size": 4, "warmup_steps": 0, "save_steps": 2}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set` items `FIELD=VALUE` as {FIELD: value}: the value parsed as JSON, else kept as plain text."""
    overrides = {}
    for item in items:
        name, separator, text = item.partition("=")
        if not separator or not name:
            raise ValueError(f"`--set` must be FIELD=VALUE, got {item!r}.")
        try:
            overrides[name] = json.loads(text)
        except json.JSONDecodeError:
            overrides[name] = text
    return overrides


def recipe_with_overrides(path: str, quick: bool, overrides: dict[str, Any]) -> VeltrixTrainingRecipe:
    """The recipe file at `path`, with `--quick`'s settings (when `quick`) and then `overrides` applied (a name
    `stage.field` sets a field of a stage's recipe), checked as a whole."""
    values = asdict(VeltrixTrainingRecipe.from_json_file(path))
    if quick:
        values |= QUICK_RECIPE
        for stage in RECIPE_STAGES:
            values[stage] |= QUICK_STAGE
    for name, value in overrides.items():
        stage, _, field = name.partition(".")
        if field:
            if stage not in RECIPE_STAGES:
                raise ValueError(f"`--set {name}=...`: {stage!r} is not a stage of the recipe ({RECIPE_STAGES}).")
            values[stage][field] = value
        else:
            values[name] = value
    return VeltrixTrainingRecipe(**values)
