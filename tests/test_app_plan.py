"""What the demo app's Plan tab shows (`planning.viewer`): a reach episode planned with a tiny pipeline and executed in
the true world, as the goal frame and a simulator | plan | error animation; the goal preview; and the errors for a
pipeline of another world and for bad arguments, which the app's handlers show as `gr.Error`."""

import importlib.util
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import tiny_evolver_config
from hub_helpers import tiny_pipeline

from modeling_veltrix import VeltrixEvolverModel
from modeling_veltrix.evaluation.viewer import OutputFolders
from modeling_veltrix.planning import ReachTaskConfig, goal_preview, sample_reach_episodes, view_plan

REPO = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(image_size=32)


@pytest.mark.parametrize("method", ["cem", "gradient"])
def test_a_plan_is_executed_and_shown_beside_the_simulator(pipe, tmp_path, method):
    view = view_plan(pipe, 2, method, num_samples=8, num_iterations=2, output_dir=str(tmp_path), horizon=3)
    gif = PIL.Image.open(view.gif_path)
    assert gif.n_frames == 3 and gif.size == (3 * 32 * 4, 32 * 4)  # simulator | plan | error, one per step
    assert PIL.Image.open(view.goal_path).size == (32 * 4, 32 * 4)
    assert isinstance(view.success, bool) and view.distance >= 0 and view.milliseconds > 0
    assert len(view.objective_per_iteration) == 2
    assert view.objective_per_iteration[1] <= view.objective_per_iteration[0]


def test_the_preview_is_the_goal_of_the_planned_episode(pipe, tmp_path):
    preview = goal_preview(4, horizon=3)
    view = view_plan(pipe, 4, "mppi", num_samples=8, num_iterations=1, output_dir=str(tmp_path), horizon=3)
    assert preview.tobytes() == PIL.Image.open(view.goal_path).convert("RGB").tobytes()
    episode = sample_reach_episodes(ReachTaskConfig(num_episodes=5, context_length=8, gap=3))[4]
    pixels = torch.from_numpy(np.asarray(preview)[::4, ::4].copy()).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(pixels, episode.goal_frame, atol=1 / 127.5, rtol=0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"method": "random"}, "method"),
        ({"num_samples": 0}, "num_samples"),
        ({"num_iterations": -1}, "num_iterations"),
        ({"horizon": 0}, "horizon"),
        ({"episode_index": -1}, "episode_index"),
    ],
)
def test_bad_arguments_raise_a_value_error_naming_them(pipe, tmp_path, arguments, message):
    settings = {"episode_index": 0, "method": "cem", "num_samples": 8, "num_iterations": 1, "horizon": 3}
    with pytest.raises(ValueError, match=message):
        view_plan(pipe, output_dir=str(tmp_path), **settings | arguments)


def test_a_pipeline_of_another_world_is_refused(tmp_path):
    small = tiny_pipeline(image_size=16)
    with pytest.raises(ValueError, match="image_size"):
        view_plan(small, 0, "cem", 8, 1, str(tmp_path), horizon=3)
    other = tiny_pipeline(image_size=32)
    other.evolver = VeltrixEvolverModel(tiny_evolver_config(action_dim=3)).eval()
    with pytest.raises(ValueError, match="action_dim"):
        view_plan(other, 0, "cem", 8, 1, str(tmp_path), horizon=3)


def test_the_apps_plan_handler_shows_a_summary_and_errors_as_gradio_errors(pipe):
    spec = importlib.util.spec_from_file_location("veltrix_app_plan", REPO / "scripts" / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    outputs = OutputFolders()
    try:
        goal_path, gif_path, summary = app.make_plan(pipe, outputs)(1, "cem", 8, 2, 3, 1)
        assert PIL.Image.open(gif_path).n_frames == 3 and goal_path.endswith(".png")
        assert "px from it" in summary and "Objective per iteration" in summary
        with pytest.raises(app.gr.Error, match="image_size"):
            app.make_plan(tiny_pipeline(image_size=16), outputs)(1, "cem", 8, 2, 3, 1)
        with pytest.raises(app.gr.Error, match="num_samples"):
            app.make_plan(pipe, outputs)(1, "cem", 0, 2, 3, 1)
        with pytest.raises(app.gr.Error, match="episode_index"):
            app.preview(None, 3)
    finally:
        outputs.cleanup()
