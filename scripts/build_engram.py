"""Build the Engram memory (DESIGN §5) of a trained run: quantizer -> table -> gate.

    python scripts/build_engram.py --run-dir runs/evaluate_runs/pendulum --output-dir runs/engram/pendulum
    python scripts/build_engram.py --run-dir runs/tiny --output-dir /tmp/engram --quick     # tiny settings, seconds

Loads the run's encoder and evolver (`<run-dir>/encoder`, `<run-dir>/evolver`, or their joint fine-tunes), trains
the quantizer on the frozen encoder's states, fills the table in one streaming pass over the training trajectories,
trains the fusion gate behind the frozen evolver, records both models' fingerprints and saves the memory with
`save_pretrained` to `<output-dir>/engram` (written to a temporary folder, then renamed). The statistics
(codebook utilisation and perplexity, slots used, collisions, hit rate on the held-out trajectories, loss curves,
build seconds) go to `<output-dir>/engram_statistics.json`, the recipe used to `<output-dir>/recipe.json`.

The recipe is `--recipe`, else `<run-dir>/recipe.json` (written by `scripts/train.py`), else the tiny preset's
`evaluation_recipe.json` with the world named by the run folder (the layout of `scripts/evaluate.py`'s runs). The
memory's configuration is `--engram-config` (a JSON object of `VeltrixEngramConfig` fields) on top of the
defaults; its state shape and hidden width come from the evolver. `--set FIELD=VALUE` (a JSON value) changes a recipe
field (`gate.max_steps=400` for a stage's), `--engram FIELD=VALUE` a field of the memory's configuration (e.g.
`--engram table_size=4093`), as in `scripts/benchmark_engram.py`.
"""

import argparse
import json
import math
import os
import time

from modeling_veltrix import VeltrixEncoderModel, VeltrixEvolverModel
from modeling_veltrix.configuration_veltrix import VeltrixEngramConfig
from modeling_veltrix.modeling_veltrix_engram import VeltrixEngramModel
from modeling_veltrix.repository_check import write_folder_atomically, write_json_atomic
from modeling_veltrix.training import build_datasets, build_engram
from modeling_veltrix.training.engram import memory_config_for
from modeling_veltrix.training.overrides import parse_overrides, recipe_with_overrides
from modeling_veltrix.training.recipe import read_json_object
from modeling_veltrix.training.runner import trained_component
from modeling_veltrix.worlds.dataset import WORLDS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RECIPE = os.path.join(REPO_ROOT, "configuration", "veltrix-tiny", "evaluation_recipe.json")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="a trained run with encoder/ and evolver/ folders")
    parser.add_argument("--output-dir", required=True, help="where engram/ and the statistics go")
    parser.add_argument("--recipe", default=None, help="training recipe JSON (default: see above)")
    parser.add_argument("--engram-config", default=None, help="JSON object of VeltrixEngramConfig fields")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a recipe field")
    parser.add_argument(
        "--engram", action="append", default=[], metavar="FIELD=VALUE", help="override a memory config field"
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings: the whole script in seconds")
    return parser.parse_args()


def recipe_source(args: argparse.Namespace) -> tuple[str, dict]:
    """The recipe file (see the module docstring) and the fields the run folder implies (its world, for a folder of
    `scripts/evaluate.py` without a recipe of its own)."""
    if args.recipe is not None:
        return args.recipe, {}
    run_recipe = os.path.join(args.run_dir, "recipe.json")
    if os.path.isfile(run_recipe):
        return run_recipe, {}
    world = os.path.basename(os.path.normpath(args.run_dir))
    if world not in WORLDS:
        raise ValueError(
            f"`--run-dir` {args.run_dir} has no recipe.json and its name is not a world ({sorted(WORLDS)}): pass "
            "`--recipe`."
        )
    return DEFAULT_RECIPE, {"world": world, "world_options": {}}


def load_run(run_dir: str) -> tuple[VeltrixEncoderModel, VeltrixEvolverModel]:
    """The run's trained encoder and evolver (their joint fine-tunes first), or a `ValueError` naming the folder."""
    if not os.path.isdir(run_dir):
        raise ValueError(f"`--run-dir` must be a folder, got {run_dir!r}, which is not one.")
    models = []
    for component, cls in (("encoder", VeltrixEncoderModel), ("evolver", VeltrixEvolverModel)):
        path = trained_component(run_dir, component)
        if path is None:
            raise ValueError(f"`--run-dir` {run_dir} has no trained {component} ({component}/ folder).")
        models.append(cls.from_pretrained(path).eval())
    return models[0], models[1]


def engram_config(args: argparse.Namespace, overrides: dict, evolver: VeltrixEvolverModel) -> VeltrixEngramConfig:
    """`--engram-config` and the `--engram` overrides on the defaults, with the evolver's state shape and width."""
    values = (
        read_json_object(args.engram_config, f"`--engram-config` {args.engram_config}") if args.engram_config else {}
    )
    return memory_config_for(evolver.config, values | overrides)


def main() -> None:
    """Checks every argument before anything is trained or written, then builds, saves and reports."""
    args = parse_args()
    started = time.time()
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise ValueError(f"`--output-dir` must be a folder, got {args.output_dir!r}, which is a file.")
    path, implied = recipe_source(args)
    recipe = recipe_with_overrides(path, args.quick, implied | parse_overrides(args.set))
    engram_overrides = parse_overrides(args.engram)
    encoder, evolver = load_run(args.run_dir)
    config = engram_config(args, engram_overrides, evolver)
    engram = VeltrixEngramModel(config).to(encoder.device)
    train_dataset, held_out_dataset = build_datasets(recipe)
    statistics = build_engram(engram, encoder, evolver, train_dataset, recipe, held_out_dataset)
    os.makedirs(args.output_dir, exist_ok=True)
    recipe.to_json_file(os.path.join(args.output_dir, "recipe.json"))
    target = os.path.join(args.output_dir, "engram")
    write_folder_atomically(engram.save_pretrained, target)
    # A held-out set without hits has no recall error: null in the JSON (NaN is not JSON).
    statistics = {
        name: None if isinstance(value, float) and math.isnan(value) else value for name, value in statistics.items()
    }
    write_json_atomic(os.path.join(args.output_dir, "engram_statistics.json"), statistics)
    summary = {name: value for name, value in statistics.items() if not isinstance(value, list)}
    print(json.dumps(summary, indent=2))
    print(f"[veltrix] Engram memory saved to {target} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
