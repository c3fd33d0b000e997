"""The physics probe and the energy-conservation term: the worlds' energy interface, the probe's config and
round trip, `physics_conservation_loss` checked by hand, the evolver stage's optional `L_phys`, and the `probe`
stage (`load_or_train_probe`)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import fused_config, fused_inputs, randomize_, tiny_encoder_config, tiny_evolver_config
from torch import nn

from modeling_veltrix import VeltrixEncoderModel, VeltrixEvolverModel
from modeling_veltrix.training import (
    VeltrixEvolverStage,
    VeltrixJointStage,
    VeltrixPhysicsProbe,
    VeltrixPhysicsProbeConfig,
    VeltrixStageRecipe,
    VeltrixTrainingRecipe,
    consecutive_pairs,
    load_or_train_probe,
    physics_conservation_loss,
    train_joint,
    train_stage,
)
from modeling_veltrix.training import runner as runner_module
from modeling_veltrix.worlds import build_world_dataset, get_world

PENDULUM = dict(image_size=16, rod_length=5.0, bob_radius=2.0)
# Every stage, the probe's included: a few steps of batch 4, a checkpoint at step 2.
STAGE = dict(max_steps=3, batch_size=4, learning_rate=1e-2, warmup_steps=0, save_steps=2)


@pytest.fixture(scope="module")
def pendulum_dataset(tmp_path_factory):
    dataset = build_world_dataset(
        "pendulum",
        num_trajectories=8,
        num_steps=12,
        seed=3,
        impulse_probability=0.0,
        cache_dir=str(tmp_path_factory.mktemp("cache")),
        **PENDULUM,
    )
    return dataset.with_format("torch")


def pendulum_recipe(**overrides) -> VeltrixTrainingRecipe:
    values = dict(
        world="pendulum",
        world_options=dict(PENDULUM),
        trajectory_length=12,
        context_length=4,
        rollout_window=4,
        decoder_frames_per_trajectory=2,
        probe_hidden_size=16,
    )
    stages = {name: dict(STAGE) for name in ("encoder", "evolver", "decoder", "reflow", "probe", "joint")}
    return VeltrixTrainingRecipe(**{**values, **stages, **overrides})


def pendulum_models() -> tuple[VeltrixEncoderModel, VeltrixEvolverModel]:
    torch.manual_seed(0)
    encoder = VeltrixEncoderModel(tiny_encoder_config(action_dim=1))
    evolver = VeltrixEvolverModel(tiny_evolver_config(action_dim=1))
    return encoder, evolver


def tiny_probe(**overrides) -> VeltrixPhysicsProbe:
    values = dict(num_units_per_step=16, unit_dim=8, hidden_size=16, world="pendulum", world_options=dict(PENDULUM))
    torch.manual_seed(0)
    return VeltrixPhysicsProbe(VeltrixPhysicsProbeConfig(**{**values, **overrides}))


# --- the worlds' energy interface ---


@pytest.mark.parametrize(
    ("name", "options", "energy_field"),
    [("pendulum", PENDULUM, "energy"), ("bouncing_balls", dict(num_balls=3), "kinetic_energy")],
)
def test_world_energy_is_the_physics_energy_column(name, options, energy_field):
    world = get_world(name, **options)
    assert set(world.probe_fields) <= set(world.physics_fields)
    assert energy_field not in world.probe_fields
    physics = world.generate(num_trajectories=3, num_steps=10, seed=0)["physics"].astype(np.float64)
    state = physics[..., list(world.probe_indices)]  # (N, T, P)
    expected = physics[..., world.physics_fields.index(energy_field)]
    np.testing.assert_allclose(world.energy(state), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(world.energy(torch.from_numpy(state)), torch.from_numpy(expected), rtol=1e-5, atol=1e-4)


def test_probe_fields():
    assert get_world("pendulum").probe_fields == ("bob_x", "bob_y", "angular_velocity")
    balls = get_world("bouncing_balls", num_balls=2).probe_fields
    assert balls == tuple(f"ball{b}_{q}" for b in range(2) for q in ("x", "y", "vx", "vy"))


# --- the probe ---


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(hidden_size=0), "hidden_size"),
        (dict(unit_dim=0), "unit_dim"),
        (dict(world="nowhere"), "world"),
        (dict(world_options={"rod_length": -1.0}), "world_options"),
        (dict(probe_fields=["bob_x", "bob_y"]), "probe_fields"),
        (dict(field_mean=[0.0, 1.0]), "field_mean"),
        (dict(field_std=[1.0, 0.0, 1.0]), "field_std"),
        (dict(field_std=[1.0, float("nan"), 1.0]), "field_std"),
        (dict(energy_scale=0.0), "energy_scale"),
        (dict(initializer_range=-1.0), "initializer_range"),
    ],
)
def test_probe_config_is_validated(overrides, field):
    with pytest.raises(ValueError, match=field):
        VeltrixPhysicsProbeConfig(**{"world": "pendulum", **overrides})


def test_probe_config_defaults():
    config = VeltrixPhysicsProbeConfig(world="pendulum")
    assert config.probe_fields == ["bob_x", "bob_y", "angular_velocity"]
    assert config.field_mean == [0.0] * 3 and config.field_std == [1.0] * 3


def test_probe_save_and_load_round_trip(tmp_path):
    probe = tiny_probe(field_mean=[8.0, 12.0, 0.1], field_std=[2.0, 1.0, 0.5], energy_scale=3.0)
    probe.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = VeltrixPhysicsProbe.from_pretrained(tmp_path)
    for name in ("field_mean", "field_std", "energy_scale", "world", "world_options", "probe_fields"):
        assert getattr(loaded.config, name) == getattr(probe.config, name), name
    units = torch.randn(2, 3, 2, 16, 8)  # pairs: the step before, then the step
    torch.testing.assert_close(loaded(units), probe(units))
    torch.testing.assert_close(loaded.energy(units), probe.energy(units))
    assert probe(units).shape == (2, 3, 3) and probe.energy(units).shape == (2, 3)


def test_probe_denormalises():
    probe = tiny_probe(field_mean=[8.0, 12.0, 0.1], field_std=[2.0, 1.0, 0.5])
    units = torch.randn(4, 2, 16, 8)
    expected = probe.normalized(units) * torch.tensor([2.0, 1.0, 0.5]) + torch.tensor([8.0, 12.0, 0.1])
    torch.testing.assert_close(probe(units), expected)
    with pytest.raises(ValueError, match="pairs"):
        probe(torch.randn(4, 2, 15, 8))
    with pytest.raises(ValueError, match="pairs"):
        probe(torch.randn(4, 16, 8))  # one step: velocities cannot be read from it


# --- L_phys ---


class CurrentStep(nn.Module):
    """Reads the flattened pair (before, current) of one-unit states (1, 4) as the current state."""

    def forward(self, flat_pair: torch.Tensor) -> torch.Tensor:
        return flat_pair[..., 4:]


def identity_probe(energy_scale: float = 2.0) -> VeltrixPhysicsProbe:
    """A probe of one ball whose prediction is the current step's units (1, 4) = (x, y, vx, vy): energy
    ½ (vx² + vy²)."""
    options = {"world": "bouncing_balls", "world_options": {"num_balls": 1}, "energy_scale": energy_scale}
    config = VeltrixPhysicsProbeConfig(num_units_per_step=1, unit_dim=4, **options)
    probe = VeltrixPhysicsProbe(config)
    probe.mlp = CurrentStep()
    return probe


def ball_states(velocities: list[list[tuple[float, float]]]) -> torch.Tensor:
    """(B, K, 1, 4) states with the given velocities, at the origin."""
    return torch.tensor([[[[0.0, 0.0, vx, vy]] for vx, vy in row] for row in velocities])


def test_conservation_loss_by_hand():
    probe = identity_probe(energy_scale=2.0)
    reference = ball_states([[(5.0, 5.0), (1.0, 1.0)], [(5.0, 5.0), (2.0, 0.0)]])  # energies 1 and 2 (the last step)
    predicted = ball_states([[(1.0, 1.0), (2.0, 0.0)], [(0.0, 0.0), (2.0, 2.0)]])  # energies (1, 2) and (0, 4)
    # ((E - E_ref) / 2)²: trajectory 0: 0, 0.25; trajectory 1: 1, 1.
    loss = physics_conservation_loss(probe, predicted, reference)
    torch.testing.assert_close(loss, torch.tensor((0.0 + 0.25 + 1.0 + 1.0) / 4))
    quiet_first = torch.zeros(2, 2, 2)
    quiet_first[1, 0, 1] = 0.3  # an impulse in trajectory 1: it does not count
    loss = physics_conservation_loss(probe, predicted, reference, quiet_first)
    torch.testing.assert_close(loss, torch.tensor((0.0 + 0.25) / 2))
    everywhere = torch.ones(2, 2, 2)
    predicted.requires_grad_(True)
    loss = physics_conservation_loss(probe, predicted, reference, everywhere)
    assert loss.item() == 0.0 and loss.requires_grad  # no trajectory counts: 0, still part of the graph
    loss.backward()
    assert torch.equal(predicted.grad, torch.zeros_like(predicted))


def test_conservation_loss_checks_shapes():
    probe = identity_probe()
    with pytest.raises(ValueError, match="predicted_units"):
        physics_conservation_loss(probe, torch.zeros(2, 1, 4), torch.zeros(2, 1, 4))
    with pytest.raises(ValueError, match="actions"):
        physics_conservation_loss(probe, torch.zeros(2, 3, 1, 4), torch.zeros(2, 2, 1, 4), torch.zeros(2, 2, 1))
    with pytest.raises(ValueError, match="reference_units"):
        physics_conservation_loss(probe, torch.zeros(2, 3, 1, 4), torch.zeros(2, 1, 4))


def test_conservation_loss_gradients_reach_the_predicted_units_only():
    probe = tiny_probe()
    predicted = torch.randn(2, 3, 16, 8, requires_grad=True)
    reference = torch.randn(2, 2, 16, 8, requires_grad=True)
    physics_conservation_loss(probe, predicted, reference, torch.zeros(2, 3, 1)).backward()
    assert predicted.grad is not None and predicted.grad.abs().sum() > 0
    assert reference.grad is None  # the reference is a target
    assert all(parameter.grad is None for parameter in probe.parameters())
    assert all(parameter.requires_grad for parameter in probe.parameters())  # the caller's flags are left alone


# --- the evolver stage ---


def stage_batch(dataset) -> dict[str, torch.Tensor]:
    rows = dataset[:4]
    return {name: rows[name] for name in ("pixel_values", "timestamps", "actions")}


def test_evolver_stage_adds_the_physics_term(pendulum_dataset):
    encoder, evolver = pendulum_models()
    randomize_(evolver, std=0.1)  # an untrained evolver predicts no motion, which conserves the energy
    probe = tiny_probe()
    batch = stage_batch(pendulum_dataset)
    losses = {}
    for weight in (0.0, 10.0):
        stage = VeltrixEvolverStage(encoder, evolver, pendulum_recipe(physics_loss_weight=weight), probe=probe)
        torch.manual_seed(1)  # the same window
        losses[weight] = stage(**batch)["loss"]
    assert torch.isfinite(losses[10.0]) and losses[10.0] > losses[0.0]
    losses[10.0].backward()
    assert all(parameter.grad is None for parameter in probe.parameters())
    assert any(parameter.grad is not None for parameter in evolver.parameters())


def test_evolver_stage_needs_a_probe_for_the_physics_term(pendulum_dataset):
    encoder, evolver = pendulum_models()
    with pytest.raises(ValueError, match="physics_loss_weight"):
        VeltrixEvolverStage(encoder, evolver, pendulum_recipe(physics_loss_weight=1.0))
    VeltrixEvolverStage(encoder, evolver, pendulum_recipe())  # weight 0: no probe needed


class LinearPredictor(nn.Module):
    """A baseline with the evolver's interface: each step's units mapped linearly to the next's."""

    def __init__(self, unit_dim: int):
        super().__init__()
        self.step = nn.Linear(unit_dim, unit_dim)

    def forward(self, units, timestamps=None, actions=None):
        return SimpleNamespace(predicted_units=units + self.step(units))

    def rollout(self, context, num_steps, actions=None, timestamps=None):
        state, states = context[:, -1], []
        for _ in range(num_steps):
            state = state + self.step(state)
            states.append(state)
        return SimpleNamespace(units=torch.stack(states, dim=1))


