"""Tests of the built-in worlds (`modeling_veltrix/worlds.py`): determinism, contract, physics, datasets."""

import re

import numpy as np
import pytest
import torch

from modeling_veltrix.text_units import byte_detokenize, byte_tokenize
from modeling_veltrix.worlds import (
    WORLDS,
    BouncingBallsWorld,
    BouncingBallsWorldConfig,
    PendulumWorld,
    PendulumWorldConfig,
    build_world_dataset,
    caption_event,
    get_world,
    world_metadata,
)

WORLD_NAMES = sorted(WORLDS)


@pytest.mark.parametrize("name", WORLD_NAMES)
def test_generate_shapes_dtypes_and_range(name):
    world = get_world(name)
    batch = world.generate(num_trajectories=3, num_steps=12, seed=0)
    meta = world_metadata(name)
    expected = {
        "pixel_values": (3, 12, 3, 32, 32),
        "timestamps": (3, 12),
        "actions": (3, 12, meta.action_dim),
        "physics": (3, 12, meta.physics_dim),
    }
    assert {key: value.shape for key, value in batch.items()} == expected
    assert all(value.dtype == np.float32 for value in batch.values())
    assert batch["pixel_values"].min() >= -1.0 and batch["pixel_values"].max() <= 1.0
    assert batch["pixel_values"].max() > 0.0  # something is drawn on the black background
    assert meta.physics_dim == len(meta.physics_fields) == len(world.physics_fields)


def test_metadata_field_order():
    balls = world_metadata("bouncing_balls", num_balls=2)
    assert balls.action_dim == 2
    assert balls.physics_fields == (
        "ball0_x",
        "ball0_y",
        "ball0_vx",
        "ball0_vy",
        "ball1_x",
        "ball1_y",
        "ball1_vx",
        "ball1_vy",
        "kinetic_energy",
    )
    pendulum = world_metadata(get_world("pendulum"))
    assert pendulum.action_dim == 1
    assert pendulum.physics_fields == ("angle", "angular_velocity", "bob_x", "bob_y", "energy")


@pytest.mark.parametrize("name", WORLD_NAMES)
@pytest.mark.parametrize("irregular", [False, True])
def test_deterministic_per_seed_and_prefix(name, irregular):
    world = get_world(name, irregular_timestamps=irregular)
    long = world.generate(num_trajectories=12, num_steps=16, seed=3)
    short = world.generate(num_trajectories=5, num_steps=16, seed=3)
    offset = world.generate(num_trajectories=4, num_steps=16, seed=3, first_index=6)
    other = world.generate(num_trajectories=5, num_steps=16, seed=4)
    for key in long:
        np.testing.assert_array_equal(long[key][:5], short[key])
        np.testing.assert_array_equal(long[key][6:10], offset[key])
    assert not np.array_equal(long["pixel_values"][:5], other["pixel_values"])
    assert not np.array_equal(long["physics"][:5], other["physics"])


@pytest.mark.parametrize("name", WORLD_NAMES)
def test_timestamps_regular_and_irregular(name):
    regular = get_world(name, frame_interval=0.05).generate(4, 20, seed=0)["timestamps"]
    np.testing.assert_allclose(regular, np.broadcast_to(np.arange(20) * 0.05, (4, 20)), atol=1e-6)

    irregular_world = get_world(name, irregular_timestamps=True, timestamp_jitter=0.5)
    timestamps = irregular_world.generate(4, 20, seed=0)["timestamps"]
    gaps = np.diff(timestamps.astype(np.float64), axis=1)
    assert (timestamps[:, 0] == 0).all()
    assert (gaps > 0).all()
    assert gaps.min() >= 0.05 - 1e-6 and gaps.max() <= 0.15 + 1e-6
    assert gaps.std() > 0.01  # not all equal


def test_irregular_timestamps_keep_initial_state_and_actions():
    regular = get_world("bouncing_balls").generate(4, 16, seed=1)
    irregular = get_world("bouncing_balls", irregular_timestamps=True).generate(4, 16, seed=1)
    np.testing.assert_array_equal(regular["actions"], irregular["actions"])
    np.testing.assert_array_equal(regular["physics"][:, 0], irregular["physics"][:, 0])


