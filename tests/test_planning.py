"""Goal-conditioned action search (`VeltrixEvolverModel.plan`, `VeltrixPipeline.plan`), the closed loop
(`planning.mpc`) and the built-in reach task (`planning.reach`), on tiny models."""

import numpy as np
import pytest
import torch
from conftest import IMAGE_SIZE, random_frames, randomize_, tiny_evolver_config

from modeling_veltrix import VeltrixEvolverModel
from modeling_veltrix.action_search import ActionSearch, VeltrixPlannerSettings, action_bounds_tensors
from modeling_veltrix.planning.mpc import run_mpc
from modeling_veltrix.planning.reach import (
    ReachEnvironment,
    ReachSimulatorCandidates,
    ReachTaskConfig,
    reach_success,
    reach_world,
    sample_reach_episodes,
)

HORIZON = 4


@pytest.fixture(scope="module")
def evolver() -> VeltrixEvolverModel:
    torch.manual_seed(0)
    return randomize_(VeltrixEvolverModel(tiny_evolver_config())).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def problem(evolver):
    """A context (2, 3, U, D), its actions (2, 2, A), and the goal its rollout reaches under known actions."""
    generator = torch.Generator().manual_seed(1)
    context = torch.randn(2, 3, 16, 8, generator=generator) * 0.5
    context_actions = torch.randn(2, 2, 2, generator=generator)
    true_actions = torch.randn(2, HORIZON, 2, generator=generator)
    actions = torch.cat([context_actions, true_actions, torch.zeros(2, 1, 2)], dim=1)
    goal = evolver.rollout(context, HORIZON, actions=actions).units[:, -1]
    return context, context_actions, true_actions, goal


def plan(evolver, problem, **settings):
    context, context_actions, _, goal = problem
    values = dict(num_samples=48, num_iterations=4, top_k=8, generator=torch.Generator().manual_seed(0))
    return evolver.plan(context, goal, HORIZON, context_actions=context_actions, **{**values, **settings})


@pytest.mark.parametrize("method", ["cem", "mppi", "gradient"])
def test_each_method_moves_toward_the_goal_and_never_gets_worse(evolver, problem, method):
    out = plan(evolver, problem, method=method, action_bounds=(-3.0, 3.0))
    idle = plan(evolver, problem, num_iterations=1, num_samples=1, top_k=1)  # only the centre: zero actions
    history = out.objective_per_iteration
    assert out.actions.shape == (2, HORIZON, 2) and out.units.shape == (2, HORIZON, 16, 8)
    assert history.shape == (2, 4)
    assert (history[:, 1:] <= history[:, :-1]).all()
    assert torch.equal(history[:, -1], out.objective)
    assert (out.objective < 0.6 * idle.objective).all()
    assert out.actions.abs().max() <= 3.0


def test_planned_states_are_the_evolvers_rollout_of_the_planned_actions(evolver, problem):
    context, context_actions, _, goal = problem
    out = plan(evolver, problem)
    actions = torch.cat([context_actions, out.actions, torch.zeros(2, 1, 2)], dim=1)
    rollout = evolver.rollout(context, HORIZON, actions=actions)
    torch.testing.assert_close(out.units, rollout.units, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.timestamps, rollout.timestamps)
    reached = (rollout.units[:, -1] - goal).pow(2).flatten(1).mean(-1)
    torch.testing.assert_close(out.objective, reached, atol=1e-6, rtol=1e-4)


def test_the_true_actions_score_zero_and_the_plan_beats_doing_nothing(evolver, problem):
    context, context_actions, true_actions, goal = problem
    idle = plan(evolver, problem, num_iterations=1, num_samples=1, top_k=1)  # only the centre: zero actions
    assert torch.equal(idle.actions, torch.zeros_like(idle.actions))
    searched = plan(evolver, problem, num_samples=128, num_iterations=6, top_k=12)
    assert (searched.objective < idle.objective).all()


def test_same_seed_same_plan_other_seed_other_plan(evolver, problem):
    first, second = plan(evolver, problem), plan(evolver, problem)
    other = plan(evolver, problem, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first.actions, second.actions)
    assert not torch.equal(first.actions, other.actions)


