"""The Push-T data path (`modeling_veltrix.planning.pusht`) on tiny settings: 2 episodes x 12 steps at 32 x 32.

The true simulator is the oracle: replaying the recorded actions from an episode's first state must give the recorded
states bit for bit.
"""

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gym_pusht")

from modeling_veltrix.planning import (  # noqa: E402
    SUCCESS_ANGLE_THRESHOLD,
    SUCCESS_POSITION_THRESHOLD,
    PushTDataConfig,
    PushTSimulator,
    collect_pusht_episodes,
    denormalise_pusht_actions,
    normalise_pusht_actions,
    pusht_exploration_stats,
    pusht_success,
    pusht_success_batch,
    read_pusht_npz,
    sample_pusht_episodes,
    write_pusht_npz,
)
from modeling_veltrix.planning.pusht import _make_env, _set_state  # noqa: E402
from modeling_veltrix.training.sources import TrajectorySourceOptions, load_trajectory_source  # noqa: E402

CONFIG = PushTDataConfig(num_episodes=2, episode_length=12, image_size=32, seed=0)


@pytest.fixture(scope="module")
def episodes():
    return collect_pusht_episodes(CONFIG, progress=False)


@pytest.fixture(scope="module")
def simulator():
    simulator = PushTSimulator(image_size=CONFIG.image_size)
    yield simulator
    simulator.close()


def test_shapes_and_dtypes(episodes):
    n, t, s = CONFIG.num_episodes, CONFIG.episode_length, CONFIG.image_size
    expected = {
        "frames": ((n, t, s, s, 3), np.uint8),
        "actions": ((n, t, 2), np.float32),
        "states": ((n, t, 5), np.float64),
        "velocities": ((n, t, 5), np.float64),
        "contacts": ((n, t), np.bool_),
        "timestamps": ((t,), np.float32),
    }
    assert set(episodes) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert episodes[key].shape == shape, key
        assert episodes[key].dtype == dtype, key
    np.testing.assert_array_equal(episodes["timestamps"], np.arange(t, dtype=np.float32) / 10)
    assert np.abs(episodes["actions"]).max() <= 1
    assert (episodes["states"][..., :4] >= 0).all() and (episodes["states"][..., :4] <= 512).all()
    assert (episodes["states"][..., 4] >= 0).all() and (episodes["states"][..., 4] < 2 * math.pi).all()
    assert episodes["frames"].std() > 10  # not a blank image: arena, goal zone, block and agent drawn
    assert (episodes["velocities"][:, 0] == 0).all()  # episodes start at rest


def test_action_normalisation_round_trip():
    targets = np.array([[0.0, 512.0], [256.0, 100.5]])
    actions = normalise_pusht_actions(targets)
    np.testing.assert_allclose(actions, [[-1, 1], [0, (100.5 - 256) / 256]], atol=1e-7)
    np.testing.assert_allclose(denormalise_pusht_actions(actions), targets, atol=1e-4)


def test_collection_is_seeded(episodes):
    again = collect_pusht_episodes(CONFIG, progress=False)
    for key in episodes:
        np.testing.assert_array_equal(again[key], episodes[key], err_msg=key)
    other = collect_pusht_episodes(PushTDataConfig(num_episodes=2, episode_length=12, image_size=32, seed=1), False)
    assert not np.array_equal(other["states"], episodes["states"])


def test_policy_touches_and_moves_the_block():
    data = collect_pusht_episodes(PushTDataConfig(num_episodes=3, episode_length=40, image_size=16, seed=3), False)
    stats = pusht_exploration_stats(data)
    print(f"Push-T exploration on 3 x 40 steps: {stats}")
    assert stats["contact_fraction"] > 0.1
    assert stats["block_moved_fraction"] > 0.1
    assert data["contacts"].any(axis=1).all()  # every episode touches the block


def test_env_reset_to_state_moves_the_block_and_set_state_does_not():
    """Fact 1 of the module docstring: the env's own `reset_to_state` does not reproduce the state it is given."""
    env = _make_env()
    state = np.array([100.0, 100.0, 300.0, 300.0, 0.5])
    env.reset(options={"reset_to_state": state})
    assert np.linalg.norm(env.get_obs()[2:4] - state[2:4]) > 10
    _set_state(env, state)
    np.testing.assert_array_equal(env.get_obs(), state)


