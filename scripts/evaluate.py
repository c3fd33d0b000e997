"""Prove it: Veltrix against equal-size Transformer and GRU predictors and the copy-last / mean-of-context
references, on every built-in world, far past the training window; or a run trained on your own data (`--run-dir`).

    python scripts/evaluate.py --output runs/evaluate.json            # the whole table (about an hour on 2 cores)
    python scripts/evaluate.py --output /tmp/quick.json --quick       # the whole script on tiny settings (< 1 min)
    python scripts/evaluate.py --output runs/events.json --worlds     # only the speaking world's event recall
    python scripts/evaluate.py --output runs/mine/eval.json --run-dir runs/mine               # your run, its held-out
    python scripts/evaluate.py --output runs/mine/other.json --run-dir runs/mine --dataset other.npz --horizon 8

`--run-dir DIR` evaluates the run that `scripts/train.py --dataset SOURCE --output-dir DIR` trained, instead of the
suite (`evaluation.own_data.evaluate_own_data`): its pipeline rolls out `--horizon` steps (default: the clip length
minus the recipe's `context_length`) from held-out clips of SOURCE converted again with the run's options
(`DIR/data_source.json`), against copy-last-frame and mean-of-context; it writes the JSON report (per-horizon pixel
and latent MSE, PSNR, SSIM; BENCHMARKS.md shape), a GIF of example rollouts (`<report>_rollout.gif`) and a plot of
error vs horizon (`<report>_error_vs_horizon.png`). `--dataset` evaluates another source instead, all of it (`--split`
chooses); `--clip-length` converts longer clips for longer horizons.

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

from modeling_veltrix.evaluation.own_data import SPLITS, own_data_rollouts  # noqa: E402 - after the path fix
from modeling_veltrix.evaluation.suite import SuiteSettings, run_suite  # noqa: E402
from modeling_veltrix.evaluation.visualization import save_error_plot, save_rollout_gif  # noqa: E402
from modeling_veltrix.repository_check import write_json_atomic  # noqa: E402
from modeling_veltrix.training.overrides import parse_overrides, recipe_with_overrides  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PRESET = os.path.join(REPO_ROOT, "configuration", "veltrix-tiny")
DEFAULT_SPEAKING_PRESET = os.path.join(REPO_ROOT, "configuration", "veltrix-tiny-speaking")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="the JSON report to write")
    suite = parser.add_argument_group("the built-in suite (not with --run-dir)")
    suite.add_argument(
        "--output-dir",
        default=None,
        help="where models and per-world scores go (default: next to the report, `<report name>_runs/`)",
    )
    suite.add_argument(
        "--preset", default=None, help="preset folder with the component configs (configuration/veltrix-tiny)"
    )
    suite.add_argument(
        "--recipe", default=None, help="training recipe JSON (default: the preset's evaluation_recipe.json)"
    )
    suite.add_argument(
        "--worlds", nargs="*", default=None, help="worlds to evaluate (default: all four; none: the speaking one only)"
    )
    suite.add_argument(
        "--speaking-preset",
        default=None,
        help="speaking, captioning preset scored for future event recall, with its own recipe.json (default: "
        "configuration/veltrix-tiny-speaking)",
    )
    suite.add_argument("--no-speaking", action="store_true", help="skip the speaking preset's event recall")
    suite.add_argument("--model-card", default=None, help="model card to write the table into")
    suite.add_argument("--set", action="append", default=None, metavar="FIELD=VALUE", help="override a recipe field")
    suite.add_argument(
        "--horizon-window",
        type=int,
        default=None,
        help="the window W the horizons 1×, 3×, 10× W are multiples of (default: the recipe's rollout_window)",
    )
    suite.add_argument("--quick", action="store_true", help="tiny settings: the whole script in under a minute")
    own = parser.add_argument_group("a run trained on your own data")
    own.add_argument("--run-dir", default=None, help="the folder `scripts/train.py --dataset ... --output-dir` wrote")
    own.add_argument("--dataset", default=None, help="evaluate on this source instead of the run's (all of it)")
    own.add_argument("--horizon", type=int, default=None, help="future steps (default: clip length - context length)")
    own.add_argument("--split", choices=SPLITS, default=None, help="held_out (the run's source) or all (another)")
    own.add_argument("--clip-length", type=int, default=None, help="frames per clip (default: the run's)")
    own.add_argument("--fps", type=float, default=None, help="frame rate (Hz) of --dataset (default: the run's)")
    own.add_argument("--frames-column", default=None, help="`datasets` source: frames column (default: the run's)")
    own.add_argument("--actions-column", default=None, help="`datasets` source: actions column (default: the run's)")
    own.add_argument("--timestamps-column", default=None, help="`datasets` source: timestamps column")
    own.add_argument("--num-inference-steps", type=int, default=None, help="Euler steps of the flow decoder (8)")
    own.add_argument("--batch-size", type=int, default=None, help="trajectories per rollout batch (16)")
    return parser.parse_args()


SUITE_FLAGS = (
    "output_dir",
    "preset",
    "recipe",
    "worlds",
    "speaking_preset",
    "no_speaking",
    "model_card",
    "set",
    "horizon_window",
    "quick",
)
OWN_DATA_FLAGS = (
    "dataset",
    "horizon",
    "split",
    "clip_length",
    "fps",
    "frames_column",
    "actions_column",
    "timestamps_column",
    "num_inference_steps",
    "batch_size",
)


def given_flags(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    """The flags among `names` given on the command line (their values differ from the defaults, None / False)."""
    return [f"--{name.replace('_', '-')}" for name in names if getattr(args, name) not in (None, False)]


def evaluate_run(args: argparse.Namespace) -> None:
    """`--run-dir`: the run's report, GIF of example rollouts and error plot, next to `--output`."""
    settings = {name: getattr(args, name) for name in OWN_DATA_FLAGS if getattr(args, name) is not None}
    if "dataset" in settings:
        settings["source"] = settings.pop("dataset")
    report, evaluation = own_data_rollouts(args.run_dir, **settings)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    stem = os.path.splitext(args.output)[0]
    save_rollout_gif(evaluation.true_frames, evaluation.predicted_frames, f"{stem}_rollout.gif")
    window = report["environment"]["shapes"]["training_window"]
    save_error_plot(evaluation.pixel_mse, f"{stem}_error_vs_horizon.png", window, "Rollout error vs horizon")
    write_json_atomic(args.output, report)
    for target in report["targets"]:
        print(f"[veltrix] {target['name']} = {target['value']:.4g} ({target['op']} {target['target']})")
    print(f"[veltrix] wrote {args.output}, {stem}_rollout.gif and {stem}_error_vs_horizon.png")


def main() -> None:
    args = parse_args()
    started = time.time()
    if args.run_dir is not None:
        suite_flags = given_flags(args, SUITE_FLAGS)
        if suite_flags:
            raise ValueError(f"{', '.join(suite_flags)} set up the built-in suite, which `--run-dir` replaces.")
        evaluate_run(args)
        print(f"[veltrix] evaluation finished in {time.time() - started:.0f} s")
        return
    if args.dataset is not None:
        raise ValueError(
            f"`--dataset {args.dataset}` evaluates a run trained on your data: give that run with `--run-dir DIR`, "
            "the folder `scripts/train.py --dataset SOURCE --output-dir DIR` wrote (train one first)."
        )
    own_flags = given_flags(args, OWN_DATA_FLAGS)
    if own_flags:
        raise ValueError(f"{', '.join(own_flags)} describe the evaluation of `--run-dir`, which was not given.")
    args.preset = args.preset or DEFAULT_PRESET
    args.speaking_preset = args.speaking_preset or DEFAULT_SPEAKING_PRESET
    recipe_path = args.recipe or os.path.join(args.preset, "evaluation_recipe.json")
    overrides = parse_overrides(args.set or [])
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
