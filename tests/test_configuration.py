"""Config classes: defaults, round trips, presets and validation errors that name the argument."""

import json
from pathlib import Path

import pytest
from transformers import AutoConfig

from modeling_veltrix import VeltrixDecoderModel, VeltrixEncoderConfig, VeltrixEvolverConfig
from modeling_veltrix.training import VeltrixTrainingRecipe, check_compatible, load_or_create_models

PRESETS = sorted((Path(__file__).parent.parent / "configuration").glob("veltrix-*"))


@pytest.mark.parametrize("config_class", [VeltrixEncoderConfig, VeltrixEvolverConfig])
def test_round_trip(tmp_path, config_class):
    config = config_class(unit_dim=16)
    config.save_pretrained(tmp_path)
    loaded = config_class.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), config_class)


def test_derived_sizes():
    assert VeltrixEncoderConfig(image_size=32, patch_size=4).num_units_per_step == 64
    assert VeltrixEncoderConfig(unit_layout="resampler", num_resampled_units=9).num_units_per_step == 9
    config = VeltrixEvolverConfig(hidden_size=64, expand=2, head_dim=16, num_units_per_step=49)
    assert (config.num_heads, config.unit_grid_size) == (8, 7)


@pytest.mark.parametrize(
    ("config_class", "kwargs", "argument"),
    [
        (VeltrixEncoderConfig, {"image_size": 30, "patch_size": 4}, "image_size"),
        (VeltrixEncoderConfig, {"unit_layout": "pixels"}, "unit_layout"),
        (VeltrixEncoderConfig, {"mixing_kernel_size": 4}, "mixing_kernel_size"),
        (VeltrixEncoderConfig, {"unit_dim": 0}, "unit_dim"),
        (VeltrixEvolverConfig, {"num_units_per_step": 10, "unit_mixer": "conv"}, "num_units_per_step"),
        (VeltrixEvolverConfig, {"unit_mixer": "mlp"}, "unit_mixer"),
        (VeltrixEvolverConfig, {"scan_implementation": "fft"}, "scan_implementation"),
        (VeltrixEvolverConfig, {"head_dim": 48}, "head_dim"),
        (VeltrixEvolverConfig, {"dt_reference": 0.0}, "dt_reference"),
        (VeltrixEvolverConfig, {"A_init_range": (4.0, 1.0)}, "A_init_range"),
        (VeltrixEvolverConfig, {"n_groups": 3}, "n_groups"),
    ],
)
def test_invalid_values_name_the_argument(config_class, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        config_class(**kwargs)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_presets_load_and_fit_together(tmp_path, preset):
    recipe = VeltrixTrainingRecipe.from_json_file(str(preset / "recipe.json"))
    assert recipe.context_length + recipe.rollout_window <= recipe.trajectory_length
    encoder, evolver, decoder = load_or_create_models(str(preset), str(tmp_path / "untrained"))
    check_compatible(encoder, evolver, decoder)
    assert json.loads((preset / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == (
        "FlowMatchEulerDiscreteScheduler"
    )


def test_incompatible_components_are_named(tmp_path):
    preset = PRESETS[0]
    encoder, evolver, _ = load_or_create_models(str(preset), str(tmp_path))
    decoder = VeltrixDecoderModel(
        sample_size=32,
        patch_size=4,
        hidden_size=32,
        num_layers=1,
        num_attention_heads=2,
        cross_attention_dim=encoder.config.unit_dim + 1,
    )
    with pytest.raises(ValueError, match="decoder.cross_attention_dim"):
        check_compatible(encoder, evolver, decoder)


def test_recipe_validation():
    with pytest.raises(ValueError, match="trajectory_length"):
        VeltrixTrainingRecipe(trajectory_length=10, context_length=8, rollout_window=8)
    with pytest.raises(ValueError, match="max_steps"):
        VeltrixTrainingRecipe(encoder={"max_steps": 0})


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"encoder": {"max_steps": "10"}}, r"`encoder\.max_steps` must be an integer >= 1, got '10' \(str\)"),
        (
            {"evolver": {"learning_rate": float("nan")}},
            r"`evolver\.learning_rate` must be a finite number > 0, got nan",
        ),
        ({"decoder": {"learning_rate": float("inf")}}, r"`decoder\.learning_rate` must be a finite number"),
        ({"reflow": {"batch_size": 2.0}}, r"`reflow\.batch_size` must be an integer"),
        ({"encoder": {"warmup_steps": -1}}, r"`encoder\.warmup_steps` must be an integer >= 0, got -1"),
        ({"encoder": {"weight_decay": -0.1}}, r"`encoder\.weight_decay` must be a finite number >= 0"),
        ({"evolver": {"save_steps": True}}, r"`evolver\.save_steps` must be an integer >= 1, got True \(bool\)"),
        ({"evolver": {"lr": 1e-3}}, r"`evolver` has unknown fields \['lr'\]"),
        ({"decoder": 5}, r"`decoder` must be a JSON object"),
        ({"decoder_time_sampling": "logitnormal"}, r"`decoder_time_sampling` must be one of .*'logit_normal'"),
        ({"decoder_loss_weighting": "sigma"}, r"`decoder_loss_weighting` must be one of .*'sigma_sqrt'"),
        ({"reflow_time_sampling": "beta"}, r"`reflow_time_sampling` must be one of"),
        (
            {"world": "fluid"},
            r"`world` must be one of \('bouncing_balls', 'mass_spring', 'pendulum', 'two_body'\), got 'fluid'",
        ),
        ({"world_options": {"num_ballz": 2}}, r"`world_options`.*num_ballz"),
        ({"world_options": []}, r"`world_options` must be a JSON object"),
        ({"seed": -1}, r"`seed` must be an integer >= 0 and < 4294967296, got -1"),
        ({"seed": 2**32}, r"`seed` must be an integer >= 0 and < 4294967296"),
        ({"train_seed": 1.5}, r"`train_seed` must be an integer"),
        ({"num_train_trajectories": 0}, r"`num_train_trajectories` must be an integer >= 1, got 0"),
        ({"pixel_loss_weight": float("nan")}, r"`pixel_loss_weight` must be a finite number >= 0, got nan"),
        ({"latent_loss_weight": "1"}, r"`latent_loss_weight` must be a finite number >= 0, got '1' \(str\)"),
        ({"open_loop_weight": -1.0}, r"`open_loop_weight` must be a finite number >= 0"),
        ({"stability_perturbation": float("inf")}, r"`stability_perturbation` must be a finite number > 0"),
        ({"reflow_teacher_steps": 0}, r"`reflow_teacher_steps` must be an integer >= 1"),
        ({"decoder_frames_per_trajectory": 40}, r"`decoder_frames_per_trajectory` must be in \[1, 32\], got 40"),
        ({"context_length": 0}, r"`context_length` must be an integer >= 1, got 0"),
    ],
)
def test_recipe_fields_are_checked_on_creation(tmp_path, overrides, named):
    """Bad types, non-finite numbers, values out of range and unknown choices each raise a `ValueError` naming the
    field, what it must be and what came; from a file, the message names the file too."""
    with pytest.raises(ValueError, match=named):
        VeltrixTrainingRecipe(**overrides)
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({**json.loads((PRESETS[0] / "recipe.json").read_text()), **overrides}))
    with pytest.raises(ValueError, match=rf"{path}: .*{named}"):
        VeltrixTrainingRecipe.from_json_file(str(path))


def test_recipe_file_errors_name_the_file(tmp_path):
    path = tmp_path / "recipe.json"
    with pytest.raises(ValueError, match=rf"{path} does not exist"):
        VeltrixTrainingRecipe.from_json_file(str(path))
    path.write_text('{"seed": 0,')
    with pytest.raises(ValueError, match=rf"{path} is not valid JSON"):
        VeltrixTrainingRecipe.from_json_file(str(path))
    path.write_text('{"seed": 0, "learning_rate": 0.1}')
    with pytest.raises(ValueError, match=rf"{path} has unknown fields \['learning_rate'\]"):
        VeltrixTrainingRecipe.from_json_file(str(path))


def test_a_recipe_changed_after_creation_is_checked_before_it_is_written(tmp_path):
    recipe = VeltrixTrainingRecipe()
    recipe.evolver.learning_rate = float("nan")
    with pytest.raises(ValueError, match=r"`evolver\.learning_rate`"):
        recipe.to_json_file(str(tmp_path / "recipe.json"))
    assert not list(tmp_path.iterdir())
