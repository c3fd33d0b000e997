"""Decoder quality and speed against the number of Euler steps.

    python scripts/benchmark_decoder.py --pipeline runs/demo/pipeline --output runs/benchmark_decoder.json
    python scripts/benchmark_decoder.py --quick --output /tmp/benchmark_decoder.json   # random tiny weights, smoke

Decodes the encoder's units of held-out frames of the pipeline's world with 1, 2, 4, 8 and 50 Euler steps (the
same noise for every count) and reports PSNR / SSIM against the ground-truth frames, the encoder's direct
readout as a reference, and frames/s per step count (interleaved rounds after a warm-up; median and min–max).
Target: `psnr_4_over_50` (PSNR at 4 steps / PSNR at 50 steps, >= 0.95). Writes JSON in the shape of
BENCHMARKS.md; exits 0 whether or not the target is met.
"""

import argparse
import json
import os
import tempfile

from modeling_veltrix import VeltrixPipeline
from modeling_veltrix.benchmarks import run_decoder_benchmark, save_report
from modeling_veltrix.training import assemble_pipeline, load_or_create_models

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL_STEPS = (1, 2, 4, 8, 50)
QUICK_STEPS = (1, 4, 50)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", help="a saved VeltrixPipeline folder (e.g. runs/demo/pipeline)")
    parser.add_argument("--quick", action="store_true", help="random-weight veltrix-tiny, few frames: a smoke run")
    parser.add_argument("--output", required=True, help="where the JSON goes")
    parser.add_argument("--world", default=None, help="world of the held-out frames (default: the pipeline's)")
    parser.add_argument("--eval-seed", type=int, default=None, help="seed of the held-out trajectories")
    parser.add_argument("--num-trajectories", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per step count")
    args = parser.parse_args()
    if bool(args.pipeline) == args.quick:
        parser.error("give exactly one of --pipeline DIR or --quick")
    return args


def load_pipeline(args: argparse.Namespace) -> tuple[VeltrixPipeline, dict]:
    """The pipeline to measure and the recipe it was trained with (world, held-out seed)."""
    if args.quick:
        preset = os.path.join(REPO_ROOT, "configuration", "veltrix-tiny")
        with tempfile.TemporaryDirectory() as empty:
            pipeline = assemble_pipeline(load_or_create_models(preset, empty), preset)
        with open(os.path.join(preset, "recipe.json"), encoding="utf-8") as handle:
            return pipeline, json.load(handle)
    pipeline = VeltrixPipeline.from_pretrained(args.pipeline)
    recipe_path = os.path.join(args.pipeline, "recipe.json")
    recipe = {}
    if os.path.exists(recipe_path):
        with open(recipe_path, encoding="utf-8") as handle:
            recipe = json.load(handle)
    return pipeline, recipe


def main() -> None:
    args = parse_args()
    pipeline, recipe = load_pipeline(args)
    pipeline.set_progress_bar_config(disable=True)
    world = args.world or recipe.get("world", "bouncing_balls")
    eval_seed = args.eval_seed if args.eval_seed is not None else recipe.get("eval_seed", 1_000_000)
    num_trajectories, repeats = (2, 2) if args.quick else (args.num_trajectories, args.repeats)
    step_counts = QUICK_STEPS if args.quick else FULL_STEPS
    weights = "random (quick smoke run)" if args.quick else os.path.abspath(args.pipeline)
    report = run_decoder_benchmark(pipeline, world, eval_seed, num_trajectories, step_counts, repeats, weights)
    save_report(args.output, report)
    for n, values in report["results"]["per_num_inference_steps"].items():
        print(
            f"{n:>3} steps: PSNR {values['psnr']:.2f} dB, SSIM {values['ssim']:.4f}, "
            f"{values['frames_per_s']['median']:.1f} frames/s"
        )


if __name__ == "__main__":
    main()
