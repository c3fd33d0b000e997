"""Bad inputs, table-driven: every public entry point (encoder, evolver forward / step / rollout / rollout_stream,
decoder, flow-matching loss, pipeline, `world-rollout` task) raises a `ValueError` naming the argument as the user
passed it, before any heavy work. The policies (dtype, caps on horizons and time steps) are in `input_validation`."""

import dataclasses
import re
from collections.abc import Callable

import numpy as np
import pytest
import torch
from conftest import IMAGE_SIZE, random_frames, randomize_, tiny_decoder, tiny_encoder_config, tiny_evolver_config

from modeling_veltrix import VeltrixEncoderModel, VeltrixEvolverModel, VeltrixIntervention
from modeling_veltrix.input_validation import MAX_ROLLOUT_STEPS
from modeling_veltrix.modeling_veltrix_decoder import flow_matching_loss
from modeling_veltrix.modeling_veltrix_evolver import VeltrixEvolverCache, lyapunov_penalty
from modeling_veltrix.pipeline_veltrix import VeltrixWorldModel
from modeling_veltrix.pipeline_world_rollout import VeltrixWorldConfig, VeltrixWorldRolloutPipeline

B, T, N, U, D, A = 2, 3, 3, 16, 8, 2  # batch, context, future steps, units, unit width, action width


class Models:
    """The tiny models every case runs on, built once."""

    def __init__(self, pipeline):
        self.pipe = pipeline
        self.encoder: VeltrixEncoderModel = pipeline.encoder
        self.evolver: VeltrixEvolverModel = pipeline.evolver
        self.decoder = pipeline.decoder
        self.task = VeltrixWorldRolloutPipeline(
            model=VeltrixWorldModel(VeltrixWorldConfig(), pipeline), task="world-rollout"
        )


