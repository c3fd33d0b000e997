"""The equal-size baselines: sizes matched to the evolver, teacher forcing equal to recurrent steps, causality, the
evolver's contract (checks, rollouts, save/load), and training through the evolver stage."""

import pytest
import torch
from conftest import tiny_encoder_config, tiny_evolver_config

from modeling_veltrix import VeltrixEncoderModel, VeltrixEvolverConfig, VeltrixEvolverModel
from modeling_veltrix.evaluation.baselines import (
    ARCHITECTURES,
    BASELINE_CLASSES,
    VeltrixBaselineConfig,
    block_causal_mask,
    build_baseline,
    count_parameters,
    matched_baseline_config,
)
from modeling_veltrix.training import VeltrixEvolverStage, VeltrixTrainingRecipe
from modeling_veltrix.worlds import build_world_dataset

UNITS, DIM, ACTIONS = 16, 8, 2


def tiny_config(architecture: str = "transformer", **overrides) -> VeltrixBaselineConfig:
    values = {
        "architecture": architecture,
        "unit_dim": DIM,
        "num_units_per_step": UNITS,
        "action_dim": ACTIONS,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_attention_heads": 2,
        "attention_window": 3,
        "condition_size": 8,
    }
    return VeltrixBaselineConfig(**values | overrides)


def moving_baseline(architecture: str, **overrides) -> torch.nn.Module:
    """A baseline whose zero-initialised layers (adaLN modulation, velocity head) are made non-zero, so its
    predictions depend on its inputs (an untrained one predicts "nothing moves")."""
    torch.manual_seed(0)
    model = build_baseline(tiny_config(architecture, **overrides)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.2)
    return model


