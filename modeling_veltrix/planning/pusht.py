"""Push-T, the standard world-model planning benchmark, through the `gym-pusht` package (`pip install gym-pusht`,
the `planning` extra; gymnasium + pymunk, renders on CPU, downloads nothing).

The environment (`gym_pusht/PushT-v0`, read from `gym_pusht/envs/pusht.py` of gym-pusht 0.1.8):

- state `(5,)` float64: `[agent_x, agent_y, block_x, block_y, block_angle]`, positions in pixels of the 512 x 512
  arena (walls at 5 and 506), `block_x, block_y` the T's body origin (the middle of the bar's edge away from the
  stem, not its centre of gravity), `block_angle` in [0, 2 pi).
- action `(2,)`: the absolute target position of the agent in [0, 512]^2. One step (0.1 s, the env's `control_hz` of
  10) runs 10 physics sub-steps of `dt = 0.01` s, each a PD controller (`k_p = 100`, `k_v = 20`) pulling the
  agent's velocity toward the target; the agent is a kinematic disc of radius 15, the block a dynamic T.
- the env's own success: 95 % of the goal zone's area covered by the block (fixed goal pose `(256, 256, pi/4)`).

Here the world model is scored as DINO-WM scores it (Zhou et al. 2024, "DINO-WM: World Models on Pre-trained Visual
Features enable Zero-shot Planning", `gaoyuezhou/dino_wm`, `env/pusht/pusht_wrapper.py` `eval_state` and
`plan.py`, `conf/plan_pusht.yaml`): start and goal are two states 25 env steps apart on held-out (validation)
trajectories (`goal_source: dset`, `goal_H = 5` planning steps at `frameskip = 5`: `plan.py` takes `frameskip *
goal_H + 1` frames), and a final state succeeds when `||final[:4] - goal[:4]|| < 20` pixels (agent
and block positions together, in the env's 512-pixel frame) and the wrapped block-angle difference is `< pi / 9`
(20 degrees). `pusht_success` applies exactly those thresholds.

Three facts of gym-pusht that shape this module (each measured here, see `tests/test_pusht.py`):

1. `reset(options={"reset_to_state": s})` does not put the env in state `s`: it sets the block's position before its
   angle, and setting the angle rotates the body about its centre of gravity, so the block lands elsewhere (resetting
   to the state read back moves the block ~22 px again), then runs one physics sub-step. `_set_state` here sets the
   angle first, then the position, so that the state read back is the state given, bit for bit.
2. The 5-number state leaves out velocities, which carry over from step to step (the agent's PD controller reads its
   own velocity: right after a step towards a far target the agent still moves at several hundred px/s). Episodes
   therefore also record `velocities (N, T, 5)`: `[agent_vx, agent_vy, block_vx, block_vy, block_angular_velocity]`,
   and the simulator starts from them when given, else from rest (DINO-WM's Push-T state has 7 numbers: these 5 and
   the agent's velocity; the block starts at rest).
   The contact solver's cached impulses (pymunk warm-starts each contact from the previous sub-step's) are part of
   neither, and contacts are chaotic, so a rollout started mid-episode drifts from the recorded continuation once
   the agent pushes: replaying the recorded actions of 300 sampled 25-step (start, goal) pairs reaches DINO-WM's
   success in ~90 % of them (with or without the velocities), which bounds any planner's success from such starts.
   From an episode's first frame (at rest, out of contact) a replay is bit-equal to the recording.
3. `step` computes the goal coverage with shapely (~0.5 ms of its ~0.75 ms); the physics alone costs tens of
   microseconds. `PushTSimulator` steps the physics exactly as `PushTEnv.step` does (same expressions, same order)
   without the coverage, which the replay test checks against episodes recorded with `PushTEnv.step` itself.

Actions are stored normalised: `action = (target - 256) / 256` in [-1, 1], target in env pixels (`target = 256 + 256 *
action`, `denormalise_pusht_actions`). The action at step t is applied after frame t: it moves the world from frame t
to frame t + 1 (the last action of an episode is applied but its result not recorded).

>>> config = PushTDataConfig(num_episodes=4, episode_length=40, image_size=64, seed=0)
>>> episodes = collect_pusht_episodes(config)
>>> write_pusht_npz("pusht.npz", episodes)  # reads back with `training.sources.load_trajectory_source`
>>> pairs = sample_pusht_episodes(episodes, num_episodes=8, gap=25, seed=0)
>>> simulator = PushTSimulator(image_size=64)
>>> final = simulator.rollout(pairs["start_states"], pairs["actions"], pairs["start_velocities"])[:, -1]
>>> pusht_success_batch(final, pairs["goal_states"]).mean()  # the true actions replayed: ~0.9 (fact 2)
"""

