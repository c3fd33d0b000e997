"""Training on your own data (`training.sources`, `scripts/train.py --dataset`): every source kind (`.npz`, `.npy`,
a `datasets` folder saved with `save_to_disk` or read by `load_dataset`, a folder of videos written with PyAV)
converts into the built-in worlds' rows and trains end to end, frames-only data included (the evolver's null
condition); a malformed source raises a `ValueError` naming the file or column, before anything is written."""

import json
import runpy
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import IMAGE_SIZE, tiny_decoder, tiny_encoder_config, tiny_evolver_config
from diffusers import FlowMatchEulerDiscreteScheduler
from test_training import tiny_recipe
from transformers.integrations import get_available_reporting_integrations

from modeling_veltrix import VeltrixEvolverModel, VeltrixPipeline
from modeling_veltrix.training.sources import TrajectorySourceOptions, load_trajectory_source

av = pytest.importorskip("av")

REPO = Path(__file__).parent.parent
TRAIN = REPO / "scripts" / "train.py"
NUM_TRAJECTORIES, NUM_FRAMES, ACTION_DIM = 6, 8, 2


def moving_square(num_trajectories: int = NUM_TRAJECTORIES, num_frames: int = NUM_FRAMES, size: int = 20, channels=3):
    """`(N, T, size, size, C)` uint8: a bright square moving one pixel per frame from a per-trajectory start."""
    frames = np.zeros((num_trajectories, num_frames, size, size, channels), dtype=np.uint8)
    for n in range(num_trajectories):
        for t in range(num_frames):
            x = (n + t) % (size - 4)
            frames[n, t, 4:8, x : x + 4] = 255
    return frames


def write_preset(folder: Path, **recipe_overrides) -> Path:
    """The tests' tiny configs with a recipe of 2 steps per stage and windows of 4 + 4 frames."""
    tiny_encoder_config().save_pretrained(folder / "encoder")
    tiny_evolver_config().save_pretrained(folder / "evolver")
    tiny_decoder().save_config(folder / "decoder")
    FlowMatchEulerDiscreteScheduler().save_config(folder / "scheduler")
    values = dict(trajectory_length=NUM_FRAMES, reflow_num_pairs=4, num_train_trajectories=4, num_eval_trajectories=1)
    tiny_recipe(max_steps=2, **{**values, **recipe_overrides}).to_json_file(str(folder / "recipe.json"))
    return folder


def run_train(monkeypatch, tmp_path: Path, preset: Path, out: Path, *extra: str) -> None:
    """scripts/train.py in this process, with the `datasets` cache under `tmp_path`."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setattr(sys, "argv", ["train.py", "--preset", str(preset), "--output-dir", str(out), *extra])
    runpy.run_path(str(TRAIN), run_name="__main__")


def write_video(path: Path, frames: np.ndarray, fps: int = 10) -> None:
    """Writes `frames (T, H, W, 3)` uint8 with PyAV: mp4 (h264 / mpeg4) or gif by `path`'s extension."""
    with av.open(str(path), mode="w") as container:
        if path.suffix == ".gif":
            stream = container.add_stream("gif", rate=fps)
            stream.pix_fmt = "rgb8"
        else:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            stream = container.add_stream(codec, rate=fps)
            stream.pix_fmt = "yuv420p"
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_video_folder(folder: Path, with_actions: bool = False) -> Path:
    folder.mkdir()
    for n, frames in enumerate(moving_square(size=32)):
        write_video(folder / f"clip{n}.{'gif' if n % 2 else 'mp4'}", frames)
        if with_actions:
            np.save(folder / f"clip{n}.actions.npy", np.full((NUM_FRAMES, ACTION_DIM), n, dtype=np.float32))
    return folder


def write_saved_dataset(folder: Path, frames: np.ndarray, **columns) -> Path:
    """A `datasets` dataset of rows `{"video": (T, H, W, C) uint8, **columns}` saved with `save_to_disk`."""
    datasets.Dataset.from_dict({"video": list(frames), **columns}).save_to_disk(str(folder))
    return folder