def test_evolver_stage_trains_another_predictor(pendulum_dataset):
    encoder, _ = pendulum_models()
    predictor = LinearPredictor(unit_dim=8)
    stage = VeltrixEvolverStage(encoder, predictor, pendulum_recipe(physics_loss_weight=1.0), probe=tiny_probe())
    stage(**stage_batch(pendulum_dataset))["loss"].backward()
    assert predictor.step.weight.grad is not None


def test_train_stage_passes_the_probe(tmp_path, pendulum_dataset):
    encoder, evolver = pendulum_models()
    probe = tiny_probe()
    before = {name: value.clone() for name, value in probe.state_dict().items()}
    recipe = pendulum_recipe(physics_loss_weight=1.0)
    with pytest.raises(ValueError, match="physics_loss_weight"):
        train_stage("evolver", (encoder, evolver, None), pendulum_dataset, recipe, str(tmp_path))
    metrics = train_stage("evolver", (encoder, evolver, None), pendulum_dataset, recipe, str(tmp_path), probe=probe)
    assert np.isfinite(metrics["train_loss"])
    assert all(torch.equal(before[name], value) for name, value in probe.state_dict().items())  # frozen
    assert (tmp_path / "evolver" / "config.json").is_file()


# --- the probe stage ---


def test_recipe_probe_fields_and_old_recipe_files(tmp_path):
    recipe = VeltrixTrainingRecipe()
    assert recipe.physics_loss_weight == 0.0 and recipe.probe_hidden_size == 128
    assert (recipe.probe.max_steps, recipe.probe.learning_rate, recipe.probe.batch_size) == (300, 1e-3, 16)
    assert (recipe.joint.max_steps, recipe.joint.learning_rate, recipe.joint.batch_size) == (300, 1e-4, 8)
    weights = (recipe.joint_align_weight, recipe.joint_physics_weight, recipe.joint_reconstruction_weight)
    assert weights == (1.0, 0.0, 1.0)
    assert VeltrixTrainingRecipe(probe={"max_steps": 5}).probe.batch_size == 16  # the probe's defaults
    with pytest.raises(ValueError, match="physics_loss_weight"):
        VeltrixTrainingRecipe(physics_loss_weight=-1.0)
    with pytest.raises(ValueError, match="probe.batch_size"):
        VeltrixTrainingRecipe(probe={"batch_size": 0})
    path = tmp_path / "recipe.json"
    recipe.to_json_file(str(path))
    assert VeltrixTrainingRecipe.from_json_file(str(path)) == recipe


