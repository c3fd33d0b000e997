"""The evolver stage's optional terms (Lyapunov-like stability regulariser, time consistency): recipe weights, off by
default, checked."""

import pytest
import torch
from conftest import randomize_, tiny_encoder_config, tiny_evolver_config

from modeling_veltrix import VeltrixEncoderModel, VeltrixEvolverModel
from modeling_veltrix.training import VeltrixEvolverStage, VeltrixTrainingRecipe
from modeling_veltrix.worlds import build_world_dataset


def recipe(**overrides) -> VeltrixTrainingRecipe:
    return VeltrixTrainingRecipe(trajectory_length=10, context_length=4, rollout_window=4, **overrides)


@pytest.mark.parametrize("term", ["stability_weight", "time_consistency_weight"])
def test_evolver_stage_terms_add_to_the_loss(tmp_path, term):
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
    evolver = randomize_(VeltrixEvolverModel(tiny_evolver_config()), std=1.0)  # expansive: the penalty is > 0
    assert getattr(recipe(), term) == 0.0  # off by default
    losses = []
    for weight in (0.0, 10.0):
        stage = VeltrixEvolverStage(encoder, evolver, recipe(**{term: weight}))
        torch.manual_seed(1)  # the same rollout window for both weights
        losses.append(stage(batch["pixel_values"], batch["timestamps"], batch["actions"])["loss"])
    assert losses[1] > losses[0]
    losses[1].backward()
    assert evolver.velocity_head.weight.grad.abs().sum() > 0


def test_stability_settings_are_checked():
    with pytest.raises(ValueError, match="stability_weight"):
        recipe(stability_weight=-1.0)
    with pytest.raises(ValueError, match="time_consistency_weight"):
        recipe(time_consistency_weight=-1.0)
    with pytest.raises(ValueError, match="stability_perturbation"):
        recipe(stability_perturbation=0.0)