def check_rollout(out: Path, action_dim: int) -> None:
    """The trained pipeline rolls 3 frames out of a 4-frame context (free, or under actions)."""
    pipeline = VeltrixPipeline.from_pretrained(str(out / "pipeline"))
    pipeline.set_progress_bar_config(disable=True)
    context = torch.rand(1, 4, 3, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1
    actions = torch.zeros(1, 7, action_dim) if action_dim else None
    frames = pipeline(context, actions=actions, num_future_steps=3, num_inference_steps=2, output_type="pt").frames
    assert frames.shape == (1, 3, 3, IMAGE_SIZE, IMAGE_SIZE) and torch.isfinite(frames).all()


def test_npz_with_actions_trains_every_stage_and_rolls_out(tmp_path, monkeypatch):
    preset, out = write_preset(tmp_path / "preset"), tmp_path / "run"
    actions = np.random.default_rng(0).normal(size=(NUM_TRAJECTORIES, NUM_FRAMES, ACTION_DIM)).astype(np.float32)
    np.savez(tmp_path / "data.npz", frames=moving_square(), actions=actions, timestamps=np.arange(NUM_FRAMES) * 0.1)
    run_train(monkeypatch, tmp_path, preset, out, "--dataset", str(tmp_path / "data.npz"), "--held-out-count", "2")
    source = json.loads((out / "data_source.json").read_text())
    assert source["kind"] == "npz" and source["action_dim"] == ACTION_DIM and len(source["held_out_indices"]) == 2
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["trajectory_length"] == NUM_FRAMES and recipe["num_train_trajectories"] == 4
    check_rollout(out, ACTION_DIM)


def test_frames_only_npy_trains_with_the_null_condition(tmp_path, monkeypatch):
    """Grey frames, no actions, no timestamps: `--fps` gives the times, the evolver takes no actions."""
    preset, out = write_preset(tmp_path / "preset"), tmp_path / "run"
    np.save(tmp_path / "frames.npy", moving_square(channels=1))
    run_train(monkeypatch, tmp_path, preset, out, "--dataset", str(tmp_path / "frames.npy"), "--fps", "10")
    assert VeltrixEvolverModel.from_pretrained(str(out / "evolver")).config.action_dim == 0
    check_rollout(out, 0)


def test_video_folder_and_datasets_folders_train_encoder_and_evolver(tmp_path, monkeypatch):
    preset = write_preset(tmp_path / "preset")
    videos = write_video_folder(tmp_path / "videos", with_actions=True)
    saved = write_saved_dataset(tmp_path / "saved", moving_square(size=16), t=[list(np.arange(8) * 0.5)] * 6)
    local = tmp_path / "local"  # a folder `datasets.load_dataset` reads (parquet), float (T, C, H, W) frames
    frames = moving_square(size=16).transpose(0, 1, 4, 2, 3).astype(np.float32) / 127.5 - 1
    datasets.Dataset.from_dict({"pixel_values": list(frames)}).to_parquet(str(local / "train.parquet"))
    runs = {
        "videos": (videos, ()),
        "saved": (saved, ("--frames-column", "video", "--timestamps-column", "t")),
        "local": (local, ("--fps", "4")),
    }
    for name, (source, flags) in runs.items():
        out = tmp_path / f"run_{name}"
        for stage in ("encoder", "evolver"):
            run_train(monkeypatch, tmp_path, preset, out, "--dataset", str(source), *flags, "--stage", stage)
        evolver = VeltrixEvolverModel.from_pretrained(str(out / "evolver")).eval()
        action_dim = evolver.config.action_dim
        assert action_dim == (ACTION_DIM if name == "videos" else 0)
        context = torch.randn(1, 4, evolver.config.num_units_per_step, evolver.config.unit_dim)
        actions = torch.zeros(1, 7, action_dim) if action_dim else None
        assert torch.isfinite(evolver.rollout(context, 3, actions=actions).units).all()


def test_sources_convert_to_the_worlds_format(tmp_path):
    """Clips, timestamps from each source's own clock (video frame times, a column, `fps`) and the held-out split."""
    cache = str(tmp_path / "cache")
    videos = write_video_folder(tmp_path / "videos")
    options = TrajectorySourceOptions(image_size=IMAGE_SIZE, clip_length=4, min_length=4, held_out=0.34)
    train, held_out, info = load_trajectory_source(str(videos), options, cache_dir=cache)
    assert (info.kind, info.action_dim, len(info.held_out_indices)) == ("video", 0, 2)
    assert (len(train), len(held_out)) == (8, 4) and "actions" not in train.column_names
    row = train[0]
    assert row["pixel_values"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE) and row["pixel_values"].dtype == torch.float32
    assert -1 <= row["pixel_values"].min() and row["pixel_values"].max() <= 1
    torch.testing.assert_close(row["timestamps"], torch.tensor([0.0, 0.1, 0.2, 0.3]))  # the videos' own 10 fps
    np.savez(tmp_path / "data.npz", frames=moving_square(channels=1))
    options = TrajectorySourceOptions(image_size=8, num_channels=1, clip_length=8, fps=5.0, held_out=1)
    train, held_out, _ = load_trajectory_source(str(tmp_path / "data.npz"), options, cache_dir=cache)
    assert train[0]["pixel_values"].shape == (8, 1, 8, 8) and len(held_out) == 1
    torch.testing.assert_close(train[0]["timestamps"][:2], torch.tensor([0.0, 0.2]))


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **({"frames": moving_square()} | arrays))
    return path


def bad_video(source: Path) -> Path:
    folder = source / "videos"
    folder.mkdir()
    for n, frames in enumerate(moving_square(num_trajectories=2, size=16)):
        write_video(folder / f"good{n}.mp4", frames)
    (folder / "broken.mp4").write_bytes(b"not a video at all" * 10)
    return folder


def mixed_sizes(source: Path) -> Path:
    folder = source / "d"
    rows = [[np.zeros((16, 16, 3), np.uint8)] * 7 + [np.zeros((12, 16, 3), np.uint8)]] * 6
    datasets.Dataset.from_dict({"pixel_values": rows}).save_to_disk(str(folder))
    return folder


