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
