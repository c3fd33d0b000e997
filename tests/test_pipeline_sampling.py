"""Sampled futures through `VeltrixPipeline` (`sample`, `num_samples`) and the `world-rollout` task: the B·K layout of
the outputs, `sample_spread`, reproducibility from the generators (the evolver's noise and the decoder's), an
unchanged call without sampling, and the argument checks."""

import pytest
import torch
from conftest import IMAGE_SIZE, random_frames, randomize_, tiny_decoder, tiny_encoder_config, tiny_evolver_config
from diffusers import FlowMatchEulerDiscreteScheduler
from transformers import pipeline

from modeling_veltrix import VeltrixEncoderModel, VeltrixEvolverModel, VeltrixIntervention, VeltrixPipeline
from modeling_veltrix.pipeline_veltrix import VeltrixWorldModel
from modeling_veltrix.pipeline_world_rollout import VeltrixWorldConfig

B, K, STEPS, UNITS, UNIT_DIM = 2, 3, 3, 16, 8


def sampling_pipeline(decoder: torch.nn.Module | None = None) -> VeltrixPipeline:
    """A tiny pipeline whose evolver has the stochastic head; `randomize_` gives its zero-initialised layers
    (`velocity_head`, `sampling_head.velocity_proj`, the adaLN `modulation`s) non-zero weights."""
    torch.manual_seed(0)
    evolver = randomize_(VeltrixEvolverModel(tiny_evolver_config(sampling_head_layers=1))).eval()
    for name in ("velocity_head", "sampling_head.velocity_proj", "sampling_head.blocks.0.modulation"):
        assert evolver.get_submodule(name).weight.abs().min() > 0, name
    pipe = VeltrixPipeline(
        encoder=VeltrixEncoderModel(tiny_encoder_config()).eval(),
        evolver=evolver,
        decoder=decoder if decoder is not None else randomize_(tiny_decoder(), std=0.05).eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sampler() -> VeltrixPipeline:
    return sampling_pipeline()


def call(pipe: VeltrixPipeline, seed: int | None = 0, frames: torch.Tensor | None = None, **kwargs):
    """A call on `frames` (default `random_frames(B)`) with a generator seeded `seed` (None: none), "pt" frames."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    values = dict(num_future_steps=STEPS, num_inference_steps=2, generator=generator, output_type="pt")
    return pipe(random_frames(B) if frames is None else frames, **{**values, **kwargs})


def test_every_sampled_future_is_rendered_grouped_per_context(sampler):
    out = call(sampler, sample=True, num_samples=K)
    assert out.frames.shape == (B * K, STEPS, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert out.units.shape == (B * K, STEPS, UNITS, UNIT_DIM)
    assert out.timestamps.shape == (B * K, STEPS)
    assert out.sample_spread.shape == (B, STEPS) and out.sample_spread.min() > 0
    grouped = out.units.unflatten(0, (B, K))
    torch.testing.assert_close(out.sample_spread, grouped.std(dim=1).mean(dim=(2, 3)))
    assert not torch.equal(grouped[:, 0], grouped[:, 1])

    pil = call(sampler, sample=True, num_samples=K, output_type="pil")
    assert len(pil.frames) == B * K and all(len(images) == STEPS for images in pil.frames)

    frames, units, timestamps, spread = call(sampler, sample=True, num_samples=K, return_dict=False)
    torch.testing.assert_close(spread, out.sample_spread, rtol=0, atol=0)
    torch.testing.assert_close(frames, out.frames, rtol=0, atol=0)


def test_one_sample_per_context_has_no_spread(sampler):
    out = call(sampler, sample=True)
    assert out.units.shape == (B, STEPS, UNITS, UNIT_DIM) and out.sample_spread is None


def test_the_same_seed_gives_the_same_futures_and_another_seed_others(sampler):
    first = call(sampler, seed=1, sample=True, num_samples=K)
    again = call(sampler, seed=1, sample=True, num_samples=K)
    other = call(sampler, seed=2, sample=True, num_samples=K)
    assert torch.equal(first.frames, again.frames) and torch.equal(first.units, again.units)
    assert not torch.equal(first.units, other.units)


def test_a_single_generator_seeds_the_evolver_first_then_the_decoder(sampler):
    out = call(sampler, seed=5, sample=True, num_samples=K)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        context = sampler.encoder(random_frames(B)).units
        rollout = sampler.evolver.rollout(context, STEPS, sample=True, num_samples=K, generator=generator)
    torch.testing.assert_close(out.units, rollout.units, rtol=0, atol=0)
    # The decoder's noise comes from what the rollout left in the generator.
    latents = sampler.prepare_latents(B * K * STEPS, torch.float32, torch.device("cpu"), generator)
    last_frame = random_frames(B)[:, -1].repeat_interleave(K, dim=0)
    with torch.no_grad():
        frames = sampler.render_rollout(out.units, last_frame, 2, latents, "pt")
    torch.testing.assert_close(out.frames, frames, rtol=0, atol=0)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_a_list_of_generators_samples_each_contexts_futures_as_a_call_on_it_alone(sampler):
    frames = random_frames(B)
    batched = call(sampler, frames=frames, generator=[seeded(1), seeded(2)], sample=True, num_samples=K)
    for b, seed in enumerate((1, 2)):
        alone = call(sampler, seed, frames=frames[b : b + 1], sample=True, num_samples=K)
        rows = slice(b * K, (b + 1) * K)
        # The evolver's batched scan rounds differently from a batch of one.
        torch.testing.assert_close(batched.units[rows], alone.units, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(batched.frames[rows], alone.frames, rtol=1e-4, atol=1e-4)
    other = call(sampler, frames=frames, generator=[seeded(1), seeded(3)], sample=True, num_samples=K)
    assert torch.equal(batched.units[:K], other.units[:K]) and torch.equal(batched.frames[:K], other.frames[:K])
    assert not torch.equal(batched.units[K:], other.units[K:])


def test_without_sampling_a_call_is_unchanged(sampler):
    plain = call(sampler, seed=4)
    explicit = call(sampler, seed=4, sample=False, num_samples=1)
    assert torch.equal(plain.frames, explicit.frames) and torch.equal(plain.units, explicit.units)
    assert plain.sample_spread is None
    with torch.no_grad():
        mean = sampler.evolver.rollout(sampler.encoder(random_frames(B)).units, STEPS).units
    torch.testing.assert_close(plain.units, mean, rtol=0, atol=0)
    assert not torch.equal(plain.units, call(sampler, seed=4, sample=True).units)


def test_a_temporal_decoder_starts_every_sample_from_its_contexts_last_frame():
    pipe = sampling_pipeline(randomize_(tiny_decoder(temporal_context=True), std=0.05).eval())
    out = call(pipe, seed=3, sample=True, num_samples=K)
    assert out.frames.shape == (B * K, STEPS, 3, IMAGE_SIZE, IMAGE_SIZE)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        context = pipe.encoder(random_frames(B)).units
        pipe.evolver.rollout(context, STEPS, sample=True, num_samples=K, generator=generator)  # draws its seed
        latents = pipe.prepare_latents(B * K * STEPS, torch.float32, torch.device("cpu"), generator)
        first = pipe.decode_units(
            out.units[:, 0],
            2,
            latents=latents.unflatten(0, (B * K, STEPS))[:, 0],
            previous_frame=random_frames(B)[:, -1].repeat_interleave(K, dim=0),
        )
    torch.testing.assert_close(out.frames[:, 0], (first + 1) / 2)


def test_counterfactual_branches_are_sampled_per_future(sampler):
    actions = torch.randn(B, 3 + STEPS, 2, generator=torch.Generator().manual_seed(3))
    edited = VeltrixIntervention(step=1, actions=torch.full((B, 2, 2), 3.0))
    out = call(sampler, actions=actions, interventions=edited, sample=True, num_samples=K)
    assert out.counterfactual_frames.shape == out.frames.shape == (B * K, STEPS, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert out.counterfactual_units.shape == (B * K, STEPS, UNITS, UNIT_DIM) and out.divergence.shape == (B * K, STEPS)
    torch.testing.assert_close(out.counterfactual_frames[:, 0], out.frames[:, 0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sample": True, "num_samples": 0}, "num_samples"),
        ({"sample": False, "num_samples": 2}, "num_samples"),
        ({"sample": True, "num_samples": 2.0}, "num_samples"),
        ({"sample": "yes"}, "`sample` must be a bool, got 'yes'"),
    ],
)
def test_bad_sampling_arguments(sampler, kwargs, message):
    with pytest.raises(ValueError, match=message):
        call(sampler, **kwargs)


def test_sampling_needs_the_stochastic_head_and_is_refused_before_anything_runs(tiny_pipeline, monkeypatch):
    assert not tiny_pipeline.evolver.can_sample
    monkeypatch.setattr(tiny_pipeline.encoder, "forward", lambda *args, **kwargs: pytest.fail("the encoder ran"))
    with pytest.raises(ValueError, match=r"`sample=True` needs the stochastic head.*sampling_head_layers=0"):
        call(tiny_pipeline, sample=True)


def test_the_world_rollout_task_forwards_sample_and_num_samples(sampler):
    task = pipeline("world-rollout", model=VeltrixWorldModel(VeltrixWorldConfig(), sampler))
    frames = random_frames(B)
    steps = dict(num_future_steps=STEPS, num_inference_steps=2, output_type="pt", seed=0)
    expected = call(sampler, sample=True, num_samples=4)

    futures = task(frames[0], sample=True, num_samples=4, **steps)
    assert isinstance(futures, list) and len(futures) == 4
    one = call(sampler, sample=True, num_samples=4, frames=frames[:1])
    for index, future in enumerate(futures):
        assert torch.equal(future["frames"], one.frames[index])
        assert torch.equal(future["sample_spread"], one.sample_spread[0])

    batched = task(frames, sample=True, num_samples=4, **steps)
    assert len(batched) == B and all(len(samples) == 4 for samples in batched)
    torch.testing.assert_close(torch.stack([f["frames"] for s in batched for f in s]), expected.frames, rtol=0, atol=0)
    torch.testing.assert_close(batched[1][0]["sample_spread"], expected.sample_spread[1], rtol=0, atol=0)

    single = task(frames[0], sample=True, **steps)
    assert isinstance(single, dict) and "sample_spread" not in single and single["frames"].shape[0] == STEPS
    with pytest.raises(ValueError, match="num_samples"):
        task(frames[0], num_samples=2, **steps)
