"""Evaluation of a run trained on your own data (`scripts/train.py --dataset SOURCE --output-dir DIR`): the rollout
errors of its pipeline on the trajectories it did not train on, against the copy-last-frame and mean-of-context
references, as a report in the shape of BENCHMARKS.md.

    python scripts/evaluate.py --run-dir runs/mine --output runs/mine/evaluation.json

The run folder holds what the evaluation needs: `pipeline/` (the trained `VeltrixPipeline`), `recipe.json` (its
windows) and `data_source.json` (the source and the options it was converted with, `TrajectorySourceInfo.to_dict()`).
The source is converted again with the same options, so its held-out split is the one training held out.
"""

import dataclasses
import json
import os
import time

import datasets

from ..pipeline_veltrix import VeltrixPipeline
from ..training import VeltrixTrainingRecipe
from ..training.sources import TrajectorySourceInfo, TrajectorySourceOptions, load_trajectory_source
from .rollouts import RolloutEvaluation, evaluate_rollouts, rollout_targets

SPLITS = ("held_out", "all")
# What a run folder must hold, and the command that writes it.
RUN_FILES = {
    "pipeline": "`scripts/train.py --dataset SOURCE --output-dir DIR` (all stages: encoder, evolver, decoder)",
    "recipe.json": "`scripts/train.py --output-dir DIR`",
    "data_source.json": "`scripts/train.py --dataset SOURCE --output-dir DIR` (a run on your own data)",
}


def _read_run(run_dir: str) -> tuple[VeltrixTrainingRecipe, dict]:
    """The recipe and the recorded source (`data_source.json` as a dict) of `run_dir`, whose files are checked."""
    if not os.path.isdir(run_dir):
        raise ValueError(f"`run_dir` {run_dir} is not a folder; train a run into it with {RUN_FILES['pipeline']}.")
    for name, command in RUN_FILES.items():
        path = os.path.join(run_dir, name)
        present = os.path.isdir(path) if name == "pipeline" else os.path.isfile(path)
        if not present:
            raise ValueError(f"{run_dir} has no {name}, which {command} writes.")
    recipe = VeltrixTrainingRecipe.from_json_file(os.path.join(run_dir, "recipe.json"))
    with open(os.path.join(run_dir, "data_source.json"), encoding="utf-8") as stream:
        recorded = json.load(stream)
    return recipe, recorded


def _load_split(
    source: str, options: TrajectorySourceOptions, split: str, recorded: dict, cache_dir: str | None
) -> tuple[datasets.Dataset, TrajectorySourceInfo]:
    """The trajectories of `source` to evaluate: the held-out clips (checked to be those of the recorded source
    trajectories), or all clips of the source."""
    if split == "all":  # every trajectory is evaluated; which one the conversion holds out does not matter
        options = dataclasses.replace(options, held_out=1)
    train, held_out, info = load_trajectory_source(source, options, cache_dir=cache_dir)
    if split == "all":
        return datasets.concatenate_datasets([train, held_out]).with_format("torch"), info
    if list(info.held_out_indices) != list(recorded["held_out_indices"]):
        raise ValueError(
            f"{source}: converted with the run's options it holds out the trajectories {list(info.held_out_indices)}, "
            f"but training held out {recorded['held_out_indices']} of {recorded['num_source_trajectories']}: the "
            f"source changed since training (it now has {info.num_source_trajectories}); evaluate it with "
            "split='all' (`--split all`), knowing that the run may have trained on some of it."
        )
    return held_out, info