def test_planning_from_a_carried_cache_equals_planning_from_the_context(evolver, problem):
    context, context_actions, _, goal = problem
    interval = evolver.config.dt_reference
    times = torch.arange(3 + HORIZON, dtype=torch.float64).expand(2, -1) * interval
    direct = plan(evolver, problem, timestamps=times)
    cache = evolver.prefill(context, timestamps=times[:, :3], actions=context_actions)
    carried = evolver.plan(
        context[:, -1:],
        goal,
        HORIZON,
        cache=cache,
        timestamps=times[:, 2:],
        num_samples=48,
        num_iterations=4,
        top_k=8,
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(carried.actions, direct.actions)
    torch.testing.assert_close(carried.units, direct.units)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"horizon": 0}, "horizon"),
        ({"num_samples": 0}, "num_samples"),
        ({"num_iterations": 0}, "num_iterations"),
        ({"top_k": 64}, "top_k"),
        ({"method": "random"}, "method"),
        ({"action_bounds": (1.0, -1.0)}, "low <= high"),
        ({"action_bounds": ((0.0, 0.0, 0.0), 1.0)}, "action_bounds"),
        ({"action_cost": -1.0}, "action_cost"),
        ({"action_cost": float("nan")}, "action_cost"),
        ({"goal": torch.zeros(2, 15, 8)}, "goal"),
        ({"goal": torch.full((2, 16, 8), float("nan"))}, "goal"),
        ({"context_actions": torch.zeros(2, 3, 2)}, "context_actions"),
        ({"timestamps": torch.zeros(2, 3 + HORIZON, dtype=torch.float64)}, "timestamps"),
        ({"generator": 0}, "generator"),
    ],
)
def test_bad_arguments_raise_a_value_error_naming_them(evolver, problem, settings, message):
    context, context_actions, _, goal = problem
    values = dict(goal=goal, horizon=HORIZON, context_actions=context_actions, num_samples=8, top_k=2)
    values |= settings
    with pytest.raises(ValueError, match=message):
        evolver.plan(context, **values)


def test_an_evolver_without_actions_has_nothing_to_plan():
    free = VeltrixEvolverModel(tiny_evolver_config(action_dim=0)).eval()
    context = torch.zeros(1, 2, 16, 8)
    with pytest.raises(ValueError, match="action_dim=0"):
        free.plan(context, context[:, -1], HORIZON)


