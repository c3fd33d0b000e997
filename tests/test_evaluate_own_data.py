"""Evaluating a run trained on your own data (`evaluation.own_data.evaluate_own_data`, `scripts/evaluate.py
--run-dir`): a tiny run on a frames-only `.npz` is evaluated on the trajectories it held out, from Python and by the
script; and `evaluate_rollouts` keeps only a few trajectories' frames while its averages stay the mean over all."""

import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import tiny_decoder, tiny_encoder_config, tiny_evolver_config
from diffusers import FlowMatchEulerDiscreteScheduler
from test_training import tiny_recipe

from modeling_veltrix import VeltrixPipeline
from modeling_veltrix.evaluation import (
    PREDICTORS,
    evaluate_own_data,
    evaluate_rollouts,
    image_quality,
    per_horizon_mse,
)

REPO = Path(__file__).parent.parent
TRAIN, EVALUATE = REPO / "scripts" / "train.py", REPO / "scripts" / "evaluate.py"
NUM_TRAJECTORIES, NUM_FRAMES, CONTEXT, WINDOW = 6, 8, 4, 4
METRICS = ("pixel_mse", "latent_mse", "psnr", "ssim")


def moving_square(num_trajectories: int = NUM_TRAJECTORIES, size: int = 20) -> np.ndarray:
    """`(N, T, size, size, 3)` uint8: a bright square moving one pixel per frame from a per-trajectory start."""
    frames = np.zeros((num_trajectories, NUM_FRAMES, size, size, 3), dtype=np.uint8)
    for n in range(num_trajectories):
        for t in range(NUM_FRAMES):
            x = (n + t) % (size - 4)
            frames[n, t, 4:8, x : x + 4] = 255
    return frames


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """`scripts/train.py --dataset frames.npz --fps 10 --held-out-count 2` (frames only, 2 steps per stage)."""
    root = tmp_path_factory.mktemp("own_data")
    preset = root / "preset"
    tiny_encoder_config().save_pretrained(preset / "encoder")
    tiny_evolver_config().save_pretrained(preset / "evolver")
    tiny_decoder().save_config(preset / "decoder")
    FlowMatchEulerDiscreteScheduler().save_config(preset / "scheduler")
    windows = dict(trajectory_length=NUM_FRAMES, context_length=CONTEXT, rollout_window=WINDOW, reflow_num_pairs=4)
    recipe = tiny_recipe(max_steps=2, **windows)
    recipe.to_json_file(str(preset / "recipe.json"))
    np.savez(root / "frames.npz", frames=moving_square())
    out = root / "run"
    argv = ["train.py", "--preset", str(preset), "--output-dir", str(out), "--dataset", str(root / "frames.npz")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / "datasets"))
        patch.setattr(sys, "argv", [*argv, "--fps", "10", "--held-out-count", "2"])
        runpy.run_path(str(TRAIN), run_name="__main__")
    assert (out / "pipeline" / "model_index.json").is_file()
    return out


def check_report(report: dict, horizon: int, num_trajectories: int) -> None:
    assert {"torch", "device", "threads", "kernel_path", "shapes", "data", "sampling"} <= set(report["environment"])
    results = report["results"]
    assert results["horizons"] == list(range(1, horizon + 1))
    for metric in METRICS:
        assert set(results[metric]) == set(PREDICTORS)
        for values in results[metric].values():
            assert len(values) == horizon and np.isfinite(values).all()
    per_trajectory = results["pixel_mse_per_trajectory_veltrix"]
    assert len(per_trajectory) == num_trajectories and np.isfinite(per_trajectory).all()
    names = [target["name"] for target in report["targets"]]
    assert names == ["mse_over_copy_last_within_window", "mse_over_mean_frame_within_half_window"]
    assert all(np.isfinite(target["value"]) for target in report["targets"])


