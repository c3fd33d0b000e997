"""The pendulum world: a frictionless rigid pendulum integrated with RK4; the action is an angular velocity
impulse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import RGB, World, WorldConfig, _check, _coverage, _is_real, _is_rgb, _region


@dataclass
class PendulumWorldConfig(WorldConfig):
    """Pendulum: a frictionless rigid pendulum (bob on a massless rod) hanging from the image centre.

    Takes the fields of `WorldConfig`, plus:

    Args:
        rod_length (`float`, *optional*, defaults to 10.0):
            Distance from the pivot to the bob centre, in pixels.
        bob_radius (`float`, *optional*, defaults to 3.0):
            Radius of the bob in pixels; `rod_length + bob_radius` must fit in half the image.
        gravity (`float`, *optional*, defaults to 40.0):
            Gravitational acceleration in pixels per second squared (small-angle period
            `2π·sqrt(rod_length / gravity)` ≈ 3.1 s, about 31 frames at the default interval).
        max_initial_angle (`float`, *optional*, defaults to 0.8):
            The initial angle from the downward vertical is uniform in
            `[-max_initial_angle, max_initial_angle]` radians.
        max_initial_angular_velocity (`float`, *optional*, defaults to 1.0):
            The initial angular velocity is uniform in `[-max, max]` radians per second. With the defaults the
            bob moves at most about 1.9 px per frame.
        impulse_scale (`float`, *optional*, defaults to 0.5):
            Standard deviation, in radians per second, of an impulse (a change of the angular velocity).
        rod_width (`float`, *optional*, defaults to 1.0):
            Drawn width of the rod in pixels.
        edge_softness (`float`, *optional*, defaults to 1.0):
            Width in pixels of the linear coverage ramp at the edges of the bob and the rod.
        bob_color (`tuple[float, float, float]`, *optional*, defaults to `(1.0, 0.6, 0.1)`):
            RGB colour of the bob in `[0, 1]`.
        rod_color (`tuple[float, float, float]`, *optional*, defaults to `(0.6, 0.6, 0.6)`):
            RGB colour of the rod in `[0, 1]`.
        tone_frequency (`float`, *optional*, defaults to 523.25):
            Pitch in Hz of the bob's tone at each swing extreme, below `sample_rate / 2`.
    """

    rod_length: float = 10.0
    bob_radius: float = 3.0
    gravity: float = 40.0
    max_initial_angle: float = 0.8
    max_initial_angular_velocity: float = 1.0
    impulse_scale: float = 0.5
    rod_width: float = 1.0
    edge_softness: float = 1.0
    bob_color: RGB = (1.0, 0.6, 0.1)
    rod_color: RGB = (0.6, 0.6, 0.6)
    tone_frequency: float = 523.25

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self, "rod_length", _is_real(self.rod_length) and self.rod_length > 0, "a float > 0")
        _check(
            self,
            "bob_radius",
            _is_real(self.bob_radius) and 0 < self.bob_radius <= self.image_size / 2 - self.rod_length,
            f"a float in (0, image_size / 2 - rod_length = {self.image_size / 2 - self.rod_length}]",
        )
        _check(
            self,
            "gravity",
            _is_real(self.gravity) and np.isfinite(self.gravity) and self.gravity > 0,
            "a finite float > 0",
        )
        _check(
            self,
            "max_initial_angle",
            _is_real(self.max_initial_angle) and 0 <= self.max_initial_angle <= np.pi,
            "a float in [0, pi]",
        )
        _check(
            self,
            "max_initial_angular_velocity",
            _is_real(self.max_initial_angular_velocity)
            and np.isfinite(self.max_initial_angular_velocity)
            and self.max_initial_angular_velocity >= 0,
            "a finite float >= 0",
        )
        _check(
            self,
            "impulse_scale",
            _is_real(self.impulse_scale) and np.isfinite(self.impulse_scale) and self.impulse_scale >= 0,
            "a finite float >= 0",
        )
        _check(self, "rod_width", _is_real(self.rod_width) and self.rod_width > 0, "a float > 0")
        _check(self, "edge_softness", _is_real(self.edge_softness) and self.edge_softness > 0, "a float > 0")
        _check(self, "bob_color", _is_rgb(self.bob_color), "an RGB triple in [0, 1]")
        _check(self, "rod_color", _is_rgb(self.rod_color), "an RGB triple in [0, 1]")
        self.bob_color = tuple(float(c) for c in self.bob_color)
        self.rod_color = tuple(float(c) for c in self.rod_color)
        _check(
            self,
            "tone_frequency",
            _is_real(self.tone_frequency) and 0 < self.tone_frequency < self.sample_rate / 2,
            f"a float in (0, sample_rate / 2 = {self.sample_rate / 2})",
        )


class PendulumWorld(World):
    """A frictionless pendulum: a bob on a rigid massless rod hanging from the image centre.

    State per trajectory `(2,)`: angle θ from the downward vertical (radians, positive towards +x) and angular
    velocity ω (radians per second); `θ'' = -(gravity / rod_length) sin θ`, integrated with RK4 sub-steps.
    Action `(1,)`: a change of ω.
    Physics `(5,)`: `angle` (wrapped to [-π, π)), `angular_velocity`, `bob_x`, `bob_y` (pixels), `energy` per
    unit mass `½ L² ω² + g L (1 - cos θ)` (zero at rest), conserved without impulses up to integrator error.
    """

    name = "pendulum"
    config_class = PendulumWorldConfig
    config: PendulumWorldConfig

    def __init__(self, config: PendulumWorldConfig | None = None) -> None:
        super().__init__(config)
        self.state_shape = (2,)
        self.action_dim = 1
        self.physics_fields = ("angle", "angular_velocity", "bob_x", "bob_y", "energy")
        self.probe_fields = ("bob_x", "bob_y", "angular_velocity")
        # Event kinds: the bob turns back at its left or its right extreme.
        self.event_kinds = (("extreme", "left"), ("extreme", "right"))
        self._pivot = self.config.image_size / 2.0
        self._bob_color = np.asarray(self.config.bob_color, dtype=np.float32)[None, :, None, None]
        self._rod_color = np.asarray(self.config.rod_color, dtype=np.float32)[None, :, None, None]

    def energy(self, state: Any) -> Any:
        """`½ L² ω² + g L (1 - cos θ)` with `cos θ = (bob_y - pivot) / L`, from `(..., 3)` states laid out as
        `probe_fields` (`bob_x, bob_y, angular_velocity`); numpy or torch. Equals the `energy` physics column."""
        length, gravity = self.config.rod_length, self.config.gravity
        cos_theta = (state[..., 1] - self._pivot) / length
        return 0.5 * length**2 * state[..., 2] ** 2 + gravity * length * (1.0 - cos_theta)

    def sample_initial_state(self, rng: np.random.Generator) -> np.ndarray:
        """`(θ, ω)` uniform in `[-max_initial_angle, max_initial_angle] × [-max_ω, max_ω]`, float64."""
        config = self.config
        angle = rng.uniform(-config.max_initial_angle, config.max_initial_angle)
        angular_velocity = rng.uniform(-config.max_initial_angular_velocity, config.max_initial_angular_velocity)
        return np.array([angle, angular_velocity])

    def _rk4_step(self, theta: np.ndarray, omega: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One classical Runge–Kutta step of `(θ, ω)`, all `(N,)`."""
        k = self.config.gravity / self.config.rod_length
        k1_theta, k1_omega = omega, -k * np.sin(theta)
        k2_theta, k2_omega = omega + 0.5 * dt * k1_omega, -k * np.sin(theta + 0.5 * dt * k1_theta)
        k3_theta, k3_omega = omega + 0.5 * dt * k2_omega, -k * np.sin(theta + 0.5 * dt * k2_theta)
        k4_theta, k4_omega = omega + dt * k3_omega, -k * np.sin(theta + dt * k3_theta)
        theta = theta + dt / 6.0 * (k1_theta + 2 * k2_theta + 2 * k3_theta + k4_theta)
        omega = omega + dt / 6.0 * (k1_omega + 2 * k2_omega + 2 * k3_omega + k4_omega)
        return theta, omega

    def _integrate(self, states: np.ndarray, actions: np.ndarray, gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        config = self.config
        num_trajectories, num_steps = actions.shape[:2]
        theta, omega = states[:, 0].copy(), states[:, 1].copy()  # (N,) each
        thetas = np.empty((num_trajectories, num_steps))
        omegas = np.empty((num_trajectories, num_steps))
        events = np.full((num_trajectories, num_steps, 2), np.nan)
        for t in range(num_steps):
            thetas[:, t], omegas[:, t] = theta, omega
            if t == num_steps - 1:
                break
            omega = omega + actions[:, t, 0]  # impulse right after frame t
            dt = gaps[:, t] / config.substeps
            for substep in range(config.substeps):
                previous = omega
                theta, omega = self._rk4_step(theta, omega, dt)
                # A swing extreme: ω changes sign; the side is where the bob is (θ > 0 is towards +x, the right).
                turned = previous * omega < 0
                sides = (np.sin(theta) > 0).astype(int)
                for side in (0, 1):
                    first = turned & (sides == side) & np.isnan(events[:, t + 1, side])
                    events[:, t + 1, side] = np.where(first, (substep + 1) * dt, events[:, t + 1, side])
        length, gravity = config.rod_length, config.gravity
        energy = 0.5 * length**2 * omegas**2 + gravity * length * (1.0 - np.cos(thetas))
        bob_x = self._pivot + length * np.sin(thetas)
        bob_y = self._pivot + length * np.cos(thetas)
        wrapped = (thetas + np.pi) % (2 * np.pi) - np.pi
        return np.stack([wrapped, omegas, bob_x, bob_y, energy], axis=-1), events

    def _event_phrase(self, kind: int) -> str:
        return f"the bob turns at the {self.event_kinds[kind][1]}"

    def _event_pitches(self, kind: int) -> tuple[float, ...]:
        return (self.config.tone_frequency,)

    def _scene_phrase(self, physics: np.ndarray) -> str:
        return f"the bob is {_region(physics[2], physics[3], self.config.image_size)}"

    def _draw(self, physics: np.ndarray) -> np.ndarray:
        """Draw the rod then the bob on black. `(N, T, P)` → `(N, T, 3, H, W)` in [-1, 1]."""
        config = self.config
        num_trajectories, num_steps = physics.shape[:2]
        size, pivot = config.image_size, self._pivot
        bob = physics[..., 2:4].astype(np.float32)  # (N, T, 2)
        frames = np.empty((num_trajectories, num_steps, 3, size, size), dtype=np.float32)
        px, py = self._grid_x - pivot, self._grid_y - pivot  # pixel centres relative to the pivot
        for t in range(num_steps):
            rx = bob[:, t, 0][:, None, None] - pivot  # (N, 1, 1) rod vector pivot → bob
            ry = bob[:, t, 1][:, None, None] - pivot
            # Nearest point of the rod segment to each pixel, as a fraction of the rod.
            along = np.clip((px * rx + py * ry) / np.maximum(rx * rx + ry * ry, 1e-6), 0.0, 1.0)  # (N, H, W)
            rod_distance = np.sqrt((px - along * rx) ** 2 + (py - along * ry) ** 2)
            bob_distance = np.sqrt((px - rx) ** 2 + (py - ry) ** 2)
            rod_alpha = _coverage(rod_distance, config.rod_width / 2, config.edge_softness)[:, None]
            bob_alpha = _coverage(bob_distance, config.bob_radius, config.edge_softness)[:, None]  # (N, 1, H, W)
            image = rod_alpha * self._rod_color
            frames[:, t] = image * (1.0 - bob_alpha) + bob_alpha * self._bob_color
        return frames * 2.0 - 1.0