@pytest.fixture(scope="module")
def models() -> Models:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from modeling_veltrix import VeltrixPipeline

    torch.manual_seed(0)
    pipe = VeltrixPipeline(
        encoder=VeltrixEncoderModel(tiny_encoder_config()).eval(),
        evolver=randomize_(VeltrixEvolverModel(tiny_evolver_config())).eval(),
        decoder=randomize_(tiny_decoder(), std=0.05).eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return Models(pipe)


def units(batch: int = B, steps: int = T, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(batch, steps, U, D, dtype=dtype) * 2 - 1


def times(batch: int = B, steps: int = T + N, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.arange(steps, dtype=dtype) * 0.1 * scale).expand(batch, steps).contiguous()


def actions(batch: int = B, steps: int = T + N, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(batch, steps, A, dtype=dtype)


def meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


def cache(models: Models, batch: int = B) -> VeltrixEvolverCache:
    return models.evolver(units(batch), use_cache=True).cache


def meta_cache(models: Models) -> VeltrixEvolverCache:
    """A cache whose conv states carry no data (e.g. built on the meta device)."""
    real = cache(models)
    return dataclasses.replace(real, conv_states=[torch.empty_like(c, device="meta") for c in real.conv_states])


def step(models: Models, **overrides) -> object:
    values = dict(
        units=units()[:, -1],
        cache=cache(models),
        timestamp=torch.full((B,), 0.3),
        prediction_timestamp=torch.full((B,), 0.4),
    )
    return models.evolver.step(**{**values, **overrides})


def rollout(models: Models, **overrides) -> object:
    return models.evolver.rollout(**{"context": units(), "num_steps": N, **overrides})


def stream(models: Models, **overrides) -> object:
    """The first state of `rollout_stream`: the checks must run at the call, before any step."""
    return next(iter(models.evolver.rollout_stream(**{"context": units(), "num_steps": N, **overrides})))


def decoder(models: Models, **overrides) -> object:
    values = dict(
        sample=torch.zeros(B, 3, IMAGE_SIZE, IMAGE_SIZE), timestep=500.0, encoder_hidden_states=torch.zeros(B, U, D)
    )
    return models.decoder(**{**values, **overrides})


def loss(models: Models, **overrides) -> object:
    values = dict(pixel_values=torch.zeros(B, 3, IMAGE_SIZE, IMAGE_SIZE), encoder_hidden_states=torch.zeros(B, U, D))
    return flow_matching_loss(models.decoder, **{**values, **overrides})


def pipe(models: Models, **overrides) -> object:
    values = dict(pixel_values=random_frames(), num_future_steps=N, num_inference_steps=1, output_type="latent")
    return models.pipe(**{**values, **overrides})


def task(models: Models, **overrides) -> object:
    values = dict(pixel_values=random_frames()[0], num_future_steps=N, num_inference_steps=1, output_type="pt")
    inputs = {**values, **overrides}
    return models.task(inputs.pop("pixel_values"), **inputs)


def edit(**fields) -> VeltrixIntervention:
    return VeltrixIntervention(**{"step": 1, "state_delta": torch.zeros(B, U, D), **fields})


# (case id, call, the argument the message must name). Cases marked `# clear before` already raised a named
# ValueError before the bad-input issue; every other case gave a raw error, no error, or NaN.
CASES: list[tuple[str, Callable[[Models], object], str]] = [
    # encoder
    ("encoder-float64-frames", lambda m: m.encoder(random_frames().double()), "pixel_values"),
    ("encoder-empty-batch", lambda m: m.encoder(random_frames()[:0]), "pixel_values"),
    ("encoder-empty-time", lambda m: m.encoder(random_frames()[:, :0]), "pixel_values"),
    ("encoder-meta-frames", lambda m: m.encoder(meta(B, T, 3, IMAGE_SIZE, IMAGE_SIZE)), "pixel_values"),
    ("encoder-numpy-frames", lambda m: m.encoder(random_frames().numpy()), "pixel_values"),  # clear before
    ("encoder-float64-actions", lambda m: m.encoder(random_frames(), actions(steps=T).double()), "actions"),
    ("encoder-decode-float64-units", lambda m: m.encoder.decode_frames(units(dtype=torch.float64)), "units"),
    # evolver forward
    ("forward-float64-units", lambda m: m.evolver(units(dtype=torch.float64)), "units"),
    ("forward-empty-time", lambda m: m.evolver(units(steps=0)), "units"),
    ("forward-empty-batch", lambda m: m.evolver(units(batch=0)), "units"),
    ("forward-meta-units", lambda m: m.evolver(meta(B, T, U, D)), "units"),
    ("forward-float16-timestamps", lambda m: m.evolver(units(), times(steps=T, dtype=torch.float16)), "timestamps"),
    ("forward-timestamps-x1e31", lambda m: m.evolver(units(), times(steps=T, scale=1e31)), "timestamps"),
    ("forward-float64-actions", lambda m: m.evolver(units(), actions=actions(steps=T).double()), "actions"),
    ("forward-list-actions", lambda m: m.evolver(units(), actions=actions(steps=T).tolist()), "actions"),  # clear
    (
        "forward-prediction-step-x1e31",
        lambda m: m.evolver(units(), times(steps=T), prediction_timestamps=times(steps=T) + 1e30),
        "prediction_timestamps",
    ),
    # evolver step
    ("step-cache-none", lambda m: step(m, cache=None), "cache"),
    ("step-cache-other-batch-size", lambda m: step(m, cache=cache(m, batch=3)), "cache"),
    ("step-cache-dict", lambda m: step(m, cache={"conv_states": []}), "cache"),
    ("step-float64-units", lambda m: step(m, units=units(dtype=torch.float64)[:, -1]), "units"),
    ("step-empty-batch", lambda m: step(m, units=units(batch=0)[:, -1]), "units"),
    (
        "step-gap-1e35",
        lambda m: step(m, timestamp=torch.full((B,), 1e35), prediction_timestamp=torch.full((B,), 2e35)),
        "timestamp",
    ),
    ("step-cache-meta-states", lambda m: step(m, cache=meta_cache(m)), "cache.conv_states[0]"),
    ("step-list-timestamp", lambda m: step(m, timestamp=[0.3, 0.3]), "timestamp"),  # clear before
    # evolver rollout
    ("rollout-num-steps-1e9", lambda m: rollout(m, num_steps=10**9), "num_steps"),
    ("rollout-num-steps-float", lambda m: rollout(m, num_steps=3.0), "num_steps"),  # clear before
    ("rollout-num-steps-bool", lambda m: rollout(m, num_steps=True), "num_steps"),  # clear before
    ("rollout-float64-context", lambda m: rollout(m, context=units(dtype=torch.float64)), "context"),
    ("rollout-empty-context", lambda m: rollout(m, context=units(steps=0)), "context"),
    ("rollout-timestamps-x1e31", lambda m: rollout(m, timestamps=times(scale=1e31)), "timestamps"),
    ("rollout-unknown-mode", lambda m: rollout(m, mode="dream"), "mode"),  # clear before
    (
        "rollout-intervention-step-out-of-range",
        lambda m: rollout(m, interventions=edit(step=N)),
        "interventions[0].step",
    ),  # clear
    (
        "rollout-intervention-float64-delta",
        lambda m: rollout(m, interventions=edit(state_delta=torch.zeros(B, U, D, dtype=torch.float64))),
        "interventions[0].state_delta",
    ),
    ("rollout-numpy-actions", lambda m: rollout(m, actions=actions().numpy()), "actions"),  # clear before
    # evolver rollout_stream
    ("stream-num-steps-1e9", lambda m: stream(m, num_steps=10**9), "num_steps"),
    ("stream-float64-context", lambda m: stream(m, context=units(dtype=torch.float64)), "context"),
    ("stream-timestamps-x1e31", lambda m: stream(m, timestamps=times(scale=1e31)), "timestamps"),
    ("stream-meta-actions", lambda m: stream(m, actions=meta(B, T + N, A)), "actions"),
    (
        "lyapunov-string-generator",
        lambda m: lyapunov_penalty(m.evolver, units(), units(steps=N), generator="s"),
        "generator",
    ),
    # decoder and its loss
    (
        "decoder-float64-sample",
        lambda m: decoder(m, sample=torch.zeros(B, 3, IMAGE_SIZE, IMAGE_SIZE).double()),
        "sample",
    ),
    (
        "decoder-empty-batch",
        lambda m: decoder(
            m, sample=torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE), encoder_hidden_states=torch.zeros(0, U, D)
        ),
        "sample",
    ),
    ("decoder-meta-sample", lambda m: decoder(m, sample=meta(B, 3, IMAGE_SIZE, IMAGE_SIZE)), "sample"),
    (
        "decoder-float64-units",
        lambda m: decoder(m, encoder_hidden_states=torch.zeros(B, U, D).double()),
        "encoder_hidden_states",
    ),
    ("decoder-string-timestep", lambda m: decoder(m, timestep="500"), "timestep"),
    ("loss-string-generator", lambda m: loss(m, generator="seed"), "generator"),
    (
        "loss-float64-pixel-values",
        lambda m: loss(m, pixel_values=torch.zeros(B, 3, IMAGE_SIZE, IMAGE_SIZE).double()),
        "pixel_values",
    ),
    ("loss-float64-noise", lambda m: loss(m, noise=torch.zeros(B, 3, IMAGE_SIZE, IMAGE_SIZE).double()), "noise"),
    # pipeline
    ("pipeline-num-future-steps-1e9", lambda m: pipe(m, num_future_steps=10**9), "num_future_steps"),
    ("pipeline-num-inference-steps-1e6", lambda m: pipe(m, num_inference_steps=10**6), "num_inference_steps"),
    ("pipeline-num-future-steps-float", lambda m: pipe(m, num_future_steps=3.0), "num_future_steps"),  # clear
    ("pipeline-string-generator", lambda m: pipe(m, output_type="pt", generator="seed"), "generator"),
    (
        "pipeline-generator-list-of-3-for-2",
        lambda m: pipe(m, output_type="pt", generator=[torch.Generator()] * 3),
        "generator",
    ),
    ("pipeline-timestamps-x1e31", lambda m: pipe(m, timestamps=times(scale=1e31)), "timestamps"),
    ("pipeline-empty-time", lambda m: pipe(m, pixel_values=random_frames()[:, :0]), "pixel_values"),
    ("pipeline-empty-batch", lambda m: pipe(m, pixel_values=random_frames()[:0]), "pixel_values"),
    ("pipeline-meta-frames", lambda m: pipe(m, pixel_values=meta(B, T, 3, IMAGE_SIZE, IMAGE_SIZE)), "pixel_values"),
    ("pipeline-meta-actions", lambda m: pipe(m, actions=meta(B, T + N, A)), "actions"),
    (
        "pipeline-float64-frames-overflow",
        lambda m: pipe(m, pixel_values=random_frames().double() * 1e300),
        "pixel_values",
    ),  # clear before
    ("pipeline-list-output-type", lambda m: pipe(m, output_type=["pt"]), "output_type"),  # clear before
    (
        "pipeline-unknown-modality",
        lambda m: pipe(m, output_modalities=("frames", "smell")),
        "output_modalities",
    ),  # clear
    ("pipeline-unknown-mode", lambda m: pipe(m, mode="dream"), "mode"),  # clear before
    (
        "pipeline-intervention-negative-step",
        lambda m: pipe(m, interventions=edit(step=-1)),
        "interventions[0].step",
    ),  # clear before
    # world-rollout task
    ("task-list-actions", lambda m: task(m, actions=actions(batch=1)[0].tolist()), "actions"),
    ("task-numpy-timestamps", lambda m: task(m, timestamps=np.arange(T + N) * 0.1), "timestamps"),
    ("task-batched-actions-for-one-trajectory", lambda m: task(m, actions=actions(batch=1)), "actions"),  # clear before
    (
        "task-unbatched-actions-for-a-batch",
        lambda m: task(m, pixel_values=random_frames(), actions=actions()[0]),
        "actions",
    ),  # clear
    ("task-num-future-steps-1e9", lambda m: task(m, num_future_steps=10**9), "num_future_steps"),
    ("task-empty-output-modalities", lambda m: task(m, output_modalities=()), "output_modalities"),
    ("task-string-seed", lambda m: task(m, seed="0"), "seed"),  # clear before
]


@pytest.mark.parametrize(("call", "argument"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_raises_a_value_error_naming_the_argument(models, call, argument):
    with pytest.raises(ValueError, match=re.escape(f"`{argument}")):
        call(models)


def test_the_table_is_large_and_covers_every_entry_point():
    assert len(CASES) >= 40
    prefixes = {case[0].split("-")[0] for case in CASES}
    assert {"encoder", "forward", "step", "rollout", "stream", "decoder", "loss", "pipeline", "task"} <= prefixes


def test_horizon_caps_are_checked_before_any_allocation(models):
    """A horizon one past the cap raises at once; the cap itself is accepted by the checks."""
    with pytest.raises(ValueError, match="`num_steps` must be an int in \\[1, 100000\\]"):
        models.evolver.check_rollout_inputs(B, T, MAX_ROLLOUT_STEPS + 1)
    models.evolver.check_rollout_inputs(B, T, MAX_ROLLOUT_STEPS)
