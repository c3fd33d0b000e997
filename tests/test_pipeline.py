"""VeltrixPipeline on tiny random weights: every output_type, determinism, save/load (also in a fresh process),
input validation."""

import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import IMAGE_SIZE, random_frames, randomize_
from diffusers import DDPMScheduler
from safetensors.torch import save_file

from modeling_veltrix import VeltrixDecoderModel, VeltrixIntervention, VeltrixPipeline
from modeling_veltrix import modeling_veltrix_evolver as evolver_module


def call(pipe, seed=0, **kwargs):
    values = dict(num_future_steps=3, num_inference_steps=2, generator=torch.Generator().manual_seed(seed))
    return pipe(random_frames(), **{**values, **kwargs})


def test_every_output_type(tiny_pipeline):
    pt = call(tiny_pipeline, output_type="pt")
    assert pt.frames.shape == (2, 3, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert 0.0 <= pt.frames.min() and pt.frames.max() <= 1.0
    assert pt.units.shape == (2, 3, 16, 8)
    assert pt.timestamps.shape == (2, 3)

    np_out = call(tiny_pipeline, output_type="np")
    assert isinstance(np_out.frames, np.ndarray) and np_out.frames.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_allclose(np_out.frames, pt.frames.permute(0, 1, 3, 4, 2).numpy(), atol=1e-6)

    pil = call(tiny_pipeline, output_type="pil")
    assert len(pil.frames) == 2 and len(pil.frames[0]) == 3
    assert isinstance(pil.frames[0][0], PIL.Image.Image) and pil.frames[0][0].size == (IMAGE_SIZE, IMAGE_SIZE)

    latent = call(tiny_pipeline, output_type="latent")
    assert latent.frames is None
    torch.testing.assert_close(latent.units, pt.units)

    frames, units, timestamps = call(tiny_pipeline, output_type="pt", return_dict=False)
    torch.testing.assert_close(frames, pt.frames)


def test_seed_determinism(tiny_pipeline):
    a = call(tiny_pipeline, seed=1, output_type="pt").frames
    b = call(tiny_pipeline, seed=1, output_type="pt").frames
    c = call(tiny_pipeline, seed=2, output_type="pt").frames
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_actions_and_timestamps(tiny_pipeline):
    actions = torch.randn(2, 6, 2)
    timestamps = torch.cumsum(torch.rand(2, 6) * 0.1 + 0.05, dim=1)
    out = call(tiny_pipeline, actions=actions, timestamps=timestamps, output_type="latent")
    torch.testing.assert_close(out.timestamps, timestamps[:, 3:])


def test_a_call_checks_each_input_once_and_nothing_per_euler_step(tiny_pipeline, monkeypatch):
    """Every finiteness check of a call, wherever it runs (pipeline, encoder, evolver, decoder), is recorded: the
    three inputs are checked once each, whatever the number of Euler steps, and no internal tensor is."""
    checked, isfinite = [], torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda tensor: checked.append(tuple(tensor.shape)) or isfinite(tensor))
    actions = torch.randn(2, 6, 2)
    timestamps = torch.cumsum(torch.rand(2, 6) * 0.1 + 0.05, dim=1)
    for num_inference_steps in (1, 4):
        checked.clear()
        call(tiny_pipeline, actions=actions, timestamps=timestamps, num_inference_steps=num_inference_steps)
        assert sorted(checked) == sorted([tuple(random_frames().shape), (2, 6, 2), (2, 6)])
    checked.clear()
    tiny_pipeline.decoder(torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE), 500.0, torch.zeros(2, 16, 8))
    assert checked, "a direct call of the decoder checks its inputs"


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"output_type": "gif"}, "output_type"),
        ({"num_future_steps": 0}, "num_future_steps"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"frames": torch.full((1, 2, 3, IMAGE_SIZE, IMAGE_SIZE), float("nan"))}, "pixel_values"),
        ({"frames": torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)}, "pixel_values"),
        ({"actions": torch.zeros(2, 3, 2)}, "actions"),
        ({"timestamps": torch.tensor([[0.0, 0.1, 0.1, 0.2, 0.3, 0.4]] * 2)}, "timestamps"),
        ({"timestamps": torch.zeros(2, 4)}, "timestamps"),
    ],
)
def test_bad_inputs(tiny_pipeline, kwargs, argument):
    frames = kwargs.pop("frames", random_frames())
    with pytest.raises(ValueError, match=argument):
        tiny_pipeline(frames, num_future_steps=kwargs.pop("num_future_steps", 3), **kwargs)


