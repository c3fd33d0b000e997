"""What the demo app (`scripts/app.py`) shows: one rollout of a pipeline from a built-in world or from uploaded
frames, as a ground truth | prediction | error GIF and an error-vs-horizon plot against the copy-last-frame and
mean-of-context baselines.

Evolution modes are those the pipeline offers: `"conditional"` (the trajectory's actions drive the future) and
`"free"` (no actions: the evolver's null condition drives it).
"""

import os
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from ..pipeline_veltrix import VeltrixPipeline
from ..worlds import get_world
from .rollouts import per_horizon_mse
from .visualization import save_error_plot, save_prediction_gif, save_rollout_gif

MODES = ("conditional", "free")


@dataclass
class RolloutView:
    """A rendered rollout: the GIF, the plot (`None` without ground truth) and the per-horizon pixel MSE of each
    predictor (empty without ground truth)."""

    gif_path: str
    plot_path: str | None
    pixel_mse: dict[str, np.ndarray]


def world_trajectory(world: str, seed: int, num_steps: int, image_size: int) -> dict[str, torch.Tensor]:
    """Trajectory 0 of `seed` of a built-in world rendered at `image_size`: pixel_values (T, C, H, W) in [-1, 1],
    actions (T, A), timestamps (T,)."""
    sample = get_world(world, image_size=image_size).generate(1, num_steps, seed)
    return {key: torch.from_numpy(sample[key][0]) for key in ("pixel_values", "actions", "timestamps")}


def frames_from_images(paths: list[str], image_size: int, num_channels: int = 3) -> torch.Tensor:
    """Image files, in order, as frames (T, C, H, W) in [-1, 1], resized to `image_size` squares."""
    if not paths:
        raise ValueError("`paths` must name at least one image file, got none.")
    mode = {1: "L", 3: "RGB"}[num_channels]
    arrays = [
        np.asarray(PIL.Image.open(path).convert(mode).resize((image_size, image_size)), dtype=np.float32)
        for path in paths
    ]
    frames = torch.from_numpy(np.stack(arrays)).reshape(len(paths), image_size, image_size, num_channels)
    return frames.permute(0, 3, 1, 2) / 127.5 - 1.0


def view_rollout(
    pipeline: VeltrixPipeline,
    frames: torch.Tensor,
    context_length: int,
    horizon: int,
    mode: str,
    output_dir: str,
    actions: torch.Tensor | None = None,
    timestamps: torch.Tensor | None = None,
    num_inference_steps: int | None = None,
    seed: int = 0,
) -> RolloutView:
    """Rolls `pipeline` out `horizon` steps from the first `context_length` of `frames` (T, C, H, W) in [-1, 1] and
    writes to `output_dir` `rollout.gif` (ground truth | prediction | error) and `error_vs_horizon.png`, or, when
    `frames` do not hold the `horizon` true future frames, a GIF of the prediction alone.

    `actions` (T', A) and `timestamps` (T',) cover at least `context_length + horizon` steps; `mode="conditional"`
    needs the actions, `"free"` ignores them.
    """
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
    total = context_length + horizon
    if context_length < 1 or context_length > frames.shape[0]:
        raise ValueError(
            f"`context_length` must be in [1, {frames.shape[0]}] (the frames given), got {context_length}."
        )
    if mode == "conditional" and (actions is None or actions.shape[0] < total):
        raise ValueError(f"mode 'conditional' needs `actions` for {total} steps (context + horizon).")
    steps = {
        "actions": actions[None, :total] if mode == "conditional" else None,
        "timestamps": None if timestamps is None else timestamps[None, :total],
    }
    output = pipeline(
        frames[None, :context_length],
        num_future_steps=horizon,
        num_inference_steps=num_inference_steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
        **steps,
    )
    prediction = output.frames.cpu() * 2.0 - 1.0  # (1, horizon, C, H, W) in [-1, 1]
    os.makedirs(output_dir, exist_ok=True)
    gif_path, plot_path = os.path.join(output_dir, "rollout.gif"), os.path.join(output_dir, "error_vs_horizon.png")
    if frames.shape[0] < total:
        save_prediction_gif(prediction[0], gif_path)
        return RolloutView(gif_path=gif_path, plot_path=None, pixel_mse={})
    context, truth = frames[None, :context_length], frames[None, context_length:total]
    save_rollout_gif(truth, prediction, gif_path)
    predictors = {
        "veltrix": prediction,
        "copy_last": context[:, -1:].expand_as(truth),
        "mean_frame": context.mean(dim=1, keepdim=True).expand_as(truth),
    }
    pixel_mse = {name: per_horizon_mse(value, truth)[0].numpy() for name, value in predictors.items()}
    save_error_plot(pixel_mse, plot_path, title="Rollout error vs horizon")
    return RolloutView(gif_path=gif_path, plot_path=plot_path, pixel_mse=pixel_mse)