def test_python_api_evaluates_the_held_out_split_training_recorded(run, tmp_path):
    recorded = json.loads((run / "data_source.json").read_text())
    report = evaluate_own_data(str(run), num_inference_steps=2, cache_dir=str(tmp_path / "datasets"))
    check_report(report, NUM_FRAMES - CONTEXT, recorded["num_held_out_clips"])
    data = report["environment"]["data"]
    assert data["split"] == "held_out" and data["training_source"] == recorded
    assert data["source"]["held_out_indices"] == recorded["held_out_indices"]
    assert data["source"]["num_held_out_clips"] == recorded["num_held_out_clips"] == 2
    assert report["environment"]["shapes"]["trajectories"] == 2

    other = tmp_path / "other.npz"  # another source: all of it is evaluated
    np.savez(other, frames=moving_square(3)[:, :, ::-1])
    report = evaluate_own_data(str(run), source=str(other), horizon=2, num_inference_steps=1, cache_dir=str(tmp_path))
    check_report(report, 2, 3)
    assert report["environment"]["data"]["split"] == "all"


def test_run_and_horizon_problems_raise_before_computing(run, tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        evaluate_own_data(str(tmp_path / "missing"))
    partial = tmp_path / "partial"
    partial.mkdir()
    with pytest.raises(ValueError, match="no pipeline.*scripts/train.py"):
        evaluate_own_data(str(partial))
    shutil.copytree(run / "pipeline", partial / "pipeline")
    with pytest.raises(ValueError, match="no recipe.json"):
        evaluate_own_data(str(partial))
    shutil.copy(run / "recipe.json", partial / "recipe.json")
    with pytest.raises(ValueError, match="no data_source.json.*--dataset"):
        evaluate_own_data(str(partial))
    for horizon, match in ((0, ">= 1"), (NUM_FRAMES - CONTEXT + 1, "does not fit")):
        with pytest.raises(ValueError, match=match):
            evaluate_own_data(str(run), horizon=horizon)
    with pytest.raises(ValueError, match="split"):
        evaluate_own_data(str(run), split="train")
    changed = tmp_path / "changed.npz"  # the training data, moved and grown: its held-out split is no longer the run's
    np.savez(changed, frames=moving_square(NUM_TRAJECTORIES + 4))
    with pytest.raises(ValueError, match="source changed"):
        evaluate_own_data(str(run), source=str(changed), split="held_out", cache_dir=str(tmp_path / "datasets"))


def test_script_writes_report_gif_and_plot(run, tmp_path):
    output = tmp_path / "evaluation" / "report.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    command = [sys.executable, str(EVALUATE), "--run-dir", str(run), "--output", str(output), "--horizon", "3"]
    result = subprocess.run([*command, "--num-inference-steps", "1"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    check_report(report, 3, 2)
    recorded = json.loads((run / "data_source.json").read_text())
    assert report["environment"]["data"]["source"]["held_out_indices"] == recorded["held_out_indices"]
    assert (output.parent / "report_rollout.gif").is_file()
    assert (output.parent / "report_error_vs_horizon.png").is_file()


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--dataset", "frames.npz"], "--run-dir DIR"),
        (["--horizon", "3"], "--horizon describe the evaluation of `--run-dir`"),
        (["--run-dir", "run", "--quick"], "--quick set up the built-in suite"),
        (["--run-dir", "run", "--worlds"], "--worlds set up the built-in suite"),
    ],
)
def test_script_flags_are_checked(flags, match, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script drops its own folder from the path
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--output", str(tmp_path / "r.json"), *flags])
    with pytest.raises(ValueError, match=match):
        runpy.run_path(str(EVALUATE), run_name="__main__")
    assert not (tmp_path / "r.json").exists()


def test_rollouts_keep_a_few_examples_and_average_over_all(run):
    """5 frames-only trajectories in batches of 2, frames kept of 2: every average is the mean over the 5."""
    pipeline = VeltrixPipeline.from_pretrained(str(run / "pipeline"))
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    frames = torch.rand(5, NUM_FRAMES, 3, 16, 16, generator=generator) * 2 - 1
    timestamps = torch.arange(NUM_FRAMES).float().expand(5, -1) / 10
    dataset = datasets.Dataset.from_dict({"pixel_values": frames.numpy(), "timestamps": timestamps.numpy()})
    dataset = dataset.with_format("torch")
    horizon = NUM_FRAMES - CONTEXT
    evaluation = evaluate_rollouts(
        pipeline, dataset, CONTEXT, horizon, num_inference_steps=1, seed=3, batch_size=2, num_example_trajectories=2
    )
    context, future = frames[:, :CONTEXT], frames[:, CONTEXT:]
    predicted = torch.cat(  # the same calls, batch by batch
        [
            pipeline(
                context[start : start + 2],
                timestamps=timestamps[start : start + 2],
                num_future_steps=horizon,
                num_inference_steps=1,
                generator=torch.Generator().manual_seed(3 + index),
                output_type="pt",
            ).frames
            * 2
            - 1
            for index, start in enumerate(range(0, 5, 2))
        ]
    )
    assert evaluation.num_trajectories == 5
    assert evaluation.true_frames.shape == evaluation.predicted_frames.shape == (2, horizon, 3, 16, 16)
    assert torch.equal(evaluation.true_frames, future[:2]) and torch.equal(evaluation.context_frames, context[:2])
    torch.testing.assert_close(evaluation.predicted_frames, predicted[:2])
    predictions = {
        "veltrix": predicted,
        "copy_last": context[:, -1:].expand_as(future),
        "mean_frame": context.mean(1, keepdim=True).expand_as(future),
    }
    for name, prediction in predictions.items():
        direct = per_horizon_mse(prediction, future)  # (5, H), one row per trajectory
        np.testing.assert_allclose(evaluation.pixel_mse[name], direct.double().mean(0).numpy(), rtol=1e-5)
        quality = [image_quality(prediction[:, h], future[:, h]) for h in range(horizon)]
        np.testing.assert_allclose(evaluation.psnr[name], [q["psnr"] for q in quality], rtol=1e-5)
        np.testing.assert_allclose(evaluation.ssim[name], [q["ssim"] for q in quality], rtol=1e-4, atol=1e-6)
        if name == "veltrix":
            per_trajectory = direct.double().mean(1).numpy()
            np.testing.assert_allclose(evaluation.pixel_mse_per_trajectory, per_trajectory, rtol=1e-5)
            assert evaluation.pixel_mse[name].mean() == pytest.approx(per_trajectory.mean(), rel=1e-6)
    for name in PREDICTORS:
        assert evaluation.latent_mse[name].shape == (horizon,) and np.isfinite(evaluation.latent_mse[name]).all()


def test_a_video_folder_run_evaluates_on_its_held_out_videos(tmp_path, monkeypatch):
    """The third source kind end to end: a folder of mp4 / gif videos with sidecar actions trains every stage and is
    evaluated on the videos it held out."""
    from test_data_sources import ACTION_DIM, run_train, write_preset, write_video_folder

    preset, out = write_preset(tmp_path / "preset", context_length=CONTEXT, rollout_window=WINDOW), tmp_path / "run"
    videos = write_video_folder(tmp_path / "videos", with_actions=True)
    run_train(monkeypatch, tmp_path, preset, out, "--dataset", str(videos), "--held-out-count", "2")
    report = evaluate_own_data(str(out), horizon=WINDOW, num_inference_steps=1, cache_dir=str(tmp_path / "cache"))
    check_report(report, WINDOW, num_trajectories=2)
    source = json.loads((out / "data_source.json").read_text())
    assert source["kind"] == "video" and source["action_dim"] == ACTION_DIM
    assert report["environment"]["data"]["source"]["held_out_indices"] == source["held_out_indices"]