def test_pipeline_plans_to_a_goal_frame_and_renders_the_plan(tiny_pipeline):
    frames = random_frames(batch=2, steps=3)
    goal_frames = random_frames(batch=2, steps=1, seed=5)[:, 0]
    out = tiny_pipeline.plan(
        frames,
        goal_frames,
        HORIZON,
        num_samples=16,
        num_iterations=2,
        top_k=4,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        num_inference_steps=1,
    )
    assert out.actions.shape == (2, HORIZON, 2)
    assert out.frames.shape == (2, HORIZON, 3, IMAGE_SIZE, IMAGE_SIZE)
    units = tiny_pipeline.encoder(goal_frames[:, None]).units[:, 0]
    same = tiny_pipeline.plan(
        frames, units, HORIZON, num_samples=16, num_iterations=2, top_k=4, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(same.actions, out.actions)
    assert same.frames is None
    with pytest.raises(ValueError, match="goal"):
        tiny_pipeline.plan(frames, goal_frames[:1], HORIZON)
    with pytest.raises(ValueError, match="output_type"):
        tiny_pipeline.plan(frames, goal_frames, HORIZON, output_type="gif")


class RecordingEnvironment:
    """A stand-in environment: returns fixed frames and records the actions it was given."""

    def __init__(self):
        self.actions = []
        self.generator = torch.Generator().manual_seed(3)

    def __call__(self, actions: torch.Tensor) -> torch.Tensor:
        self.actions.append(actions.clone())
        return torch.rand(len(actions), 3, IMAGE_SIZE, IMAGE_SIZE, generator=self.generator) * 2 - 1


def test_mpc_replans_with_the_carried_cache_and_one_plan_equals_the_open_loop_plan(tiny_pipeline):
    frames, goal = random_frames(batch=1, steps=3), random_frames(batch=1, steps=1, seed=5)[:, 0]
    settings = dict(num_samples=16, num_iterations=2, top_k=4)
    environment = RecordingEnvironment()
    result = run_mpc(
        tiny_pipeline, frames, goal, environment, num_steps=5, replan_every=2, generator=torch.Generator(), **settings
    )
    assert [len(a) for a in environment.actions] == [2, 2, 1]
    assert len(result.objectives) == 3 and len(result.planning_seconds) == 3
    assert result.actions.shape == (5, 2) and result.frames.shape == (5, 3, IMAGE_SIZE, IMAGE_SIZE)
    open_loop = run_mpc(
        tiny_pipeline,
        frames,
        goal,
        RecordingEnvironment(),
        num_steps=5,
        replan_every=5,
        generator=torch.Generator().manual_seed(0),
        **settings,
    )
    direct = tiny_pipeline.plan(frames, goal, 5, generator=torch.Generator().manual_seed(0), **settings)
    torch.testing.assert_close(open_loop.actions, direct.actions[0])
    with pytest.raises(ValueError, match="replan_every"):
        run_mpc(tiny_pipeline, frames, goal, environment, num_steps=3, replan_every=4)
    with pytest.raises(ValueError, match="initial_actions"):
        run_mpc(tiny_pipeline, frames, goal, environment, num_steps=3, initial_actions=torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="warm_start"):
        run_mpc(tiny_pipeline, frames, goal, environment, num_steps=3, warm_start="yes")
    with pytest.raises(ValueError, match="environment_step"):
        run_mpc(tiny_pipeline, frames, goal, lambda a: torch.zeros(1), num_steps=2, **settings)


class RecordingSearch:
    """Wraps `evolver.plan` and records where each search started (`initial_actions`) and what it returned."""

    def __init__(self, evolver):
        self.plan, self.starts, self.plans = evolver.plan, [], []

    def __call__(self, *args, initial_actions=None, **kwargs):
        self.starts.append(None if initial_actions is None else initial_actions.clone())
        out = self.plan(*args, initial_actions=initial_actions, **kwargs)
        self.plans.append(out.actions.clone())
        return out


@pytest.mark.parametrize("warm_start", [False, True])
def test_mpc_starts_each_search_from_the_given_actions_or_the_previous_plan(tiny_pipeline, monkeypatch, warm_start):
    frames, goal = random_frames(batch=1, steps=3), random_frames(batch=1, steps=1, seed=5)[:, 0]
    initial = torch.linspace(-1, 1, 5 * 2).view(1, 5, 2)
    search = RecordingSearch(tiny_pipeline.evolver)
    monkeypatch.setattr(tiny_pipeline.evolver, "plan", search)
    run_mpc(
        tiny_pipeline,
        frames,
        goal,
        RecordingEnvironment(),
        num_steps=5,
        horizon=4,
        replan_every=2,
        initial_actions=initial,
        warm_start=warm_start,
        num_samples=8,
        num_iterations=1,
        top_k=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert [start.shape[1] for start in search.starts] == [4, 3, 1]
    torch.testing.assert_close(search.starts[0], initial[:, :4])
    if warm_start:
        # The second plan (3 steps) starts from the first plan's 2 unapplied actions, the last one held once more.
        first = search.plans[0]
        torch.testing.assert_close(search.starts[1], torch.cat([first[:, 2:], first[:, 3:]], dim=1))
        torch.testing.assert_close(search.starts[2], search.plans[1][:, 2:])
    else:
        torch.testing.assert_close(search.starts[1], initial[:, 2:5])
        torch.testing.assert_close(search.starts[2], initial[:, 4:])


def test_reach_episodes_are_reached_by_their_own_actions_and_by_the_oracle_planner():
    config = ReachTaskConfig(num_episodes=3, context_length=2, gap=10)
    episodes = sample_reach_episodes(config)
    again = sample_reach_episodes(config)
    world = reach_world(config)
    radius = world.config.ball_radius
    assert torch.equal(episodes[1].goal_frame, again[1].goal_frame)
    for episode in episodes:
        environment = ReachEnvironment(world, episode)
        frames = environment.step(episode.true_actions)
        assert frames.shape == (10, 3, 32, 32)
        torch.testing.assert_close(frames[-1], episode.goal_frame, atol=1e-3, rtol=0)
        assert reach_success(environment.position, episode.goal_position, radius)
    episode = episodes[0]
    like = torch.zeros(1, dtype=torch.float64)
    search = ActionSearch(
        ReachSimulatorCandidates(world, episode.start_state, episode.goal_position, 0.0),
        1,
        config.gap,
        2,
        VeltrixPlannerSettings(num_samples=200, num_iterations=3, top_k=20, initial_std=0.3),
        action_bounds_tensors((-5.0, 5.0), 2, like),
        torch.Generator().manual_seed(0),
        like,
    )
    actions, positions, objective, _ = search.run()
    environment = ReachEnvironment(world, episode)
    environment.step(actions[0])
    np.testing.assert_allclose(environment.position, positions[0, -1].numpy(), atol=1e-9)
    assert reach_success(environment.position, episode.goal_position, radius)
    with pytest.raises(ValueError, match="gap"):
        sample_reach_episodes(ReachTaskConfig(gap=0))
