"""The Veltrix demo: learn a small physical world on this machine, roll it out, save and reload the pipeline.

    python scripts/demo.py --output-dir runs/demo

Builds the built-in world (bouncing balls by default), trains the `veltrix-tiny` preset stage by stage
(encoder -> evolver -> decoder), rolls out 3x the training window from held-out contexts and writes:

    DIR/metrics.json   per-horizon rollout MSE (pixel and latent) of Veltrix, copy-last-frame and mean-frame
    DIR/rollout.gif    ground truth | prediction | error, side by side
    DIR/error_vs_horizon.png
    DIR/pipeline/      the saved VeltrixPipeline

then reloads DIR/pipeline as a Hub user without this package would (a fresh process where `import modeling_veltrix`
fails, `DiffusionPipeline.from_pretrained(DIR/pipeline, trust_remote_code=True)`) and checks that it reproduces the
rollout for the same seed.
Re-running with the same DIR resumes: finished stages are loaded, an interrupted stage continues from its last
checkpoint.
"""

import argparse
import dataclasses
import os
import shutil
import tempfile
import time

import torch
from safetensors.torch import save_file

from modeling_veltrix.benchmarks import environment_record
from modeling_veltrix.evaluation import (
    evaluate_encoded_modalities,
    evaluate_future_modalities,
    evaluate_rollouts,
    rollout_targets,
)
from modeling_veltrix.evaluation.visualization import save_error_plot, save_rollout_gif
from modeling_veltrix.hub.model_card import render_model_card, save_model_card, validate_model_card
from modeling_veltrix.hub.remote_code_check import run_without_package
from modeling_veltrix.repository_check import write_json_atomic
from modeling_veltrix.training import (
    STAGES,
    VeltrixTrainingRecipe,
    assemble_pipeline,
    build_datasets,
    check_preset,
    check_stage_prerequisites,
    load_or_create_models,
    train_stages,
    world_action_dim,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELOAD_CHECK_SEED = 1234


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True, help="where the run, metrics, GIF and pipeline go")
    parser.add_argument(
        "--preset",
        default=os.path.join(REPO_ROOT, "configuration", "veltrix-tiny"),
        help="preset folder with encoder/, evolver/, decoder/, scheduler/ configs and recipe.json",
    )
    parser.add_argument("--world", default=None, help="override the recipe's world (bouncing_balls, pendulum)")
    parser.add_argument(
        "--num-inference-steps", type=int, default=8, help="Euler steps of the flow decoder for the rollout frames"
    )
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every stage's max_steps (smoke runs)")
    return parser.parse_args()