import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

PUSHT_ENV_ID = "gym_pusht/PushT-v0"
ARENA_SIZE = 512.0
"""Side of the env's arena in pixels: states and action targets are in [0, 512]."""
STATE_DIM = 5
ACTION_DIM = 2
AGENT_RADIUS = 15.0
SUCCESS_POSITION_THRESHOLD = 20.0
"""DINO-WM's `eval_state`: `||final[:4] - goal[:4]||` (agent and block positions, env pixels) must be below this."""
SUCCESS_ANGLE_THRESHOLD = math.pi / 9
"""DINO-WM's `eval_state`: the wrapped block-angle difference (radians) must be below this (20 degrees)."""
EPISODE_KEYS = ("frames", "actions", "states", "velocities", "contacts", "timestamps")


# --- checks -------------------------------------------------------------------------------------------------------


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")


def _check_non_negative_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")


def _check_array(name: str, value: object, shape: tuple[int | str, ...], finite: bool = True) -> np.ndarray:
    """`value` as a numpy array of numbers whose shape matches `shape` (a name such as `"N"`: any size >= 1), finite
    if asked."""
    text = "(" + ", ".join(str(size) for size in shape) + ")"
    if not isinstance(value, np.ndarray):
        raise ValueError(f"`{name}` must be a numpy array of shape {text}, got {type(value).__name__}.")
    if value.ndim != len(shape) or any(
        found < 1 if isinstance(size, str) else found != size for size, found in zip(shape, value.shape, strict=False)
    ):
        raise ValueError(f"`{name}` must have shape {text}, found {value.shape}.")
    if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
        raise ValueError(f"`{name}` must hold numbers, found dtype {value.dtype}.")
    if finite and np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
        raise ValueError(f"`{name}` must be finite, found NaN or Inf.")
    return value


def _check_episodes(episodes: object, name: str = "episodes") -> tuple[int, int]:
    """`episodes` as `collect_pusht_episodes` returns them (consistent N and T); returns `(N, T)`."""
    if not isinstance(episodes, dict):
        raise ValueError(f"`{name}` must be a dict of arrays (collect_pusht_episodes), got {type(episodes).__name__}.")
    missing = [key for key in ("frames", "actions", "states", "timestamps") if key not in episodes]
    if missing:
        raise ValueError(f"`{name}` is missing {missing}, found keys {sorted(episodes)}.")
    states = _check_array(f"{name}['states']", episodes["states"], ("N", "T", STATE_DIM))
    num_episodes, length = states.shape[:2]
    frames = _check_array(f"{name}['frames']", episodes["frames"], (num_episodes, length, "S", "S", 3))
    if frames.dtype != np.uint8 or frames.shape[2] != frames.shape[3]:
        raise ValueError(f"`{name}['frames']` must be uint8 (N, T, S, S, 3), found {frames.dtype} {frames.shape}.")
    _check_array(f"{name}['actions']", episodes["actions"], (num_episodes, length, ACTION_DIM))
    _check_array(f"{name}['timestamps']", episodes["timestamps"], (length,))
    if "velocities" in episodes:
        _check_array(f"{name}['velocities']", episodes["velocities"], (num_episodes, length, STATE_DIM))
    return num_episodes, length


# --- the environment ----------------------------------------------------------------------------------------------


def _make_env(image_size: int | None = None):
    """The unwrapped `PushTEnv`, rendering its 512 x 512 screen at full size (resized here, with area averaging)."""
    try:
        import gym_pusht  # noqa: F401  # registers the env id; optional: the `planning` extra
        import gymnasium as gym
    except ImportError as error:
        raise ImportError(f"Push-T needs gym-pusht: `pip install gym-pusht` (the `planning` extra): {error}") from None
    side = int(ARENA_SIZE)
    env = gym.make(
        PUSHT_ENV_ID,
        obs_type="state",
        render_mode="rgb_array",
        observation_width=side,
        observation_height=side,
        disable_env_checker=True,
    )
    return env.unwrapped


