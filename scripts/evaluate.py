"""Prove it: Veltrix against equal-size Transformer and GRU predictors and the copy-last / mean-of-context
references, on every built-in world, far past the training window.

    python scripts/evaluate.py --output runs/evaluate.json            # the whole table (about an hour on 2 cores)
    python scripts/evaluate.py --output /tmp/quick.json --quick       # the whole script on tiny settings (< 1 min)
    python scripts/evaluate.py --output runs/events.json --worlds     # only the speaking world's event recall

Per world it trains (or loads, from `--output-dir`) one encoder, decoder and physics probe, then Veltrix's evolver
and the two baselines by the same evolver stage with the same recipe, rolls all out from held-out contexts to 10×
the training window and writes the JSON report (BENCHMARKS.md shape), a plot of error vs horizon per world and the
results table into the model card (`model_card.md`; with `--quick`, a copy of it in the output folder). A rerun
with the same `--output-dir` resumes: trained models and scored worlds are loaded, an interrupted stage continues
from its last checkpoint.

The speaking preset (`--speaking-preset`, `configuration/veltrix-tiny-speaking` by default; `--no-speaking` skips it)
is trained by its own recipe and scored for future event recall: the caption event accuracy on the eventful future
steps, read from the evolver's mean prediction and from its sampled futures (about 20 minutes).

`--set FIELD=VALUE` changes a recipe field, of every world's recipe and of the speaking recipe (JSON value;
`evolver.max_steps=800` for a stage's), e.g. to try the physics term (`--set physics_loss_weight=0.1`) or the
stability term in an ablation.
"""

import argparse
import os
import shutil
import sys
import time

# Run as `python scripts/evaluate.py`, this file's folder comes first on `sys.path`, where this file would shadow the
# `evaluate` library that the metric modules load with.
sys.path = [path for path in sys.path if os.path.abspath(path or ".") != os.path.dirname(os.path.abspath(__file__))]

from modeling_veltrix.evaluation.suite import SuiteSettings, run_suite  # noqa: E402 - after the path fix
from modeling_veltrix.training.overrides import parse_overrides, recipe_with_overrides  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PRESET = os.path.join(REPO_ROOT, "configuration", "veltrix-tiny")
DEFAULT_SPEAKING_PRESET = os.path.join(REPO_ROOT, "configuration", "veltrix-tiny-speaking")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="the JSON report to write")
    parser.add_argument(
        "--output-dir",
        default=None,
        help="where models and per-world scores go (default: next to the report, `<report name>_runs/`)",
    )
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="preset folder with the component configs")
    parser.add_argument(
        "--recipe", default=None, help="training recipe JSON (default: the preset's evaluation_recipe.json)"
    )
    parser.add_argument(
        "--worlds", nargs="*", default=None, help="worlds to evaluate (default: all four; none: the speaking one only)"
    )
    parser.add_argument(
        "--speaking-preset",
        default=DEFAULT_SPEAKING_PRESET,
        help="speaking, captioning preset scored for future event recall (its own recipe.json)",
    )
    parser.add_argument("--no-speaking", action="store_true", help="skip the speaking preset's event recall")
    parser.add_argument("--model-card", default=None, help="model card to write the table into")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a recipe field")
    parser.add_argument(
        "--horizon-window",
        type=int,
        default=None,
        help="the window W the horizons 1×, 3×, 10× W are multiples of (default: the recipe's rollout_window)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings: the whole script in under a minute")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started = time.time()
    recipe_path = args.recipe or os.path.join(args.preset, "evaluation_recipe.json")
    overrides = parse_overrides(args.set)
    recipe = recipe_with_overrides(recipe_path, args.quick, overrides)
    output_dir = args.output_dir or os.path.splitext(args.output)[0] + "_runs"
    settings_values = {"preset": args.preset, "recipe": recipe}
    if args.worlds is not None:
        settings_values["worlds"] = tuple(args.worlds)
    if not args.no_speaking:
        speaking_recipe = os.path.join(args.speaking_preset, "recipe.json")
        settings_values["speaking_preset"] = args.speaking_preset
        settings_values["speaking_recipe"] = recipe_with_overrides(speaking_recipe, args.quick, overrides)
    if args.horizon_window is not None:
        settings_values["horizon_window"] = args.horizon_window
    if args.quick:
        settings_values |= {"num_inference_steps": 1, "num_sample_trajectories": 2}
    settings = SuiteSettings(**settings_values)
    card = args.model_card
    if card is None:
        card = os.path.join(REPO_ROOT, "model_card.md")
        if args.quick:  # a quick run's numbers do not belong in the repository's card
            os.makedirs(output_dir, exist_ok=True)
            card = shutil.copy(card, os.path.join(output_dir, "model_card.md"))
    run_suite(settings, output_dir, args.output, card)
    print(f"[veltrix] evaluation finished in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
