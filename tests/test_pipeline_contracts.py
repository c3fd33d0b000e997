"""`VeltrixPipeline` against the contracts of diffusers' `PipelineTesterMixin` (diffusers 0.42.1): every documented
call argument accepted, `latents` that reproduce the frames, one generator per trajectory, the loading options of
`DiffusionPipeline.from_pretrained` (`dtype` / `torch_dtype`, `variant`, `device_map`, `use_safetensors`) also through
`VeltrixWorldModel` and `pipeline("world-rollout")`, safetensors-only saving, and attention slicing that leaves the
outputs unchanged."""

import inspect
import re

import pytest
import torch
from conftest import IMAGE_SIZE, random_frames
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.utils.torch_utils import get_device
from hub_helpers import tiny_pipeline as hub_pipeline
from test_engram_pipeline import filled_engram, with_engram
from test_pipeline_sampling import sampling_pipeline
from transformers import AutoModel, pipeline

from modeling_veltrix import VeltrixPipeline
from modeling_veltrix.modeling_veltrix_decoder import VeltrixAttnProcessor
from modeling_veltrix.pipeline_veltrix import VeltrixWorldModel
from modeling_veltrix.weights_check import VeltrixRepositoryError

B, STEPS = 2, 3
ON_CPU_ONLY = get_device() == "cpu"


def call(pipe: VeltrixPipeline, frames: torch.Tensor | None = None, **kwargs):
    """A call on `random_frames(B)` (or `frames`): 3 future steps, 2 Euler steps, "pt" frames."""
    values = dict(num_future_steps=STEPS, num_inference_steps=2, output_type="pt")
    return pipe(random_frames(B) if frames is None else frames, **{**values, **kwargs})


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def folder(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "pipeline")
    return tmp_path / "pipeline"


def loaded(folder, **options) -> VeltrixPipeline:
    pipe = VeltrixPipeline.from_pretrained(folder, **options)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# The call signature


