"""Metrics of video rollouts that do not reward blur.

Pixel errors favour the blurry mean of the possible futures. These metrics ask instead whether the objects are still
there (`object_persistence`), whether the frames keep their edges (`sharpness_ratio`) and how close the best and an
average of K sampled rollouts come to the truth (`best_and_mean_of_k_error`).

Frames are tensors in [-1, 1] of shape (N, H, C, Hi, Wi): N trajectories, H horizon steps, C channels. The built-in
worlds render bright objects on a black (-1) background, so an object is a connected set of bright pixels.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = [
    "best_and_mean_of_k_error",
    "foreground_masks",
    "high_frequency_energy",
    "object_persistence",
    "sharpness_ratio",
]

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return repr(value)


def _check_frames(name: str, frames: torch.Tensor, layout: str) -> None:
    """Raise `ValueError` unless `frames` is a non-empty finite floating tensor with one dimension per `layout` item."""
    dims = layout.split(", ")
    if not isinstance(frames, torch.Tensor) or not frames.is_floating_point() or frames.dim() != len(dims):
        expected = f"a floating tensor of rank {len(dims)} ({layout})"
        raise ValueError(f"{name}: expected {expected}, found {_describe(frames)}")
    empty = [f"{dim} = 0" for dim, size in zip(dims, frames.shape, strict=True) if size == 0]
    if empty:
        raise ValueError(f"{name}: expected every dimension of ({layout}) >= 1, found {', '.join(empty)}")
    if not torch.isfinite(frames).all():
        bad = int((~torch.isfinite(frames)).sum())
        raise ValueError(f"{name}: expected finite values, found {bad} non-finite")


def _check_same_shape(predicted: torch.Tensor, truth: torch.Tensor) -> None:
    _check_frames("predicted", predicted, "N, H, C, Hi, Wi")
    _check_frames("truth", truth, "N, H, C, Hi, Wi")
    if predicted.shape != truth.shape:
        raise ValueError(f"truth: expected the shape of predicted {tuple(predicted.shape)}, found {tuple(truth.shape)}")


def _check_threshold(threshold: float) -> None:
    if not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise ValueError(f"threshold: expected a brightness in (0, 1), found {threshold!r}")


def _foreground(frames: torch.Tensor, threshold: float) -> torch.Tensor:
    return ((frames + 1) / 2).amax(dim=2) > threshold


def _component_counts(masks: torch.Tensor, min_pixels: int) -> torch.Tensor:
    """Number of 8-connected components of at least `min_pixels` pixels in each frame of `masks` (..., Hi, Wi)."""
    stack = masks.reshape(-1, *masks.shape[-2:]).cpu().numpy()
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connectivity within a frame, none across frames
    labels, count = ndimage.label(stack, structure=structure)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    frame_of_label = np.zeros(count + 1, dtype=np.int64)
    frame_of_label[labels] = np.arange(len(stack))[:, None, None]
    kept = np.flatnonzero(sizes[1:] >= min_pixels) + 1
    counts = np.bincount(frame_of_label[kept], minlength=len(stack))
    return torch.from_numpy(counts).reshape(masks.shape[:-2]).to(masks.device)


def _high_frequency_energy(frames: torch.Tensor) -> torch.Tensor:
    n, h, c, height, width = frames.shape
    flat = ((frames + 1) / 2).reshape(n * h * c, 1, height, width)
    kernel = _LAPLACIAN.to(frames).view(1, 1, 3, 3)
    return F.conv2d(flat, kernel).square().reshape(n, h, -1).mean(dim=-1)


def foreground_masks(frames: torch.Tensor, threshold: float = 0.3) -> torch.Tensor:
    """Foreground of `frames` (N, H, C, Hi, Wi) in [-1, 1]: a bool tensor (N, H, Hi, Wi), true where the brightness,
    the maximum over channels of (x + 1) / 2, exceeds `threshold` (in (0, 1))."""
    _check_frames("frames", frames, "N, H, C, Hi, Wi")
    _check_threshold(threshold)
    return _foreground(frames, threshold)


def object_persistence(
    predicted: torch.Tensor,
    truth: torch.Tensor,
    mass_tolerance: float = 0.5,
    threshold: float = 0.3,
    *,
    min_component_pixels: int = 2,
) -> torch.Tensor:
    """Whether the objects of `truth` persist in `predicted` (both (N, H, C, Hi, Wi) in [-1, 1]): a bool tensor (N, H).

    A frame persists when (a) its foreground mass (the number of foreground pixels, `foreground_masks` at `threshold`)
    is within `mass_tolerance` relative of the truth's, |m_p - m_t| <= mass_tolerance * m_t (so an empty true frame
    needs an empty prediction), and (b) it has as many 8-connected foreground components of at least
    `min_component_pixels` pixels as the truth. A haze dissolved under the threshold fails (a); an object split in
    two, merged with another or gone fails (b).
    """
    _check_same_shape(predicted, truth)
    if not isinstance(mass_tolerance, (int, float)) or not 0 <= mass_tolerance < math.inf:
        raise ValueError(f"mass_tolerance: expected a finite relative tolerance >= 0, found {mass_tolerance!r}")
    _check_threshold(threshold)
    if not isinstance(min_component_pixels, int) or min_component_pixels < 1:
        raise ValueError(f"min_component_pixels: expected an integer >= 1, found {min_component_pixels!r}")
    predicted_masks, true_masks = _foreground(predicted, threshold), _foreground(truth, threshold)
    predicted_mass, true_mass = predicted_masks.sum(dim=(-2, -1)), true_masks.sum(dim=(-2, -1))
    mass_kept = (predicted_mass - true_mass).abs() <= mass_tolerance * true_mass
    count_kept = _component_counts(predicted_masks, min_component_pixels) == _component_counts(
        true_masks, min_component_pixels
    )
    return mass_kept & count_kept


def high_frequency_energy(frames: torch.Tensor) -> torch.Tensor:
    """High-frequency energy of `frames` (N, H, C, Hi, Wi) in [-1, 1], Hi and Wi >= 3: a tensor (N, H), the mean
    squared response of the 3x3 Laplacian [[0, 1, 0], [1, -4, 1], [0, 1, 0]] over the channels and the valid region of
    the frames mapped to [0, 1]."""
    _check_frames("frames", frames, "N, H, C, Hi, Wi")
    if min(frames.shape[-2:]) < 3:
        raise ValueError(f"frames: expected a spatial size of at least 3 x 3, found {tuple(frames.shape[-2:])}")
    return _high_frequency_energy(frames)


def sharpness_ratio(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Sharpness of `predicted` relative to `truth` (both (N, H, C, Hi, Wi) in [-1, 1], Hi and Wi >= 3): a tensor (H,),
    per horizon step the mean over trajectories of `high_frequency_energy(predicted)` over the same mean of `truth`.

    1 for an exact copy, below 1 for a blurred prediction; nan at the steps where the truth has no energy at all.
    """
    _check_same_shape(predicted, truth)
    if min(truth.shape[-2:]) < 3:
        raise ValueError(f"truth: expected a spatial size of at least 3 x 3, found {tuple(truth.shape[-2:])}")
    predicted_energy = _high_frequency_energy(predicted).mean(dim=0)
    true_energy = _high_frequency_energy(truth).mean(dim=0)
    return torch.where(true_energy > 0, predicted_energy / true_energy, torch.nan)


