"""Built-in Veltrix worlds: seeded simulators of small physical scenes and their `datasets.Dataset` builders.

Each world produces trajectories in the Veltrix data contract (DESIGN.md §2):

    pixel_values  (N, T, 3, H, W)  float32 in [-1, 1]  RGB frames, black background
    timestamps    (N, T)           float32 seconds     from 0, strictly increasing (optionally irregular)
    actions       (N, T, A)        float32             sparse impulses; the action at step t acts right after
                                                       frame t is observed, so it first shows in frame t+1
    physics       (N, T, P)        float32             ground-truth state (positions, velocities, energy)

Opt-in (``audio=True`` / ``captions=True`` in the world config), per step ``t``, describing what happened since frame
``t - 1`` (step 0: nothing):

    audio_values    (N, T, S)      float32 in [-1, 1]  16 kHz mono window of ``S = frame_interval * sample_rate``
                                                       samples ending at frame t: a decaying tone per event, its
                                                       pitch set by the object (ball colour; the pendulum's bob)
    captions        (N, T)         str                 templated: "<events>. <where the objects are>." e.g.
                                                       "the red ball hits the left wall. red is top left, ..."
    input_ids       (N, T, L)      int64               UTF-8 bytes of the caption, 0-padded (`byte_tokenize`)
    attention_mask  (N, T, L)      int64               1 on caption bytes, 0 on padding

Events are collisions (ball–wall, ball–ball) for the balls and swing extremes (the angular velocity changes sign)
for the pendulum, detected at integrator sub-step resolution.

Worlds:

- ``"bouncing_balls"`` — `BouncingBallsWorld`: equal-mass discs in a square box with elastic collisions
  against the walls and each other; the action is a velocity impulse on ball 0.
- ``"pendulum"`` — `PendulumWorld`: a frictionless rigid pendulum integrated with RK4; the action is an
  angular velocity impulse.

Lengths are in pixels and times in seconds. The box spans ``[0, image_size]`` on both axes, ``x`` grows to
the right (column) and ``y`` downwards (row); pixel ``(row, col)`` is centred at ``(col + 0.5, row + 0.5)``.
Shapes are drawn with a linear coverage ramp at their edge, so sub-pixel motion changes pixels continuously.

Trajectory ``i`` of ``generate(..., seed=s)`` depends on ``(s, i)`` only: generating 10 or 100 trajectories
gives the same first 10.

>>> world = get_world("bouncing_balls", num_balls=2)
>>> batch = world.generate(num_trajectories=4, num_steps=16, seed=0)
>>> batch["pixel_values"].shape, batch["physics"].shape
((4, 16, 3, 32, 32), (4, 16, 9))
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import datasets
import numpy as np

from .text_units import byte_tokenize

__all__ = [
    "WORLDS",
    "BouncingBallsWorld",
    "BouncingBallsWorldConfig",
    "PendulumWorld",
    "PendulumWorldConfig",
    "World",
    "WorldConfig",
    "WorldMetadata",
    "build_world_dataset",
    "caption_event",
    "get_world",
    "world_features",
    "world_metadata",
]

RGB = tuple[float, float, float]

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


def _check(config: Any, field: str, valid: bool, expected: str) -> None:
    """Raise a `ValueError` naming `config.field`, what was expected and what was received."""
    if not valid:
        raise ValueError(f"{type(config).__name__}.{field} must be {expected}, got {getattr(config, field)!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_rgb(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 3 and all(_is_real(c) and 0.0 <= c <= 1.0 for c in value)


@dataclass
class WorldConfig:
    """Hyper-parameters shared by every built-in world: image size, clock, integrator and action sparsity.

    Args:
        image_size (`int`, *optional*, defaults to 32):
            Height and width of the square RGB frames, in pixels (at least 8).
        frame_interval (`float`, *optional*, defaults to 0.1):
            Nominal time between two frames, in seconds.
        irregular_timestamps (`bool`, *optional*, defaults to `False`):
            Draw each gap between frames uniformly in
            `[1 - timestamp_jitter, 1 + timestamp_jitter] * frame_interval` instead of using `frame_interval`.
            The physics is integrated over the actual gaps.
        timestamp_jitter (`float`, *optional*, defaults to 0.5):
            Relative half-width of the gap distribution when `irregular_timestamps=True`; in `[0, 1)` so that
            timestamps stay strictly increasing.
        substeps (`int`, *optional*, defaults to 8):
            Integrator sub-steps per frame gap (collisions are resolved at every sub-step).
        impulse_probability (`float`, *optional*, defaults to 0.1):
            Probability that the action at a step is a non-zero impulse (otherwise it is all zeros).
        audio (`bool`, *optional*, defaults to `False`):
            Also emit `audio_values (N, T, S)`: per step, the sound of the events since the previous frame.
        captions (`bool`, *optional*, defaults to `False`):
            Also emit templated `captions (N, T)` and their byte tokens `input_ids`, `attention_mask (N, T, L)`.
        sample_rate (`int`, *optional*, defaults to 16000):
            Audio sample rate in Hz; a step's window holds `round(frame_interval * sample_rate)` samples.
        tone_duration (`float`, *optional*, defaults to 0.04):
            Length in seconds of the decaying tone of one event (cut at the end of the step's window).
        caption_length (`int`, *optional*, defaults to 128):
            Bytes `L` per caption in `input_ids`; longer captions are truncated (the `captions` strings are not).
    """

    image_size: int = 32
    frame_interval: float = 0.1
    irregular_timestamps: bool = False
    timestamp_jitter: float = 0.5
    substeps: int = 8
    impulse_probability: float = 0.1
    audio: bool = False
    captions: bool = False
    sample_rate: int = 16000
    tone_duration: float = 0.04
    caption_length: int = 128

    def __post_init__(self) -> None:
        _check(self, "image_size", _is_int(self.image_size) and self.image_size >= 8, "an int >= 8")
        _check(
            self,
            "frame_interval",
            _is_real(self.frame_interval) and np.isfinite(self.frame_interval) and self.frame_interval > 0,
            "a finite float > 0",
        )
        _check(self, "irregular_timestamps", isinstance(self.irregular_timestamps, bool), "a bool")
        _check(
            self,
            "timestamp_jitter",
            _is_real(self.timestamp_jitter) and 0.0 <= self.timestamp_jitter < 1.0,
            "a float in [0, 1)",
        )
        _check(self, "substeps", _is_int(self.substeps) and self.substeps >= 1, "an int >= 1")
        _check(
            self,
            "impulse_probability",
            _is_real(self.impulse_probability) and 0.0 <= self.impulse_probability <= 1.0,
            "a float in [0, 1]",
        )
        _check(self, "audio", isinstance(self.audio, bool), "a bool")
        _check(self, "captions", isinstance(self.captions, bool), "a bool")
        _check(self, "sample_rate", _is_int(self.sample_rate) and self.sample_rate >= 1000, "an int >= 1000")
        _check(
            self,
            "tone_duration",
            _is_real(self.tone_duration) and 0 < self.tone_duration <= self.frame_interval,
            f"a float in (0, frame_interval = {self.frame_interval}]",
        )
        _check(self, "caption_length", _is_int(self.caption_length) and self.caption_length >= 16, "an int >= 16")

    @property
    def audio_window(self) -> int:
        """Samples `S` of a step's audio window."""
        return round(self.frame_interval * self.sample_rate)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-serialisable dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


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


@dataclass(frozen=True)
class WorldMetadata:
    """What a caller needs to size a model for a world's trajectories."""

    name: str
    image_size: int
    num_channels: int
    action_dim: int
    physics_dim: int
    physics_fields: tuple[str, ...]
    frame_interval: float
    audio_window: int = 0
    caption_length: int = 0


REGION_NAMES = (
    ("top left", "top", "top right"),
    ("left", "centre", "right"),
    ("bottom left", "bottom", "bottom right"),
)


def _region(x: float, y: float, size: float) -> str:
    """Name of the cell of a 3 x 3 split of the image that holds `(x, y)`."""
    column, row = min(int(3 * x / size), 2), min(int(3 * y / size), 2)
    return REGION_NAMES[max(row, 0)][max(column, 0)]


def caption_event(caption: str) -> str:
    """The event clause of a world caption: the text before the first ". " (e.g. "the red ball hits the left
    wall", or "nothing happens")."""
    return caption.split(". ", 1)[0]


def _coverage(distance: np.ndarray, radius: float, softness: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape of half-width `radius` at `distance` from its centre."""
    return np.clip((radius - distance) / softness + 0.5, 0.0, 1.0)


class World(abc.ABC):
    """A seeded simulator of one scene. Subclasses define the state, the dynamics and the renderer.

    The public entry points are `generate` (sample + simulate) and `simulate` (replay given initial states,
    actions and timestamps — e.g. the same trajectory with an edited action).
    """

    name: ClassVar[str]
    config_class: ClassVar[type[WorldConfig]]
    #: Shape of one trajectory's state (excluding the batch dimension) accepted by `simulate`.
    state_shape: tuple[int, ...]
    action_dim: int
    physics_fields: tuple[str, ...]

    def __init__(self, config: WorldConfig | None = None) -> None:
        config = self.config_class() if config is None else config
        if not isinstance(config, self.config_class):
            raise ValueError(f"config must be a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        size = config.image_size
        # Pixel centres, shaped to broadcast against (N, 1, 1) positions.
        self._grid_x = (np.arange(size, dtype=np.float32) + 0.5)[None, None, :]  # (1, 1, W)
        self._grid_y = (np.arange(size, dtype=np.float32) + 0.5)[None, :, None]  # (1, H, 1)

    @property
    def physics_dim(self) -> int:
        return len(self.physics_fields)

    @property
    def metadata(self) -> WorldMetadata:
        return WorldMetadata(
            name=self.name,
            image_size=self.config.image_size,
            num_channels=3,
            action_dim=self.action_dim,
            physics_dim=self.physics_dim,
            physics_fields=self.physics_fields,
            frame_interval=self.config.frame_interval,
            audio_window=self.config.audio_window if self.config.audio else 0,
            caption_length=self.config.caption_length if self.config.captions else 0,
        )

    @abc.abstractmethod
    def sample_initial_state(self, rng: np.random.Generator) -> np.ndarray:
        """One trajectory's initial state, shape `state_shape`, float64."""

    @abc.abstractmethod
    def _integrate(self, states: np.ndarray, actions: np.ndarray, gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Physics and events of every step from validated float64 inputs.

        Args:
            states: `(N, *state_shape)` initial states.
            actions: `(N, T, A)` impulses; `actions[:, t]` is applied right after step `t` is recorded.
            gaps: `(N, T - 1)` seconds between consecutive steps.

        Returns:
            `(N, T, P)` float64 physics in the order of `physics_fields`, and `(N, T, E)` float64 event times: for
            each event kind of `event_kinds`, the seconds after frame `t - 1` at which it first happened before frame
            `t` (at the end of the sub-step that detected it), NaN if it did not (always NaN at step 0).
        """

    @abc.abstractmethod
    def _draw(self, physics: np.ndarray) -> np.ndarray:
        """Frames `(N, T, 3, H, W)` float32 in [-1, 1] from validated physics `(N, T, P)`."""

    @abc.abstractmethod
    def _event_phrase(self, kind: int) -> str:
        """Caption phrase of event kind `kind`, e.g. "the red ball hits the left wall"."""

    @abc.abstractmethod
    def _event_pitches(self, kind: int) -> tuple[float, ...]:
        """Frequencies in Hz of the tones of event kind `kind`: one per object involved."""

    @abc.abstractmethod
    def _scene_phrase(self, physics: np.ndarray) -> str:
        """Where the objects are, from one step's physics `(P,)`, e.g. "red is top left, green is centre"."""

    def _synthesize(self, events: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """Audio windows `(N, T, S)` float32: a decaying sine per event and object, at the event time.

        The window of step `t` spans the `S` samples ending at frame `t`; an event older than the window (a gap
        longer than `frame_interval`) sounds from the window's first sample, and one too close to the window's end
        for its whole tone sounds `tone_duration` before the end.
        """
        config = self.config
        rate, window = config.sample_rate, config.audio_window
        audio = np.zeros((*events.shape[:2], window), dtype=np.float64)
        gaps = np.diff(timestamps.astype(np.float64), axis=1, prepend=0.0)  # (N, T); step 0 has no events
        length = round(config.tone_duration * rate)
        time = np.arange(length) / rate
        # An exponential decay to ~1 % over the tone, with a 2 ms fade-in so the onset does not click.
        envelope = np.exp(-4.6 * time / config.tone_duration) * np.minimum(1.0, time / 0.002)
        for n, t, kind in zip(*np.nonzero(~np.isnan(events)), strict=True):
            start = round((events[n, t, kind] - gaps[n, t]) * rate) + window
            # A tone that would run past the window's end starts early enough to be heard whole in its own step.
            start = min(max(start, 0), window - length)
            stop = min(window, start + length)
            for pitch in self._event_pitches(kind):
                tone = 0.4 * envelope[: stop - start] * np.sin(2 * np.pi * pitch * time[: stop - start])
                audio[n, t, start:stop] += tone
        return np.clip(audio, -1.0, 1.0).astype(np.float32)

    def _captions(self, physics: np.ndarray, events: np.ndarray) -> np.ndarray:
        """Captions `(N, T)` (object array of str): "<events joined by ' and ', or 'nothing happens'>. <scene>."."""
        num_trajectories, num_steps = physics.shape[:2]
        captions = np.empty((num_trajectories, num_steps), dtype=object)
        for n in range(num_trajectories):
            for t in range(num_steps):
                kinds = np.nonzero(~np.isnan(events[n, t]))[0]
                happened = " and ".join(self._event_phrase(int(k)) for k in kinds) or "nothing happens"
                captions[n, t] = f"{happened}. {self._scene_phrase(physics[n, t])}."
        return captions

    def render(self, physics: np.ndarray) -> np.ndarray:
        """Draw frames from physics `(N, T, P)`; returns pixel values `(N, T, 3, H, W)` float32 in [-1, 1].

        Only the position fields are read, so predicted physics can be rendered too.
        """
        physics = np.asarray(physics)
        if physics.ndim != 3 or physics.shape[-1] != self.physics_dim:
            raise ValueError(f"physics must have shape (N, T, {self.physics_dim}), got {physics.shape}")
        if not np.isfinite(physics).all():
            raise ValueError("physics must be finite, got non-finite values")
        return self._draw(physics)

    def sample_actions(self, rng: np.random.Generator, num_steps: int) -> np.ndarray:
        """Sparse impulses `(num_steps, action_dim)` float32: Gaussian with std `impulse_scale` per component
        with probability `impulse_probability` per step, else zeros."""
        fires = rng.random(num_steps) < self.config.impulse_probability
        impulses = rng.normal(0.0, self.config.impulse_scale, size=(num_steps, self.action_dim))
        return (impulses * fires[:, None]).astype(np.float32)

    def sample_timestamps(self, rng: np.random.Generator, num_steps: int) -> np.ndarray:
        """Timestamps `(num_steps,)` float32 from 0, regular or jittered (see `WorldConfig`)."""
        config = self.config
        if config.irregular_timestamps:
            jitter = config.timestamp_jitter
            gaps = config.frame_interval * rng.uniform(1.0 - jitter, 1.0 + jitter, size=num_steps - 1)
        else:
            gaps = np.full(num_steps - 1, config.frame_interval)
        return np.concatenate([[0.0], np.cumsum(gaps)]).astype(np.float32)

    def sample_conditions(
        self, num_trajectories: int, num_steps: int, seed: int, first_index: int = 0
    ) -> dict[str, np.ndarray]:
        """Random inputs of `simulate` for trajectories `first_index` to `first_index + num_trajectories - 1`.

        Trajectory `i` draws, in this order, its initial state, actions and timestamps from
        `np.random.default_rng([seed, i])`, so it depends on `(seed, i)` only, and switching
        `irregular_timestamps` keeps its initial state and actions.

        Returns:
            `initial_states (N, *state_shape)` float64, `actions (N, T, A)` float32,
            `timestamps (N, T)` float32.
        """
        for name, value, minimum in (
            ("num_trajectories", num_trajectories, 1),
            ("num_steps", num_steps, 1),
            ("seed", seed, 0),
            ("first_index", first_index, 0),
        ):
            if not _is_int(value) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        initial_states, actions, timestamps = [], [], []
        for index in range(first_index, first_index + num_trajectories):
            rng = np.random.default_rng([seed, index])
            initial_states.append(self.sample_initial_state(rng))
            actions.append(self.sample_actions(rng, num_steps))
            timestamps.append(self.sample_timestamps(rng, num_steps))
        return {
            "initial_states": np.stack(initial_states),
            "actions": np.stack(actions),
            "timestamps": np.stack(timestamps),
        }

    def simulate(
        self, initial_states: np.ndarray, actions: np.ndarray, timestamps: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Run the physics from given initial states under given actions and timestamps, and render it.

        Args:
            initial_states: `(N, *state_shape)` float, finite.
            actions: `(N, T, action_dim)` float, finite; `actions[:, t]` is applied right after frame `t`,
                so it first changes frame `t + 1` (the last action has no effect inside the trajectory).
            timestamps: `(N, T)` float seconds, finite, strictly increasing along `T`; the physics is
                integrated over the actual gaps.

        Returns:
            dict with `pixel_values (N, T, 3, H, W)`, `timestamps (N, T)`, `actions (N, T, A)` and
            `physics (N, T, P)`, all float32; with `config.audio`, `audio_values (N, T, S)` float32; with
            `config.captions`, `captions (N, T)` str and `input_ids`, `attention_mask (N, T, L)` int64.
        """
        initial_states = np.asarray(initial_states)
        actions = np.asarray(actions)
        timestamps = np.asarray(timestamps)
        if timestamps.ndim != 2 or timestamps.shape[0] < 1 or timestamps.shape[1] < 1:
            raise ValueError(f"timestamps must have shape (N, T) with N, T >= 1, got {timestamps.shape}")
        num_trajectories, num_steps = timestamps.shape
        expected = {
            "initial_states": (num_trajectories, *self.state_shape),
            "actions": (num_trajectories, num_steps, self.action_dim),
        }
        for name, array in (
            ("initial_states", initial_states),
            ("actions", actions),
            ("timestamps", timestamps),
        ):
            if name in expected and array.shape != expected[name]:
                raise ValueError(f"{name} must have shape {expected[name]}, got {array.shape}")
            if not np.issubdtype(array.dtype, np.floating):
                raise ValueError(f"{name} must be a float array, got dtype {array.dtype}")
            if not np.isfinite(array).all():
                raise ValueError(f"{name} must be finite, got non-finite values")
        gaps = np.diff(timestamps.astype(np.float64), axis=1)
        if (gaps <= 0).any():
            raise ValueError("timestamps must be strictly increasing along T, got a gap <= 0")
        physics, events = self._integrate(initial_states.astype(np.float64), actions.astype(np.float64), gaps)
        result = {
            "pixel_values": self._draw(physics),
            "timestamps": timestamps.astype(np.float32),
            "actions": actions.astype(np.float32),
            "physics": physics.astype(np.float32),
        }
        if self.config.audio:
            result["audio_values"] = self._synthesize(events, timestamps)
        if self.config.captions:
            captions = self._captions(physics, events)
            input_ids, attention_mask = byte_tokenize(captions.reshape(-1).tolist(), self.config.caption_length)
            result["captions"] = captions
            result["input_ids"] = input_ids.reshape(*captions.shape, -1)
            result["attention_mask"] = attention_mask.reshape(*captions.shape, -1)
        return result

    def generate(self, num_trajectories: int, num_steps: int, seed: int, first_index: int = 0) -> dict[str, np.ndarray]:
        """Sample and simulate trajectories `first_index, ..., first_index + num_trajectories - 1` of `seed`.

        Returns:
            the dict of `simulate`: `pixel_values (N, T, 3, H, W)` in [-1, 1], `timestamps (N, T)`,
            `actions (N, T, A)`, `physics (N, T, P)`, and the opt-in audio and caption keys.
        """
        conditions = self.sample_conditions(num_trajectories, num_steps, seed, first_index)
        return self.simulate(**conditions)


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
        self._pairs = [(i, j) for i in range(num_balls) for j in range(i + 1, num_balls)]
        self._colors = np.asarray(self.config.ball_colors[:num_balls], dtype=np.float32)  # (B, 3)
        # Event kinds: per ball its four walls (left, right, top, bottom), then every pair of balls.
        self.event_kinds = tuple(("wall", b, side) for b in range(num_balls) for side in WALLS) + tuple(
            ("ball", i, j) for i, j in self._pairs
        )

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
        # Event kinds: the bob turns back at its left or its right extreme.
        self.event_kinds = (("extreme", "left"), ("extreme", "right"))
        self._pivot = self.config.image_size / 2.0
        self._bob_color = np.asarray(self.config.bob_color, dtype=np.float32)[None, :, None, None]
        self._rod_color = np.asarray(self.config.rod_color, dtype=np.float32)[None, :, None, None]

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


WORLDS: dict[str, type[World]] = {
    BouncingBallsWorld.name: BouncingBallsWorld,
    PendulumWorld.name: PendulumWorld,
}


def get_world(name: str, **overrides: Any) -> World:
    """Instantiate a built-in world by name, with config fields overridden by keyword.

    >>> world = get_world("pendulum", irregular_timestamps=True)
    """
    if name not in WORLDS:
        raise ValueError(f"world must be one of {sorted(WORLDS)}, got {name!r}")
    world_class = WORLDS[name]
    known = {field.name for field in dataclasses.fields(world_class.config_class)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"unknown {world_class.config_class.__name__} fields {unknown}; known fields are {sorted(known)}"
        )
    return world_class(world_class.config_class(**overrides))


def world_metadata(world: str | World, **overrides: Any) -> WorldMetadata:
    """Action and physics sizes and physics field names of a world given as a name (+ overrides) or object."""
    return (world if isinstance(world, World) else get_world(world, **overrides)).metadata


def world_features(world: World, num_steps: int) -> datasets.Features:
    """Typed `datasets.Features` of one trajectory of `num_steps` steps (float32, and with the world's opt-in
    captions, the caption strings and their int64 byte tokens)."""
    config = world.config
    size = config.image_size
    features = {
        "pixel_values": datasets.Array4D(shape=(num_steps, 3, size, size), dtype="float32"),
        "timestamps": datasets.List(datasets.Value("float32"), length=num_steps),
        "actions": datasets.Array2D(shape=(num_steps, world.action_dim), dtype="float32"),
        "physics": datasets.Array2D(shape=(num_steps, world.physics_dim), dtype="float32"),
    }
    if config.audio:
        features["audio_values"] = datasets.Array2D(shape=(num_steps, config.audio_window), dtype="float32")
    if config.captions:
        features["captions"] = datasets.List(datasets.Value("string"), length=num_steps)
        features["input_ids"] = datasets.Array2D(shape=(num_steps, config.caption_length), dtype="int64")
        features["attention_mask"] = datasets.Array2D(shape=(num_steps, config.caption_length), dtype="int64")
    return datasets.Features(features)


def _trajectory_examples(
    world: str, config: dict[str, Any], num_trajectories: int, num_steps: int, seed: int, chunk_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Yield trajectories one by one, simulated `chunk_size` at a time (module level for `datasets`)."""
    simulator = get_world(world, **config)
    for start in range(0, num_trajectories, chunk_size):
        batch = simulator.generate(min(chunk_size, num_trajectories - start), num_steps, seed, first_index=start)
        for i in range(len(batch["timestamps"])):
            # Caption strings come as an object array; `datasets` takes them as a list.
            yield {key: value[i].tolist() if value.dtype == object else value[i] for key, value in batch.items()}


def build_world_dataset(
    world: str = "bouncing_balls",
    num_trajectories: int = 256,
    num_steps: int = 32,
    seed: int = 0,
    irregular_timestamps: bool = False,
    cache_dir: str | None = None,
    **world_overrides: Any,
) -> datasets.Dataset:
    """Build a `datasets.Dataset` of `num_trajectories` trajectories of a built-in world.

    Each row holds one trajectory: `pixel_values (T, 3, H, W)`, `timestamps (T,)`, `actions (T, A)`,
    `physics (T, P)`, all float32, and with `audio=True` / `captions=True` among the overrides `audio_values (T, S)`,
    `captions (T,)`, `input_ids (T, L)` and `attention_mask (T, L)` (see `world_features`).
    Row `i` equals trajectory `i` of
    `get_world(world, irregular_timestamps=irregular_timestamps, **world_overrides)`
    `.generate(num_trajectories, num_steps, seed)`.

    The Arrow file is cached under `cache_dir` (default: the `datasets` cache) with a fingerprint of this
    module's source and every argument, so a rebuild is instant and a code or argument change regenerates.

    >>> dataset = build_world_dataset("bouncing_balls", num_trajectories=8, num_steps=16).with_format("torch")
    >>> dataset[0]["pixel_values"].shape
    torch.Size([16, 3, 32, 32])
    """
    simulator = get_world(world, irregular_timestamps=irregular_timestamps, **world_overrides)
    for name, value, minimum in (
        ("num_trajectories", num_trajectories, 1),
        ("num_steps", num_steps, 1),
        ("seed", seed, 0),
    ):
        if not _is_int(value) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    gen_kwargs = {
        "world": world,
        "config": simulator.config.to_dict(),
        "num_trajectories": num_trajectories,
        "num_steps": num_steps,
        "seed": seed,
        "chunk_size": 64,
    }
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(Path(__file__).with_name("text_units.py").read_bytes())  # the captions' byte tokenizer
    digest.update(json.dumps(gen_kwargs, sort_keys=True).encode())
    return datasets.Dataset.from_generator(
        _trajectory_examples,
        features=world_features(simulator, num_steps),
        cache_dir=cache_dir,
        gen_kwargs=gen_kwargs,
        fingerprint=digest.hexdigest()[:32],
    )
