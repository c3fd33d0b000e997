"""The mass-spring world: a ball on an ideal zero-rest-length spring tied to the image centre (a 2-D isotropic
harmonic oscillator) integrated with velocity Verlet; the action is a momentum impulse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import RGB, World, WorldConfig, _check, _coverage, _is_real, _is_rgb, _region


@dataclass
class MassSpringWorldConfig(WorldConfig):
    """Mass-spring: one ball tied to the image centre by an ideal spring of zero rest length.

    Takes the fields of `WorldConfig`, plus:

    Args:
        mass (`float`, *optional*, defaults to 1.0):
            Mass of the ball (momentum = mass × velocity in pixels per second).
        stiffness (`float`, *optional*, defaults to 6.3):
            Spring constant `k`: the force is `-k (r - centre)`. The period `2π·sqrt(mass / stiffness)` is ≈ 2.5 s
            with the defaults, 25 frames at the default interval.
        min_amplitude (`float`, *optional*, defaults to 4.0):
            Lower bound of the initial orbit's semi-major axis (its largest distance from the centre), in pixels.
        max_amplitude (`float`, *optional*, defaults to 10.0):
            Upper bound of the initial orbit's semi-major axis; `max_amplitude + ball_radius` must fit in half the
            image. With the defaults the ball moves at most about 2.5 px per frame.
        ball_radius (`float`, *optional*, defaults to 3.0):
            Radius of the ball in pixels.
        impulse_scale (`float`, *optional*, defaults to 1.0):
            Standard deviation of each component of an impulse (a change of the ball's momentum); with the default
            mass and stiffness one impulse moves the orbit's extent by about 0.4 px.
        spring_width (`float`, *optional*, defaults to 1.0):
            Drawn width of the spring in pixels.
        edge_softness (`float`, *optional*, defaults to 1.0):
            Width in pixels of the linear coverage ramp at the edges of the ball and the spring.
        ball_color (`tuple[float, float, float]`, *optional*, defaults to `(0.2, 0.95, 0.95)`):
            RGB colour of the ball in `[0, 1]`.
        spring_color (`tuple[float, float, float]`, *optional*, defaults to `(0.6, 0.6, 0.6)`):
            RGB colour of the spring in `[0, 1]`.
        tone_frequency (`float`, *optional*, defaults to 659.25):
            Pitch in Hz of the ball's tone at each turn at its widest, below `sample_rate / 2`.
    """

    mass: float = 1.0
    stiffness: float = 6.3
    min_amplitude: float = 4.0
    max_amplitude: float = 10.0
    ball_radius: float = 3.0
    impulse_scale: float = 1.0
    spring_width: float = 1.0
    edge_softness: float = 1.0
    ball_color: RGB = (0.2, 0.95, 0.95)
    spring_color: RGB = (0.6, 0.6, 0.6)
    tone_frequency: float = 659.25

    def __post_init__(self) -> None:
        super().__post_init__()
        for field in ("mass", "stiffness"):
            value = getattr(self, field)
            _check(self, field, _is_real(value) and np.isfinite(value) and value > 0, "a finite float > 0")
        _check(self, "ball_radius", _is_real(self.ball_radius) and self.ball_radius > 0, "a float > 0")
        _check(
            self,
            "max_amplitude",
            _is_real(self.max_amplitude) and 0 < self.max_amplitude <= self.image_size / 2 - self.ball_radius,
            f"a float in (0, image_size / 2 - ball_radius = {self.image_size / 2 - self.ball_radius}]",
        )
        _check(
            self,
            "min_amplitude",
            _is_real(self.min_amplitude) and 0 <= self.min_amplitude <= self.max_amplitude,
            f"a float in [0, max_amplitude = {self.max_amplitude}]",
        )
        _check(
            self,
            "impulse_scale",
            _is_real(self.impulse_scale) and np.isfinite(self.impulse_scale) and self.impulse_scale >= 0,
            "a finite float >= 0",
        )
        _check(self, "spring_width", _is_real(self.spring_width) and self.spring_width > 0, "a float > 0")
        _check(self, "edge_softness", _is_real(self.edge_softness) and self.edge_softness > 0, "a float > 0")
        _check(self, "ball_color", _is_rgb(self.ball_color), "an RGB triple in [0, 1]")
        _check(self, "spring_color", _is_rgb(self.spring_color), "an RGB triple in [0, 1]")
        self.ball_color = tuple(float(c) for c in self.ball_color)
        self.spring_color = tuple(float(c) for c in self.spring_color)
        _check(
            self,
            "tone_frequency",
            _is_real(self.tone_frequency) and 0 < self.tone_frequency < self.sample_rate / 2,
            f"a float in (0, sample_rate / 2 = {self.sample_rate / 2})",
        )


class MassSpringWorld(World):
    """A ball on a zero-rest-length spring tied to the image centre: a 2-D isotropic harmonic oscillator.

    State per trajectory `(4,)`: position `x, y` (pixels) and momentum `px, py` of the ball;
    `dp/dt = -stiffness (r - centre)`, `dr/dt = p / mass`, integrated with velocity Verlet (symplectic) sub-steps.
    Orbits are ellipses centred on the image centre. Action `(2,)`: a change of the momentum `(Δpx, Δpy)`.
    Physics `(5,)`: `x, y, px, py, energy` with `energy = |p|² / (2 mass) + ½ stiffness |r - centre|²`, conserved
    without impulses up to the integrator's bounded O(dt²) error.
    """

    name = "mass_spring"
    config_class = MassSpringWorldConfig
    config: MassSpringWorldConfig

    def __init__(self, config: MassSpringWorldConfig | None = None) -> None:
        super().__init__(config)
        self.state_shape = (4,)
        self.action_dim = 2
        # Positions and momenta: what a physics probe regresses, and the layout `energy` reads.
        self.probe_fields = ("x", "y", "px", "py")
        self.physics_fields = (*self.probe_fields, "energy")
        # One event kind: the ball turns at its widest (the radial velocity goes from outwards to inwards).
        self.event_kinds = ("widest",)
        self._centre = self.config.image_size / 2.0
        self._ball_color = np.asarray(self.config.ball_color, dtype=np.float32)[None, :, None, None]
        self._spring_color = np.asarray(self.config.spring_color, dtype=np.float32)[None, :, None, None]

    def energy(self, state: Any) -> Any:
        """Total energy from `state (..., 4)` laid out as `probe_fields` (numpy array or torch tensor) → `(...,)`."""
        config, centre = self.config, self._centre
        kinetic = (state[..., 2] ** 2 + state[..., 3] ** 2) / (2 * config.mass)
        potential = 0.5 * config.stiffness * ((state[..., 0] - centre) ** 2 + (state[..., 1] - centre) ** 2)
        return kinetic + potential

    def sample_initial_state(self, rng: np.random.Generator) -> np.ndarray:
        """A point of a random centred elliptical orbit, as `(x, y, px, py)` float64.

        Semi-major axis `a` uniform in `[min_amplitude, max_amplitude]`, signed semi-minor axis `b = a·u` with `u`
        uniform in `[-1, 1]` (the sign is the direction of travel), orientation and phase uniform: the orbit never
        leaves the disc of radius `a` around the centre.
        """
        config = self.config
        omega = np.sqrt(config.stiffness / config.mass)
        major = rng.uniform(config.min_amplitude, config.max_amplitude)
        minor = major * rng.uniform(-1.0, 1.0)
        orientation, phase = rng.uniform(0.0, 2 * np.pi, size=2)
        along = np.array([np.cos(orientation), np.sin(orientation)])  # unit vector of the major axis
        across = np.array([-along[1], along[0]])
        position = major * np.cos(phase) * along + minor * np.sin(phase) * across
        velocity = omega * (-major * np.sin(phase) * along + minor * np.cos(phase) * across)
        return np.concatenate([self._centre + position, config.mass * velocity])

    def _integrate(self, states: np.ndarray, actions: np.ndarray, gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        config = self.config
        num_trajectories, num_steps = actions.shape[:2]
        stiffness, mass = config.stiffness, config.mass
        offset, momentum = states[:, :2] - self._centre, states[:, 2:].copy()  # (N, 2) each, r - centre and p
        trajectory = np.empty((num_trajectories, num_steps, 4))
        events = np.full((num_trajectories, num_steps, 1), np.nan)
        for t in range(num_steps):
            trajectory[:, t, :2], trajectory[:, t, 2:] = self._centre + offset, momentum
            if t == num_steps - 1:
                break
            momentum = momentum + actions[:, t]  # impulse right after frame t
            dt = (gaps[:, t] / config.substeps)[:, None]  # (N, 1)
            for substep in range(config.substeps):
                outwards = np.sum(offset * momentum, axis=-1) > 0  # (N,) the radial velocity's sign
                # Velocity Verlet: half kick, drift, half kick.
                momentum = momentum - 0.5 * dt * stiffness * offset
                offset = offset + dt * momentum / mass
                momentum = momentum - 0.5 * dt * stiffness * offset
                turned = outwards & (np.sum(offset * momentum, axis=-1) <= 0) & np.isnan(events[:, t + 1, 0])
                events[:, t + 1, 0] = np.where(turned, (substep + 1) * dt[:, 0], events[:, t + 1, 0])
        return np.concatenate([trajectory, self.energy(trajectory)[..., None]], axis=-1), events

    def _event_phrase(self, kind: int) -> str:
        return "the ball turns at its widest"

    def _event_pitches(self, kind: int) -> tuple[float, ...]:
        return (self.config.tone_frequency,)

    def _scene_phrase(self, physics: np.ndarray) -> str:
        return f"the ball is {_region(physics[0], physics[1], self.config.image_size)}"

    def _draw(self, physics: np.ndarray) -> np.ndarray:
        """Draw the spring then the ball on black. `(N, T, P)` → `(N, T, 3, H, W)` in [-1, 1]."""
        config = self.config
        num_trajectories, num_steps = physics.shape[:2]
        size, centre = config.image_size, self._centre
        ball = physics[..., :2].astype(np.float32)  # (N, T, 2)
        frames = np.empty((num_trajectories, num_steps, 3, size, size), dtype=np.float32)
        px, py = self._grid_x - centre, self._grid_y - centre  # pixel centres relative to the anchor
        for t in range(num_steps):
            rx = ball[:, t, 0][:, None, None] - centre  # (N, 1, 1) spring vector centre → ball
            ry = ball[:, t, 1][:, None, None] - centre
            # Nearest point of the spring segment to each pixel, as a fraction of the spring.
            along = np.clip((px * rx + py * ry) / np.maximum(rx * rx + ry * ry, 1e-6), 0.0, 1.0)  # (N, H, W)
            spring_distance = np.sqrt((px - along * rx) ** 2 + (py - along * ry) ** 2)
            ball_distance = np.sqrt((px - rx) ** 2 + (py - ry) ** 2)
            spring_alpha = _coverage(spring_distance, config.spring_width / 2, config.edge_softness)[:, None]
            ball_alpha = _coverage(ball_distance, config.ball_radius, config.edge_softness)[:, None]  # (N, 1, H, W)
            image = spring_alpha * self._spring_color
            frames[:, t] = image * (1.0 - ball_alpha) + ball_alpha * self._ball_color
        return frames * 2.0 - 1.0