@pytest.mark.parametrize("irregular", [False, True])
def test_bouncing_balls_kinetic_energy_conserved_without_impulses(irregular):
    world = get_world("bouncing_balls", impulse_probability=0.0, irregular_timestamps=irregular)
    physics = world.generate(num_trajectories=16, num_steps=64, seed=0)["physics"].astype(np.float64)
    energy = physics[..., -1]
    relative_drift = np.abs(energy - energy[:, :1]) / energy[:, :1]
    assert relative_drift.max() < 1e-5
    radius, size = world.config.ball_radius, world.config.image_size
    positions = physics[..., :-1].reshape(16, 64, world.config.num_balls, 4)[..., :2]
    assert positions.min() >= radius - 1e-4 and positions.max() <= size - radius + 1e-4
    # The balls do bounce: some velocity component changes sign during the rollout.
    velocities = physics[..., :-1].reshape(16, 64, world.config.num_balls, 4)[..., 2:]
    assert (np.sign(velocities[:, 1:]) != np.sign(velocities[:, :-1])).any()


def test_bouncing_balls_motion_speed_beats_copy_last_frame():
    batch = get_world("bouncing_balls").generate(32, 16, seed=0)
    positions = batch["physics"][..., :-1].reshape(32, 16, 3, 4)[..., :2]
    step = np.linalg.norm(np.diff(positions, axis=1), axis=-1)  # px per frame
    assert 0.5 <= np.median(step) <= 2.0
    frames = batch["pixel_values"]
    assert np.mean((frames[:, 1:] - frames[:, :-1]) ** 2) > 1e-3  # copy-last-frame is a beatable baseline


def test_head_on_collision_swaps_velocities():
    world = BouncingBallsWorld(BouncingBallsWorldConfig(num_balls=2, substeps=16))
    initial = np.array([[[10.0, 16.0, 10.0, 0.0], [22.0, 16.0, -10.0, 0.0]]])
    timestamps = np.arange(6, dtype=np.float32)[None] * 0.1
    physics = world.simulate(initial, np.zeros((1, 6, 2), np.float32), timestamps)["physics"][0]
    np.testing.assert_allclose(physics[-1, [2, 3, 6, 7]], [-10.0, 0.0, 10.0, 0.0], atol=1e-5)
    assert physics[:, 4].min() - physics[:, 0].max() >= 2 * world.config.ball_radius - 1e-4  # never overlap
    np.testing.assert_allclose(physics[:, -1], 100.0, rtol=1e-6)


def test_wall_bounce_reflects_velocity():
    world = BouncingBallsWorld(BouncingBallsWorldConfig(num_balls=1))
    initial = np.array([[[27.0, 16.0, 20.0, 0.0]]])
    timestamps = np.arange(5, dtype=np.float32)[None] * 0.1
    physics = world.simulate(initial, np.zeros((1, 5, 2), np.float32), timestamps)["physics"][0]
    # 8 px of travel in 0.4 s: 2 px to the wall at 32 - 3 = 29, then 6 px back.
    np.testing.assert_allclose(physics[-1, :4], [23.0, 16.0, -20.0, 0.0], atol=1e-4)


@pytest.mark.parametrize("irregular", [False, True])
def test_pendulum_energy_conserved_without_impulses(irregular):
    world = get_world("pendulum", impulse_probability=0.0, irregular_timestamps=irregular)
    physics = world.generate(num_trajectories=16, num_steps=64, seed=0)["physics"].astype(np.float64)
    energy = physics[..., -1]
    assert (np.abs(energy - energy[:, :1]) / energy[:, :1]).max() < 1e-4
    # Bob position agrees with the angle, and the angle is wrapped.
    pivot, length = world.config.image_size / 2, world.config.rod_length
    np.testing.assert_allclose(physics[..., 2], pivot + length * np.sin(physics[..., 0]), atol=1e-4)
    np.testing.assert_allclose(physics[..., 3], pivot + length * np.cos(physics[..., 0]), atol=1e-4)
    assert np.abs(physics[..., 0]).max() <= np.pi


def test_pendulum_small_angle_half_period():
    world = PendulumWorld(PendulumWorldConfig(substeps=64))
    half_period = np.pi * np.sqrt(world.config.rod_length / world.config.gravity)
    timestamps = np.array([[0.0, half_period]], dtype=np.float32)
    physics = world.simulate(np.array([[0.05, 0.0]]), np.zeros((1, 2, 1), np.float32), timestamps)["physics"]
    # The true period is longer by (1 + θ0²/16), so ω has not quite returned to 0: ω ≈ -θ0·ω0·π·θ0²/16.
    omega0 = np.sqrt(world.config.gravity / world.config.rod_length)
    np.testing.assert_allclose(physics[0, 1, :2], [-0.05, -0.05 * omega0 * np.pi * 0.05**2 / 16], atol=1e-6)


