"""Tests of the MGD frame decoder: `python -m pytest tests/test_decoder.py` (CPU, offline, a few seconds)."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from modeling_veltrix.modeling_veltrix_decoder import (
    VeltrixDecoderModel,
    VeltrixDecoderOutput,
    flow_matching_loss,
)

BATCH, CHANNELS, SIZE, UNITS, UNIT_DIM, MAX_UNITS = 2, 3, 16, 4, 16, 8


def get_tiny_decoder(perturb: bool = False) -> VeltrixDecoderModel:
    """A tiny decoder; `perturb` moves every weight off its (partly zero) initialisation."""
    torch.manual_seed(0)
    decoder = VeltrixDecoderModel(
        sample_size=SIZE,
        in_channels=CHANNELS,
        patch_size=2,
        hidden_size=32,
        num_layers=2,
        num_attention_heads=4,
        cross_attention_dim=UNIT_DIM,
        max_context_units=MAX_UNITS,
        timestep_embedding_channels=32,
    )
    if perturb:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for parameter in decoder.parameters():
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return decoder


def tiny_flow_decoder(**overrides) -> VeltrixDecoderModel:
    """An 8×8 decoder with 2×2 patches and 4-dim units, for the loss and conditioning tests."""
    values = dict(
        sample_size=8,
        patch_size=2,
        hidden_size=16,
        num_layers=1,
        num_attention_heads=2,
        cross_attention_dim=4,
        max_context_units=4,
    )
    return VeltrixDecoderModel(**{**values, **overrides})


def get_inputs(seed: int = 0, num_units: int = UNITS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=generator)
    timestep = torch.tensor([250.0, 900.0])
    units = torch.randn(BATCH, num_units, UNIT_DIM, generator=generator)
    return sample, timestep, units


def euler_sample(
    decoder: VeltrixDecoderModel, units: torch.Tensor, seed: int, num_inference_steps: int = 8
) -> torch.Tensor:
    """The pipeline's sampling loop: Euler steps of `FlowMatchEulerDiscreteScheduler` from noise."""
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(num_inference_steps)
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(units.shape[0], CHANNELS, SIZE, SIZE, generator=generator)
    with torch.no_grad():
        for t in scheduler.timesteps:
            velocity = decoder(sample, t.expand(units.shape[0]), units).sample
            sample = scheduler.step(velocity, t, sample).prev_sample
    return sample


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of frames in [-1, 1] (peak-to-peak 2)."""
    mse = ((prediction.clamp(-1, 1) - target) ** 2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(4 / mse)


@pytest.mark.parametrize("num_units", [1, UNITS, MAX_UNITS])
def test_output_shape_and_tuple(num_units):
    decoder = get_tiny_decoder(perturb=True)
    sample, timestep, units = get_inputs(num_units=num_units)
    output = decoder(sample, timestep, units)
    assert isinstance(output, VeltrixDecoderOutput)
    assert output.sample.shape == (BATCH, CHANNELS, SIZE, SIZE)
    (velocity,) = decoder(sample, timestep, units, return_dict=False)
    torch.testing.assert_close(velocity, output.sample)


def test_scalar_timestep_broadcasts():
    decoder = get_tiny_decoder(perturb=True)
    sample, _, units = get_inputs()
    scalar = decoder(sample, torch.tensor(500.0), units).sample
    batched = decoder(sample, torch.full((BATCH,), 500.0), units).sample
    torch.testing.assert_close(scalar, batched)


def test_velocity_is_zero_at_init():
    decoder = get_tiny_decoder()
    sample, timestep, units = get_inputs()
    assert torch.count_nonzero(decoder(sample, timestep, units).sample) == 0


def test_save_pretrained_round_trip(tmp_path):
    decoder = get_tiny_decoder(perturb=True).eval()
    sample, timestep, units = get_inputs()
    decoder.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    reloaded = VeltrixDecoderModel.from_pretrained(tmp_path).eval()
    public_config = {key: value for key, value in decoder.config.items() if not key.startswith("_")}
    assert {key: reloaded.config[key] for key in public_config} == public_config
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(sample, timestep, units).sample, decoder(sample, timestep, units).sample, rtol=0, atol=0
        )


def _with_nan(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.clone()
    tensor[0, 0, 0, 0] = float("nan")
    return tensor


@pytest.mark.parametrize(
    ("make_inputs", "argument"),
    [
        (lambda s, t, u: (s[:, :2], t, u), "sample"),
        (lambda s, t, u: (s[:, :, :8, :8], t, u), "sample"),
        (lambda s, t, u: (_with_nan(s), t, u), "sample"),
        (lambda s, t, u: (s, t, u[..., :8]), "encoder_hidden_states"),
        (lambda s, t, u: (s, t, u[0]), "encoder_hidden_states"),
        (lambda s, t, u: (s, t, torch.randn(BATCH, MAX_UNITS + 1, UNIT_DIM)), "encoder_hidden_states"),
        (lambda s, t, u: (s, t, u[:1]), "encoder_hidden_states"),
        (lambda s, t, u: (s, t[:1], u), "timestep"),
        (lambda s, t, u: (s, torch.tensor([float("inf"), 1.0]), u), "timestep"),
    ],
    ids=[
        "channels",
        "size",
        "nan-sample",
        "context-width",
        "context-2d",
        "too-many-units",
        "batch-mismatch",
        "timestep-shape",
        "timestep-inf",
    ],
)
def test_bad_inputs_raise(make_inputs, argument):
    decoder = get_tiny_decoder()
    with pytest.raises(ValueError, match=f"`{argument}`"):
        decoder(*make_inputs(*get_inputs()))


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"sample_size": 15}, "sample_size"),
        ({"hidden_size": 30}, "hidden_size"),
        ({"num_layers": 0}, "num_layers"),
    ],
)
def test_bad_config_raises(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        VeltrixDecoderModel(**{"sample_size": 16, "patch_size": 2, "hidden_size": 32, **kwargs})


def test_gradient_checkpointing_matches():
    decoder = get_tiny_decoder(perturb=True).train()
    sample, timestep, units = get_inputs()

    def output_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        decoder.zero_grad()
        velocity = decoder(sample, timestep, units).sample
        velocity.square().mean().backward()
        return velocity.detach(), [parameter.grad.clone() for parameter in decoder.parameters()]

    reference, reference_grads = output_and_grads()
    decoder.enable_gradient_checkpointing()
    assert decoder.is_gradient_checkpointing
    checkpointed, checkpointed_grads = output_and_grads()
    torch.testing.assert_close(checkpointed, reference)
    assert all(grad.abs().sum() > 0 for grad in reference_grads)
    for grad, reference_grad in zip(checkpointed_grads, reference_grads, strict=True):
        torch.testing.assert_close(grad, reference_grad)


def test_flow_matching_loss_sampling_options():
    decoder = get_tiny_decoder(perturb=True)
    pixels, _, units = get_inputs()
    for time_sampling in ("logit_normal", "uniform", "mode"):
        first = flow_matching_loss(decoder, pixels, units, torch.Generator().manual_seed(3), time_sampling)
        again = flow_matching_loss(decoder, pixels, units, torch.Generator().manual_seed(3), time_sampling)
        assert first.ndim == 0 and torch.isfinite(first)
        assert first == again
    with pytest.raises(ValueError, match="`time_sampling`"):
        flow_matching_loss(decoder, pixels, units, time_sampling="cosine")
    with pytest.raises(ValueError, match="`pixel_values`"):
        flow_matching_loss(decoder, pixels[0], units)


def test_euler_sampling_is_deterministic():
    decoder = get_tiny_decoder(perturb=True).eval()
    _, _, units = get_inputs()
    first = euler_sample(decoder, units, seed=7, num_inference_steps=4)
    assert first.shape == (BATCH, CHANNELS, SIZE, SIZE) and torch.isfinite(first).all()
    torch.testing.assert_close(euler_sample(decoder, units, seed=7, num_inference_steps=4), first, rtol=0, atol=0)
    assert not torch.equal(euler_sample(decoder, units, seed=8, num_inference_steps=4), first)


def test_overfits_two_images_and_samples_them_back():
    generator = torch.Generator().manual_seed(0)
    # Smooth frames in [-1, 1] (4x4 random colours, bilinearly upsampled) with distinct contexts.
    images = F.interpolate(torch.rand(2, CHANNELS, 4, 4, generator=generator) * 2 - 1, size=SIZE, mode="bilinear")
    units = torch.randn(2, UNITS, UNIT_DIM, generator=generator)
    decoder = get_tiny_decoder()
    untrained_psnr = psnr(euler_sample(decoder, units, seed=1), images)

    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    loss_generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(200):
        loss = flow_matching_loss(decoder, images, units, generator=loss_generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.3 * sum(losses[:10]) / 10

    decoder.eval()
    samples = euler_sample(decoder, units, seed=1)
    trained_psnr = psnr(samples, images)
    assert (trained_psnr > untrained_psnr + 8).all() and (trained_psnr > 15).all()
    # Each sample follows its own context, not the other image.
    assert (trained_psnr > psnr(samples, images.flip(0)) + 5).all()


def test_paired_noise_is_used_and_checked():
    """Reflow passes the teacher's noise: the loss must use it, and reject a wrong shape."""
    decoder = tiny_flow_decoder()
    with torch.no_grad():
        decoder.proj_out.weight.normal_()
    frames, units = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 4)
    noise = torch.randn(2, 3, 8, 8)
    a = flow_matching_loss(decoder, frames, units, generator=torch.Generator().manual_seed(0), noise=noise)
    b = flow_matching_loss(decoder, frames, units, generator=torch.Generator().manual_seed(0), noise=noise)
    c = flow_matching_loss(decoder, frames, units, generator=torch.Generator().manual_seed(0), noise=-noise)
    assert a == b and a != c
    with pytest.raises(ValueError, match="noise"):
        flow_matching_loss(decoder, frames, units, noise=torch.randn(2, 3, 4, 4))


