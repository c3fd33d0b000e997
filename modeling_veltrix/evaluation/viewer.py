"""What the demo app (`scripts/app.py`) shows: one rollout of a pipeline from a built-in world or from uploaded
frames, as a ground truth | prediction | error GIF and an error-vs-horizon plot against the copy-last-frame and
mean-of-context baselines.

Evolution modes are those the pipeline offers: `"conditional"` (the trajectory's actions drive the future) and
`"free"` (no actions: the evolver's null condition drives it).

Uploaded frames are checked before they are decoded: images only (`IMAGE_FORMATS`), at most `MAX_UPLOAD_BYTES` per
file, `MAX_IMAGE_PIXELS` pixels per image and `MAX_UPLOAD_FILES` files. `OutputFolders` gives each request its own
output folder and keeps only the newest few.
"""

import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from ..pipeline_veltrix import VeltrixPipeline
from ..worlds import get_world
from .rollouts import per_horizon_mse
from .visualization import save_error_plot, save_prediction_gif, save_rollout_gif

MODES = ("conditional", "free")
# Limits on uploaded frames (the app's `max_file_size` too): frames are resized to the model's few dozen pixels.
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_IMAGE_PIXELS = 2048 * 2048
MAX_UPLOAD_FILES = 128
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")


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


def check_image_upload(path: str) -> PIL.Image.Image:
    """Opens the uploaded image file `path` lazily (header only) and returns it, or raises `ValueError` naming the
    file when it is larger than `MAX_UPLOAD_BYTES`, not an image of `IMAGE_FORMATS`, or of more than
    `MAX_IMAGE_PIXELS` pixels: checked before any pixel is decoded, so a huge image costs no memory."""
    size = os.path.getsize(path)
    if size > MAX_UPLOAD_BYTES:
        raise ValueError(f"{os.path.basename(path)}: an upload may have at most {MAX_UPLOAD_BYTES} bytes, got {size}.")
    try:
        image = PIL.Image.open(path)
    except (PIL.UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{os.path.basename(path)}: uploads must be images ({', '.join(IMAGE_FORMATS)}).") from error
    if image.format not in IMAGE_FORMATS:
        image.close()
        raise ValueError(
            f"{os.path.basename(path)}: uploads must be images of {IMAGE_FORMATS}, got the format {image.format}."
        )
    if image.width * image.height > MAX_IMAGE_PIXELS:
        image.close()
        raise ValueError(
            f"{os.path.basename(path)}: an image may have at most {MAX_IMAGE_PIXELS} pixels, got {image.width}x"
            f"{image.height} = {image.width * image.height}."
        )
    return image


def frames_from_images(paths: list[str], image_size: int, num_channels: int = 3) -> torch.Tensor:
    """Image files, in order, as frames (T, C, H, W) in [-1, 1], resized to `image_size` squares. Each file is checked
    first (`check_image_upload`: size, format, pixel count), and at most `MAX_UPLOAD_FILES` are read."""
    if not paths:
        raise ValueError("`paths` must name at least one image file, got none.")
    if len(paths) > MAX_UPLOAD_FILES:
        raise ValueError(f"`paths` may name at most {MAX_UPLOAD_FILES} image files, got {len(paths)}.")
    mode = {1: "L", 3: "RGB"}[num_channels]
    arrays = []
    for path in paths:
        with check_image_upload(path) as image:
            image.draft(mode, (image_size, image_size))  # JPEG: decode at a reduced scale where it can
            arrays.append(np.asarray(image.convert(mode).resize((image_size, image_size)), dtype=np.float32))
    frames = torch.from_numpy(np.stack(arrays)).reshape(len(paths), image_size, image_size, num_channels)
    return frames.permute(0, 3, 1, 2) / 127.5 - 1.0


class OutputFolders:
    """Fresh output folders for the app's requests under one temporary root, keeping only the `keep` newest (the
    browser has fetched older ones: Gradio copies results into its own cache); `cleanup` removes the root."""

    def __init__(self, keep: int = 8):
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"`keep` must be an int >= 1, got {keep!r}.")
        self.keep = keep
        self.root = tempfile.mkdtemp(prefix="veltrix-app-")
        self._folders: list[str] = []

    def new(self) -> str:
        """A new empty folder; the oldest beyond `keep` are deleted."""
        folder = tempfile.mkdtemp(dir=self.root)
        self._folders.append(folder)
        while len(self._folders) > self.keep:
            shutil.rmtree(self._folders.pop(0), ignore_errors=True)
        return folder

    def cleanup(self) -> None:
        """Removes the root and everything under it."""
        shutil.rmtree(self.root, ignore_errors=True)
        self._folders.clear()


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