@pytest.mark.parametrize("name", WORLD_NAMES)
def test_impulse_acts_from_the_next_step(name):
    world = get_world(name, impulse_probability=0.0)
    inputs = world.sample_simulation_inputs(num_trajectories=2, num_steps=12, seed=0)
    assert not inputs["actions"].any()
    baseline = world.simulate(**inputs)
    kicked_actions = inputs["actions"].copy()
    kicked_actions[:, 5] = 1.5 * world.config.impulse_scale * np.array([1.0, -0.7][: world.action_dim])
    kicked = world.simulate(inputs["initial_states"], kicked_actions, inputs["timestamps"])
    for key in ("physics", "pixel_values"):
        np.testing.assert_array_equal(kicked[key][:, :6], baseline[key][:, :6])
        change = np.abs(kicked[key][:, 6] - baseline[key][:, 6]).reshape(2, -1).max(axis=1)
        assert (change > 1e-3).all()


def test_sub_pixel_motion_changes_pixels_smoothly():
    world = get_world("bouncing_balls", num_balls=1)
    physics = np.zeros((1, 2, 5), np.float32)
    physics[0, :, :2] = [[15.3, 15.7], [15.4, 15.7]]  # 0.1 px shift to the right
    frames = world.render(physics)
    change = np.abs(frames[0, 1] - frames[0, 0])
    assert 0 < change.max() <= 2 * 0.1 / world.config.edge_softness + 1e-5


def test_simulate_validates_inputs():
    world = get_world("pendulum")
    states = np.zeros((2, 2))
    actions = np.zeros((2, 4, 1), np.float32)
    timestamps = np.tile(np.arange(4, dtype=np.float32), (2, 1))
    with pytest.raises(ValueError, match="actions must have shape \\(2, 4, 1\\)"):
        world.simulate(states, np.zeros((2, 4, 2), np.float32), timestamps)
    with pytest.raises(ValueError, match="initial_states must have shape"):
        world.simulate(np.zeros((2, 3)), actions, timestamps)
    with pytest.raises(ValueError, match="strictly increasing"):
        world.simulate(states, actions, timestamps[:, ::-1].copy())
    with pytest.raises(ValueError, match="finite"):
        world.simulate(np.full((2, 2), np.nan), actions, timestamps)
    with pytest.raises(ValueError, match="physics must have shape \\(N, T, 5\\)"):
        world.render(np.zeros((2, 4, 4), np.float32))


@pytest.mark.parametrize(
    ("config_class", "field", "value"),
    [
        (BouncingBallsWorldConfig, "image_size", 4),
        (BouncingBallsWorldConfig, "frame_interval", 0.0),
        (BouncingBallsWorldConfig, "timestamp_jitter", 1.0),
        (BouncingBallsWorldConfig, "substeps", 0),
        (BouncingBallsWorldConfig, "impulse_probability", 1.5),
        (BouncingBallsWorldConfig, "num_balls", 9),
        (BouncingBallsWorldConfig, "num_balls", 1.5),
        (BouncingBallsWorldConfig, "ball_radius", 20.0),
        (BouncingBallsWorldConfig, "max_speed", 1.0),
        (BouncingBallsWorldConfig, "impulse_scale", -1.0),
        (BouncingBallsWorldConfig, "ball_colors", ((2.0, 0.0, 0.0),)),
        (PendulumWorldConfig, "bob_radius", 8.0),
        (PendulumWorldConfig, "gravity", -9.8),
        (PendulumWorldConfig, "max_initial_angle", 4.0),
        (PendulumWorldConfig, "bob_color", (1.0, 0.5)),
        (PendulumWorldConfig, "irregular_timestamps", "yes"),
    ],
)
def test_bad_config_raises_naming_field(config_class, field, value):
    with pytest.raises(ValueError, match=re.escape(f"{config_class.__name__}.{field} must be")) as error:
        config_class(**{field: value})
    assert f"got {value!r}" in str(error.value)


def test_get_world_rejects_unknown_name_and_field():
    with pytest.raises(ValueError, match="bouncing_balls.*pendulum.*got 'tennis'"):
        get_world("tennis")
    with pytest.raises(ValueError, match="num_bals"):
        get_world("bouncing_balls", num_bals=2)
    with pytest.raises(ValueError, match="config must be a PendulumWorldConfig"):
        PendulumWorld(BouncingBallsWorldConfig())