def test_load_or_train_probe_trains_once(tmp_path, pendulum_dataset, monkeypatch):
    encoder, _ = pendulum_models()
    recipe = pendulum_recipe()
    probe = load_or_train_probe(encoder, pendulum_dataset, recipe, str(tmp_path))
    assert (tmp_path / "probe" / "model.safetensors").is_file()
    assert (tmp_path / "checkpoints" / "probe" / "checkpoint-2").is_dir()
    assert not list(tmp_path.glob("*.tmp"))
    physics = pendulum_dataset[:]["physics"][..., [2, 3, 1]].flatten(0, 1).double()
    torch.testing.assert_close(torch.tensor(probe.config.field_mean, dtype=torch.float64), physics.mean(0))
    assert probe.config.energy_scale > 0 and probe.config.hidden_size == recipe.probe_hidden_size

    def no_training(*args, **kwargs):
        raise AssertionError("the saved probe must be loaded, not trained again")

    monkeypatch.setattr(runner_module, "run_trainer", no_training)
    loaded = load_or_train_probe(encoder, pendulum_dataset, recipe, str(tmp_path))
    units = torch.randn(3, 2, 16, 8)
    torch.testing.assert_close(loaded(units), probe(units))


def test_probe_learns_pendulum_positions(tmp_path, tmp_path_factory):
    dataset = build_world_dataset(
        "pendulum",
        num_trajectories=64,
        num_steps=12,
        seed=5,
        cache_dir=str(tmp_path_factory.mktemp("cache")),
        **PENDULUM,
    ).with_format("torch")
    encoder, _ = pendulum_models()
    stage = dict(max_steps=150, batch_size=16, learning_rate=3e-3, warmup_steps=0, save_steps=1000)
    recipe = pendulum_recipe(probe_hidden_size=128, probe=VeltrixStageRecipe(**stage))
    probe = load_or_train_probe(encoder, dataset, recipe, str(tmp_path))
    held_out = build_world_dataset("pendulum", num_trajectories=16, num_steps=12, seed=99, **PENDULUM)
    held_out = held_out.with_format("torch")[:]
    with torch.no_grad():
        units = encoder(held_out["pixel_values"]).units
        predicted = probe(consecutive_pairs(units[:, 1:], units[:, 0]))  # (N, T - 1, 3) from steps 1 … T - 1
    positions = held_out["physics"][:, 1:, 2:4]
    error = (predicted[..., :2] - positions).pow(2).mean().sqrt()
    spread = positions.std(dim=(0, 1)).mean()
    assert error < 0.3 * spread, (float(error), float(spread))
    velocity = held_out["physics"][:, 1:, 1]  # read from two steps: one frame does not show it
    velocity_error = (predicted[..., 2] - velocity).pow(2).mean().sqrt()
    # 0.77 of the spread when written (predicting the mean gives 1.0): an untrained encoder's units, 150 steps.
    assert velocity_error < 0.9 * velocity.std(), float(velocity_error / velocity.std())


