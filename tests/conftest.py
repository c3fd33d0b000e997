"""Tiny configurations shared by the tests (CPU, offline, a few seconds each)."""

import os

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from modeling_veltrix import (  # noqa: E402
    VeltrixDecoderModel,
    VeltrixEncoderConfig,
    VeltrixEncoderModel,
    VeltrixEvolverConfig,
    VeltrixEvolverModel,
    VeltrixPipeline,
)

IMAGE_SIZE = 16
UNIT_DIM = 8
ACTION_DIM = 2


def tiny_encoder_config(**overrides) -> VeltrixEncoderConfig:
    values = dict(
        image_size=IMAGE_SIZE,
        patch_size=4,
        hidden_size=16,
        unit_dim=UNIT_DIM,
        num_mixing_layers=1,
        num_attention_heads=2,
        action_dim=ACTION_DIM,
        num_resampled_units=4,
    )
    return VeltrixEncoderConfig(**{**values, **overrides})


def tiny_evolver_config(**overrides) -> VeltrixEvolverConfig:
    values = dict(
        unit_dim=UNIT_DIM,
        num_units_per_step=16,
        hidden_size=16,
        num_hidden_layers=2,
        state_size=4,
        head_dim=8,
        intermediate_size=32,
        action_dim=ACTION_DIM,
        condition_size=16,
        chunk_size=4,
        num_attention_heads=2,
    )
    return VeltrixEvolverConfig(**{**values, **overrides})


def tiny_decoder(**overrides) -> VeltrixDecoderModel:
    values = dict(
        sample_size=IMAGE_SIZE,
        patch_size=4,
        hidden_size=32,
        num_layers=1,
        num_attention_heads=2,
        cross_attention_dim=UNIT_DIM,
        max_context_units=16,
    )
    return VeltrixDecoderModel(**{**values, **overrides})


def randomize_(model: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Perturbs every weight matrix so that zero-initialised heads and modulations do not hide differences."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * std)
    return model


@pytest.fixture
def tiny_pipeline() -> VeltrixPipeline:
    torch.manual_seed(0)
    encoder = VeltrixEncoderModel(tiny_encoder_config()).eval()
    evolver = randomize_(VeltrixEvolverModel(tiny_evolver_config())).eval()
    decoder = randomize_(tiny_decoder(), std=0.05).eval()
    pipe = VeltrixPipeline(
        encoder=encoder, evolver=evolver, decoder=decoder, scheduler=FlowMatchEulerDiscreteScheduler()
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_frames(batch: int = 2, steps: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, steps, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 2 - 1


def fused_config(**overrides):
    values = dict(
        modalities=["frames", "text", "audio"],
        unit_dim=16,
        frame_dim=8,
        text_dim=4,
        audio_dim=2,
        latent_dim=2,
        num_text_units=2,
        num_audio_units=4,
        audio_num_codebooks=2,
        audio_codebook_dim=3,
        audio_codebook_size=16,
        audio_window=320,
        audio_n_fft=64,
        audio_hop_length=32,
        audio_num_mels=8,
        text_max_length=24,
        text_hidden_size=16,
        text_num_heads=2,
        text_num_layers=1,
        align_dim=8,
    )
    return tiny_encoder_config(**{**values, **overrides})


def fused_inputs(batch: int = 2, steps: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 256, (batch, steps, 24), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[..., 20:] = 0
    return {
        "pixel_values": random_frames(batch, steps, seed),
        "input_ids": input_ids * attention_mask,
        "attention_mask": attention_mask,
        "audio_codes": torch.randint(0, 16, (batch, steps, 2), generator=generator),
    }