def _set_state(env, state: np.ndarray, velocity: np.ndarray | None = None, count_contacts: bool = True) -> None:
    """Puts `env` exactly in `state` (read back bit-equal by `get_obs`), with `velocity` (default: at rest).

    A fresh physics space (`_setup`), then the block's angle before its position: a body's position setter keeps the
    current rotation, and its angle setter turns the body about its centre of gravity, so the env's own order
    (position, then angle) moves the origin. No physics step is run; the shapes' cached vertices, which drawing and
    shape queries read and only a step refreshes, are refreshed by reindexing.
    """
    env._setup()
    env._last_action = None
    if not count_contacts:
        env.collision_handeler.post_solve = _ignore_contacts  # sic: the env's attribute name
    env.agent.position = (float(state[0]), float(state[1]))
    env.block.angle = float(state[4])
    env.block.position = (float(state[2]), float(state[3]))
    if velocity is not None:
        env.agent.velocity = (float(velocity[0]), float(velocity[1]))
        env.block.velocity = (float(velocity[2]), float(velocity[3]))
        env.block.angular_velocity = float(velocity[4])
    for body in (env.agent, env.block):  # shapes cache their world vertices until a step: refresh them for drawing
        env.space.reindex_shapes_for_body(body)


def _velocity(env) -> np.ndarray:
    agent, block = env.agent.velocity, env.block.velocity
    return np.array([agent[0], agent[1], block[0], block[1], env.block.angular_velocity], dtype=np.float64)


def _physics_step(env, target: np.ndarray) -> None:
    """`PushTEnv.step` without its coverage, reward, contact count and observation: the same PD control and physics
    sub-steps, so the trajectory is bit-equal (`target`: `(2,)` in env pixels).

    The env computes `acceleration = k_p * (target - position) + k_v * (Vec2d(0, 0) - velocity)` and `velocity +=
    acceleration * dt` on float64 numpy arrays and `Vec2d`s, one IEEE operation per component; the same operations on
    Python floats give the same bits at a fraction of the cost (numpy and `Vec2d` overhead is most of a sub-step).
    """
    k_p, k_v, dt = env.k_p, env.k_v, env.dt
    target_x, target_y = float(target[0]), float(target[1])
    agent, space = env.agent, env.space
    for _ in range(int(1 / (dt * env.control_hz))):
        x, y = agent.position
        vx, vy = agent.velocity
        ax = k_p * (target_x - x) + k_v * (0 - vx)
        ay = k_p * (target_y - y) + k_v * (0 - vy)
        agent.velocity = (vx + ax * dt, vy + ay * dt)
        space.step(dt)


def _ignore_contacts(arbiter, space, data) -> None:
    """Replaces the env's post-solve callback, which only counts contact points for `info` (building a contact point
    set per collision per sub-step) and has no effect on the physics."""


def _agent_touches_block(env) -> bool:
    agent_shape = next(iter(env.agent.shapes))
    return any(hit.shape is not None and hit.shape.body is env.block for hit in env.space.shape_query(agent_shape))


def _render(env, image_size: int) -> np.ndarray:
    """The env's frame `(S, S, 3)` uint8: its 512 x 512 screen (goal zone, block, agent; no action marker) resized with
    area averaging (OpenCV `INTER_AREA`, which anti-aliases a downscale)."""
    import cv2

    screen = env._render(visualize=False)  # (512, 512, 3) uint8: observation size set to the arena's in _make_env
    if screen.shape[0] == image_size:
        return np.ascontiguousarray(screen)
    return cv2.resize(screen, (image_size, image_size), interpolation=cv2.INTER_AREA)


def normalise_pusht_actions(targets: np.ndarray) -> np.ndarray:
    """Env action targets in pixels `[0, 512]` -> normalised actions in [-1, 1] (float32): `(target - 256) / 256`."""
    targets = np.asarray(targets, dtype=np.float64)
    half = ARENA_SIZE / 2
    return ((targets - half) / half).astype(np.float32)


def denormalise_pusht_actions(actions: np.ndarray) -> np.ndarray:
    """Normalised actions in [-1, 1] -> env action targets in pixels (float64): `256 + 256 * action`."""
    half = ARENA_SIZE / 2
    return half + half * np.asarray(actions, dtype=np.float64)