def test_save_load_reproduces_in_a_fresh_process(tiny_pipeline, tmp_path):
    pipe_dir = tmp_path / "pipeline"
    tiny_pipeline.save_pretrained(pipe_dir)
    for component, weights in (
        ("encoder", "model.safetensors"),
        ("evolver", "model.safetensors"),
        ("decoder", "diffusion_pytorch_model.safetensors"),
    ):
        assert (pipe_dir / component / weights).exists()
    assert not list(pipe_dir.rglob("*.bin"))

    reference = call(tiny_pipeline, seed=7, output_type="pt")
    loaded = VeltrixPipeline.from_pretrained(pipe_dir)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(call(loaded, seed=7, output_type="pt").frames, reference.frames)

    save_file({"frames": random_frames(), "expected": reference.frames.contiguous()}, tmp_path / "ref.safetensors")
    code = (
        "import sys, torch\n"
        "from safetensors.torch import load_file\n"
        "from modeling_veltrix import VeltrixPipeline\n"
        "pipe = VeltrixPipeline.from_pretrained(sys.argv[1])\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        "ref = load_file(sys.argv[2])\n"
        "out = pipe(ref['frames'], num_future_steps=3, num_inference_steps=2,\n"
        "           generator=torch.Generator().manual_seed(7), output_type='pt')\n"
        "assert torch.equal(out.frames, ref['expected']), (out.frames - ref['expected']).abs().max()\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(pipe_dir), str(tmp_path / "ref.safetensors")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_temporal_decoder_decodes_step_by_step(tiny_pipeline):
    decoder = randomize_(
        VeltrixDecoderModel(
            sample_size=IMAGE_SIZE,
            patch_size=4,
            hidden_size=32,
            num_layers=1,
            num_attention_heads=2,
            cross_attention_dim=8,
            max_context_units=16,
            temporal_context=True,
        ),
        std=0.05,
    ).eval()
    pipe = VeltrixPipeline(
        encoder=tiny_pipeline.encoder, evolver=tiny_pipeline.evolver, decoder=decoder, scheduler=tiny_pipeline.scheduler
    )
    pipe.set_progress_bar_config(disable=True)
    frames = random_frames()
    out = pipe(
        frames, num_future_steps=3, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="pt"
    )
    # By hand: the same noise, each step conditioned on the frame decoded before it.
    latents = pipe.prepare_latents(6, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(3))
    latents, previous, expected = latents.reshape(2, 3, 3, IMAGE_SIZE, IMAGE_SIZE), frames[:, -1], []
    with torch.no_grad():
        for step in range(3):
            previous = pipe.decode_units(out.units[:, step], 2, latents=latents[:, step], previous_frame=previous)
            expected.append((previous + 1) / 2)
    torch.testing.assert_close(out.frames, torch.stack(expected, dim=1))


def test_decode_units_and_scheduler_validation(tiny_pipeline):
    with pytest.raises(ValueError, match="units"):
        tiny_pipeline.decode_units(torch.zeros(2, 16, 5), 2)  # wrong width
    with pytest.raises(ValueError, match="num_inference_steps"):
        tiny_pipeline.decode_units(torch.zeros(2, 16, 8), 0)
    with pytest.raises(ValueError, match="scheduler"):
        VeltrixPipeline(
            encoder=tiny_pipeline.encoder,
            evolver=tiny_pipeline.evolver,
            decoder=tiny_pipeline.decoder,
            scheduler=DDPMScheduler(),
        )


def test_counterfactual_rollout_renders_both_branches_from_the_same_noise(tiny_pipeline):
    actions = torch.randn(2, 6, 2, generator=torch.Generator().manual_seed(3))
    edited = VeltrixIntervention(step=1, actions=torch.full((2, 2, 2), 3.0))
    out = call(tiny_pipeline, actions=actions, interventions=edited, output_type="pt")
    factual = call(tiny_pipeline, actions=actions, output_type="pt")
    torch.testing.assert_close(out.frames, factual.frames)
    torch.testing.assert_close(out.units, factual.units)
    assert out.counterfactual_frames.shape == out.frames.shape and out.divergence.shape == (2, 3)
    # The intervention acts from future step 1 on: step 0 is the same in both branches, frames included.
    torch.testing.assert_close(out.counterfactual_frames[:, 0], out.frames[:, 0])
    assert (out.counterfactual_frames[:, 1:] - out.frames[:, 1:]).abs().max() > 1e-4
    assert out.divergence[:, 0].abs().max() == 0 and out.divergence[:, 1:].min() > 0
    assert factual.counterfactual_frames is None and factual.divergence is None


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"mode": "dream"}, "mode"),
        ({"mode": "counterfactual"}, "interventions"),
        ({"interventions": VeltrixIntervention(step=5, state_delta=torch.zeros(2, 16, 8))}, "step"),
    ],
)
def test_bad_evolution_mode_arguments(tiny_pipeline, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        call(tiny_pipeline, output_type="latent", **kwargs)


def test_a_list_of_generators_draws_each_trajectorys_noise(tiny_pipeline):
    def generators():
        return [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]

    latents = tiny_pipeline.prepare_latents(6, torch.float32, torch.device("cpu"), generators())
    expected = torch.cat([torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g) for g in generators()])
    torch.testing.assert_close(latents, expected, rtol=0, atol=0)
    first = call(tiny_pipeline, generator=generators(), output_type="pt").frames
    assert torch.equal(first, call(tiny_pipeline, generator=generators(), output_type="pt").frames)


