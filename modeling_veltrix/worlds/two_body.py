"""The two-body world: two discs under softened Newtonian gravity around a fixed centre of mass, integrated with
velocity Verlet; the action is a relative-velocity impulse applied as equal and opposite momentum kicks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import RGB, World, WorldConfig, _check, _coverage, _is_real, _is_rgb, _region


@dataclass
class TwoBodyWorldConfig(WorldConfig):
    """Two bodies: two discs of different masses on a bound orbit under softened gravity, centre of mass fixed at
    the image centre.

    Takes the fields of `WorldConfig` (with `substeps` defaulting to 16: the pericentre passage is fast), plus:

    Args:
        mass0 (`float`, *optional*, defaults to 2.0):
            Mass of body 0 (the heavier one with the defaults).
        mass1 (`float`, *optional*, defaults to 1.0):
            Mass of body 1.
        gravitational_constant (`float`, *optional*, defaults to 1500.0):
            `G` of the potential `U = -G mass0 mass1 / sqrt(r² + softening²)`, in px³ / (mass s²). The Kepler period
            `2π·sqrt(semi_major_axis³ / (G (mass0 + mass1)))` is ≈ 3.0 s with the defaults, 30 frames.
        softening (`float`, *optional*, defaults to 1.0):
            Softening length in pixels, which keeps the force finite (a Plummer potential).
        semi_major_axis (`float`, *optional*, defaults to 10.0):
            Semi-major axis of the initial relative orbit in pixels. Each body must stay in the image at the
            apocentre of the most eccentric orbit: `semi_major_axis (1 + max_eccentricity) m_other / (mass0 + mass1)
            + radius <= image_size / 2` for both bodies.
        max_eccentricity (`float`, *optional*, defaults to 0.5):
            The initial eccentricity is uniform in `[0, max_eccentricity]`, below 1 (bound orbits).
        radius0 (`float`, *optional*, defaults to 3.0):
            Drawn radius of body 0 in pixels (the bodies do not collide; body 1 is drawn on top).
        radius1 (`float`, *optional*, defaults to 2.0):
            Drawn radius of body 1 in pixels.
        impulse_scale (`float`, *optional*, defaults to 0.5):
            Standard deviation, in pixels per second, of each component of an impulse (a change of the relative
            velocity `v1 - v0`, a few % of the orbital speed, 12 to 37 px/s with the defaults). Kicks add up and
            can widen or unbind the orbit: with the defaults, both bodies' centres stayed in the image over 100
            steps in 512 of 512 sampled trajectories (2 px/s: 73 %).
        edge_softness (`float`, *optional*, defaults to 1.0):
            Width in pixels of the linear coverage ramp at a disc's edge.
        color0 (`tuple[float, float, float]`, *optional*, defaults to `(1.0, 0.9, 0.2)`):
            RGB colour of body 0 in `[0, 1]`.
        color1 (`tuple[float, float, float]`, *optional*, defaults to `(0.3, 0.45, 1.0)`):
            RGB colour of body 1 in `[0, 1]`.
        name0 (`str`, *optional*, defaults to `"yellow"`):
            Name of body 0 in captions.
        name1 (`str`, *optional*, defaults to `"blue"`):
            Name of body 1 in captions.
        tone_frequency (`float`, *optional*, defaults to 783.99):
            Pitch in Hz of the tone at each closest approach, below `sample_rate / 2`.
    """

    substeps: int = 16
    mass0: float = 2.0
    mass1: float = 1.0
    gravitational_constant: float = 1500.0
    softening: float = 1.0
    semi_major_axis: float = 10.0
    max_eccentricity: float = 0.5
    radius0: float = 3.0
    radius1: float = 2.0
    impulse_scale: float = 0.5
    edge_softness: float = 1.0
    color0: RGB = (1.0, 0.9, 0.2)
    color1: RGB = (0.3, 0.45, 1.0)
    name0: str = "yellow"
    name1: str = "blue"
    tone_frequency: float = 783.99

    def __post_init__(self) -> None:
        super().__post_init__()
        for field in ("mass0", "mass1", "gravitational_constant", "softening"):
            value = getattr(self, field)
            _check(self, field, _is_real(value) and np.isfinite(value) and value > 0, "a finite float > 0")
        _check(
            self,
            "max_eccentricity",
            _is_real(self.max_eccentricity) and 0 <= self.max_eccentricity < 1,
            "a float in [0, 1)",
        )
        for field in ("radius0", "radius1"):
            _check(self, field, _is_real(getattr(self, field)) and getattr(self, field) > 0, "a float > 0")
        # The farthest each body gets from the centre of mass, per unit of semi-major axis.
        reach = (1 + self.max_eccentricity) * max(self.mass0, self.mass1) / (self.mass0 + self.mass1)
        limit = (self.image_size / 2 - max(self.radius0, self.radius1)) / reach
        _check(
            self,
            "semi_major_axis",
            _is_real(self.semi_major_axis) and 0 < self.semi_major_axis <= limit,
            f"a float in (0, {limit:.3g}] so that both bodies stay in the image",
        )
        _check(
            self,
            "impulse_scale",
            _is_real(self.impulse_scale) and np.isfinite(self.impulse_scale) and self.impulse_scale >= 0,
            "a finite float >= 0",
        )
        _check(self, "edge_softness", _is_real(self.edge_softness) and self.edge_softness > 0, "a float > 0")
        for field in ("color0", "color1"):
            _check(self, field, _is_rgb(getattr(self, field)), "an RGB triple in [0, 1]")
            setattr(self, field, tuple(float(c) for c in getattr(self, field)))
        for field in ("name0", "name1"):
            _check(self, field, isinstance(getattr(self, field), str) and getattr(self, field) != "", "a non-empty str")
        _check(
            self,
            "tone_frequency",
            _is_real(self.tone_frequency) and 0 < self.tone_frequency < self.sample_rate / 2,
            f"a float in (0, sample_rate / 2 = {self.sample_rate / 2})",
        )


def _solve_kepler(mean_anomaly: float, eccentricity: float) -> float:
    """Eccentric anomaly `E` with `E - e sin E = M`, by Newton's method (started at `E = π` for large `e`, where
    starting at `M` can overshoot)."""
    anomaly = mean_anomaly if eccentricity < 0.8 else np.pi
    for _ in range(50):
        step = (anomaly - eccentricity * np.sin(anomaly) - mean_anomaly) / (1 - eccentricity * np.cos(anomaly))
        anomaly -= step
        if abs(step) < 1e-14:
            break
    return anomaly


class TwoBodyWorld(World):
    """Two bodies on a bound orbit under softened gravity, their centre of mass fixed at the image centre.

    State per trajectory `(2, 4)`: `x, y, px, py` of each body (pixels, mass × pixels per second). The force on
    body 1 is `-G m0 m1 r / (|r|² + softening²)^(3/2)` with `r = r1 - r0`, and the opposite on body 0; integrated
    with velocity Verlet (symplectic) sub-steps, so the total momentum stays zero and the centre of mass put.
    Action `(2,)`: a change `Δv` of the relative velocity `v1 - v0`, applied as the momentum kicks `+μΔv` on body 1
    and `-μΔv` on body 0 (`μ = m0 m1 / (m0 + m1)`, the reduced mass).
    Physics `(9,)`: `x0, y0, x1, y1, px0, py0, px1, py1, energy` with
    `energy = Σ |p_i|² / (2 m_i) - G m0 m1 / sqrt(|r|² + softening²)`, conserved without impulses up to the
    integrator's bounded O(dt²) error.
    """

    name = "two_body"
    config_class = TwoBodyWorldConfig
    config: TwoBodyWorldConfig

    def __init__(self, config: TwoBodyWorldConfig | None = None) -> None:
        super().__init__(config)
        config = self.config
        self.state_shape = (2, 4)
        self.action_dim = 2
        # Positions and momenta: what a physics probe regresses, and the layout `energy` reads.
        self.probe_fields = ("x0", "y0", "x1", "y1", "px0", "py0", "px1", "py1")
        self.physics_fields = (*self.probe_fields, "energy")
        # One event kind: the bodies pass closest (the separation goes from shrinking to growing).
        self.event_kinds = ("pericentre",)
        self._centre = config.image_size / 2.0
        self._masses = np.array([config.mass0, config.mass1])[:, None]  # (2, 1)
        self._reduced_mass = config.mass0 * config.mass1 / (config.mass0 + config.mass1)
        self._colors = np.asarray([config.color0, config.color1], dtype=np.float32)  # (2, 3)

    def energy(self, state: Any) -> Any:
        """Total energy from `state (..., 8)` laid out as `probe_fields` (numpy array or torch tensor) → `(...,)`."""
        config = self.config
        kinetic = (state[..., 4] ** 2 + state[..., 5] ** 2) / (2 * config.mass0) + (
            state[..., 6] ** 2 + state[..., 7] ** 2
        ) / (2 * config.mass1)
        squared = (state[..., 2] - state[..., 0]) ** 2 + (state[..., 3] - state[..., 1]) ** 2 + config.softening**2
        return kinetic - config.gravitational_constant * config.mass0 * config.mass1 / squared**0.5

    def sample_initial_state(self, rng: np.random.Generator) -> np.ndarray:
        """A point of a random Kepler orbit of the relative vector `r1 - r0`, split about the image centre.

        The eccentricity is uniform in `[0, max_eccentricity]`, the mean anomaly (the phase in time), the orientation
        of the major axis uniform in `[0, 2π)`, the direction of travel random; the semi-major axis is
        `semi_major_axis`. The orbit is that of the unsoftened potential, so softening makes it precess slightly.
        Returns `(2, 4)` float64 `x, y, px, py` per body, total momentum zero.
        """
        config = self.config
        total = config.mass0 + config.mass1
        mu = config.gravitational_constant * total
        axis, eccentricity = config.semi_major_axis, rng.uniform(0.0, config.max_eccentricity)
        mean_anomaly, orientation = rng.uniform(0.0, 2 * np.pi, size=2)
        direction = rng.choice([-1.0, 1.0])
        anomaly = _solve_kepler(mean_anomaly, eccentricity)
        flattening = np.sqrt(1 - eccentricity**2)
        # Position and velocity in the orbital frame (pericentre along +x), travelling counter-clockwise.
        position = axis * np.array([np.cos(anomaly) - eccentricity, flattening * np.sin(anomaly)])
        velocity = (
            np.sqrt(mu / axis)
            / (1 - eccentricity * np.cos(anomaly))
            * np.array([-np.sin(anomaly), flattening * np.cos(anomaly)])
        )
        cos, sin = np.cos(orientation), np.sin(orientation)
        rotation = np.array([[cos, -sin], [sin, cos]]) @ np.diag([1.0, direction])
        relative, relative_velocity = rotation @ position, rotation @ velocity
        momentum = self._reduced_mass * relative_velocity
        body0 = np.concatenate([self._centre - config.mass1 / total * relative, -momentum])
        body1 = np.concatenate([self._centre + config.mass0 / total * relative, momentum])
        return np.stack([body0, body1])

    def _forces(self, positions: np.ndarray) -> np.ndarray:
        """Forces `(N, 2, 2)` on both bodies from positions `(N, 2, 2)`."""
        config = self.config
        separation = positions[:, 1] - positions[:, 0]  # (N, 2)
        squared = np.sum(separation * separation, axis=-1, keepdims=True) + config.softening**2
        on_body1 = -config.gravitational_constant * config.mass0 * config.mass1 * separation / squared**1.5
        return np.stack([-on_body1, on_body1], axis=1)

    def _integrate(self, states: np.ndarray, actions: np.ndarray, gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        config = self.config
        num_trajectories, num_steps = actions.shape[:2]
        positions, momenta = states[..., :2].copy(), states[..., 2:].copy()  # (N, 2, 2) each
        trajectory = np.empty((num_trajectories, num_steps, 8))
        events = np.full((num_trajectories, num_steps, 1), np.nan)
        for t in range(num_steps):
            trajectory[:, t, :4] = positions.reshape(num_trajectories, 4)
            trajectory[:, t, 4:] = momenta.reshape(num_trajectories, 4)
            if t == num_steps - 1:
                break
            kick = self._reduced_mass * actions[:, t]  # impulse right after frame t, equal and opposite
            momenta = momenta + np.stack([-kick, kick], axis=1)
            dt = (gaps[:, t] / config.substeps)[:, None, None]  # (N, 1, 1)
            forces = self._forces(positions)
            for substep in range(config.substeps):
                approaching = self._closing(positions, momenta) < 0  # (N,) the separation shrinks
                # Velocity Verlet: half kick, drift, half kick (the forces are reused from the previous sub-step).
                momenta = momenta + 0.5 * dt * forces
                positions = positions + dt * momenta / self._masses
                forces = self._forces(positions)
                momenta = momenta + 0.5 * dt * forces
                passed = approaching & (self._closing(positions, momenta) >= 0) & np.isnan(events[:, t + 1, 0])
                events[:, t + 1, 0] = np.where(passed, (substep + 1) * dt[:, 0, 0], events[:, t + 1, 0])
        return np.concatenate([trajectory, self.energy(trajectory)[..., None]], axis=-1), events

    def _closing(self, positions: np.ndarray, momenta: np.ndarray) -> np.ndarray:
        """`(r1 - r0) · (v1 - v0)`, `(N,)`: the sign of the separation's rate of change."""
        velocities = momenta / self._masses
        return np.sum((positions[:, 1] - positions[:, 0]) * (velocities[:, 1] - velocities[:, 0]), axis=-1)

    def _event_phrase(self, kind: int) -> str:
        return "the bodies pass closest"

    def _event_pitches(self, kind: int) -> tuple[float, ...]:
        return (self.config.tone_frequency,)

    def _scene_phrase(self, physics: np.ndarray) -> str:
        config, size = self.config, self.config.image_size
        return (
            f"{config.name0} is {_region(physics[0], physics[1], size)}, "
            f"{config.name1} is {_region(physics[2], physics[3], size)}"
        )

    def _draw(self, physics: np.ndarray) -> np.ndarray:
        """Draw body 0 then body 1 on black. `(N, T, P)` → `(N, T, 3, H, W)` float32 in [-1, 1]."""
        config = self.config
        num_trajectories, num_steps = physics.shape[:2]
        positions = physics[..., :4].reshape(num_trajectories, num_steps, 2, 2).astype(np.float32)
        size = config.image_size
        frames = np.empty((num_trajectories, num_steps, 3, size, size), dtype=np.float32)
        for t in range(num_steps):
            image = np.zeros((num_trajectories, 3, size, size), dtype=np.float32)
            for body, radius in enumerate((config.radius0, config.radius1)):
                x = positions[:, t, body, 0][:, None, None]  # (N, 1, 1)
                y = positions[:, t, body, 1][:, None, None]
                distance = np.sqrt((self._grid_x - x) ** 2 + (self._grid_y - y) ** 2)  # (N, H, W)
                alpha = _coverage(distance, radius, config.edge_softness)[:, None]  # (N, 1, H, W)
                image = image * (1.0 - alpha) + alpha * self._colors[body][None, :, None, None]
            frames[:, t] = image
        return frames * 2.0 - 1.0