# --- data collection ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushTDataConfig:
    """How the offline Push-T data are collected (every field is checked by `check`).

    num_episodes: episodes to collect (defaults to 200: ~19k steps, ~240 MB of 64 x 64 frames; ~2-3 min on this CPU,
        ~7 ms a step, mostly drawing the env's 512 x 512 screen).
    episode_length: frames per episode `T` (defaults to 96: three 32-frame training clips, and room for start/goal
        pairs 25 steps apart).
    image_size: side of the square frames (defaults to 64, what this machine trains at).
    seed: seeds the initial states, the push directions and the noise.
    control_hz: env steps per second, the frames' rate (defaults to 10, gym-pusht's `control_hz`; checked against
        the env's, it sets the timestamps `t / control_hz`).
    policy_noise: standard deviation in pixels of the Gaussian noise added to every action target (defaults to 8).
    push_step: distance in pixels the target leads the agent by while pushing (defaults to 24: the agent then moves
        up to ~24 px per step, so a push of 6-16 steps carries the block some 100-300 px).
    approach_step: the most pixels the target moves per step while the agent walks to its next push (defaults to 48).
    approach_distance: distance in pixels from the block's centre of gravity to the point the agent starts a push from
        (defaults to 110: the T's points lie within ~77 px of its centre of gravity, plus the agent's radius of 15 and
        a margin, so a push starts just clear of the block).
    push_length: (low, high) steps of one push, drawn uniformly (defaults to (6, 16)).
    approach_steps: the most steps spent walking to a push's start point before pushing anyway (defaults to 12).
    towards_centre: probability that a push points at the arena's centre (plus noise) rather than a uniform direction,
        so blocks do not stay jammed against the walls (defaults to 0.5).
    start_clearance: the least distance in pixels between the agent's edge and the block in an initial state
        (defaults to 10: episodes start at rest and out of contact).
    margin: action targets are clipped to [margin, 512 - margin] so the kinematic agent, which walls do not stop,
        stays inside the arena (defaults to 20).
    """

    num_episodes: int = 200
    episode_length: int = 96
    image_size: int = 64
    seed: int = 0
    control_hz: float = 10.0
    policy_noise: float = 8.0
    push_step: float = 24.0
    approach_step: float = 48.0
    approach_distance: float = 110.0
    push_length: tuple[int, int] = (6, 16)
    approach_steps: int = 12
    towards_centre: float = 0.5
    start_clearance: float = 10.0
    margin: float = 20.0

    def check(self) -> None:
        """Raises a `ValueError` naming the first bad field."""
        for name in ("num_episodes", "episode_length", "image_size", "approach_steps"):
            _check_positive_int(name, getattr(self, name))
        if self.episode_length < 2:
            raise ValueError(f"`episode_length` must be >= 2 (a frame and its successor), got {self.episode_length}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"`seed` must be an integer >= 0, got {self.seed!r}.")
        for name in ("policy_noise", "start_clearance"):
            _check_non_negative_number(name, getattr(self, name))
        for name in ("control_hz", "push_step", "approach_step", "approach_distance"):
            _check_non_negative_number(name, getattr(self, name))
            if getattr(self, name) == 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)!r}.")
        low_high = self.push_length
        if (
            not isinstance(low_high, (tuple, list))
            or len(low_high) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in low_high)
            or low_high[0] > low_high[1]
        ):
            raise ValueError(f"`push_length` must be two integers 1 <= low <= high, got {low_high!r}.")
        if not isinstance(self.towards_centre, (int, float)) or not 0 <= self.towards_centre <= 1:
            raise ValueError(f"`towards_centre` must be a probability in [0, 1], got {self.towards_centre!r}.")
        _check_non_negative_number("margin", self.margin)
        if not AGENT_RADIUS <= self.margin < ARENA_SIZE / 2:
            raise ValueError(f"`margin` must lie in [{AGENT_RADIUS}, {ARENA_SIZE / 2}), got {self.margin!r}.")


