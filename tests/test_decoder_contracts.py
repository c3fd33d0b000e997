"""`VeltrixDecoderModel` against the contracts of diffusers' `ModelTesterMixin` (diffusers 0.42.1): save / load
(safetensors, `variant`, `torch_dtype` / `dtype`), determinism, batch ≡ single, dict ≡ tuple, gradient checkpointing
equivalence, initialisation, half-precision construction, and diffusers' attention-processor API (`attn_processors`,
`set_attn_processor`, `set_default_attn_processor`, `set_attention_slice`) with unchanged outputs and weights."""

import copy

import pytest
import torch
from conftest import IMAGE_SIZE, UNIT_DIM, randomize_, tiny_decoder
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, SlicedAttnProcessor

from modeling_veltrix import VeltrixDecoderModel
from modeling_veltrix.modeling_veltrix_decoder import VeltrixAttnProcessor

BATCH, UNITS = 3, 5


def inputs(batch: int = BATCH, dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, torch.Tensor]:
    """`sample` (B, 3, 16, 16), per-example `timestep` (B,) and `encoder_hidden_states` (B, 5, UNIT_DIM)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(dtype),
        "timestep": torch.linspace(10.0, 990.0, batch).to(dtype),
        "encoder_hidden_states": torch.randn(batch, UNITS, UNIT_DIM, generator=generator).to(dtype),
    }


@pytest.fixture
def decoder() -> VeltrixDecoderModel:
    """Two layers of four heads, perturbed so that the zero-initialised adaLN and head do not hide differences."""
    torch.manual_seed(0)
    return randomize_(tiny_decoder(num_layers=2, num_attention_heads=4), std=0.1).eval()


def velocity(model: VeltrixDecoderModel, **overrides) -> torch.Tensor:
    with torch.no_grad():
        return model(**{**inputs(), **overrides}).sample


def half_precision_error(half: VeltrixDecoderModel, full: VeltrixDecoderModel) -> float:
    """‖v_half − v_full‖ / ‖v_full‖ on the same inputs (rounded to `half`'s dtype, then given to the float32 `full`):
    what half precision computing costs, relative to the values."""
    rounded = inputs(dtype=half.dtype)
    approximate = velocity(half, **rounded).float()
    reference = velocity(full, **{name: value.float() for name, value in rounded.items()})
    return float((approximate - reference).norm() / reference.norm())


# Save and load


def test_save_and_load_round_trip_exactly(decoder, tmp_path):
    decoder.save_pretrained(tmp_path / "decoder")
    assert (tmp_path / "decoder" / "diffusion_pytorch_model.safetensors").is_file()
    reloaded = VeltrixDecoderModel.from_pretrained(tmp_path / "decoder").eval()
    assert torch.equal(velocity(reloaded), velocity(decoder))


def test_a_variant_loads_only_when_asked_for(decoder, tmp_path):
    decoder.save_pretrained(tmp_path / "decoder", variant="fp16")
    assert (tmp_path / "decoder" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    reloaded = VeltrixDecoderModel.from_pretrained(tmp_path / "decoder", variant="fp16").eval()
    assert torch.equal(velocity(reloaded), velocity(decoder))
    # diffusers raises an OSError for a folder without the weights asked for; so does the checked loader.
    with pytest.raises(OSError, match=r"only those of the variant\(s\) \['fp16'\]"):
        VeltrixDecoderModel.from_pretrained(tmp_path / "decoder")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_save_loads_in_its_dtype(decoder, tmp_path, dtype):
    full = copy.deepcopy(decoder)
    half = decoder.to(dtype)
    half.save_pretrained(tmp_path / "decoder")
    for argument in ("torch_dtype", "dtype"):
        reloaded = VeltrixDecoderModel.from_pretrained(tmp_path / "decoder", **{argument: dtype})
        assert reloaded.dtype == dtype
        saved, loaded = half.state_dict(), reloaded.state_dict()
        assert saved.keys() == loaded.keys() and all(torch.equal(saved[name], loaded[name]) for name in saved)
        # diffusers' loader keeps the derived sin-cos position buffer in float32 where `.to()` casts it: the two
        # round differently, both close to the float32 model.
        assert half_precision_error(reloaded.eval(), full) < 2e-2


def test_a_float32_save_loads_cast_to_torch_dtype(decoder, tmp_path):
    decoder.save_pretrained(tmp_path / "decoder")
    reloaded = VeltrixDecoderModel.from_pretrained(tmp_path / "decoder", torch_dtype=torch.bfloat16)
    assert reloaded.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in reloaded.parameters())


def test_sharded_checkpoints_load_back(decoder, tmp_path):
    decoder.save_pretrained(tmp_path / "decoder", max_shard_size="20KB")
    shards = sorted(path.name for path in (tmp_path / "decoder").glob("*.safetensors"))
    assert len(shards) > 1 and not any(path.suffix == ".bin" for path in (tmp_path / "decoder").iterdir())
    reloaded = VeltrixDecoderModel.from_pretrained(tmp_path / "decoder").eval()
    assert torch.equal(velocity(reloaded), velocity(decoder))


# Forward contracts


def test_forward_is_deterministic(decoder):
    assert torch.equal(velocity(decoder), velocity(decoder))


def test_a_batch_equals_each_example_alone(decoder):
    batched = velocity(decoder)
    for i in range(BATCH):
        single = {name: value[i : i + 1] for name, value in inputs().items()}
        torch.testing.assert_close(velocity(decoder, **single)[0], batched[i], rtol=1e-5, atol=1e-5)


def test_return_dict_false_gives_the_same_tensor_as_a_tuple(decoder):
    with torch.no_grad():
        as_tuple = decoder(**inputs(), return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    assert torch.equal(as_tuple[0], velocity(decoder))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(decoder):
    decoder.train()
    assert decoder._supports_gradient_checkpointing and not decoder.is_gradient_checkpointing

    def loss_and_gradients() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        decoder.zero_grad()
        loss = decoder(**inputs()).sample.pow(2).mean()
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in decoder.named_parameters() if p.grad is not None}

    plain_loss, plain_grads = loss_and_gradients()
    decoder.enable_gradient_checkpointing()
    assert decoder.is_gradient_checkpointing and decoder.gradient_checkpointing
    checkpointed_loss, checkpointed_grads = loss_and_gradients()
    torch.testing.assert_close(checkpointed_loss, plain_loss, rtol=0, atol=1e-6)
    assert plain_grads.keys() == checkpointed_grads.keys() and len(plain_grads) == len(list(decoder.parameters()))
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    decoder.disable_gradient_checkpointing()
    assert not decoder.is_gradient_checkpointing


def test_initialisation_is_the_identity_dit_with_a_zero_velocity():
    torch.manual_seed(0)
    fresh = tiny_decoder(num_layers=2)
    with torch.no_grad():
        assert torch.equal(fresh(**inputs()).sample, torch.zeros(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE))
    for block in fresh.blocks:
        assert not block.modulation.weight.any() and not block.modulation.bias.any()
    assert all(torch.isfinite(p).all() for p in fresh.parameters())
    torch.manual_seed(0)
    again = tiny_decoder(num_layers=2)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), again.state_dict().values(), strict=True))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_construction_and_forward(decoder, dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        built = VeltrixDecoderModel.from_config(decoder.config)
    finally:
        torch.set_default_dtype(previous)
    assert built.dtype == dtype and all(torch.isfinite(p.float()).all() for p in built.parameters())
    built.load_state_dict(decoder.state_dict())
    half = velocity(built.eval(), **inputs(dtype=dtype))
    assert half.dtype == dtype and torch.isfinite(half.float()).all()
    assert half_precision_error(built, decoder) < 2e-2


# Attention processors


def test_attention_processors_are_exposed_per_layer(decoder):
    processors = decoder.attn_processors
    expected = {f"blocks.{i}.attn{j}.processor" for i in range(2) for j in (1, 2)}
    assert set(processors) == expected
    assert all(isinstance(p, AttnProcessor2_0) for p in processors.values())


def test_every_processor_gives_the_same_velocity_and_keeps_the_weights(decoder):
    reference, names = velocity(decoder), list(decoder.state_dict())
    decoder.set_default_attn_processor()
    assert all(type(p) is VeltrixAttnProcessor for p in decoder.attn_processors.values())
    unfused = velocity(decoder)
    torch.testing.assert_close(unfused, reference, rtol=1e-5, atol=1e-5)
    for slice_size, rows in (("auto", 2), ("max", 1), (3, 3), (4, 4)):
        decoder.set_attention_slice(slice_size)
        assert {p.slice_size for p in decoder.attn_processors.values()} == {rows}
        assert torch.equal(velocity(decoder), unfused)
    per_layer = {name: VeltrixAttnProcessor(slice_size=2) for name in decoder.attn_processors}
    decoder.set_attn_processor(per_layer)
    assert torch.equal(velocity(decoder), unfused)
    decoder.set_attention_slice(None)
    assert all(isinstance(p, AttnProcessor2_0) for p in decoder.attn_processors.values())
    assert torch.equal(velocity(decoder), reference)
    assert list(decoder.state_dict()) == names


@pytest.mark.parametrize("processor", [AttnProcessor(), SlicedAttnProcessor(1)])
def test_processors_that_skip_the_qk_norm_are_refused(decoder, processor):
    with pytest.raises(ValueError, match=f"`processor` must apply .*got {type(processor).__name__}"):
        decoder.set_attn_processor(processor)
    assert all(isinstance(p, AttnProcessor2_0) for p in decoder.attn_processors.values())


def test_without_qk_norm_diffusers_reference_processors_agree():
    torch.manual_seed(0)
    plain = randomize_(tiny_decoder(num_layers=2, num_attention_heads=4, qk_norm=None), std=0.1).eval()
    reference = velocity(plain)
    for processor in (AttnProcessor(), SlicedAttnProcessor(2), VeltrixAttnProcessor(1)):
        plain.set_attn_processor(processor)
        torch.testing.assert_close(velocity(plain), reference, rtol=1e-5, atol=1e-5)


def test_xformers_attention_is_refused_with_the_qk_norm(decoder):
    with pytest.raises(ValueError, match="xFormers attention skips this decoder's per-head query/key normalisation"):
        decoder.enable_xformers_memory_efficient_attention()
    assert all(isinstance(p, AttnProcessor2_0) for p in decoder.attn_processors.values())


@pytest.mark.parametrize("slice_size", [0, 5, "half", 1.5, True])
def test_bad_slice_sizes_raise(decoder, slice_size):
    with pytest.raises(ValueError, match="`slice_size` must be"):
        decoder.set_attention_slice(slice_size)
