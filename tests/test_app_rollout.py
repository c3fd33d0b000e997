"""What the demo app shows (`rollout_viewer`): rollouts from a built-in world or from uploaded frames, in both
modes, with and without ground truth."""

import numpy as np
import PIL.Image
import pytest
import torch
from hub_helpers import tiny_pipeline

from modeling_veltrix.evaluation.viewer import frames_from_images, view_rollout, world_trajectory


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(image_size=32)


@pytest.mark.parametrize("mode", ["conditional", "free"])
def test_world_rollout_against_ground_truth(pipe, tmp_path, mode):
    data = world_trajectory("bouncing_balls", seed=3, num_steps=7, image_size=32)
    assert data["pixel_values"].shape == (7, 3, 32, 32) and data["actions"].shape == (7, 2)
    view = view_rollout(
        pipe, data["pixel_values"], 4, 3, mode, str(tmp_path), actions=data["actions"], timestamps=data["timestamps"]
    )
    gif = PIL.Image.open(view.gif_path)
    assert gif.n_frames == 3 and gif.size == (3 * 32 * 4, 32 * 4)
    assert PIL.Image.open(view.plot_path).size[0] > 200
    assert set(view.pixel_mse) == {"veltrix", "copy_last", "mean_frame"}
    assert all(values.shape == (3,) and np.isfinite(values).all() for values in view.pixel_mse.values())


def test_modes_differ_when_actions_matter(pipe, tmp_path):
    data = world_trajectory("bouncing_balls", seed=3, num_steps=7, image_size=32)
    data["actions"] = torch.full_like(data["actions"], 3.0)
    errors = {
        mode: view_rollout(
            pipe, data["pixel_values"], 4, 3, mode, str(tmp_path / mode), actions=data["actions"]
        ).pixel_mse["veltrix"]
        for mode in ("conditional", "free")
    }
    assert not np.allclose(errors["conditional"], errors["free"])


def test_uploaded_frames_without_ground_truth(pipe, tmp_path):
    paths = []
    for index in range(3):
        path = tmp_path / f"frame{index}.png"
        PIL.Image.fromarray(np.full((40, 40, 3), 60 * index, dtype=np.uint8)).save(path)
        paths.append(str(path))
    frames = frames_from_images(paths, image_size=32)
    assert frames.shape == (3, 3, 32, 32) and frames.min() >= -1 and frames.max() <= 1
    torch.testing.assert_close(frames[1], torch.full((3, 32, 32), 60 / 127.5 - 1))
    view = view_rollout(pipe, frames, 3, 4, "free", str(tmp_path / "out"))
    gif = PIL.Image.open(view.gif_path)
    assert gif.n_frames == 4 and gif.size == (32 * 4, 32 * 4)  # the prediction alone
    assert view.plot_path is None and view.pixel_mse == {}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "counterfactual"}, "mode"),
        ({"mode": "conditional"}, "actions"),
        ({"context_length": 9}, "context_length"),
    ],
)
def test_bad_requests(pipe, tmp_path, kwargs, message):
    request = {"context_length": 3, "horizon": 2, "mode": "free", **kwargs}
    with pytest.raises(ValueError, match=message):
        view_rollout(pipe, torch.zeros(4, 3, 32, 32), output_dir=str(tmp_path), **request)
    with pytest.raises(ValueError, match="paths"):
        frames_from_images([], image_size=32)