class PushTExplorationPolicy:
    """A seeded scripted policy that pushes the block in random directions, so the data show contact.

    It alternates two phases. *Approach*: draw a push direction `u` (uniform, or with probability `towards_centre`
    pointed from the block at the arena's centre, plus N(0, 0.5 rad)), and walk the agent (at most `approach_step`
    px per step) to the point `approach_distance` behind the block's centre of gravity, opposite `u`; the walk is a
    straight line, so it may already brush the block. *Push*: for `push_length` steps the target leads the agent by
    `push_step` px along `u`, through the block. Every target gets N(0, `policy_noise`) noise and is clipped to
    `[margin, 512 - margin]`. The direction is drawn anew after each push.
    """

    def __init__(self, config: PushTDataConfig, rng: np.random.Generator):
        self.config = config
        self.rng = rng
        self.phase = "approach"
        self.steps_left = config.approach_steps
        self.direction = np.zeros(2)

    def _new_push(self, block_centre: np.ndarray) -> None:
        config = self.config
        if self.rng.random() < config.towards_centre:
            to_centre = ARENA_SIZE / 2 - block_centre
            angle = math.atan2(to_centre[1], to_centre[0]) + self.rng.normal(0.0, 0.5)
        else:
            angle = self.rng.uniform(-math.pi, math.pi)
        self.direction = np.array([math.cos(angle), math.sin(angle)])
        self.phase, self.steps_left = "approach", config.approach_steps

    def __call__(self, env) -> np.ndarray:
        """The next action target `(2,)` in env pixels, for the env's current state."""
        config = self.config
        agent = np.array(env.agent.position, dtype=np.float64)
        block_centre = np.array(env.block.local_to_world(env.block.center_of_gravity), dtype=np.float64)
        if self.phase == "approach":
            start = block_centre - config.approach_distance * self.direction
            offset = start - agent
            distance = float(np.linalg.norm(offset))
            self.steps_left -= 1
            if distance < config.push_step or self.steps_left <= 0:
                low, high = config.push_length
                self.phase, self.steps_left = "push", int(self.rng.integers(low, high + 1))
            target = agent + offset * min(1.0, config.approach_step / max(distance, 1e-9))
        if self.phase == "push":
            target = agent + config.push_step * self.direction
            self.steps_left -= 1
            if self.steps_left <= 0:
                self._new_push(block_centre)
        target = target + self.rng.normal(0.0, config.policy_noise, size=2)
        return np.clip(target, config.margin, ARENA_SIZE - config.margin)

    def start(self, env) -> None:
        """Draws the first push; call once the env is in the episode's initial state."""
        self._new_push(np.array(env.block.local_to_world(env.block.center_of_gravity), dtype=np.float64))


def _initial_state(env, rng: np.random.Generator, clearance: float) -> np.ndarray:
    """A random initial state in the env's own ranges (agent in [50, 450]^2, block in [100, 400]^2, any angle) whose
    agent is at least `clearance` px from the block, so episodes start at rest and out of contact."""
    from gym_pusht.envs.pusht import pymunk_to_shapely
    from shapely.geometry import Point

    for _ in range(1000):
        state = np.array(
            [
                rng.uniform(50, 450),
                rng.uniform(50, 450),
                rng.uniform(100, 400),
                rng.uniform(100, 400),
                rng.uniform(0, 2 * math.pi),
            ]
        )
        _set_state(env, state)
        block = pymunk_to_shapely(env.block, env.block.shapes)
        if block.distance(Point(state[0], state[1])) >= AGENT_RADIUS + clearance:
            return state
    raise RuntimeError("no initial state with the agent clear of the block in 1000 draws")  # pragma: no cover


def collect_pusht_episodes(config: PushTDataConfig, progress: bool = True) -> dict[str, np.ndarray]:
    """Runs the scripted exploration policy (`PushTExplorationPolicy`) in gym-pusht and records every step.

    Each episode starts from a random state at rest with the agent clear of the block (`_initial_state`), set exactly
    (`_set_state`); every step renders frame t, records state t and velocities t, draws the action, normalises it to
    float32 and applies the denormalised float32 action with `PushTEnv.step` (so a replay of the stored actions is the
    same trajectory). Frames are the env's drawing (goal zone in green, block, agent; with pymunk's red contact
    points while the agent touches the block), resized with area averaging.

    Returns:
        frames `(N, T, S, S, 3)` uint8; actions `(N, T, 2)` float32 in [-1, 1] (action t moves frame t to t + 1);
        states `(N, T, 5)` float64; velocities `(N, T, 5)` float64 (`[agent_vx, agent_vy, block_vx, block_vy,
        block_angular_velocity]`, px/s and rad/s); contacts `(N, T)` bool (the agent touches the block at frame t);
        timestamps `(T,)` float32 `t / control_hz`. `pusht_exploration_stats` summarises the contact.
    """
    if not isinstance(config, PushTDataConfig):
        raise ValueError(f"`config` must be a PushTDataConfig, got {type(config).__name__}.")
    config.check()
    env = _make_env()
    if not math.isclose(env.control_hz, config.control_hz):
        raise ValueError(f"`config.control_hz` is {config.control_hz}, but the env steps at {env.control_hz} Hz.")
    n, t, size = config.num_episodes, config.episode_length, config.image_size
    episodes = {
        "frames": np.zeros((n, t, size, size, 3), dtype=np.uint8),
        "actions": np.zeros((n, t, ACTION_DIM), dtype=np.float32),
        "states": np.zeros((n, t, STATE_DIM), dtype=np.float64),
        "velocities": np.zeros((n, t, STATE_DIM), dtype=np.float64),
        "contacts": np.zeros((n, t), dtype=bool),
        "timestamps": (np.arange(t, dtype=np.float64) / env.control_hz).astype(np.float32),
    }
    rng = np.random.default_rng(config.seed)
    for episode in tqdm(range(n), desc="collecting Push-T episodes", disable=not progress):
        state = _initial_state(env, rng, config.start_clearance)
        _set_state(env, state)
        _set_state(env, env.get_obs())  # start from the state as stored (angle in [0, 2 pi)), so replays are exact
        policy = PushTExplorationPolicy(config, rng)
        policy.start(env)
        for step in range(t):
            episodes["frames"][episode, step] = _render(env, size)
            episodes["states"][episode, step] = env.get_obs()
            episodes["velocities"][episode, step] = _velocity(env)
            episodes["contacts"][episode, step] = _agent_touches_block(env)
            action = normalise_pusht_actions(policy(env))
            episodes["actions"][episode, step] = action
            env.step(denormalise_pusht_actions(action))
    env.close()
    stats = pusht_exploration_stats(episodes)
    logger.info(
        "Push-T data: %d episodes x %d steps; agent-block contact in %.1f%% of frames, block moved in %.1f%% of steps",
        n,
        t,
        100 * stats["contact_fraction"],
        100 * stats["block_moved_fraction"],
    )
    return episodes