# --- the joint fine-tune ---


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], model: nn.Module) -> bool:
    return any(not torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_joint_stage_trains_encoder_and_evolver(pendulum_dataset):
    encoder, evolver = pendulum_models()
    randomize_(evolver, std=0.1)
    probe = tiny_probe()
    with pytest.raises(ValueError, match="joint_physics_weight"):
        VeltrixJointStage(encoder, evolver, pendulum_recipe(joint_physics_weight=1.0))
    stage = VeltrixJointStage(encoder, evolver, pendulum_recipe(joint_physics_weight=1.0), probe=probe).train()
    assert encoder.training and not probe.training
    losses = {}
    for weight in (0.0, 1.0):
        stage.recipe = pendulum_recipe(joint_physics_weight=1.0, joint_reconstruction_weight=weight)
        torch.manual_seed(1)  # the same window
        losses[weight] = stage(**stage_batch(pendulum_dataset))["loss"]
    batch = stage_batch(pendulum_dataset)
    reconstruction = encoder(batch["pixel_values"], return_loss=True).loss
    torch.testing.assert_close(losses[1.0] - losses[0.0], reconstruction)
    losses[1.0].backward()
    assert any(parameter.grad is not None for parameter in encoder.parameters())
    assert any(parameter.grad is not None for parameter in evolver.parameters())
    assert all(parameter.grad is None for parameter in probe.parameters())


def test_train_joint_saves_both_components(tmp_path, pendulum_dataset):
    encoder, evolver = pendulum_models()
    before = [snapshot(encoder), snapshot(evolver)]
    metrics = train_joint((encoder, evolver, None), pendulum_dataset, pendulum_recipe(), str(tmp_path))
    assert np.isfinite(metrics["train_loss"])
    assert changed(before[0], encoder) and changed(before[1], evolver)
    for component, model in (("encoder", encoder), ("evolver", evolver)):
        folder = tmp_path / "joint" / component
        assert runner_module.trained_component(str(tmp_path), component) == str(folder)
        loaded = type(model).from_pretrained(folder)
        assert not changed(snapshot(loaded), model)
    assert (tmp_path / "checkpoints" / "joint" / "checkpoint-2").is_dir()
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "encoder").mkdir()
    assert runner_module.trained_component(str(tmp_path), "encoder") == str(tmp_path / "joint" / "encoder")