def test_aligned_context_needs_one_unit_per_patch():
    decoder = tiny_flow_decoder(patch_size=4, aligned_context=True)
    assert decoder(torch.randn(2, 3, 8, 8), 500.0, torch.randn(2, 4, 4)).sample.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        decoder(torch.randn(2, 3, 8, 8), 500.0, torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="max_context_units"):
        tiny_flow_decoder(aligned_context=True)


def test_temporal_context_needs_the_previous_frame():
    decoder = tiny_flow_decoder(temporal_context=True)
    with torch.no_grad():
        decoder.proj_out.weight.normal_()
    sample, units, previous = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 4), torch.randn(2, 3, 8, 8)
    a = decoder(sample, 500.0, units, previous).sample
    b = decoder(sample, 500.0, units, -previous).sample
    assert not torch.equal(a, b)  # the previous frame is used
    for bad in (None, torch.randn(2, 3, 4, 4), torch.full((2, 3, 8, 8), float("nan"))):
        with pytest.raises(ValueError, match="previous_frame"):
            decoder(sample, 500.0, units, bad)
    plain = tiny_flow_decoder()
    with pytest.raises(ValueError, match="previous_frame"):
        plain(sample, 500.0, units, previous)


@pytest.mark.parametrize("weighting", ["none", "sigma_sqrt", "cosmap"])
def test_loss_weighting_matches_diffusers(weighting):
    decoder = tiny_flow_decoder()
    with torch.no_grad():
        decoder.proj_out.weight.normal_()
    frames, units, noise = torch.randn(3, 3, 8, 8), torch.randn(3, 4, 4), torch.randn(3, 3, 8, 8)
    loss = flow_matching_loss(
        decoder,
        frames,
        units,
        generator=torch.Generator().manual_seed(5),
        noise=noise,
        time_sampling="uniform",
        loss_weighting=weighting,
    )
    sigmas = compute_density_for_timestep_sampling("uniform", 3, generator=torch.Generator().manual_seed(5))
    noisy = (1 - sigmas[:, None, None, None]) * frames + sigmas[:, None, None, None] * noise
    velocity = decoder(noisy, sigmas * 1000, units).sample
    weights = compute_loss_weighting_for_sd3(weighting, sigmas)[:, None, None, None]
    torch.testing.assert_close(loss, (weights * (velocity - (noise - frames)) ** 2).mean())
    with pytest.raises(ValueError, match="loss_weighting"):
        flow_matching_loss(decoder, frames, units, loss_weighting="snr")