def trajectory(b: int = 2, t: int = 9, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    units = torch.randn(b, t, UNITS, DIM, generator=generator)
    timestamps = torch.cumsum(0.05 + 0.1 * torch.rand(b, t, generator=generator), dim=1)  # irregular
    actions = torch.randn(b, t, ACTIONS, generator=generator)
    return units, timestamps, actions


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_matched_to_the_evolver_within_ten_percent(architecture):
    evolver_config = VeltrixEvolverConfig(unit_dim=32, num_units_per_step=64, action_dim=2)
    target = count_parameters(VeltrixEvolverModel(evolver_config))
    config = matched_baseline_config(architecture, evolver_config)
    count = count_parameters(build_baseline(config))
    assert abs(count - target) <= 0.1 * target
    assert (config.unit_dim, config.num_units_per_step, config.action_dim) == (32, 64, 2)
    with pytest.raises(ValueError, match="within 10%"):  # four times as wide: too big even with the narrowest MLP
        matched_baseline_config(architecture, evolver_config, hidden_size=256)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_recurrent_steps_equal_teacher_forcing(architecture):
    """Feeding true states one step at a time through the rollout cache predicts what `forward` predicts for the
    whole trajectory at once (past the Transformer's attention window, with irregular times)."""
    model = moving_baseline(architecture)
    units, timestamps, actions = trajectory()
    with torch.no_grad():
        parallel = model(units, timestamps=timestamps, actions=actions).predicted_units
        cache = model._context_cache(units[:, :2], timestamps, actions)
        for k in range(1, units.shape[1] - 1):
            step, cache = model._step(units[:, k], cache, timestamps[:, k], timestamps[:, k + 1], actions[:, k])
            torch.testing.assert_close(step, parallel[:, k], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_rollout_matches_forward_on_its_own_predictions(architecture):
    """A rollout's step k equals `forward` over the context followed by the rollout's own earlier states."""
    model = moving_baseline(architecture)
    units, timestamps, actions = trajectory(t=8)
    with torch.no_grad():
        rollout = model.rollout(units[:, :3], 5, actions=actions, timestamps=timestamps)
        fed = torch.cat([units[:, :3], rollout.units[:, :-1]], dim=1)
        parallel = model(
            fed, timestamps=timestamps[:, :7], actions=actions[:, :7], prediction_timestamps=timestamps[:, 1:]
        ).predicted_units
    torch.testing.assert_close(rollout.units, parallel[:, 2:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rollout.timestamps, timestamps[:, 3:])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_predictions_are_causal(architecture):
    model = moving_baseline(architecture)
    units, timestamps, actions = trajectory()
    changed = units.clone()
    changed[:, 5] += 1.0
    with torch.no_grad():
        before = model(units, timestamps=timestamps, actions=actions).predicted_units
        after = model(changed, timestamps=timestamps, actions=actions).predicted_units
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_transformer_sees_its_window_only():
    """With L layers and a window of w steps, step t depends on steps t - L(w - 1) … t only."""
    model = moving_baseline("transformer")
    units, timestamps, actions = trajectory()
    changed = units.clone()
    changed[:, 0] += 1.0
    reach = model.config.num_hidden_layers * (model.config.attention_window - 1)
    with torch.no_grad():
        before = model(units, timestamps=timestamps, actions=actions).predicted_units
        after = model(changed, timestamps=timestamps, actions=actions).predicted_units
    assert not torch.allclose(before[:, reach], after[:, reach])
    torch.testing.assert_close(before[:, reach + 1 :], after[:, reach + 1 :])


def test_block_causal_mask():
    mask = block_causal_mask(3, 2, 2, torch.device("cpu"))
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1],
            [0, 0, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_untrained_baseline_predicts_no_motion(architecture):
    model = build_baseline(tiny_config(architecture))
    units, timestamps, actions = trajectory()
    rollout = model.rollout(units[:, :3], 4, actions=actions[:, :7], timestamps=timestamps[:, :7])
    torch.testing.assert_close(rollout.units, units[:, 2:3].expand(-1, 4, -1, -1))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_save_and_load_round_trip(architecture, tmp_path):
    model = moving_baseline(architecture)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = BASELINE_CLASSES[architecture].from_pretrained(tmp_path).eval()
    units, timestamps, actions = trajectory()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.rollout(units[:, :3], 3, actions=actions[:, :6], timestamps=timestamps[:, :6]).units,
            model.rollout(units[:, :3], 3, actions=actions[:, :6], timestamps=timestamps[:, :6]).units,
        )


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_inputs_are_checked(architecture):
    model = build_baseline(tiny_config(architecture))
    units, timestamps, actions = trajectory()
    with pytest.raises(ValueError, match="units"):
        model(units[:, :, :-1])
    backwards = timestamps.flip(1)
    with pytest.raises(ValueError, match="timestamps"):
        model(units, timestamps=backwards)
    with pytest.raises(ValueError, match="actions"):
        model.rollout(units[:, :3], 2, actions=actions[:, :4], timestamps=timestamps[:, :5])
    with pytest.raises(ValueError, match="mode"):
        model.rollout(units[:, :3], 2, mode="counterfactual")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("architecture", "lstm", "architecture"),
        ("hidden_size", 0, "hidden_size"),
        ("num_attention_heads", 3, "hidden_size"),
        ("action_dim", -1, "action_dim"),
    ],
)
def test_config_is_validated(field, value, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**{field: value})
    with pytest.raises(ValueError, match="perfect square"):
        tiny_config("gru", num_units_per_step=12)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_evolver_stage_trains_a_baseline(architecture, tmp_path):
    """The evolver stage takes a baseline in the evolver's place, as `train_stage` does: one optimiser step moves its
    (zero-initialised) velocity head, and the frozen encoder gets no gradient."""
    batch = build_world_dataset(
        "bouncing_balls",
        num_trajectories=2,
        num_steps=10,
        seed=3,
        image_size=16,
        num_balls=1,
        ball_radius=2.0,
        cache_dir=str(tmp_path),
    ).with_format("torch")[:]
    torch.manual_seed(0)
    encoder = VeltrixEncoderModel(tiny_encoder_config())
    evolver_config = tiny_evolver_config()
    baseline = build_baseline(matched_baseline_config(architecture, evolver_config, tolerance=0.2))
    recipe = VeltrixTrainingRecipe(trajectory_length=10, context_length=4, rollout_window=4)
    stage = VeltrixEvolverStage(encoder, baseline, recipe)
    optimizer = torch.optim.SGD([p for p in stage.parameters() if p.requires_grad], lr=0.1)
    stage(batch["pixel_values"], batch["timestamps"], batch["actions"])["loss"].backward()
    optimizer.step()
    assert baseline.velocity_head.weight.abs().sum() > 0
    assert all(p.grad is None for p in encoder.parameters())