def test_npz_round_trip_through_the_source_loader(episodes, tmp_path):
    path = tmp_path / "data" / "pusht.npz"
    write_pusht_npz(path, episodes)
    assert sorted(p.name for p in path.parent.iterdir()) == ["pusht.npz"]  # no temporary file left behind
    back = read_pusht_npz(path)
    for key in episodes:
        np.testing.assert_array_equal(back[key], episodes[key], err_msg=key)

    options = TrajectorySourceOptions(image_size=CONFIG.image_size, clip_length=CONFIG.episode_length, fps=None)
    train, held_out, info = load_trajectory_source(str(path), options, cache_dir=str(tmp_path / "cache"))
    assert info.kind == "npz" and info.action_dim == 2 and info.num_source_trajectories == 2
    assert len(train) == 1 and len(held_out) == 1
    (index,) = info.held_out_indices
    row = held_out[0]
    assert row["pixel_values"].shape == (CONFIG.episode_length, 3, CONFIG.image_size, CONFIG.image_size)
    expected = episodes["frames"][index].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(row["pixel_values"].numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(row["actions"].numpy(), episodes["actions"][index])
    np.testing.assert_allclose(row["timestamps"].numpy(), episodes["timestamps"], atol=1e-6)


def test_simulator_replays_recorded_actions_exactly(episodes, simulator):
    states = simulator.rollout(episodes["states"][:, 0], episodes["actions"][:, :-1])
    assert states.shape == episodes["states"].shape and states.dtype == np.float64
    np.testing.assert_array_equal(states, episodes["states"])
    at_rest = simulator.rollout(episodes["states"][:, 0], episodes["actions"][:, :-1], np.zeros((2, 5)))
    np.testing.assert_array_equal(at_rest, states)


def test_simulator_uses_start_velocities(episodes, simulator):
    step = int(np.argmax(np.abs(episodes["velocities"][0, :, :2]).sum(-1) > 50))  # the agent moving fast
    assert step > 0
    start, actions = episodes["states"][:1, step], episodes["actions"][:1, step : step + 1]
    moving = simulator.rollout(start, actions, episodes["velocities"][:1, step])
    resting = simulator.rollout(start, actions)
    if not episodes["contacts"][0, step : step + 2].any():  # out of contact the physics state is complete: exact
        np.testing.assert_array_equal(moving[0, 1], episodes["states"][0, step + 1])
    assert np.abs(moving[0, 1, :2] - resting[0, 1, :2]).max() > 1


def test_simulator_renders_the_recorded_frames(episodes, simulator):
    frames = simulator.render(episodes["states"][0])
    assert frames.shape == episodes["frames"][0].shape and frames.dtype == np.uint8
    apart = ~episodes["contacts"][0]  # in contact, the env's frames also show pymunk's contact points
    assert apart.any()
    np.testing.assert_array_equal(frames[apart], episodes["frames"][0][apart])


def test_oracle_batch_cost(episodes, simulator):
    rng = np.random.default_rng(0)
    num, horizon = 60, 25
    starts = np.repeat(episodes["states"][:1, 0], num, axis=0)
    actions = rng.uniform(-1, 1, size=(num, horizon, 2)).astype(np.float32)
    began = time.perf_counter()
    simulator.rollout(starts, actions)
    per_step = (time.perf_counter() - began) / (num * horizon)
    print(f"PushTSimulator: {per_step * 1e3:.3f} ms per env step; 300 x 25 ~ {per_step * 7500:.2f} s")
    assert per_step < 0.02  # generous: ~0.2 ms here, the env's own step ~0.75 ms


def test_success_thresholds():
    goal = np.array([200.0, 200.0, 300.0, 300.0, 1.0])
    assert SUCCESS_POSITION_THRESHOLD == 20 and SUCCESS_ANGLE_THRESHOLD == pytest.approx(math.pi / 9)
    cases = [
        (goal, True),
        (goal + [0, 0, 19, 0, 0], True),
        (goal + [0, 0, 21, 0, 0], False),
        (goal + [19, 0, 0, 0, 0], True),  # the agent's position counts too (DINO-WM's `goal_state[:4]`)
        (goal + [15, 0, 15, 0, 0], False),  # sqrt(450) = 21.2
        (goal + [0, 0, 0, 0, math.radians(19)], True),
        (goal + [0, 0, 0, 0, -math.radians(21)], False),
    ]
    for state, expected in cases:
        assert pusht_success(state, goal) is expected, state
    wrapped = np.array([200.0, 200.0, 300.0, 300.0, 2 * math.pi - 0.05])
    assert pusht_success(wrapped, np.array([200.0, 200.0, 300.0, 300.0, 0.05]))
    batch = np.stack([state for state, _ in cases])
    np.testing.assert_array_equal(
        pusht_success_batch(batch, np.repeat(goal[None], len(cases), 0)), [expected for _, expected in cases]
    )
    assert not pusht_success(goal + [0, 0, 5, 0, 0], goal, position_threshold=4)


def test_sample_pusht_episodes(episodes):
    pairs = sample_pusht_episodes(episodes, num_episodes=6, gap=5, seed=3)
    again = sample_pusht_episodes(episodes, num_episodes=6, gap=5, seed=3)
    for key in pairs:
        np.testing.assert_array_equal(pairs[key], again[key], err_msg=key)
    shapes = {
        "start_states": (6, 5),
        "start_velocities": (6, 5),
        "start_frames": (6, 32, 32, 3),
        "goal_states": (6, 5),
        "goal_frames": (6, 32, 32, 3),
        "actions": (6, 5, 2),
        "episode_indices": (6,),
        "start_steps": (6,),
    }
    assert {key: value.shape for key, value in pairs.items()} == shapes
    for m, (episode, start) in enumerate(zip(pairs["episode_indices"], pairs["start_steps"], strict=True)):
        assert 0 <= start <= CONFIG.episode_length - 1 - 5
        np.testing.assert_array_equal(pairs["goal_states"][m], episodes["states"][episode, start + 5])
        np.testing.assert_array_equal(pairs["goal_frames"][m], episodes["frames"][episode, start + 5])
        np.testing.assert_array_equal(pairs["actions"][m], episodes["actions"][episode, start : start + 5])
    held = sample_pusht_episodes(episodes, num_episodes=4, gap=5, seed=0, episode_indices=[1])
    assert (held["episode_indices"] == 1).all()


def test_sampled_true_actions_reach_the_goal_from_the_first_frame(episodes, simulator):
    """From an episode's first frame (at rest, out of contact), the true actions reach the goal exactly."""
    gap = CONFIG.episode_length - 1
    pairs = sample_pusht_episodes(episodes, num_episodes=2, gap=gap, seed=0)
    final = simulator.rollout(pairs["start_states"], pairs["actions"], pairs["start_velocities"])[:, -1]
    assert pusht_success_batch(final, pairs["goal_states"]).all()
    np.testing.assert_array_equal(final, pairs["goal_states"])


def test_the_benchmark_steps_the_simulator_in_parts_and_renders_what_the_data_recorded(episodes):
    """Closed-loop planning steps Push-T a few actions at a time: replayed from the episode's start, the true actions
    give the recorded frames (in [-1, 1]) wherever the agent is out of contact."""
    from modeling_veltrix.benchmarks.planning import PlanningBenchmarkSettings, PushTTask

    settings = PlanningBenchmarkSettings(num_episodes=2, gap=5, pusht_data=CONFIG)
    task = PushTTask(settings, episodes, held_out=(0, 1), context=2)
    for problem in task.problems():
        step = task.environment_step(problem)
        frames = torch.cat([step(problem.true_actions[:2]), step(problem.true_actions[2:])])
        assert frames.shape == (5, 3, CONFIG.image_size, CONFIG.image_size)
        episode, start = task.sampled["episode_indices"][problem.start], task.sampled["start_steps"][problem.start]
        recorded = torch.from_numpy(episodes["frames"][episode, start + 1 : start + 6]).permute(0, 3, 1, 2) / 127.5 - 1
        apart = torch.from_numpy(~episodes["contacts"][episode, start + 1 : start + 6])
        torch.testing.assert_close(frames[apart], recorded[apart].float(), rtol=0, atol=1e-6)
        assert task.outcome(problem, problem.true_actions)[0]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"num_episodes": 0}, "num_episodes"),
        ({"episode_length": 1}, "episode_length"),
        ({"image_size": 2.5}, "image_size"),
        ({"seed": -1}, "seed"),
        ({"policy_noise": float("nan")}, "policy_noise"),
        ({"push_step": 0.0}, "push_step"),
        ({"push_length": (5, 2)}, "push_length"),
        ({"towards_centre": 1.5}, "towards_centre"),
        ({"margin": 5.0}, "margin"),
        ({"control_hz": -1.0}, "control_hz"),
    ],
)
def test_bad_config_raises(changes, field):
    values = {"num_episodes": 1, "episode_length": 4, "image_size": 16, **changes}
    with pytest.raises(ValueError, match=f"`{field}`"):
        PushTDataConfig(**values).check()
    with pytest.raises(ValueError, match=f"`{field}`"):
        collect_pusht_episodes(PushTDataConfig(**values), progress=False)


