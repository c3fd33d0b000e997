"""What every built-in world shares: the common configuration and its checks, the simulator base class
(`World.generate`: seeding, irregular clocks, sparse actions, captions and audio), metadata and caption helpers.

The data contract that worlds produce is described in `modeling_veltrix.worlds` (the package docstring).
"""

from __future__ import annotations

import abc
import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..text_units import byte_tokenize

RGB = tuple[float, float, float]


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
    #: The physics fields that determine the state (positions and velocities), in the order `energy` reads them: what
    #: a probe of the model's states regresses (`training.physics.VeltrixPhysicsProbe`).
    probe_fields: tuple[str, ...]

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

    @property
    def probe_indices(self) -> tuple[int, ...]:
        """Positions of `probe_fields` in `physics_fields`: `physics[..., probe_indices]` is a probe's target."""
        return tuple(self.physics_fields.index(name) for name in self.probe_fields)

    @abc.abstractmethod
    def energy(self, state: Any) -> Any:
        """Total energy of states laid out as `probe_fields` on the last axis: `(..., len(probe_fields))` → `(...,)`.

        Works on numpy arrays and torch tensors alike (indexing, arithmetic, `** 0.5` and `.sum(-1)` only), so that
        it is differentiable through a probe's predictions. Without impulses it is conserved by the true dynamics.
        """

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

    def sample_simulation_inputs(
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
        inputs = self.sample_simulation_inputs(num_trajectories, num_steps, seed, first_index)
        return self.simulate(**inputs)