def pusht_exploration_stats(episodes: dict[str, np.ndarray], moved_threshold: float = 0.5) -> dict[str, float]:
    """How much the data touch the block: `contact_fraction` (frames where the agent touches it; needs `contacts`),
    `block_moved_fraction` (steps where the block moves by more than `moved_threshold` px, or turns by more than
    `moved_threshold / 100` rad), `mean_block_travel` (px the block moves over an episode, on average)."""
    _check_episodes(episodes)
    _check_non_negative_number("moved_threshold", moved_threshold)
    states = episodes["states"]
    shift = np.linalg.norm(np.diff(states[:, :, 2:4], axis=1), axis=-1)  # (N, T - 1)
    turn = np.abs(np.angle(np.exp(1j * np.diff(states[:, :, 4], axis=1))))  # wrapped, (N, T - 1)
    moved = (shift > moved_threshold) | (turn > moved_threshold / 100)
    stats = {
        "block_moved_fraction": float(moved.mean()) if moved.size else 0.0,
        "mean_block_travel": float(shift.sum(axis=1).mean()),
    }
    if "contacts" in episodes:
        stats["contact_fraction"] = float(np.asarray(episodes["contacts"]).mean())
    return stats


# --- files --------------------------------------------------------------------------------------------------------


def write_pusht_npz(path: str | os.PathLike, episodes: dict[str, np.ndarray]) -> None:
    """Writes `episodes` as the `.npz` that `training.sources.load_trajectory_source` reads: `frames (N, T, S, S, 3)`
    uint8, `actions (N, T, 2)` float32, `timestamps (T,)` float32; plus `states`, `velocities` and `contacts`, which
    the loader ignores (it reads only its three arrays) and `read_pusht_npz` returns. Written uncompressed (the loader
    streams `frames` from the archive) to a temporary file in the same folder, then moved into place (`os.replace`),
    so a reader never sees half a file."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).endswith(".npz"):
        raise ValueError(f"`path` must be a path ending in .npz, got {path!r}.")
    _check_episodes(episodes)
    arrays = {key: np.asarray(episodes[key]) for key in EPISODE_KEYS if key in episodes}
    folder = Path(path).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".npz.tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_pusht_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The episodes `write_pusht_npz` wrote (every array, loaded whole)."""
    if not isinstance(path, (str, os.PathLike)) or not Path(path).is_file():
        raise ValueError(f"`path` must be an existing .npz file, got {path!r}.")
    with np.load(path, allow_pickle=False) as arrays:
        episodes = {key: arrays[key] for key in arrays.files}
    _check_episodes(episodes, name=str(path))
    return episodes


# --- the true simulator as a planning model ------------------------------------------------------------------------


