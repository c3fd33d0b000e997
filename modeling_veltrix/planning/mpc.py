"""Closed-loop planning (model-predictive control) with a Veltrix pipeline: plan, apply the first actions, observe,
replan, with the evolver's recurrent cache carried from one plan to the next.

Each observed frame is encoded once and fed to the evolver with the action that was applied (`evolver.step`), so a
replan starts from the cache of everything seen so far: nothing is re-encoded and the cost per replan does not grow
with the episode. The goal is a state at a fixed time, `num_steps` steps after the context: each replan plans the
remaining steps (at most `horizon`).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..input_validation import CLOCK_DTYPE, check_count, inputs_checked
from ..modeling_veltrix_encoder import VeltrixEncoderModel
from ..modeling_veltrix_evolver import VeltrixEvolverModel


class PlanningModels(Protocol):
    """What closed-loop planning reads: an encoder and an evolver (a `VeltrixPipeline` has both)."""

    encoder: VeltrixEncoderModel
    evolver: VeltrixEvolverModel


@dataclass
class MPCResult:
    """One closed-loop episode.

    actions: `(num_steps, A)` the applied actions.
    frames: `(num_steps, C, H, W)` the frames observed after each action, in [-1, 1].
    objectives: per replan, the plan's best objective after each iteration `(num_iterations,)`.
    planning_seconds: per replan, the wall-clock seconds of the plan.
    """

    actions: torch.Tensor
    frames: torch.Tensor
    objectives: list[torch.Tensor] = field(default_factory=list)
    planning_seconds: list[float] = field(default_factory=list)


@torch.no_grad()
def run_mpc(
    pipeline: PlanningModels,
    context_frames: torch.Tensor,
    goal: torch.Tensor,
    environment_step: Callable[[torch.Tensor], torch.Tensor],
    num_steps: int,
    horizon: int | None = None,
    replan_every: int = 1,
    context_actions: torch.Tensor | None = None,
    initial_actions: torch.Tensor | None = None,
    warm_start: bool = False,
    **plan_settings,
) -> MPCResult:
    """Drives an environment to `goal` in `num_steps` steps by replanning every `replan_every` steps.

    Args:
        pipeline: a Veltrix pipeline (or anything with an `encoder` and an `evolver`) whose evolver takes actions.
        context_frames: `(1, T, C, H, W)` the frames observed so far, in [-1, 1], one step of the evolver's
            `dt_reference` apart (so are the planned steps).
        goal: `(1, C, H, W)` the goal frame, or goal states `(1, U, D)`.
        environment_step: applies actions `(k, A)` (on the evolver's device and dtype) to the environment and returns
            the `k` frames observed after them, `(k, C, H, W)` in [-1, 1].
        num_steps: steps until the goal's time; the episode applies this many actions.
        horizon: the most steps one plan looks ahead (default: `num_steps`).
        replan_every: how many of each plan's actions are applied before the next plan (>= 1).
        context_actions: `(1, T - 1, A)` the actions that drove the context.
        initial_actions: `(1, num_steps, A)` where the searches start, per step until the goal (default: the centre
            of the action bounds); a plan of `k` steps starts from the next `k` of them.
        warm_start: replans start from the previous plan's actions that were not applied (its last one held where
            the new plan looks further ahead) instead of `initial_actions`; the first plan still starts there.
        **plan_settings: `method`, `num_samples`, `num_iterations`, `top_k`, `action_bounds`, `action_cost`,
            `generator` and the search settings of `VeltrixEvolverModel.plan`.
    """
    encoder, evolver = pipeline.encoder, pipeline.evolver
    check_count("num_steps", num_steps, 100_000)
    horizon = num_steps if horizon is None else horizon
    check_count("horizon", horizon, 100_000)
    check_count("replan_every", replan_every, num_steps)
    if not isinstance(warm_start, bool):
        raise ValueError(f"`warm_start` must be a bool, got {warm_start!r}.")
    if not callable(environment_step):
        raise ValueError(f"`environment_step` must be callable, got {type(environment_step).__name__}.")
    encoder.check_pixel_values(context_frames)
    if context_frames.shape[0] != 1:
        raise ValueError(f"`context_frames` must hold one episode (1, T, C, H, W), got {tuple(context_frames.shape)}.")
    frame_shape = tuple(context_frames.shape[2:])
    if goal.dim() == 4:
        encoder.check_pixel_values(goal[:, None])
    if initial_actions is not None:
        evolver._check_actions("initial_actions", initial_actions, (1, num_steps))
    with inputs_checked():
        units = encoder(context_frames).units.to(evolver.dtype)
        goal_units = encoder(goal[:, None]).units[:, 0].to(evolver.dtype) if goal.dim() == 4 else goal
    cache = evolver.prefill(units, actions=context_actions)
    state = units[:, -1]
    interval = evolver.config.dt_reference
    now = torch.full((1,), (units.shape[1] - 1) * interval, dtype=CLOCK_DTYPE, device=units.device)
    applied, observed, objectives, seconds = [], [], [], []
    done = 0
    while done < num_steps:
        steps = min(horizon, num_steps - done)
        times = now[:, None] + interval * torch.arange(steps + 1, dtype=CLOCK_DTYPE, device=units.device)
        started = time.perf_counter()
        plan = evolver.plan(
            state[:, None],
            goal_units,
            steps,
            cache=cache,
            timestamps=times,
            goal_projection=lambda x: encoder.frame_subspace(x.to(encoder.dtype)),
            initial_actions=None if initial_actions is None else initial_actions[:, :steps],
            **plan_settings,
        )
        seconds.append(time.perf_counter() - started)
        objectives.append(plan.objective_per_iteration[0])
        actions = plan.actions[0, : min(replan_every, steps)]
        if warm_start:
            remaining = plan.actions[:, len(actions) :]
            held = (remaining if remaining.shape[1] else plan.actions)[:, -1:]
            initial_actions = torch.cat([remaining, held.expand(-1, num_steps - done - steps, -1)], dim=1)
        elif initial_actions is not None:
            initial_actions = initial_actions[:, len(actions) :]
        frames = environment_step(actions)
        if not isinstance(frames, torch.Tensor) or tuple(frames.shape) != (len(actions), *frame_shape):
            found = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"`environment_step` must return frames {(len(actions), *frame_shape)}, got {found}.")
        frames = frames.to(context_frames.device, context_frames.dtype)
        encoder.check_pixel_values(frames[None])
        with inputs_checked():
            new_units = encoder(frames[None]).units[0].to(evolver.dtype)
            for action, next_state in zip(actions, new_units, strict=True):
                _, cache = evolver.step(state, cache, now, now + interval, action[None])
                state, now = next_state[None], now + interval
        applied.append(actions)
        observed.append(frames)
        done += len(actions)
    return MPCResult(torch.cat(applied), torch.cat(observed), objectives, seconds)