def best_and_mean_of_k_error(
    samples: torch.Tensor, truth: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best-of-K and mean-of-K pixel MSE of K sampled rollouts `samples` (N, K, H, C, Hi, Wi) against `truth`
    (N, H, C, Hi, Wi), both in [-1, 1], the error measured in [0, 1] units ((x + 1) / 2).

    Returns `(best, mean, best_index)`: `best` (H,) is the per-step MSE, averaged over trajectories, of the one sample
    per trajectory with the lowest MSE over the whole horizon (chosen per sequence, not per step, as in stochastic
    video prediction); `mean` (H,) is the per-step MSE averaged over all samples and trajectories (the expected error
    of one sample, not the error of the sample mean); `best_index` (N,) is the chosen sample of each trajectory. Over
    the horizon `best.mean() <= mean.mean()`; at a single step `best` can exceed `mean`.
    """
    _check_frames("samples", samples, "N, K, H, C, Hi, Wi")
    _check_frames("truth", truth, "N, H, C, Hi, Wi")
    if samples.shape[0] != truth.shape[0] or samples.shape[2:] != truth.shape[1:]:
        raise ValueError(
            f"truth: expected shape {(samples.shape[0], *samples.shape[2:])} to match samples "
            f"{tuple(samples.shape)}, found {tuple(truth.shape)}"
        )
    errors = ((samples - truth.unsqueeze(1)) / 2).square().flatten(3).mean(dim=-1)  # (N, K, H)
    best_index = errors.mean(dim=-1).argmin(dim=1)
    best = errors[torch.arange(len(errors)), best_index].mean(dim=0)
    return best, errors.mean(dim=(0, 1)), best_index