def own_data_rollouts(
    run_dir: str,
    source: str | None = None,
    horizon: int | None = None,
    num_inference_steps: int = 8,
    batch_size: int = 16,
    seed: int = 0,
    split: str | None = None,
    clip_length: int | None = None,
    fps: float | None = None,
    frames_column: str | None = None,
    actions_column: str | None = None,
    timestamps_column: str | None = None,
    num_example_trajectories: int = 4,
    cache_dir: str | None = None,
) -> tuple[dict, RolloutEvaluation]:
    """`evaluate_own_data`'s report and the `RolloutEvaluation` behind it (whose example frames make the pictures)."""
    started = time.time()
    recipe, recorded = _read_run(run_dir)
    recorded_options = TrajectorySourceOptions(**recorded["options"])
    same_source = source is None or os.path.realpath(source) == os.path.realpath(recorded["source"])
    source = recorded["source"] if source is None else str(source)
    split = split or ("held_out" if same_source else "all")
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
    changes = {
        "clip_length": clip_length,
        "fps": fps,
        "frames_column": frames_column,
        "actions_column": actions_column,
        "timestamps_column": timestamps_column,
    }
    options = dataclasses.replace(recorded_options, **{k: v for k, v in changes.items() if v is not None})
    context_length = recipe.context_length
    horizon = options.clip_length - context_length if horizon is None else horizon
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"`horizon` must be an integer >= 1, got {horizon!r}.")
    if context_length + horizon > options.clip_length:
        raise ValueError(
            f"`horizon` {horizon} does not fit: the rollout starts from the recipe's context_length {context_length} "
            f"frames and the clips have {options.clip_length} (context + horizon <= clip length); lower `horizon` "
            f"(at most {options.clip_length - context_length}) or convert longer clips with `clip_length` "
            "(`--clip-length`)."
        )
    if not os.path.exists(source):
        raise ValueError(
            f"The source {source} does not exist (relative paths are read from the current folder). Give its path "
            "with `source` (`--dataset`), and split='held_out' (`--split held_out`) if it is the data the run "
            "trained on, moved."
        )
    pipeline = VeltrixPipeline.from_pretrained(os.path.join(run_dir, "pipeline"))
    pipeline.set_progress_bar_config(disable=True)
    dataset, info = _load_split(source, options, split, recorded, cache_dir)
    action_dim = pipeline.evolver.config.action_dim
    if info.action_dim != action_dim:
        raise ValueError(
            f"{source} has actions of width {info.action_dim} (0: none), the run's evolver takes {action_dim}: "
            "evaluate the run on data like the data it trained on."
        )
    evaluation = evaluate_rollouts(
        pipeline,
        dataset,
        context_length,
        horizon,
        num_inference_steps=num_inference_steps,
        seed=seed,
        batch_size=batch_size,
        num_example_trajectories=num_example_trajectories,
    )
    # Imported here: `benchmarks` imports this package (`benchmarks.decoder` reads `image_quality`).
    from ..benchmarks.reports import environment_record

    encoder = pipeline.encoder
    report = {
        "environment": {
            **environment_record(pipeline),
            "shapes": {
                "trajectories": evaluation.num_trajectories,
                "context_length": context_length,
                "horizon": horizon,
                "training_window": recipe.rollout_window,
                "clip_length": options.clip_length,
                "image_size": options.image_size,
                "units_per_step": encoder.config.num_units_per_step,
                "unit_dim": encoder.config.unit_dim,
            },
            "data": {
                "run_dir": run_dir,
                "split": split,
                "source": {**info.to_dict(), "held_out_indices": list(info.held_out_indices)},  # as in JSON
                "training_source": recorded,
            },
            "sampling": {
                "decoder": "flow matching, FlowMatchEulerDiscreteScheduler",
                "num_inference_steps": num_inference_steps,
                "initial_noise": "standard normal (a sharp sample, not the conditional mean)",
                "generator_seed": seed,
                "batch_size": batch_size,
            },
            "wall_clock_s": None,
        },
        "results": {
            "horizons": list(range(1, horizon + 1)),
            **{
                metric: {name: values.tolist() for name, values in getattr(evaluation, metric).items()}
                for metric in ("pixel_mse", "latent_mse", "psnr", "ssim")
            },
            "pixel_mse_per_trajectory_veltrix": evaluation.pixel_mse_per_trajectory.tolist(),
        },
        "targets": rollout_targets(evaluation, recipe.rollout_window),
    }
    report["environment"]["wall_clock_s"] = round(time.time() - started, 1)
    return report, evaluation


def evaluate_own_data(
    run_dir: str,
    source: str | None = None,
    horizon: int | None = None,
    num_inference_steps: int = 8,
    batch_size: int = 16,
    seed: int = 0,
    split: str | None = None,
    clip_length: int | None = None,
    fps: float | None = None,
    frames_column: str | None = None,
    actions_column: str | None = None,
    timestamps_column: str | None = None,
    cache_dir: str | None = None,
) -> dict:
    """Evaluates the run that `scripts/train.py --dataset SOURCE --output-dir run_dir` trained: rolls its pipeline out
    from the recipe's `context_length` frames of each evaluated clip for `horizon` steps and measures the errors of
    Veltrix, copy-last-frame and mean-of-context (`evaluate_rollouts`).

    Args:
        run_dir: the run folder, with `pipeline/`, `recipe.json` and `data_source.json`.
        source: the data to evaluate on; defaults to the recorded source (`data_source.json`), converted again with
            the recorded options, whose held-out split is then the one training did not see. Another source is
            converted with the same options (image size, channels, clip length, frame rate, columns) and evaluated
            whole (`split="all"`: none of it was trained on; it needs at least 2 trajectories).
        horizon: future steps to roll out; defaults to the clip length minus `context_length`, the longest that fits.
        num_inference_steps: Euler steps of the flow decoder for the predicted frames.
        batch_size: trajectories per rollout batch; the decoder's noise of batch `i` is seeded with `seed + i`.
        split: `"held_out"` (the default for the recorded source: the clips of the source trajectories training held
            out, checked against `data_source.json`) or `"all"` (the default for another source: every clip). Give
            `"held_out"` with `source` for the training data moved to another path.
        clip_length, fps, frames_column, actions_column, timestamps_column: replace the recorded conversion options
            (`TrajectorySourceOptions`); longer clips allow longer horizons, the held-out source trajectories stay the
            same. The image size, channels, held-out count and seed stay those of the run.
        cache_dir: the `datasets` cache for the converted source (default: the `datasets` cache).

    Returns:
        The report (BENCHMARKS.md shape): `environment` (versions, device, shapes, the data: split, the converted
        source's `TrajectorySourceInfo` and the recorded one, sampling), `results` (`horizons` 1 … H; `pixel_mse`,
        `latent_mse`, `psnr`, `ssim`: predictor -> a value per horizon; `pixel_mse_per_trajectory_veltrix`: one
        value per evaluated clip) and `targets` (`rollout_targets` over the run's training window).

    Every problem of the run folder (a missing file, with the command that writes it), of `horizon` (below 1, or
    longer than the clips allow) and of the source raises a `ValueError` before any rollout.

    >>> report = evaluate_own_data("runs/mine")
    >>> report["results"]["pixel_mse"]["veltrix"][0]  # pixel MSE one step ahead
    """
    report, _ = own_data_rollouts(
        run_dir,
        source,
        horizon,
        num_inference_steps,
        batch_size,
        seed,
        split,
        clip_length,
        fps,
        frames_column,
        actions_column,
        timestamps_column,
        cache_dir=cache_dir,
    )
    return report