def test_every_call_argument_is_documented_and_every_documented_one_accepted(tiny_pipeline):
    parameters = [name for name in inspect.signature(VeltrixPipeline.__call__).parameters if name != "self"]
    arguments = VeltrixPipeline.__call__.__doc__.split("Args:")[1].split("Examples:")[0]
    undocumented = [name for name in parameters if not re.search(rf"(^ {{12}}|, ){name}(, | \()", arguments, re.M)]
    assert not undocumented
    latents = torch.randn(B, STEPS, 3, IMAGE_SIZE, IMAGE_SIZE, generator=seeded(0))
    out = call(
        tiny_pipeline,
        actions=torch.zeros(B, 3 + STEPS, 2),
        timestamps=torch.arange(3 + STEPS, dtype=torch.float64).expand(B, -1) * 0.1,
        generator=[seeded(0), seeded(1)],
        return_dict=True,
        output_modalities=("frames",),
        mode="conditional",
        use_engram=False,
        sample=False,
        num_samples=1,
        latents=latents,
    )
    assert out.frames.shape == (B, STEPS, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_latents_reproduce_the_frames_without_a_generator(tiny_pipeline):
    latents = torch.randn(B, STEPS, 3, IMAGE_SIZE, IMAGE_SIZE, generator=seeded(4))
    first = call(tiny_pipeline, latents=latents).frames
    assert torch.equal(first, call(tiny_pipeline, latents=latents).frames)
    # The noise the generator would have drawn, given as latents, gives the generator's frames.
    assert torch.equal(first, call(tiny_pipeline, generator=seeded(4)).frames)
    assert not torch.equal(first, call(tiny_pipeline, latents=latents.flip(0)).frames)
    # float64 latents are converted to the decoder's dtype, as every floating input.
    assert torch.equal(first, call(tiny_pipeline, latents=latents.double()).frames)


@pytest.mark.parametrize(
    "shape", [(B, STEPS + 1, 3, IMAGE_SIZE, IMAGE_SIZE), (B * STEPS, 3, IMAGE_SIZE, IMAGE_SIZE), (1, STEPS, 3, 16, 16)]
)
def test_latents_of_the_wrong_shape_raise_with_expected_and_got(tiny_pipeline, shape):
    expected = re.escape(f"({B}, {STEPS}, 3, {IMAGE_SIZE}, {IMAGE_SIZE}), got {shape}")
    with pytest.raises(ValueError, match=f"`latents` must have shape {expected}"):
        call(tiny_pipeline, latents=torch.zeros(shape))


def test_latents_hold_every_sampled_future():
    pipe, k = sampling_pipeline(), 2
    latents = torch.randn(B * k, STEPS, 3, IMAGE_SIZE, IMAGE_SIZE, generator=seeded(5))
    first = call(pipe, latents=latents, generator=seeded(6), sample=True, num_samples=k)
    again = call(pipe, latents=latents, generator=seeded(6), sample=True, num_samples=k)
    assert first.frames.shape == (B * k, STEPS, 3, IMAGE_SIZE, IMAGE_SIZE) and torch.equal(first.frames, again.frames)
    with pytest.raises(ValueError, match=re.escape(f"`latents` must have shape ({B * k}, {STEPS}, 3")):
        call(pipe, latents=latents[:B], sample=True, num_samples=k)


def test_a_list_of_generators_renders_each_trajectory_as_a_call_on_it_alone(tiny_pipeline):
    frames = random_frames(B)
    batched = call(tiny_pipeline, frames, generator=[seeded(11), seeded(12)])
    for b, seed in enumerate((11, 12)):
        alone = call(tiny_pipeline, frames[b : b + 1], generator=seeded(seed))
        torch.testing.assert_close(batched.frames[b], alone.frames[0], rtol=1e-5, atol=1e-5)
        # The evolver's batched scan rounds differently from a batch of one.
        torch.testing.assert_close(batched.units[b], alone.units[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("count", [0, 1, 3])
def test_a_list_of_generators_of_the_wrong_length_raises(tiny_pipeline, count):
    with pytest.raises(ValueError, match=f"`generator` must hold one torch.Generator per trajectory \\({B}\\)"):
        call(tiny_pipeline, generator=[seeded(i) for i in range(count)])


# Saving and loading


def test_a_variant_saves_under_its_name_and_loads_back_only_when_asked_for(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "fp16", variant="fp16")
    assert (tmp_path / "fp16" / "decoder" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert (tmp_path / "fp16" / "evolver" / "model.fp16.safetensors").is_file()
    reloaded = loaded(tmp_path / "fp16", variant="fp16")
    assert torch.equal(call(reloaded, generator=seeded(0)).frames, call(tiny_pipeline, generator=seeded(0)).frames)
    with pytest.raises(VeltrixRepositoryError, match=r"only those of the variant\(s\) \['fp16'\]: pass `variant=`"):
        loaded(tmp_path / "fp16")
    with pytest.raises(VeltrixRepositoryError, match="no safetensors weights of the variant 'bf16'"):
        loaded(tmp_path / "fp16", variant="bf16")
    with pytest.raises(ValueError, match="`variant` must be None or a non-empty name"):
        tiny_pipeline.save_pretrained(tmp_path / "bad", variant="")


@pytest.mark.parametrize("argument", ["dtype", "torch_dtype"])
def test_dtype_and_its_older_name_torch_dtype_cast_every_component(folder, argument):
    pipe = loaded(folder, **{argument: torch.bfloat16})
    assert {pipe.encoder.dtype, pipe.evolver.dtype, pipe.decoder.dtype} == {torch.bfloat16}
    out = call(pipe, generator=seeded(0))
    assert out.frames.dtype == torch.bfloat16 and torch.isfinite(out.frames.float()).all()


def test_a_dtype_per_component_with_a_default(folder):
    pipe = loaded(folder, dtype={"decoder": torch.float64, "default": torch.bfloat16})
    assert (pipe.encoder.dtype, pipe.evolver.dtype, pipe.decoder.dtype) == (
        torch.bfloat16,
        torch.bfloat16,
        torch.float64,
    )
    # Without a default, the components not named load in float32 (diffusers' rule).
    pipe = loaded(folder, dtype={"decoder": torch.bfloat16})
    assert (pipe.encoder.dtype, pipe.decoder.dtype) == (torch.float32, torch.bfloat16)
    assert call(pipe, generator=seeded(0)).frames.shape == (B, STEPS, 3, IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dtype": torch.float16, "torch_dtype": torch.float16}, "not both"),
        ({"dtype": torch.int8}, "`dtype` must be None, a floating torch.dtype"),
        ({"torch_dtype": "float16"}, "`torch_dtype` must be None, a floating torch.dtype"),
        ({"dtype": {}}, "non-empty dict"),
        ({"dtype": {"unet": torch.float16}}, r"names components \['unet'\]"),
        ({"use_safetensors": False}, "`use_safetensors` must be None or True"),
        ({"device_map": "auto"}, "`device_map` must be None or one of"),
        ({"device_map": {"": "cpu"}}, "`device_map` must be None or one of"),
        ({"variant": 16}, "`variant` must be None"),
    ],
)
def test_bad_loading_options_raise_naming_the_argument(folder, options, message):
    with pytest.raises(ValueError, match=message):
        loaded(folder, **options)


def test_a_dtype_keeps_the_engram_memory_in_its_evolvers_dtype(tmp_path):
    plain = hub_pipeline()
    with_engram(plain, filled_engram(plain)).save_pretrained(tmp_path / "remembering")
    pipe = loaded(tmp_path / "remembering", dtype=torch.bfloat16)
    assert pipe.engram.dtype == pipe.evolver.dtype == torch.bfloat16
    assert call(pipe, generator=seeded(0), use_engram=True).memory_hits.shape == (B, STEPS)
    with pytest.raises(ValueError, match=r"`dtype` must give the engram its evolver's dtype \(torch.bfloat16\)"):
        loaded(tmp_path / "remembering", dtype={"evolver": torch.bfloat16, "encoder": torch.bfloat16})


def test_use_safetensors_true_loads(folder, tiny_pipeline):
    pipe = loaded(folder, use_safetensors=True)
    assert torch.equal(call(pipe, generator=seeded(1)).frames, call(tiny_pipeline, generator=seeded(1)).frames)


@pytest.mark.parametrize("device_map", ["cpu", "balanced"])
def test_device_map_places_the_pipeline_as_diffusers_does(folder, tiny_pipeline, device_map):
    pipe = loaded(folder, device_map=device_map)
    if ON_CPU_ONLY:
        # diffusers: "cpu" is recorded as such, "balanced" without an accelerator falls back to no map at all.
        assert pipe.hf_device_map == ("cpu" if device_map == "cpu" else None)
        assert pipe.device.type == "cpu"
        assert torch.equal(call(pipe, generator=seeded(2)).frames, call(tiny_pipeline, generator=seeded(2)).frames)
    else:
        expected = "cpu" if device_map == "cpu" else get_device()
        assert pipe.device.type == expected


def test_save_pretrained_refuses_pickled_weights_and_writes_nothing(tiny_pipeline, tmp_path):
    with pytest.raises(ValueError, match="`safe_serialization` must be True: Veltrix repositories hold safetensors"):
        tiny_pipeline.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert not (tmp_path / "pickled").exists()


def test_the_world_model_and_the_world_rollout_task_take_the_loading_options(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "fp16", variant="fp16")
    model = VeltrixWorldModel.from_pretrained(tmp_path / "fp16", dtype=torch.bfloat16, variant="fp16", device_map="cpu")
    assert model.pipeline.decoder.dtype == torch.bfloat16 and model.hf_device_map == {"": "cpu"}
    model = VeltrixWorldModel.from_pretrained(tmp_path / "fp16", torch_dtype="auto", variant="fp16")
    assert model.pipeline.decoder.dtype == torch.float32
    rollout = pipeline(
        "world-rollout",
        model=str(tmp_path / "fp16"),
        device_map="auto",
        dtype=torch.bfloat16,
        model_kwargs={"variant": "fp16", "use_safetensors": True},
    )
    assert rollout.model.pipeline.evolver.dtype == torch.bfloat16 and rollout.device.type == get_device()
    result = rollout(random_frames(1)[0], num_future_steps=2, num_inference_steps=1, seed=0, output_type="pt")
    assert result["frames"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with pytest.raises(ValueError, match="`use_safetensors` must be None or True"):
        pipeline("world-rollout", model=str(tmp_path / "fp16"), model_kwargs={"use_safetensors": False})


def test_the_world_model_loads_from_a_subfolder_and_refuses_proxies(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "repo" / "world")
    for model in (
        VeltrixWorldModel.from_pretrained(tmp_path / "repo", subfolder="world"),
        AutoModel.from_pretrained(tmp_path / "repo", subfolder="world/"),
    ):
        assert isinstance(model, VeltrixWorldModel)
        for name, tensor in tiny_pipeline.evolver.state_dict().items():
            assert torch.equal(model.pipeline.evolver.state_dict()[name], tensor), name
    for subfolder in ("../repo", str(tmp_path / "repo" / "world")):
        with pytest.raises(ValueError, match="`subfolder` must be a relative path inside the repository"):
            VeltrixWorldModel.from_pretrained(tmp_path / "repo", subfolder=subfolder)
    with pytest.raises(VeltrixRepositoryError, match="has no folder 'elsewhere' \\(the `subfolder` argument\\)"):
        VeltrixWorldModel.from_pretrained(tmp_path / "repo", subfolder="elsewhere")
    with pytest.raises(ValueError, match="`proxies` must be None"):
        VeltrixWorldModel.from_pretrained(tmp_path / "repo" / "world", proxies={"https": "http://proxy:3128"})


# Attention processors


def test_attention_slicing_and_processor_swaps_leave_the_frames_unchanged(tiny_pipeline):
    reference = call(tiny_pipeline, generator=seeded(3)).frames
    processors = tiny_pipeline.decoder.attn_processors
    assert len(processors) == 2 * tiny_pipeline.decoder.config.num_layers
    tiny_pipeline.enable_attention_slicing()
    sliced = tiny_pipeline.decoder.attn_processors.values()
    assert all(isinstance(p, VeltrixAttnProcessor) and p.slice_size == 1 for p in sliced)  # "auto": half of 2 heads
    torch.testing.assert_close(call(tiny_pipeline, generator=seeded(3)).frames, reference, rtol=0, atol=1e-5)
    tiny_pipeline.enable_attention_slicing("max")
    torch.testing.assert_close(call(tiny_pipeline, generator=seeded(3)).frames, reference, rtol=0, atol=1e-5)
    tiny_pipeline.decoder.set_default_attn_processor()
    torch.testing.assert_close(call(tiny_pipeline, generator=seeded(3)).frames, reference, rtol=0, atol=1e-5)
    tiny_pipeline.disable_attention_slicing()
    assert all(isinstance(p, AttnProcessor2_0) for p in tiny_pipeline.decoder.attn_processors.values())
    assert torch.equal(call(tiny_pipeline, generator=seeded(3)).frames, reference)
