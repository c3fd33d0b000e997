"""What the demo app's Plan tab (`scripts/app.py`) shows: one episode of the built-in reach task (`planning.reach`)
planned with a pipeline (`VeltrixPipeline.plan`, open loop: one plan of `horizon` impulses from the context) and
executed in the true simulator, as a simulator | plan | error GIF next to the goal frame.

"plan" is the decoder's rendering of the states the planner predicts its actions reach; "simulator" is what the
world does under those actions. Success is the task's: ball 0 (red) ends within one ball radius of its goal position.
"""

import os
import time
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from ..action_search import PLANNING_METHODS
from ..evaluation.visualization import save_rollout_gif
from ..pipeline_veltrix import VeltrixPipeline
from .reach import (
    REACH_ACTION_BOUND,
    REACH_INITIAL_STD,
    ReachEnvironment,
    ReachEpisode,
    ReachTaskConfig,
    reach_success,
    reach_world,
    sample_reach_episodes,
)

PREVIEW_SCALE = 4  # as the GIF's: 32-pixel frames shown ×4


@dataclass
class PlanView:
    """A planned and executed episode: the goal frame (PNG, upscaled), the simulator | plan | error GIF (one picture
    per planned step), ball 0's final distance to its goal position in pixels, whether that is a success, the
    milliseconds of the plan call (search and rendering of the plan) and the best objective after each iteration."""

    goal_path: str
    gif_path: str
    distance: float
    success: bool
    milliseconds: float
    objective_per_iteration: list[float]


def _check_count(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")


def reach_episode(episode_index: int, horizon: int, context_length: int = 8) -> ReachEpisode:
    """Episode `episode_index` of the reach task with its goal `horizon` steps after `context_length` frames."""
    _check_count("episode_index", episode_index, minimum=0)
    _check_count("horizon", horizon)
    _check_count("context_length", context_length)
    config = ReachTaskConfig(num_episodes=1, context_length=context_length, gap=horizon)
    return sample_reach_episodes(config, first_index=episode_index)[0]


def _upscaled(frame: torch.Tensor, scale: int = PREVIEW_SCALE) -> PIL.Image.Image:
    """A frame (3, S, S) in [-1, 1] as an RGB image `scale` times larger (nearest neighbour)."""
    pixels = ((frame.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return PIL.Image.fromarray(pixels.repeat(scale, axis=0).repeat(scale, axis=1))


def goal_preview(episode_index: int, horizon: int, context_length: int = 8) -> PIL.Image.Image:
    """The goal frame of episode `episode_index` (what the user picks by choosing the episode), upscaled
    `PREVIEW_SCALE` times, before any planning."""
    return _upscaled(reach_episode(episode_index, horizon, context_length).goal_frame)


def check_reach_pipeline(pipeline: VeltrixPipeline) -> None:
    """Raises a `ValueError` naming what differs when `pipeline` cannot act in the reach task's world: its evolver
    must take the world's actions (2 impulse components) and its encoder the world's frames (size, 3 channels)."""
    world = reach_world(ReachTaskConfig())
    action_dim = pipeline.evolver.config.action_dim
    if action_dim != world.action_dim:
        raise ValueError(
            f"The pipeline's evolver takes actions of {action_dim} components (`action_dim`), but the reach task's "
            f"world acts with {world.action_dim} (ball 0's velocity impulse)."
        )
    encoder = pipeline.encoder.config
    if encoder.image_size != world.config.image_size or encoder.num_channels != 3:
        raise ValueError(
            f"The pipeline's encoder reads {encoder.num_channels}-channel frames of {encoder.image_size} pixels "
            f"(`image_size`), but the reach task's world renders 3-channel frames of {world.config.image_size}."
        )


def view_plan(
    pipeline: VeltrixPipeline,
    episode_index: int,
    method: str,
    num_samples: int,
    num_iterations: int,
    output_dir: str,
    horizon: int = 25,
    num_inference_steps: int | None = None,
    seed: int = 0,
    context_length: int = 8,
) -> PlanView:
    """Plans episode `episode_index` of the reach task with `pipeline` (`method`, `num_samples` candidates,
    `num_iterations` iterations, impulses within ±`REACH_ACTION_BOUND` px/s; CEM keeps the best tenth), executes the
    plan in the true world and writes to `output_dir` `goal.png` and `plan.gif` (simulator | plan | |error| per step).
    `seed` draws the candidates and the decoder's noise; `num_inference_steps` are the decoder's Euler steps."""
    if method not in PLANNING_METHODS:
        raise ValueError(f"`method` must be one of {PLANNING_METHODS}, got {method!r}.")
    _check_count("num_samples", num_samples)
    _check_count("num_iterations", num_iterations)
    check_reach_pipeline(pipeline)
    episode = reach_episode(episode_index, horizon, context_length)
    world = reach_world(ReachTaskConfig())
    started = time.perf_counter()
    plan = pipeline.plan(
        episode.context_frames[None],
        episode.goal_frame[None],
        horizon,
        method=method,
        num_samples=num_samples,
        num_iterations=num_iterations,
        top_k=max(1, num_samples // 10),
        action_bounds=(-REACH_ACTION_BOUND, REACH_ACTION_BOUND),
        generator=torch.Generator().manual_seed(seed),
        actions=episode.context_actions[None],
        output_type="pt",
        num_inference_steps=num_inference_steps,
        initial_std=REACH_INITIAL_STD,
    )
    milliseconds = 1000.0 * (time.perf_counter() - started)
    environment = ReachEnvironment(world, episode)
    simulated = environment.step(plan.actions[0]).float()  # (horizon, 3, S, S) in [-1, 1]
    rendered = plan.frames.cpu().float() * 2.0 - 1.0  # (1, horizon, 3, S, S) in [-1, 1]
    os.makedirs(output_dir, exist_ok=True)
    goal_path, gif_path = os.path.join(output_dir, "goal.png"), os.path.join(output_dir, "plan.gif")
    _upscaled(episode.goal_frame).save(goal_path)
    save_rollout_gif(simulated[None], rendered, gif_path)
    distance = float(np.linalg.norm(environment.position - episode.goal_position))
    return PlanView(
        goal_path=goal_path,
        gif_path=gif_path,
        distance=distance,
        success=reach_success(environment.position, episode.goal_position, world.config.ball_radius),
        milliseconds=milliseconds,
        objective_per_iteration=plan.objective_per_iteration[0].tolist(),
    )