class PushTSimulator:
    """The true Push-T physics as a planning model: the upper bound for a planner (same planner, perfect model).

    `rollout` puts one env in each start state exactly (`_set_state`) and steps the physics as `PushTEnv.step` does
    (`_physics_step`), without rendering, the env's coverage or its contact count; the result is bit-equal to the
    env's own steps. Cost, measured on this machine's shared 2-core CPU in one process: ~0.2 ms per env step (10
    pymunk sub-steps, mostly pymunk's Python wrappers) against ~0.75 ms for `PushTEnv.step`, plus ~0.3 ms to set
    each start state: 300 candidates x 25 steps take ~1.5 s. No process pool is offered: a worker process must import
    this package (torch, transformers: ~10-25 s here) and this machine has 2 cores, so a pool would save less than a
    second per call at the price of a slow start.

    Frames: `render` draws what `collect_pusht_episodes` draws, except the red contact points pymunk's debug drawing
    adds while the agent touches the block (they need the contact solver's state; at 64 x 64 they change a few pixels
    by at most ~12 levels).

    Args:
        image_size: side of the frames `render` returns (defaults to 64).
    """

    def __init__(self, image_size: int = 64):
        _check_positive_int("image_size", image_size)
        self.image_size = image_size
        self.env = _make_env()

    def rollout(self, states: np.ndarray, actions: np.ndarray, velocities: np.ndarray | None = None) -> np.ndarray:
        """States `(N, H + 1, 5)` float64 (the start first) after applying `actions`.

        Args:
            states: `(N, 5)` start states (`[agent_x, agent_y, block_x, block_y, block_angle]`, env pixels, radians).
            actions: `(N, H, 2)` normalised actions in [-1, 1] (`denormalise_pusht_actions` gives the targets).
            velocities: `(N, 5)` start velocities (`collect_pusht_episodes`' `velocities`), or None: at rest.
        """
        states = _check_array("states", states, ("N", STATE_DIM))
        actions = _check_array("actions", actions, (states.shape[0], "H", ACTION_DIM))
        if np.abs(actions).max() > 1 + 1e-6:
            raise ValueError(
                f"`actions` must lie in [-1, 1] (normalised), found max |a| = {np.abs(actions).max():.4g}."
            )
        if velocities is not None:
            velocities = _check_array("velocities", velocities, (states.shape[0], STATE_DIM))
        targets = denormalise_pusht_actions(actions)  # (N, H, 2) float64 env pixels
        num, horizon = actions.shape[:2]
        out = np.empty((num, horizon + 1, STATE_DIM), dtype=np.float64)
        env = self.env
        for index in range(num):
            _set_state(env, states[index], None if velocities is None else velocities[index], count_contacts=False)
            out[index, 0] = env.get_obs()
            for step in range(horizon):
                _physics_step(env, targets[index, step])
                out[index, step + 1] = env.get_obs()
        return out

    def render(self, states: np.ndarray) -> np.ndarray:
        """Frames `(N, S, S, 3)` uint8 of `states` `(N, 5)`, as `collect_pusht_episodes` renders them (goal frames
        from goal states)."""
        states = _check_array("states", states, ("N", STATE_DIM))
        frames = np.empty((len(states), self.image_size, self.image_size, 3), dtype=np.uint8)
        for index, state in enumerate(states):
            _set_state(self.env, state)
            frames[index] = _render(self.env, self.image_size)
        return frames

    def close(self) -> None:
        self.env.close()


# --- evaluation ---------------------------------------------------------------------------------------------------


def pusht_success_batch(
    states: np.ndarray,
    goal_states: np.ndarray,
    position_threshold: float = SUCCESS_POSITION_THRESHOLD,
    angle_threshold: float = SUCCESS_ANGLE_THRESHOLD,
) -> np.ndarray:
    """DINO-WM's Push-T success per row `(N,)` bool: `||state[:4] - goal[:4]|| < position_threshold` (agent and block
    positions together, env pixels; defaults to 20) and the wrapped block-angle difference `< angle_threshold`
    (radians; defaults to pi / 9). `states` and `goal_states` are `(N, 5)`."""
    states = _check_array("states", states, ("N", STATE_DIM))
    goal_states = _check_array("goal_states", goal_states, (states.shape[0], STATE_DIM))
    for name, value in (("position_threshold", position_threshold), ("angle_threshold", angle_threshold)):
        _check_non_negative_number(name, value)
        if value == 0:
            raise ValueError(f"`{name}` must be > 0, got {value!r}.")
    position = np.linalg.norm(states[:, :4] - goal_states[:, :4], axis=-1)
    turn = np.abs(states[:, 4] - goal_states[:, 4]) % (2 * math.pi)
    turn = np.minimum(turn, 2 * math.pi - turn)
    return (position < position_threshold) & (turn < angle_threshold)