def scaled_recipe(args: argparse.Namespace) -> VeltrixTrainingRecipe:
    recipe = VeltrixTrainingRecipe.from_json_file(os.path.join(args.preset, "recipe.json"))
    if args.world is not None:
        recipe.world = args.world
    if args.steps_scale <= 0:
        raise ValueError(f"`--steps-scale` must be > 0, got {args.steps_scale}.")
    for stage in STAGES:
        stage_recipe = getattr(recipe, stage)
        stage_recipe.max_steps = max(1, round(stage_recipe.max_steps * args.steps_scale))
        stage_recipe.warmup_steps = min(stage_recipe.warmup_steps, stage_recipe.max_steps // 2)
    return recipe


def reload_check(pipeline_dir: str, check_file: str) -> None:
    """Reloads the saved pipeline with its own code in a fresh process without this package and compares its
    rollout with the saved one."""
    code = (
        "import sys, torch\n"
        "from diffusers import DiffusionPipeline\n"
        "from safetensors.torch import load_file\n"
        "pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        "ref = load_file(sys.argv[2])\n"
        "out = pipe(ref['context'], actions=ref['actions'], timestamps=ref['timestamps'],\n"
        "           num_future_steps=ref['frames'].shape[1], num_inference_steps=int(ref['num_inference_steps']),\n"
        f"           generator=torch.Generator().manual_seed({RELOAD_CHECK_SEED}), output_type='pt')\n"
        "diff = (out.frames - ref['frames']).abs().max().item()\n"
        "print(f'reloaded pipeline: max abs difference of the rollout frames = {diff:.3g}')\n"
        "sys.exit(0 if diff <= 1e-5 else 1)\n"
    )
    with tempfile.TemporaryDirectory() as workdir:
        result = run_without_package(code, [os.path.abspath(pipeline_dir), os.path.abspath(check_file)], workdir)
    print(result.stdout, end="")
    if result.returncode != 0:
        raise SystemExit(f"The reloaded pipeline did not reproduce the rollout:\n{result.stderr[-3000:]}")


def evaluate_modalities(pipeline, held_out, recipe: VeltrixTrainingRecipe) -> dict:
    """For a multimodal preset: retrieval and read-back on every encoded held-out step, and captions and audio read
    from the evolved states of the first `rollout_window` future steps."""
    data = held_out[:]
    results = {
        "encoded_modalities": evaluate_encoded_modalities(pipeline.encoder, data, data["captions"]),
        "future_modalities": evaluate_future_modalities(
            pipeline, held_out, recipe.context_length, recipe.rollout_window
        ),
    }
    for name, values in results.items():
        shown = {key: value for key, value in values.items() if not isinstance(value, list)}
        print(f"[veltrix] {name}: {shown}")
    return results


def main() -> None:
    args = parse_args()
    started = time.time()
    check_preset(args.preset)
    recipe = scaled_recipe(args)
    recipe.validate()  # also the fields changed by --world and --steps-scale
    check_stage_prerequisites(STAGES, args.output_dir, skip_finished=True)
    os.makedirs(args.output_dir, exist_ok=True)
    recipe.to_json_file(os.path.join(args.output_dir, "recipe.json"))

    train_dataset, held_out = build_datasets(recipe)
    models = load_or_create_models(args.preset, args.output_dir, world_action_dim(recipe), seed=recipe.seed)
    train_stages(STAGES, models, args.preset, train_dataset, recipe, args.output_dir, skip_finished=True)

    pipeline = assemble_pipeline(models, args.preset)
    encoder, evolver, decoder = models
    pipeline.set_progress_bar_config(disable=True)
    pipeline_dir = os.path.join(args.output_dir, "pipeline")
    pipeline.save_pretrained(pipeline_dir)

    horizon = 3 * recipe.rollout_window
    evaluation = evaluate_rollouts(
        pipeline, held_out, recipe.context_length, horizon, num_inference_steps=args.num_inference_steps, seed=0
    )
    metrics = {
        "environment": {
            **environment_record(pipeline),
            "shapes": {
                "held_out_trajectories": len(held_out),
                "context_length": recipe.context_length,
                "horizon": horizon,
                "training_window": recipe.rollout_window,
                "units_per_step": encoder.config.num_units_per_step,
                "unit_dim": encoder.config.unit_dim,
            },
            "data": {"world": recipe.world, "split": "held-out", "seed": recipe.eval_seed},
            "sampling": {
                "decoder": "flow matching, FlowMatchEulerDiscreteScheduler",
                "num_inference_steps": args.num_inference_steps,
                "initial_noise": "standard normal (a sharp sample, not the conditional mean)",
                "generator_seed": 0,
            },
            "wall_clock_s": None,
        },
        "results": {
            "horizons": list(range(1, horizon + 1)),
            "pixel_mse": {name: values.tolist() for name, values in evaluation.pixel_mse.items()},
            "latent_mse": {name: values.tolist() for name, values in evaluation.latent_mse.items()},
            "parameters": {
                name: sum(p.numel() for p in model.parameters())
                for name, model in (("encoder", encoder), ("evolver", evolver), ("decoder", decoder))
            },
        },
        "targets": rollout_targets(evaluation, recipe.rollout_window),
    }
    if encoder.config.is_fused:
        metrics["results"] |= evaluate_modalities(pipeline, held_out, recipe)
    save_rollout_gif(
        evaluation.true_frames[:4], evaluation.predicted_frames[:4], os.path.join(args.output_dir, "rollout.gif")
    )
    save_error_plot(evaluation.pixel_mse, os.path.join(args.output_dir, "error_vs_horizon.png"), recipe.rollout_window)

    check_file = os.path.join(args.output_dir, "reload_check.safetensors")
    sample = held_out[:2]
    total = recipe.context_length + horizon
    reference = pipeline(
        sample["pixel_values"][:, : recipe.context_length],
        actions=sample["actions"][:, :total],
        timestamps=sample["timestamps"][:, :total],
        num_future_steps=horizon,
        num_inference_steps=args.num_inference_steps,
        generator=torch.Generator().manual_seed(RELOAD_CHECK_SEED),
        output_type="pt",
    )
    save_file(
        {
            "context": sample["pixel_values"][:, : recipe.context_length].contiguous(),
            "actions": sample["actions"][:, :total].contiguous(),
            "timestamps": sample["timestamps"][:, :total].contiguous(),
            "frames": reference.frames.contiguous(),
            "num_inference_steps": torch.tensor(args.num_inference_steps),
        },
        check_file,
    )
    reload_check(pipeline_dir, check_file)

    metrics["environment"]["wall_clock_s"] = round(time.time() - started, 1)
    write_json_atomic(os.path.join(args.output_dir, "metrics.json"), metrics)
    for name in ("rollout.gif", "error_vs_horizon.png", "recipe.json", "metrics.json"):
        shutil.copyfile(os.path.join(args.output_dir, name), os.path.join(pipeline_dir, name))
    card = render_model_card(
        os.path.join(REPO_ROOT, "model_card.md"),
        pipeline,
        metrics,
        dataclasses.asdict(recipe),
        "veltrix-tiny-" + recipe.world,
        pipeline_dir,
    )
    save_model_card(card, pipeline_dir)
    validate_model_card(pipeline_dir)
    for target in metrics["targets"]:
        verdict = "met" if target["value"] < target["target"] else "NOT met"
        print(f"[veltrix] {target['name']} = {target['value']:.3f} ({target['op']} {target['target']}: {verdict})")
    print(f"[veltrix] done in {metrics['environment']['wall_clock_s']} s; outputs in {args.output_dir}")


if __name__ == "__main__":
    main()
