"""Plan with the world model: goal-conditioned action search on the built-in reach task and on Push-T.

    python scripts/benchmark_planning.py --output runs/planning.json          # both tasks, ~35 min on 2 cores
    python scripts/benchmark_planning.py --output /tmp/planning.json --quick  # the whole script on tiny settings

Per task it trains (or loads, from `--output-dir`, default `<output>_runs/`) the encoder and evolver: the reach task
with `configuration/veltrix-tiny-reach` (32×32 frames, 16 units per frame, a 75k-parameter evolver trained on 25-step
open-loop windows; its world: one ball, an impulse every step), Push-T on data it collects with gym-pusht's simulator
(`planning.pusht`, written to `<output-dir>/pusht/pusht.npz`) through the own-data path, with
`configuration/veltrix-tiny-pusht` (64×64 frames, 16 units per frame, the reach evolver without its stochastic head).
Then on held-out episodes, start and goal 25 steps apart, it plans open loop with CEM, MPPI and the gradient search (64
candidates × horizon 25 × 3 iterations) and executes the plan in the true simulator, and closed loop (CEM replanning
every 5 steps from the carried cache); next to a random-action baseline and the same planner with the true simulator as
its model (the upper bound). The JSON report (BENCHMARKS.md shape) holds success rates, milliseconds per planning call
at 300 candidates × 25 × 3 and the objective's landscape check; its targets are `success_rate_over_random_<task>`,
`success_rate_over_oracle_<task>` (Veltrix with closed-loop CEM) and `ms_per_plan_<task>`.
"""

import argparse
import dataclasses
import os
import time

import torch

from modeling_veltrix.action_search import PLANNING_METHODS
from modeling_veltrix.benchmarks.planning import TASKS, PlanningBenchmarkSettings, run_planning_benchmark
from modeling_veltrix.benchmarks.reports import save_report
from modeling_veltrix.planning.pusht import PushTDataConfig

# `--quick`: a handful of tiny episodes and candidates, with `--quick` recipes (a few training steps).
QUICK_SETTINGS = {
    "num_episodes": 2,
    "gap": 3,
    "num_samples": 8,
    "num_iterations": 2,
    "top_k": 2,
    "timing_samples": 8,
    "timing_iterations": 1,
    "num_perturbations": 3,
    "timing_repeats": 1,
    "replan_every": 2,
    "compiled_step": False,
    "quick": True,
}
QUICK_PUSHT_DATA = {"num_episodes": 4, "episode_length": 16}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="the JSON report to write")
    parser.add_argument("--output-dir", default=None, help="trained models and data (default: <output>_runs/)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--methods", nargs="+", choices=PLANNING_METHODS, default=list(PLANNING_METHODS))
    parser.add_argument("--episodes", type=int, default=None, help="held-out episodes per task (50)")
    parser.add_argument("--quick", action="store_true", help="tiny settings: the whole script in a minute or two")
    parser.add_argument(
        "--eager-step",
        action="store_true",
        help="plan with the eager evolver step (default: `compile_step()`; --quick is always eager)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started = time.time()
    values = {"tasks": tuple(args.tasks), "methods": tuple(args.methods)}
    if args.quick:
        values |= QUICK_SETTINGS | {"pusht_data": PushTDataConfig(**QUICK_PUSHT_DATA)}
    if args.episodes is not None:
        values["num_episodes"] = args.episodes
    if args.eager_step:
        values["compiled_step"] = False
    settings = PlanningBenchmarkSettings(**values)
    settings.check()
    output_dir = args.output_dir or os.path.splitext(args.output)[0] + "_runs"
    report = run_planning_benchmark(settings, output_dir)
    environment = {
        "torch": torch.__version__,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "kernel_path": "torch",
        "dtype": "float32",
        "wall_clock_s": time.time() - started,
        "settings": dataclasses.asdict(settings) | {"pusht_data": dataclasses.asdict(settings.pusht_data)},
    }
    save_report(args.output, {"environment": environment, **report})


if __name__ == "__main__":
    main()