def pusht_success(
    state: np.ndarray,
    goal_state: np.ndarray,
    position_threshold: float = SUCCESS_POSITION_THRESHOLD,
    angle_threshold: float = SUCCESS_ANGLE_THRESHOLD,
) -> bool:
    """DINO-WM's Push-T success for one `state` `(5,)` against `goal_state` `(5,)` (see `pusht_success_batch`)."""
    state = _check_array("state", state, (STATE_DIM,))
    goal_state = _check_array("goal_state", goal_state, (STATE_DIM,))
    return bool(pusht_success_batch(state[None], goal_state[None], position_threshold, angle_threshold)[0])


def sample_pusht_episodes(
    episodes: dict[str, np.ndarray],
    num_episodes: int,
    gap: int = 25,
    seed: int = 0,
    episode_indices: Sequence[int] | None = None,
    context_length: int = 1,
) -> dict[str, np.ndarray]:
    """Planning problems as DINO-WM draws them: a start and a goal `gap` env steps apart on one trajectory.

    Args:
        episodes: held-out episodes (`collect_pusht_episodes` / `read_pusht_npz`).
        num_episodes: problems to draw `M`; each picks an episode uniformly (with replacement) and a start step
            uniformly in `[context_length - 1, T - 1 - gap]`.
        gap: steps from start to goal (defaults to 25: DINO-WM's `goal_H = 5` at `frameskip = 5`).
        seed: seeds the draws.
        episode_indices: the episodes to draw from, e.g. `TrajectorySourceInfo.held_out_indices` when `episodes` is
            the whole file `load_trajectory_source` split; None: all.
        context_length: frames a planner observes up to the start: the start step is drawn in
            `[context_length - 1, T - 1 - gap]`, so that many frames precede it in the episode.
    Returns:
        `start_states (M, 5)`, `start_velocities (M, 5)` (zeros when `episodes` has none), `start_frames (M, S, S, 3)`,
        `goal_states (M, 5)`, `goal_frames (M, S, S, 3)`, `actions (M, gap, 2)` (the recorded actions from start to
        goal, normalised), `episode_indices (M,)` and `start_steps (M,)`.
    """
    num_total, length = _check_episodes(episodes)
    _check_positive_int("num_episodes", num_episodes)
    _check_positive_int("gap", gap)
    _check_positive_int("context_length", context_length)
    if gap + context_length > length:
        raise ValueError(
            f"`gap` + `context_length` must be <= the episode length {length}, got {gap} + {context_length}."
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be an integer >= 0, got {seed!r}.")
    if episode_indices is None:
        pool = np.arange(num_total)
    else:
        pool = np.asarray(list(episode_indices))
        if pool.ndim != 1 or pool.size == 0 or not np.issubdtype(pool.dtype, np.integer):
            raise ValueError(f"`episode_indices` must be a non-empty sequence of ints, got {episode_indices!r}.")
        if pool.min() < 0 or pool.max() >= num_total:
            raise ValueError(f"`episode_indices` must lie in [0, {num_total}), found [{pool.min()}, {pool.max()}].")
    rng = np.random.default_rng(seed)
    chosen = pool[rng.integers(0, len(pool), size=num_episodes)]
    starts = rng.integers(context_length - 1, length - gap, size=num_episodes)
    goals = starts + gap
    velocities = episodes.get("velocities")
    steps = starts[:, None] + np.arange(gap)  # (M, gap)
    return {
        "start_states": episodes["states"][chosen, starts].copy(),
        "start_velocities": (
            np.zeros((num_episodes, STATE_DIM)) if velocities is None else velocities[chosen, starts].copy()
        ),
        "start_frames": episodes["frames"][chosen, starts].copy(),
        "goal_states": episodes["states"][chosen, goals].copy(),
        "goal_frames": episodes["frames"][chosen, goals].copy(),
        "actions": episodes["actions"][chosen[:, None], steps].copy(),
        "episode_indices": chosen,
        "start_steps": starts,
    }


def pusht_config_dict(config: PushTDataConfig) -> dict:
    """`config` as a JSON-ready dict, to save beside the data it made."""
    if not isinstance(config, PushTDataConfig):
        raise ValueError(f"`config` must be a PushTDataConfig, got {type(config).__name__}.")
    values = asdict(config)
    values["push_length"] = list(values["push_length"])
    return values
