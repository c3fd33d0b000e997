"""The bouncing-balls world: equal-mass discs in a square box with elastic collisions against the walls and each
other; the action is a velocity impulse on ball 0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import RGB, World, WorldConfig, _check, _coverage, _is_int, _is_real, _is_rgb, _region

DEFAULT_BALL_COLORS: tuple[RGB, ...] = (
    (1.0, 0.25, 0.25),  # red
    (0.25, 1.0, 0.25),  # green
    (0.3, 0.45, 1.0),  # blue
    (1.0, 0.9, 0.2),  # yellow
    (0.2, 0.95, 0.95),  # cyan
    (0.95, 0.3, 0.95),  # magenta
    (1.0, 0.6, 0.1),  # orange
    (0.9, 0.9, 0.9),  # white
)
DEFAULT_BALL_NAMES: tuple[str, ...] = ("red", "green", "blue", "yellow", "cyan", "magenta", "orange", "white")
# Pitches a major third apart (A4 upwards), so that every ball's tone falls in a different mel band at 16 kHz.
DEFAULT_TONE_FREQUENCIES: tuple[float, ...] = (440.0, 554.37, 698.46, 880.0, 1108.73, 1396.91, 1760.0, 2217.46)
WALLS = ("left", "right", "top", "bottom")


@dataclass
class BouncingBallsWorldConfig(WorldConfig):
    """Bouncing balls: equal-mass discs in a square box, elastic collisions with the walls and each other.

    Takes the fields of `WorldConfig`, plus:

    Args:
        num_balls (`int`, *optional*, defaults to 3):
            Number of balls, at most `len(ball_colors)`.
        ball_radius (`float`, *optional*, defaults to 3.0):
            Radius of every ball in pixels. All balls have unit mass.
        min_speed (`float`, *optional*, defaults to 6.0):
            Lower bound of the initial speed, in pixels per second (0.6 px per frame at the default interval).
        max_speed (`float`, *optional*, defaults to 15.0):
            Upper bound of the initial speed, in pixels per second (1.5 px per frame at the default interval).
        impulse_scale (`float`, *optional*, defaults to 5.0):
            Standard deviation, in pixels per second, of each component of an impulse (a change of the
            velocity of ball 0).
        edge_softness (`float`, *optional*, defaults to 1.0):
            Width in pixels of the linear coverage ramp at a disc's edge (anti-aliasing).
        ball_colors (`tuple[tuple[float, float, float], ...]`, *optional*, defaults to `DEFAULT_BALL_COLORS`):
            RGB colours in `[0, 1]`; ball `b` uses `ball_colors[b]`. The default holds 8 distinct colours.
        ball_names (`tuple[str, ...]`, *optional*, defaults to `DEFAULT_BALL_NAMES`):
            Names of the balls in captions (the colours' names), at least `num_balls`.
        tone_frequencies (`tuple[float, ...]`, *optional*, defaults to `DEFAULT_TONE_FREQUENCIES`):
            Pitch in Hz of ball `b`'s tone, at least `num_balls`, each below `sample_rate / 2`.
    """

    num_balls: int = 3
    ball_radius: float = 3.0
    min_speed: float = 6.0
    max_speed: float = 15.0
    impulse_scale: float = 5.0
    edge_softness: float = 1.0
    ball_colors: tuple[RGB, ...] = DEFAULT_BALL_COLORS
    ball_names: tuple[str, ...] = DEFAULT_BALL_NAMES
    tone_frequencies: tuple[float, ...] = DEFAULT_TONE_FREQUENCIES

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            self,
            "ball_colors",
            isinstance(self.ball_colors, (tuple, list)) and all(_is_rgb(c) for c in self.ball_colors),
            "a sequence of RGB triples in [0, 1]",
        )
        self.ball_colors = tuple(tuple(float(c) for c in color) for color in self.ball_colors)
        _check(
            self,
            "num_balls",
            _is_int(self.num_balls) and 1 <= self.num_balls <= len(self.ball_colors),
            f"an int in [1, len(ball_colors)={len(self.ball_colors)}]",
        )
        _check(
            self,
            "ball_radius",
            _is_real(self.ball_radius) and 0.5 <= self.ball_radius <= self.image_size / 4,
            f"a float in [0.5, image_size / 4 = {self.image_size / 4}]",
        )
        # Rejection sampling of non-overlapping starts needs room: discs (with a 1 px margin) may cover at
        # most a third of the area their centres can reach.
        free_side = self.image_size - 2 * self.ball_radius
        _check(
            self,
            "num_balls",
            self.num_balls * (2 * self.ball_radius + 1) ** 2 <= free_side**2 / 3,
            f"small enough that {self.num_balls} balls of radius {self.ball_radius} fit loosely "
            f"in a {self.image_size} px box",
        )
        _check(self, "min_speed", _is_real(self.min_speed) and self.min_speed >= 0, "a float >= 0")
        _check(
            self,
            "max_speed",
            _is_real(self.max_speed) and np.isfinite(self.max_speed) and self.max_speed >= self.min_speed,
            f"a finite float >= min_speed = {self.min_speed}",
        )
        _check(
            self,
            "impulse_scale",
            _is_real(self.impulse_scale) and np.isfinite(self.impulse_scale) and self.impulse_scale >= 0,
            "a finite float >= 0",
        )
        _check(self, "edge_softness", _is_real(self.edge_softness) and self.edge_softness > 0, "a float > 0")
        _check(
            self,
            "ball_names",
            isinstance(self.ball_names, (tuple, list))
            and len(self.ball_names) >= self.num_balls
            and all(isinstance(name, str) and name for name in self.ball_names),
            f"a sequence of at least num_balls = {self.num_balls} non-empty strings",
        )
        _check(
            self,
            "tone_frequencies",
            isinstance(self.tone_frequencies, (tuple, list))
            and len(self.tone_frequencies) >= self.num_balls
            and all(_is_real(f) and 0 < f < self.sample_rate / 2 for f in self.tone_frequencies),
            f"a sequence of at least num_balls = {self.num_balls} frequencies in (0, sample_rate / 2)",
        )
        self.ball_names = tuple(self.ball_names)
        self.tone_frequencies = tuple(float(f) for f in self.tone_frequencies)


class BouncingBallsWorld(World):
    """Equal-mass balls in a box with elastic wall and ball–ball collisions; actions push ball 0.

    State per trajectory `(num_balls, 4)`: `x, y, vx, vy` of each ball (pixels, pixels per second).
    Action `(2,)`: a change of ball 0's velocity `(Δvx, Δvy)`.
    Physics `(4 * num_balls + 1,)`: `ball{b}_x, ball{b}_y, ball{b}_vx, ball{b}_vy` for each ball `b` in order,
    then `kinetic_energy = ½ Σ_b |v_b|²` (unit masses). Without impulses the kinetic energy is conserved up to
    float error: collisions swap the normal velocity components and wall bounces flip a sign.
    """

    name = "bouncing_balls"
    config_class = BouncingBallsWorldConfig
    config: BouncingBallsWorldConfig

    def __init__(self, config: BouncingBallsWorldConfig | None = None) -> None:
        super().__init__(config)
        num_balls = self.config.num_balls
        self.state_shape = (num_balls, 4)
        self.action_dim = 2
        self.physics_fields = tuple(
            f"ball{b}_{quantity}" for b in range(num_balls) for quantity in ("x", "y", "vx", "vy")
        ) + ("kinetic_energy",)
        self.probe_fields = self.physics_fields[:-1]
        self._pairs = [(i, j) for i in range(num_balls) for j in range(i + 1, num_balls)]
        self._colors = np.asarray(self.config.ball_colors[:num_balls], dtype=np.float32)  # (B, 3)
        # Event kinds: per ball its four walls (left, right, top, bottom), then every pair of balls.
        self.event_kinds = tuple(("wall", b, side) for b in range(num_balls) for side in WALLS) + tuple(
            ("ball", i, j) for i, j in self._pairs
        )

    def energy(self, state: Any) -> Any:
        """`½ Σ_b |v_b|²` from `(..., 4 * num_balls)` states laid out as `probe_fields` (`x, y, vx, vy` per ball);
        numpy or torch. Equals the `kinetic_energy` physics column."""
        return 0.5 * (state[..., 2::4] ** 2 + state[..., 3::4] ** 2).sum(-1)

    def sample_initial_state(self, rng: np.random.Generator) -> np.ndarray:
        """Non-overlapping positions (1 px apart at least) uniform in the box; speeds uniform in
        `[min_speed, max_speed]` with uniform directions. Returns `(num_balls, 4)` float64."""
        config = self.config
        radius, num_balls = config.ball_radius, config.num_balls
        positions = np.empty((num_balls, 2))
        placed = 0
        # The config check keeps the discs' share of the box small, so few draws are ever rejected.
        while placed < num_balls:
            candidate = rng.uniform(radius, config.image_size - radius, size=2)
            if np.all(np.linalg.norm(positions[:placed] - candidate, axis=1) >= 2 * radius + 1):
                positions[placed] = candidate
                placed += 1
        speeds = rng.uniform(config.min_speed, config.max_speed, size=num_balls)
        angles = rng.uniform(0.0, 2 * np.pi, size=num_balls)
        velocities = speeds[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        return np.concatenate([positions, velocities], axis=1)

    def _substep(self, pos: np.ndarray, vel: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance positions and velocities `(N, B, 2)` by `dt (N, 1, 1)`: drift, collisions, wall bounces.

        Also returns which event kinds (`event_kinds`) happened, `(N, E)` bool."""
        radius, size = self.config.ball_radius, self.config.image_size
        pos = pos + vel * dt
        pair_hits = []
        for i, j in self._pairs:
            delta = pos[:, j] - pos[:, i]  # (N, 2)
            distance = np.sqrt(np.sum(delta * delta, axis=-1))  # (N,)
            touching = distance < 2 * radius
            if not touching.any():
                pair_hits.append(touching)
                continue
            normal = delta / np.maximum(distance, 1e-12)[:, None]
            closing = np.sum((vel[:, j] - vel[:, i]) * normal, axis=-1)  # < 0 when approaching
            # Equal masses: an elastic collision swaps the velocity components along the normal.
            exchange = np.where(touching & (closing < 0), closing, 0.0)[:, None] * normal
            pair_hits.append(touching & (closing < 0))
            vel[:, i] += exchange
            vel[:, j] -= exchange
            # Separate overlapping balls symmetrically; positions only, so the energy is untouched.
            push = np.where(touching, 0.5 * (2 * radius - distance), 0.0)[:, None] * normal
            pos[:, i] -= push
            pos[:, j] += push
        low, high = radius, size - radius
        below, above = pos < low, pos > high
        # Mirror the overshoot back into the box and flip the velocity component.
        pos = np.where(below, 2 * low - pos, np.where(above, 2 * high - pos, pos))
        vel = np.where(below, np.abs(vel), np.where(above, -np.abs(vel), vel))
        # (N, B, 4) in WALLS order: x below (left), x above (right), y below (top), y above (bottom).
        wall_hits = np.stack([below[..., 0], above[..., 0], below[..., 1], above[..., 1]], axis=-1)
        pair_hits = np.stack(pair_hits, axis=-1) if pair_hits else np.zeros((pos.shape[0], 0), dtype=bool)
        return np.clip(pos, low, high), vel, np.concatenate([wall_hits.reshape(pos.shape[0], -1), pair_hits], axis=-1)

    def _integrate(self, states: np.ndarray, actions: np.ndarray, gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        num_trajectories, num_steps = actions.shape[:2]
        pos, vel = states[..., :2].copy(), states[..., 2:].copy()  # (N, B, 2) each
        trajectory = np.empty((num_trajectories, num_steps, *self.state_shape))  # (N, T, B, 4)
        events = np.full((num_trajectories, num_steps, len(self.event_kinds)), np.nan)
        for t in range(num_steps):
            trajectory[:, t, :, :2], trajectory[:, t, :, 2:] = pos, vel
            if t == num_steps - 1:
                break
            vel[:, 0] += actions[:, t]  # impulse on ball 0, right after frame t
            dt = (gaps[:, t] / self.config.substeps)[:, None, None]
            for substep in range(self.config.substeps):
                pos, vel, hits = self._substep(pos, vel, dt)
                first = hits & np.isnan(events[:, t + 1])
                events[:, t + 1] = np.where(first, (substep + 1) * dt[:, :, 0], events[:, t + 1])
        velocities = trajectory[..., 2:]
        kinetic_energy = 0.5 * np.sum(velocities * velocities, axis=(2, 3))  # (N, T)
        physics = np.concatenate(
            [trajectory.reshape(num_trajectories, num_steps, -1), kinetic_energy[..., None]], axis=-1
        )
        return physics, events

    def _event_phrase(self, kind: int) -> str:
        what, first, other = self.event_kinds[kind]
        target = f"the {other} wall" if what == "wall" else f"the {self._color_name(other)} ball"
        return f"the {self._color_name(first)} ball hits {target}"

    def _event_pitches(self, kind: int) -> tuple[float, ...]:
        what, first, other = self.event_kinds[kind]
        balls = (first,) if what == "wall" else (first, other)
        return tuple(self.config.tone_frequencies[b] for b in balls)

    def _scene_phrase(self, physics: np.ndarray) -> str:
        size = self.config.image_size
        return ", ".join(
            f"{self._color_name(b)} is {_region(physics[4 * b], physics[4 * b + 1], size)}"
            for b in range(self.config.num_balls)
        )

    def _color_name(self, ball: int) -> str:
        return self.config.ball_names[ball]

    def _draw(self, physics: np.ndarray) -> np.ndarray:
        """Draw the balls (alpha-composited in index order) on black.

        `physics (N, T, P)` → `pixel_values (N, T, 3, H, W)` float32 in [-1, 1].
        """
        config = self.config
        num_trajectories, num_steps = physics.shape[:2]
        positions = physics[..., : 4 * config.num_balls].reshape(num_trajectories, num_steps, -1, 4)[..., :2]
        positions = positions.astype(np.float32)
        size = config.image_size
        frames = np.empty((num_trajectories, num_steps, 3, size, size), dtype=np.float32)
        for t in range(num_steps):
            image = np.zeros((num_trajectories, 3, size, size), dtype=np.float32)
            for b in range(config.num_balls):
                x = positions[:, t, b, 0][:, None, None]  # (N, 1, 1)
                y = positions[:, t, b, 1][:, None, None]
                distance = np.sqrt((self._grid_x - x) ** 2 + (self._grid_y - y) ** 2)  # (N, H, W)
                alpha = _coverage(distance, config.ball_radius, config.edge_softness)[:, None]  # (N, 1, H, W)
                image = image * (1.0 - alpha) + alpha * self._colors[b][None, :, None, None]
            frames[:, t] = image
        return frames * 2.0 - 1.0
