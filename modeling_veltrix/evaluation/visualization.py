"""Pictures of rollouts: the ground truth | prediction | error GIF and the error-vs-horizon plot."""

import os

import numpy as np
import PIL.Image
import torch
from matplotlib.figure import Figure


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(..., C, H, W) in [-1, 1] -> (..., H, W, C) uint8."""
    images = ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images.movedim(-3, -1).numpy()


def rollout_panels(truth: torch.Tensor, prediction: torch.Tensor, scale: int = 4) -> list[PIL.Image.Image]:
    """One image per future step: a row per trajectory of [ground truth | prediction | |error|].

    Args:
        truth, prediction: (N, H, C, height, width) frames in [-1, 1].
        scale: integer upscaling (nearest neighbour) so that 32-pixel frames are visible.
    """
    if truth.shape != prediction.shape:
        raise ValueError(
            f"`prediction` must have the shape of `truth` {tuple(truth.shape)}, got {tuple(prediction.shape)}."
        )
    error = (prediction - truth).abs() - 1.0  # |error| in [0, 2] shown on the [-1, 1] scale
    columns = torch.cat([truth, prediction, error.clamp(-1, 1)], dim=-1)  # (N, H, C, h, 3w)
    rows = torch.cat(list(columns), dim=-2)  # (H, C, N·h, 3w)
    panels = _to_uint8(rows).repeat(scale, axis=1).repeat(scale, axis=2)
    return [PIL.Image.fromarray(panel) for panel in panels]


def save_gif(panels: list[PIL.Image.Image], path: str, frame_duration_ms: int = 200) -> None:
    """Writes `panels` as a looping animation to `path` (temporary file, then rename)."""
    tmp = f"{path}.tmp"
    panels[0].save(tmp, format="GIF", save_all=True, append_images=panels[1:], duration=frame_duration_ms, loop=0)
    os.replace(tmp, path)


def save_rollout_gif(truth: torch.Tensor, prediction: torch.Tensor, path: str, frame_duration_ms: int = 200) -> None:
    """Writes the [ground truth | prediction | error] animation of frames (N, H, C, h, w) to `path`."""
    save_gif(rollout_panels(truth, prediction), path, frame_duration_ms)


def save_prediction_gif(prediction: torch.Tensor, path: str, scale: int = 4, frame_duration_ms: int = 200) -> None:
    """The predicted frames (H, C, h, w) in [-1, 1] alone as an animation (no ground truth to compare with)."""
    images = _to_uint8(prediction).repeat(scale, axis=1).repeat(scale, axis=2)
    save_gif([PIL.Image.fromarray(image.squeeze()) for image in images], path, frame_duration_ms)


def _plot_curves(axis, curves: dict[str, np.ndarray], window: int | None, title: str, log_scale: bool = False) -> None:
    """Draws one curve per predictor (error per horizon h = 1 … H) on `axis`, marking the training `window`."""
    for name, values in curves.items():
        axis.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=2, label=name)
    if window is not None:
        axis.axvline(window, color="grey", linestyle="--", label=f"training window W={window}")
    if log_scale:
        axis.set_yscale("log")
    axis.set_xlabel("horizon (steps)")
    axis.set_ylabel("pixel MSE")
    axis.set_title(title)
    axis.legend(fontsize="small")


def _save_figure(figure: Figure, path: str) -> None:
    """Writes `figure` as a PNG to `path` (temporary file, then rename)."""
    figure.tight_layout()
    tmp = f"{path}.tmp"
    figure.savefig(tmp, format="png", dpi=120)
    os.replace(tmp, path)


def save_error_plot(
    pixel_mse: dict[str, np.ndarray],
    path: str,
    window: int | None = None,
    title: str = "Rollout error vs horizon (held-out trajectories)",
) -> None:
    """Plots pixel MSE against horizon for every predictor, marking the training `window` when given; writes a PNG.
    Uses matplotlib's object API, so no backend is chosen at import."""
    figure = Figure(figsize=(6, 4))
    _plot_curves(figure.subplots(), pixel_mse, window, title)
    _save_figure(figure, path)


def save_error_grid(curves: dict[str, dict[str, np.ndarray]], path: str, window: int | None = None) -> None:
    """One panel per world (`curves`: world -> predictor -> pixel MSE per horizon), every predictor on each, on a
    log scale; writes a PNG."""
    columns = min(2, len(curves))
    rows = -(-len(curves) // columns)
    figure = Figure(figsize=(6 * columns, 4 * rows))
    axes = np.atleast_1d(figure.subplots(rows, columns)).reshape(-1)
    for axis, (world, world_curves) in zip(axes, curves.items(), strict=False):
        _plot_curves(axis, world_curves, window, world, log_scale=True)
    for axis in axes[len(curves) :]:
        axis.set_visible(False)
    _save_figure(figure, path)
