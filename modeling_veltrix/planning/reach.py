"""The built-in control task: in the bouncing-balls world, push the controlled ball (ball 0, red) to where a goal
frame shows it, `gap` steps later.

Episodes come from held-out trajectories of the world (`ReachTaskConfig.seed`, away from the training and evaluation
seeds), as DINO-WM takes Push-T's: the context is the first `context_length` frames, the goal is the frame `gap`
steps after the last context frame, reached in the data by the world's own sparse impulses (`true_actions`). The
other balls move on their own; only ball 0 takes the actions (velocity impulses). Success: ball 0 ends within
`success_radius` pixels (default: one ball radius) of its position in the goal frame.
"""

from dataclasses import dataclass

import numpy as np
import torch

from ..worlds import get_world
from ..worlds.bouncing_balls import BouncingBallsWorld

# The planner's search space on this task: impulses bound to [-REACH_ACTION_BOUND, REACH_ACTION_BOUND] pixels per
# second per component, candidates first drawn with REACH_INITIAL_STD times that bound as standard deviation.
REACH_ACTION_BOUND = 5.0
REACH_INITIAL_STD = 0.3


@dataclass(frozen=True)
class ReachTaskConfig:
    """num_episodes: held-out episodes. context_length: observed frames before planning. gap: steps from the last
    context frame to the goal. success_radius: pixels between ball 0 and its goal position that count as reached
    (None: the world's ball radius). seed: the world seed of the held-out episodes. world: overrides of the
    bouncing-balls world config (the trained model's world)."""

    num_episodes: int = 50
    context_length: int = 8
    gap: int = 25
    success_radius: float | None = None
    seed: int = 2_000_000
    world: tuple[tuple[str, object], ...] = ()

    def check(self) -> None:
        for name in ("num_episodes", "context_length", "gap", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1):
                raise ValueError(f"`{name}` must be an int >= {0 if name == 'seed' else 1}, got {value!r}.")
        radius = self.success_radius
        if radius is not None and (isinstance(radius, bool) or not isinstance(radius, (int, float)) or radius <= 0):
            raise ValueError(f"`success_radius` must be a number > 0 or None, got {radius!r}.")


@dataclass
class ReachEpisode:
    """context_frames `(T, 3, S, S)` and context_actions `(T - 1, 2)`; start_state `(num_balls, 4)` at the last
    context frame; goal_frame `(3, S, S)`; goal_position `(2,)` of ball 0; true_actions `(gap, 2)` that reached it."""

    context_frames: torch.Tensor
    context_actions: torch.Tensor
    start_state: np.ndarray
    goal_frame: torch.Tensor
    goal_position: np.ndarray
    true_actions: np.ndarray


def reach_world(config: ReachTaskConfig) -> BouncingBallsWorld:
    return get_world("bouncing_balls", **dict(config.world))


def sample_reach_episodes(config: ReachTaskConfig, first_index: int = 0) -> list[ReachEpisode]:
    """The task's held-out episodes `first_index, ..., first_index + config.num_episodes - 1` (deterministic in
    `config.seed`: episode `i` is the same whatever `first_index` and `num_episodes` select it)."""
    config.check()
    if isinstance(first_index, bool) or not isinstance(first_index, int) or first_index < 0:
        raise ValueError(f"`first_index` must be an int >= 0, got {first_index!r}.")
    world = reach_world(config)
    length = config.context_length + config.gap
    data = world.generate(config.num_episodes, length, config.seed, first_index)
    num_balls = world.config.num_balls
    last = config.context_length - 1
    episodes = []
    for index in range(config.num_episodes):
        physics = data["physics"][index].astype(np.float64)
        episodes.append(
            ReachEpisode(
                context_frames=torch.from_numpy(data["pixel_values"][index, : config.context_length]),
                context_actions=torch.from_numpy(data["actions"][index, :last]),
                start_state=physics[last, : 4 * num_balls].reshape(num_balls, 4),
                goal_frame=torch.from_numpy(data["pixel_values"][index, last + config.gap]),
                goal_position=physics[last + config.gap, :2],
                true_actions=data["actions"][index, last : last + config.gap].astype(np.float64),
            )
        )
    return episodes


class ReachEnvironment:
    """The true world from an episode's start: `step(actions (k, 2))` applies impulses and returns the `k` frames
    after them `(k, 3, S, S)` in [-1, 1]; `position` is ball 0's position now."""

    def __init__(self, world: BouncingBallsWorld, episode: ReachEpisode):
        self.world, self.state = world, episode.start_state.copy()

    @property
    def position(self) -> np.ndarray:
        return self.state[0, :2].copy()

    def step(self, actions: torch.Tensor | np.ndarray) -> torch.Tensor:
        actions = np.asarray(torch.as_tensor(actions).detach().cpu(), dtype=np.float64)
        physics = integrate_from(self.world, self.state[None], actions[None])
        self.state = physics[0, -1, : self.state.size].reshape(self.state.shape)
        return torch.from_numpy(self.world.render(physics[:, 1:])[0])


def integrate_from(world: BouncingBallsWorld, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Runs `states (N, num_balls, 4)` under impulses `(N, k, 2)`, one frame interval apart, without rendering;
    returns the physics `(N, k + 1, P)` (float64) from the start."""
    n, k = actions.shape[:2]
    gaps = np.full((n, k), world.config.frame_interval)
    padded = np.concatenate([actions, np.zeros((n, 1, actions.shape[-1]))], axis=1)
    physics, _ = world._integrate(np.asarray(states, dtype=np.float64), padded, gaps)
    return physics


class ReachSimulatorCandidates:
    """The true simulator as the planner's model (the upper bound): candidate impulses `(N, H, 2)` from the current
    state, scored by the squared distance of ball 0's final position to the goal in pixels plus `action_cost` times
    the mean squared action; trajectories are ball 0's positions `(N, H, 2)`. Usable with
    `action_search.ActionSearch` for CEM and MPPI (it is not differentiable)."""

    def __init__(self, world: BouncingBallsWorld, state: np.ndarray, goal_position: np.ndarray, action_cost: float):
        self.world, self.state, self.goal, self.action_cost = world, state, goal_position, action_cost

    def __call__(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        candidates = actions.detach().cpu().double().numpy()
        states = np.broadcast_to(self.state, (len(candidates), *self.state.shape))
        positions = torch.from_numpy(integrate_from(self.world, states, candidates)[:, 1:, :2]).to(actions)
        distance = (positions[:, -1] - torch.from_numpy(self.goal).to(actions)).pow(2).sum(-1)
        return distance + self.action_cost * actions.pow(2).flatten(1).mean(-1), positions


def reach_success(position: np.ndarray, goal_position: np.ndarray, radius: float) -> bool:
    """Whether ball 0 at `position (2,)` is within `radius` pixels of `goal_position (2,)`."""
    return bool(np.linalg.norm(np.asarray(position) - np.asarray(goal_position)) <= radius)
