"""Does the Engram memory anchor long rollouts, and is it retrieval? Measured against its own ablations.

    python scripts/benchmark_engram.py --output runs/engram.json            # every figure (about an hour, 2 cores)
    python scripts/benchmark_engram.py --output /tmp/engram.json --quick    # the whole script on tiny settings

Per world it reuses the encoder and evolver that `scripts/evaluate.py` trained (`--runs-dir`, default
`runs/evaluate_runs`; trained there first where missing), builds the memory for them (quantizer -> table -> gate;
saved to `<output-dir>/<world>/engram`, reused by a rerun), and rolls the evolver out from held-out contexts to 10×
the training window without memory, with it, with it bypassing the evolver on confident hits, and with the three
ablations (a random table of the same statistics, the gate fixed to its mean, shuffled keys). It reports error vs
horizon, hit and collision rates, FLOPs per step, table size, and the distance of the rollout's states to the nearest
encoded training state; then the allocation experiment (`--allocation-world`): at the evolver's parameter budget,
evolvers with parametric memory holding a growing share of it, trained from scratch, scored on validation error.
The JSON report (BENCHMARKS.md shape), its plots (`<output>_error_vs_horizon.png`, `_manifold_distance.png`,
`_allocation.png`) and the results tables in the model card (`model_card.md`; with `--quick`, a copy of it in the
output folder) are written at the end.

`--set FIELD=VALUE` changes a recipe field (`gate.max_steps=400` for a stage's), `--engram FIELD=VALUE` a field of the
memory's configuration (`VeltrixEngramConfig`, e.g. `--engram table_value='"delta"'`).
"""

import argparse
import os
import shutil
import sys
import time

# Run as `python scripts/benchmark_engram.py`, this folder comes first on `sys.path`, where `scripts/evaluate.py`
# would shadow the `evaluate` library.
sys.path = [path for path in sys.path if os.path.abspath(path or ".") != os.path.dirname(os.path.abspath(__file__))]

from modeling_veltrix.benchmarks.engram import EngramBenchmarkSettings, run_benchmark  # noqa: E402
from modeling_veltrix.training.overrides import parse_overrides, recipe_with_overrides  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PRESET = os.path.join(REPO_ROOT, "configuration", "veltrix-tiny")
DEFAULT_RUNS = os.path.join(REPO_ROOT, "runs", "evaluate_runs")
# `--quick`: one world, a tiny memory, two allocation points.
QUICK_SETTINGS = {
    "worlds": ("pendulum",),
    "allocation_shares": (0.0, 0.25),
    "num_reference_states": 64,
    "batch_size": 4,
    "bypass_min_count": 1,
}
QUICK_ENGRAM = {"fsq_levels": [5, 4, 3], "table_size": 31, "parametric_table_size": 17}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="the JSON report to write")
    parser.add_argument("--output-dir", default=None, help="memories and per-world results (default: <output>_runs/)")
    parser.add_argument(
        "--runs-dir", default=None, help="scripts/evaluate.py's trained models (default: runs/evaluate_runs)"
    )
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="preset folder with the component configs")
    parser.add_argument("--recipe", default=None, help="recipe JSON (default: the preset's evaluation_recipe.json)")
    parser.add_argument("--worlds", nargs="+", default=None, help="worlds to measure (default: all four)")
    parser.add_argument("--allocation-world", default=None, help="world of the allocation experiment (pendulum)")
    parser.add_argument(
        "--allocation-shares",
        nargs="*",
        type=float,
        default=None,
        help="shares of the budget in the tables (none given: no allocation experiment)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a recipe field")
    parser.add_argument(
        "--engram", action="append", default=[], metavar="FIELD=VALUE", help="override a memory config field"
    )
    parser.add_argument("--model-card", default=None, help="model card to write the tables into")
    parser.add_argument("--quick", action="store_true", help="tiny settings: the whole script in under a minute")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started = time.time()
    recipe_path = args.recipe or os.path.join(args.preset, "evaluation_recipe.json")
    recipe = recipe_with_overrides(recipe_path, args.quick, parse_overrides(args.set))
    output_dir = args.output_dir or os.path.splitext(args.output)[0] + "_runs"
    runs_dir = args.runs_dir or (os.path.join(output_dir, "models") if args.quick else DEFAULT_RUNS)
    values: dict = {"preset": args.preset, "recipe": recipe}
    if args.quick:
        values |= QUICK_SETTINGS | {"engram": dict(QUICK_ENGRAM)}
    values.setdefault("engram", {}).update(parse_overrides(args.engram))
    if args.worlds:
        values["worlds"] = tuple(args.worlds)
    if args.allocation_world:
        values["allocation_world"] = args.allocation_world
    if args.allocation_shares is not None:
        values["allocation_shares"] = tuple(args.allocation_shares)
    settings = EngramBenchmarkSettings(**values)
    card = args.model_card
    if card is None:
        card = os.path.join(REPO_ROOT, "model_card.md")
        if args.quick:  # a quick run's numbers do not belong in the repository's card
            os.makedirs(output_dir, exist_ok=True)
            card = shutil.copy(card, os.path.join(output_dir, "model_card.md"))
    run_benchmark(settings, runs_dir, output_dir, args.output, card)
    print(f"[veltrix] engram benchmark finished in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