def test_control_rate_must_match_the_env():
    with pytest.raises(ValueError, match="control_hz"):
        collect_pusht_episodes(PushTDataConfig(num_episodes=1, episode_length=2, control_hz=20.0), progress=False)


def test_bad_arguments_raise(episodes, simulator, tmp_path):
    states, actions = episodes["states"][:, 0], episodes["actions"][:, :3]
    with pytest.raises(ValueError, match=r"`states` must have shape \(N, 5\), found \(2, 4\)"):
        simulator.rollout(states[:, :4], actions)
    with pytest.raises(ValueError, match=r"`actions` must have shape \(2, H, 2\)"):
        simulator.rollout(states, actions[:1])
    with pytest.raises(ValueError, match="`actions` must lie in"):
        simulator.rollout(states, actions * 3)
    with pytest.raises(ValueError, match="`states` must be finite"):
        simulator.rollout(np.full((2, 5), np.nan), actions)
    with pytest.raises(ValueError, match="`velocities`"):
        simulator.rollout(states, actions, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="`actions` must be a numpy array"):
        simulator.rollout(states, actions.tolist())
    with pytest.raises(ValueError, match="`states`"):
        simulator.render(np.zeros((0, 5)))
    with pytest.raises(ValueError, match="`image_size`"):
        PushTSimulator(image_size=0)
    with pytest.raises(ValueError, match="`goal_state`"):
        pusht_success(np.zeros(5), np.zeros(4))
    with pytest.raises(ValueError, match="`goal_states`"):
        pusht_success_batch(np.zeros((3, 5)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="`position_threshold`"):
        pusht_success(np.zeros(5), np.zeros(5), position_threshold=0)
    with pytest.raises(ValueError, match="`gap`"):
        sample_pusht_episodes(episodes, num_episodes=2, gap=CONFIG.episode_length)
    with pytest.raises(ValueError, match="`num_episodes`"):
        sample_pusht_episodes(episodes, num_episodes=0)
    with pytest.raises(ValueError, match="`episode_indices`"):
        sample_pusht_episodes(episodes, num_episodes=1, gap=2, episode_indices=[5])
    with pytest.raises(ValueError, match="`seed`"):
        sample_pusht_episodes(episodes, num_episodes=1, gap=2, seed=-3)
    with pytest.raises(ValueError, match="missing"):
        sample_pusht_episodes({"frames": episodes["frames"]}, num_episodes=1)
    with pytest.raises(ValueError, match="`path`"):
        write_pusht_npz(tmp_path / "pusht.npy", episodes)
    with pytest.raises(ValueError, match=r"`episodes\['actions'\]`"):
        write_pusht_npz(tmp_path / "pusht.npz", {**episodes, "actions": episodes["actions"][:, :, :1]})
    assert not Path(tmp_path / "pusht.npz").exists()
    with pytest.raises(ValueError, match="`config`"):
        collect_pusht_episodes({"num_episodes": 2})