def test_the_pipeline_converts_float64_inputs_explicitly(tiny_pipeline):
    """The pipeline is the one place that converts (input_validation's dtype policy): float64 frames and actions go to
    the components' float32, timestamps to the float64 clock, and come back in the dtype they came in."""
    actions = torch.randn(2, 6, 2)
    timestamps = torch.cumsum(torch.rand(2, 6) * 0.1 + 0.05, dim=1)
    single = call(tiny_pipeline, actions=actions, timestamps=timestamps, output_type="latent")
    double = tiny_pipeline(
        random_frames().double(),
        actions=actions.double(),
        timestamps=timestamps.double(),
        num_future_steps=3,
        output_type="latent",
    )
    torch.testing.assert_close(double.units, single.units, rtol=0, atol=0)
    assert double.timestamps.dtype == torch.float64 and single.timestamps.dtype == torch.float32


def test_the_rollout_checks_each_new_state_once_per_evolver_step_and_nothing_per_euler_step(tiny_pipeline, monkeypatch):
    """The one output check of a call: each evolved state is checked for NaN / inf (`check_rollout_state`), once per
    future step, whatever the number of Euler steps."""
    checked, check = [], evolver_module.check_rollout_state
    monkeypatch.setattr(
        evolver_module,
        "check_rollout_state",
        lambda state, step: checked.append((tuple(state.shape), step)) or check(state, step),
    )
    for num_inference_steps in (1, 4):
        checked.clear()
        call(tiny_pipeline, num_future_steps=5, num_inference_steps=num_inference_steps, output_type="pt")
        assert checked == [((2, 16, 8), step) for step in range(5)]