@pytest.mark.parametrize("name", WORLD_NAMES)
def test_build_world_dataset_typed_and_torch_format(name, tmp_path):
    dataset = build_world_dataset(name, num_trajectories=6, num_steps=10, seed=0, cache_dir=str(tmp_path))
    meta = world_metadata(name)
    assert len(dataset) == 6
    features = dataset.features
    assert features["pixel_values"].shape == (10, 3, 32, 32) and features["pixel_values"].dtype == "float32"
    assert features["timestamps"].length == 10 and features["timestamps"].feature.dtype == "float32"
    assert features["actions"].shape == (10, meta.action_dim) and features["actions"].dtype == "float32"
    assert features["physics"].shape == (10, meta.physics_dim) and features["physics"].dtype == "float32"

    rows = dataset.with_format("torch")[:4]
    assert rows["pixel_values"].shape == (4, 10, 3, 32, 32) and rows["pixel_values"].dtype == torch.float32
    assert rows["timestamps"].shape == (4, 10) and rows["timestamps"].dtype == torch.float32
    assert rows["actions"].shape == (4, 10, meta.action_dim)
    assert rows["physics"].shape == (4, 10, meta.physics_dim)

    reference = get_world(name).generate(6, 10, seed=0)
    numpy_rows = dataset.with_format("numpy")[:]
    for key, value in reference.items():
        np.testing.assert_array_equal(numpy_rows[key], value)


def test_build_world_dataset_deterministic_per_seed(tmp_path):
    kwargs = {"num_trajectories": 4, "num_steps": 8, "irregular_timestamps": True, "num_balls": 2}
    first = build_world_dataset(seed=5, cache_dir=str(tmp_path / "a"), **kwargs).with_format("numpy")[:]
    again = build_world_dataset(seed=5, cache_dir=str(tmp_path / "b"), **kwargs).with_format("numpy")[:]
    other = build_world_dataset(seed=6, cache_dir=str(tmp_path / "a"), **kwargs).with_format("numpy")[:]
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["pixel_values"], other["pixel_values"])
    assert not np.array_equal(first["timestamps"], other["timestamps"])
    assert first["physics"].shape == (4, 8, 9)


def dominant_frequency(window: np.ndarray, sample_rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(window, n=16 * len(window)))
    return float(np.fft.rfftfreq(16 * len(window), 1 / sample_rate)[spectrum.argmax()])


@pytest.mark.parametrize("name", WORLD_NAMES)
def test_audio_and_captions_are_opt_in_and_deterministic(name):
    plain = get_world(name).generate(3, 12, seed=0)
    world = get_world(name, audio=True, captions=True, caption_length=160)
    batch = world.generate(3, 12, seed=0)
    again = get_world(name, audio=True, captions=True, caption_length=160).generate(3, 12, seed=0)
    for key, value in plain.items():
        np.testing.assert_array_equal(batch[key], value)  # the opt-in keys change nothing else
    assert batch["audio_values"].shape == (3, 12, 1600) and batch["audio_values"].dtype == np.float32
    assert np.abs(batch["audio_values"]).max() <= 1.0
    assert not batch["audio_values"][:, 0].any()  # nothing has happened before the first frame
    assert batch["captions"].shape == (3, 12) and all(isinstance(c, str) for c in batch["captions"].flat)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, 12, 160)
    assert batch["input_ids"].dtype == np.int64
    for key in ("audio_values", "input_ids", "attention_mask"):
        np.testing.assert_array_equal(batch[key], again[key])
    assert batch["captions"].tolist() == again["captions"].tolist()
    first = batch["captions"][0, 0]
    assert bytes(batch["input_ids"][0, 0, : len(first)].tolist()).decode() == first
    assert batch["attention_mask"][0, 0].sum() == len(first)
    meta = world_metadata(world)
    assert (meta.audio_window, meta.caption_length) == (1600, 160)


def test_wall_hit_is_captioned_and_sounds_at_the_balls_pitch():
    world = get_world("bouncing_balls", num_balls=1, audio=True, captions=True)
    initial = np.array([[[27.0, 16.0, 20.0, 0.0]]])  # hits the right wall (x = 29) after 0.1 s
    timestamps = np.arange(4, dtype=np.float32)[None] * 0.1
    out = world.simulate(initial, np.zeros((1, 4, 2), np.float32), timestamps)
    events = [caption_event(c) for c in out["captions"][0]]
    assert events == ["nothing happens", "the red ball hits the right wall", "nothing happens", "nothing happens"]
    assert out["captions"][0, 0] == "nothing happens. red is right."
    audio = out["audio_values"][0]
    assert not audio[[0, 2, 3]].any() and np.abs(audio[1]).max() > 0.1
    assert abs(dominant_frequency(audio[1]) - world.config.tone_frequencies[0]) < 10
    # The ball reaches the wall at the frame itself: the tone is moved to end with the window, so it is heard whole.
    tone_start = 1600 - round(world.config.tone_duration * 16000)
    assert not audio[1, :tone_start].any() and np.abs(audio[1, tone_start : tone_start + 100]).max() > 0.1