def test_joint_stage_weighs_the_alignment_of_a_multimodal_encoder():
    torch.manual_seed(0)
    encoder = VeltrixEncoderModel(fused_config(action_dim=1))
    evolver = VeltrixEvolverModel(tiny_evolver_config(unit_dim=16, action_dim=1))
    inputs = fused_inputs(batch=2, steps=8)
    batch = {
        "pixel_values": inputs["pixel_values"],
        "timestamps": torch.arange(8.0).expand(2, 8) / 10,
        "actions": torch.zeros(2, 8, 1),
        "input_ids": inputs["input_ids"],
        "attention_mask": inputs["attention_mask"],
        "audio_values": torch.randn(2, 8, 320) * 0.1,
    }
    losses = {}
    for weight in (0.0, 2.0):
        stage = VeltrixJointStage(encoder, evolver, pendulum_recipe(trajectory_length=8, joint_align_weight=weight))
        torch.manual_seed(1)
        losses[weight] = stage.eval()(**batch)["loss"]  # eval: no nested dropout, the same encoding twice
    torch.manual_seed(1)
    terms = encoder.eval()(**{k: v for k, v in batch.items() if k not in ("timestamps", "actions")}, return_loss=True)
    torch.testing.assert_close(losses[2.0] - losses[0.0], 2.0 * terms.loss_terms["align"])