def nan_frames(source: Path) -> Path:
    folder = source / "d"
    frames = np.zeros((6, 8, 3, 16, 16), np.float32)
    frames[2, 3, 0, 0, 0] = np.nan
    datasets.Dataset.from_dict({"pixel_values": list(frames)}).save_to_disk(str(folder))
    return folder


def short_videos(source: Path) -> Path:
    folder = source / "videos"
    folder.mkdir()
    for n, frames in enumerate(moving_square(num_frames=5, size=16)):
        write_video(folder / f"v{n}.mp4", frames)
    return folder


# (what to write into tmp_path, extra flags, a regular expression the error must match)
MALFORMED = {
    "wrong rank": (lambda p: np.save(p / "f.npy", np.zeros((6, 8, 16, 16), np.uint8)) or p / "f.npy", (), "rank 5"),
    "wrong channels": (lambda p: write_npz(p / "f.npz", frames=np.zeros((6, 8, 16, 16, 4), np.uint8)), (), "4 in"),
    "float npz frames": (lambda p: write_npz(p / "f.npz", frames=np.zeros((6, 8, 16, 16, 3))), (), "uint8"),
    "missing frames": (lambda p: np.savez(p / "f.npz", video=np.zeros(3)) or p / "f.npz", (), "missing array"),
    "mixed frame sizes": (mixed_sizes, ("--fps", "10"), "row 0: .*mixed frame sizes"),
    "NaN frames": (nan_frames, ("--fps", "10"), "row 2: frames must be finite"),
    "NaN actions": (
        lambda p: write_npz(p / "f.npz", actions=np.full((6, 8, 2), np.nan), timestamps=np.arange(8.0)),
        (),
        "actions must be finite",
    ),
    "out of range": (
        lambda p: (
            datasets.Dataset.from_dict(
                {"pixel_values": list(np.full((6, 8, 3, 16, 16), 3.0, np.float32))}
            ).save_to_disk(str(p / "d"))
            or p / "d"
        ),
        ("--fps", "10"),
        r"\[-1, 1\], found \[3",
    ),
    "non-increasing timestamps": (
        lambda p: write_npz(p / "f.npz", timestamps=np.array([0, 1, 2, 2, 3, 4, 5, 6.0])),
        (),
        "strictly increasing",
    ),
    "actions of the wrong length": (lambda p: write_npz(p / "f.npz", actions=np.zeros((6, 7, 2))), ("--fps", "5"), "7"),
    "no timestamps and no fps": (lambda p: write_npz(p / "f.npz"), (), "--fps"),
    "empty dataset": (
        lambda p: write_npz(p / "f.npz", frames=np.zeros((0, 8, 16, 16, 3), np.uint8)),
        ("--fps", "5"),
        "empty",
    ),
    "unreadable video": (bad_video, (), "broken.mp4: unreadable video"),
    "missing column": (
        lambda p: write_saved_dataset(p / "d", moving_square(size=16)),
        ("--fps", "5", "--frames-column", "frames"),
        "missing column 'frames'",
    ),
    "shorter than the windows": (short_videos, ("--clip-length", "5"), "clip_length.*8"),
    "trajectory shorter than a clip": (short_videos, (), "5 frames, fewer than the clip length 8"),
    "unknown source kind": (lambda p: (p / "f.csv").write_text("a,b\n") and p / "f.csv", (), "Unknown source kind"),
    "missing source": (lambda p: p / "nowhere.npz", (), "does not exist"),
    "too few to hold out": (
        lambda p: write_npz(p / "f.npz", frames=moving_square(num_trajectories=1)),
        ("--fps", "5"),
        "too few",
    ),
    "image size": (lambda p: write_npz(p / "f.npz"), ("--fps", "5", "--image-size", "32"), "image_size 16"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_sources_are_refused_before_anything_is_written(case, tmp_path, monkeypatch):
    build, flags, match = MALFORMED[case]
    source = tmp_path / "source"
    source.mkdir()
    preset, out = write_preset(tmp_path / "preset"), tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        run_train(monkeypatch, tmp_path, preset, out, "--dataset", str(build(source)), *flags)
    assert not out.exists()


def test_data_flags_need_a_dataset_and_report_to_is_checked(tmp_path, monkeypatch):
    preset, out = write_preset(tmp_path / "preset"), tmp_path / "run"
    with pytest.raises(ValueError, match="--fps.*`--dataset`, which was not given"):
        run_train(monkeypatch, tmp_path, preset, out, "--fps", "10")
    with pytest.raises(ValueError, match="--report-to"):
        run_train(monkeypatch, tmp_path, preset, out, "--report-to", "carrier-pigeon")
    if "tensorboard" not in get_available_reporting_integrations():
        with pytest.raises(ValueError, match="tensorboard package, which is not installed"):
            run_train(monkeypatch, tmp_path, preset, out, "--report-to", "tensorboard")
    assert not out.exists()