def test_ball_collision_sounds_both_pitches():
    world = get_world("bouncing_balls", num_balls=2, audio=True, captions=True, substeps=16)
    initial = np.array([[[10.0, 16.0, 10.0, 0.0], [22.0, 16.0, -10.0, 0.0]]])
    timestamps = np.arange(6, dtype=np.float32)[None] * 0.1
    out = world.simulate(initial, np.zeros((1, 6, 2), np.float32), timestamps)
    hits = [t for t, c in enumerate(out["captions"][0]) if caption_event(c) == "the red ball hits the green ball"]
    assert len(hits) == 1
    spectrum = np.abs(np.fft.rfft(out["audio_values"][0, hits[0]], n=16000))
    low, high = world.config.tone_frequencies[:2]
    assert spectrum[round(low)] > 10 * spectrum[1000] and spectrum[round(high)] > 10 * spectrum[1000]


def test_pendulum_turns_are_captioned_with_their_side():
    world = get_world("pendulum", audio=True, captions=True, impulse_probability=0.0)
    timestamps = np.arange(40, dtype=np.float32)[None] * 0.1  # more than a period (3.1 s)
    out = world.simulate(np.array([[0.3, 0.0]]), np.zeros((1, 40, 1), np.float32), timestamps)
    events = [caption_event(c) for c in out["captions"][0]]
    turns = [(t, e) for t, e in enumerate(events) if e != "nothing happens"]
    assert [e for _, e in turns][:2] == ["the bob turns at the left", "the bob turns at the right"]
    angle = out["physics"][0, :, 0]
    for t, event in turns:
        assert (angle[t] < 0) == event.endswith("left")
        assert abs(dominant_frequency(out["audio_values"][0, t]) - world.config.tone_frequency) < 10


def test_byte_tokenize_truncates_and_rejects_nul():
    ids, mask = byte_tokenize(["héllo", "a" * 20], max_length=8)
    assert ids.shape == (2, 8) and ids[0, :6].tolist() == list("héllo".encode())
    assert mask[0].tolist() == [1] * 6 + [0] * 2 and mask[1].all()
    assert byte_detokenize(torch.from_numpy(ids)) == ["héllo", "a" * 8]
    with pytest.raises(ValueError, match="texts\\[0\\]"):
        byte_tokenize(["a\x00b"], max_length=8)
    with pytest.raises(ValueError, match="max_length"):
        byte_tokenize(["a"], max_length=0)


def test_build_world_dataset_with_audio_and_captions(tmp_path):
    dataset = build_world_dataset(
        "pendulum", num_trajectories=3, num_steps=6, cache_dir=str(tmp_path), audio=True, captions=True
    )
    features = dataset.features
    assert features["audio_values"].shape == (6, 1600) and features["input_ids"].dtype == "int64"
    assert features["captions"].length == 6
    reference = get_world("pendulum", audio=True, captions=True).generate(3, 6, seed=0)
    rows = dataset.with_format("numpy")[:]
    for key in ("audio_values", "input_ids", "attention_mask", "pixel_values"):
        np.testing.assert_array_equal(rows[key], reference[key])
    assert dataset[0]["captions"] == reference["captions"][0].tolist()


@pytest.mark.parametrize(
    ("config_class", "field", "value"),
    [
        (BouncingBallsWorldConfig, "audio", 1),
        (BouncingBallsWorldConfig, "sample_rate", 100),
        (BouncingBallsWorldConfig, "tone_duration", 0.5),
        (BouncingBallsWorldConfig, "caption_length", 4),
        (BouncingBallsWorldConfig, "tone_frequencies", (440.0,)),
        (BouncingBallsWorldConfig, "ball_names", ("red", "")),
        (PendulumWorldConfig, "tone_frequency", 9000.0),
    ],
)
def test_bad_audio_caption_config_raises_naming_field(config_class, field, value):
    with pytest.raises(ValueError, match=re.escape(f"{config_class.__name__}.{field} must be")):
        config_class(**{field: value})
