"""The transformers common-tester contracts of `VeltrixEncoderModel`, frames alone and fused (frames + text + audio):
outputs (tuple = dict), determinism, batch = rows, hidden states, initialisation of every tensor (also on the meta
device and for a partial checkpoint), save / load (safetensors, an fp16 variant, bf16 loading), gradient
checkpointing and half precision."""

import copy
import warnings

import pytest
import torch
from conftest import fused_config, fused_inputs, random_frames, randomize_, tiny_encoder_config
from safetensors.torch import load_file, save_file
from transformers.modeling_layers import GradientCheckpointingLayer

from modeling_veltrix import VeltrixEncoderModel
from modeling_veltrix.audio_units import init_quantizer_buffers_
from modeling_veltrix.orthogonal_fusion import VeltrixOrthogonalFusion, VeltrixOrthogonalMap

CONFIGS = {
    "frames": tiny_encoder_config,
    "resampler": lambda **overrides: tiny_encoder_config(unit_layout="resampler", **overrides),
    "fused": fused_config,
}
# The codebooks of the audio quantizer: random buffers (all other buffers are functions of the config).
RANDOM_BUFFERS = ("_codebook.embed", "_codebook.embed_avg")
WAVEFORM = torch.sin(torch.arange(320) * 0.3) * 0.5  # one step's audio window (`fused_config().audio_window`)


def build(name: str, seed: int = 0, **overrides) -> VeltrixEncoderModel:
    """A tiny encoder with every weight matrix perturbed (so zero-initialised heads and the identity `Q` do not hide
    differences), in eval mode."""
    torch.manual_seed(seed)
    return randomize_(VeltrixEncoderModel(CONFIGS[name](**overrides)), seed=seed).eval()


def inputs_for(name: str, batch: int = 2, steps: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Frames and actions, plus captions and audio codes for the fused config."""
    inputs = (
        fused_inputs(batch, steps, seed) if name == "fused" else {"pixel_values": random_frames(batch, steps, seed)}
    )
    generator = torch.Generator().manual_seed(seed)
    return {**inputs, "actions": torch.randn(batch, steps, 2, generator=generator)}


def assert_same(first: object, second: object, atol: float = 0.0) -> None:
    """Equal outputs: tensors (to `atol`), and dicts, tuples and other values holding them."""
    if isinstance(first, torch.Tensor):
        assert isinstance(second, torch.Tensor) and first.shape == second.shape and first.dtype == second.dtype
        torch.testing.assert_close(first, second, atol=atol, rtol=0)
    elif isinstance(first, dict):
        assert isinstance(second, dict) and list(first) == list(second)
        for key in first:
            assert_same(first[key], second[key], atol)
    elif isinstance(first, (tuple, list)):
        assert type(first) is type(second) and len(first) == len(second)
        for a, b in zip(first, second, strict=True):
            assert_same(a, b, atol)
    else:
        assert first == second


def every_tensor(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers, non-persistent ones included, by name."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


# Outputs.


@pytest.mark.parametrize("return_loss", [False, True])
@pytest.mark.parametrize("name", ["frames", "fused"])
def test_tuple_is_the_dict_to_tuple(name, return_loss):
    model, inputs = build(name), inputs_for(name)
    with torch.no_grad():
        as_dict = model(**inputs, return_loss=return_loss, output_hidden_states=True)
        as_tuple = model(**inputs, return_loss=return_loss, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert_same(as_tuple, as_dict.to_tuple())
    # `outputs[0]` is the loss when it is computed (transformers' convention), else the units.
    assert torch.equal(as_tuple[0], as_dict.loss if return_loss else as_dict.units)
    model.config.return_dict = False  # the config's default, as in transformers
    with torch.no_grad():
        assert_same(model(**inputs, return_loss=return_loss), as_dict.to_tuple()[:-1])  # `hidden_states` is last


@pytest.mark.parametrize("name", ["frames", "resampler", "fused"])
def test_same_input_twice_gives_the_same_output(name):
    model, inputs = build(name), inputs_for(name)
    with torch.no_grad():
        first = model(**inputs, return_loss=True, output_hidden_states=True)
        second = model(**inputs, return_loss=True, output_hidden_states=True)
    assert_same(first.to_tuple(), second.to_tuple())


@pytest.mark.parametrize("name", ["frames", "resampler", "fused"])
def test_each_row_alone_equals_its_batched_row(name):
    model, inputs = build(name), inputs_for(name, batch=3)
    with torch.no_grad():
        batched = model(**inputs, return_loss=True, output_hidden_states=True)
        for row in range(3):
            alone = {key: value[row : row + 1] for key, value in inputs.items()}
            single = model(**alone, return_loss=True, output_hidden_states=True)
            for field in ("units", "actions", "reconstruction", "unit_mask", "audio_codes"):
                if getattr(batched, field) is not None:
                    assert_same(getattr(single, field), getattr(batched, field)[row : row + 1], atol=1e-5)
            assert_same(single.hidden_states, tuple(state[row : row + 1] for state in batched.hidden_states), atol=1e-5)


@pytest.mark.parametrize("name", ["frames", "fused"])
def test_hidden_states_are_the_embedding_and_each_mixing_layer(name):
    model, inputs = build(name, num_mixing_layers=2), inputs_for(name)
    frames = inputs["pixel_values"]
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        embedded = model.patch_embedding(frames.flatten(0, 1)).permute(0, 2, 3, 1) + model.position_embedding
    assert len(out.hidden_states) == 3  # the embedding + 2 mixing layers
    assert all(state.shape == (2, 3, 4, 4, 16) for state in out.hidden_states)  # (B, T, G, G, hidden_size)
    assert_same(out.hidden_states[0], embedded.reshape(2, 3, 4, 4, 16))
    for before, after in zip(out.hidden_states, out.hidden_states[1:], strict=False):
        assert (after - before).abs().max() > 1e-3  # each layer changes the features
    assert model(**inputs).hidden_states is None
    model.config.output_hidden_states = True  # the config's default, overridden by the argument
    assert len(model(**inputs).hidden_states) == 3
    assert model(**inputs, output_hidden_states=False).hidden_states is None


@pytest.mark.parametrize(
    ("argument", "value"), [("return_loss", None), ("output_hidden_states", "yes"), ("return_dict", 1)]
)
def test_output_flags_must_be_bools(argument, value):
    model = build("frames")
    with pytest.raises(ValueError, match=f"`{argument}` must be a bool, got {value!r}"):
        model(random_frames(), **{argument: value})


@pytest.mark.parametrize("name", ["frames", "fused"])
def test_input_embeddings_are_the_patch_embedding(name):
    model = build(name)
    assert model.get_input_embeddings() is model.patch_embedding  # no token embeddings, as transformers' ViT


# Initialisation.


@pytest.mark.parametrize("name", ["frames", "resampler", "fused"])
def test_init_weights_sets_every_tensor_of_a_meta_built_model(name):
    config = CONFIGS[name]()
    torch.manual_seed(0)
    built = VeltrixEncoderModel(config)
    with torch.device("meta"):
        model = VeltrixEncoderModel(config)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in every_tensor(model).values():  # what uninitialised memory may hold
            tensor.fill_(float("nan") if tensor.is_floating_point() else 0)
    model.init_weights()
    tensors = every_tensor(model)
    assert sorted(tensors) == sorted(every_tensor(built))
    assert [key for key, tensor in tensors.items() if tensor.is_floating_point() and not tensor.isfinite().all()] == []
    # Buffers are functions of the config, except the random codebooks: the same as in a model built directly.
    reference = dict(built.named_buffers())
    for key, buffer in model.named_buffers():
        if not key.endswith(RANDOM_BUFFERS):
            assert buffer.dtype == reference[key].dtype and torch.equal(buffer, reference[key]), key
    for key, buffer in model.named_buffers():
        if key.endswith("_codebook.embed"):
            assert torch.equal(tensors[key + "_avg"], buffer) and buffer.abs().max() > 0
    if name == "fused":
        assert torch.equal(model.fusion.rotation_matrix, torch.eye(16))  # Q starts at the identity
        weight = model.audio_embedding.weight  # orthonormal rows
        torch.testing.assert_close(weight @ weight.T, torch.eye(weight.shape[0]), atol=1e-5, rtol=0)
    with torch.no_grad():
        assert model.eval()(**inputs_for(name)).units.isfinite().all()


def test_from_pretrained_initialises_what_a_partial_checkpoint_lacks(tmp_path):
    model = build("fused")
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    dropped = [
        "fusion.rotation.parametrizations.weight.original",
        "fusion.rotation.parametrizations.weight.0.base",
        "audio_tokenizer.filterbank",
        "audio_embedding.weight",
        "audio_embedding.bias",
        "audio_tokenizer.quantizer.layers.0._codebook.cluster_size",
        "audio_tokenizer.quantizer.layers.1._codebook.initted",
    ]
    save_file({key: value for key, value in saved.items() if key not in dropped}, tmp_path / "model.safetensors")
    loaded = VeltrixEncoderModel.from_pretrained(tmp_path, strict_weights=False)
    tensors = every_tensor(loaded)
    assert [key for key, tensor in tensors.items() if tensor.is_floating_point() and not tensor.isfinite().all()] == []
    for key, value in saved.items():
        if key not in dropped:
            assert torch.equal(tensors[key], value), key  # loaded tensors are not re-initialised
    fresh = dict(VeltrixEncoderModel(fused_config()).named_buffers())
    for key in ("audio_tokenizer.filterbank", "audio_tokenizer.quantizer.beam_score_weights"):
        assert torch.equal(tensors[key], fresh[key]), key
    assert torch.equal(loaded.fusion.rotation_matrix, torch.eye(16))
    assert bool(tensors["audio_tokenizer.quantizer.layers.1._codebook.initted"])
    assert torch.equal(tensors["audio_tokenizer.quantizer.layers.0._codebook.cluster_size"], torch.ones(1, 16))
    weight = loaded.audio_embedding.weight
    torch.testing.assert_close(weight @ weight.T, torch.eye(weight.shape[0]), atol=1e-5, rtol=0)


# Save and load.


@pytest.mark.parametrize("name", ["frames", "resampler", "fused"])
def test_save_load_round_trip_restores_every_tensor(name, tmp_path):
    model, inputs = build(name), inputs_for(name)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "pytorch_model.bin").exists()
    loaded = VeltrixEncoderModel.from_pretrained(tmp_path).eval()
    expected = every_tensor(model)  # the non-persistent buffers too: `from_pretrained` leaves them to `_init_weights`
    for key, tensor in every_tensor(loaded).items():
        assert tensor.dtype == expected[key].dtype and torch.equal(tensor, expected[key]), key
    with torch.no_grad():
        assert_same(
            loaded(**inputs, return_loss=True, output_hidden_states=True).to_tuple(),
            model(**inputs, return_loss=True, output_hidden_states=True).to_tuple(),
        )
        if name == "fused":  # the audio tokenizer's loss starts from the quantizer's non-persistent `zero`
            waveform = WAVEFORM * torch.linspace(0.2, 1.0, 6).reshape(2, 3, 1)
            loss = model(inputs["pixel_values"], audio_values=waveform, return_loss=True).loss_terms["audio"]
            loaded_loss = loaded(inputs["pixel_values"], audio_values=waveform, return_loss=True).loss_terms["audio"]
            assert torch.equal(loaded_loss, loss)


@pytest.mark.parametrize("name", ["frames", "fused"])
def test_fp16_variant_round_trip(name, tmp_path):
    half = build(name).to(torch.float16)
    half.save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "model.fp16.safetensors").is_file() and not (tmp_path / "model.safetensors").exists()
    loaded = VeltrixEncoderModel.from_pretrained(tmp_path, variant="fp16", dtype=torch.float16).eval()
    assert loaded.dtype == torch.float16
    expected = every_tensor(half)
    for key, tensor in every_tensor(loaded).items():
        assert tensor.dtype == expected[key].dtype and torch.equal(tensor, expected[key]), key


@pytest.mark.parametrize("name", ["frames", "fused"])
def test_from_pretrained_in_bfloat16(name, tmp_path):
    model, inputs = build(name), inputs_for(name)
    model.save_pretrained(tmp_path)
    loaded = VeltrixEncoderModel.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert {parameter.dtype for parameter in loaded.parameters()} == {torch.bfloat16}
    expected = every_tensor(model)
    for key, tensor in every_tensor(loaded).items():
        assert torch.equal(tensor, expected[key].to(tensor.dtype)), key
    half_inputs = {key: value.bfloat16() if value.is_floating_point() else value for key, value in inputs.items()}
    with torch.no_grad():
        units = loaded(**half_inputs).units
        reference = model(**inputs).units
    assert units.dtype == torch.bfloat16
    assert (units.float() - reference).abs().max() < 0.1


# Gradient checkpointing.


@pytest.mark.parametrize("enable", ["gradient_checkpointing_enable", "activation_checkpointing_enable"])
@pytest.mark.parametrize("name", ["frames", "resampler", "fused"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(name, enable):
    model, inputs = build(name).train(), inputs_for(name)
    checkpointed = copy.deepcopy(model)
    assert checkpointed.supports_gradient_checkpointing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 deprecates the `gradient_checkpointing_` names
        getattr(checkpointed, enable)()
    layers = [module for module in checkpointed.modules() if isinstance(module, GradientCheckpointingLayer)]
    assert checkpointed.is_activation_checkpointing and layers and all(layer.gradient_checkpointing for layer in layers)
    calls = []
    for layer in layers:  # count the layers that really run through the checkpoint function
        function = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *args, _function=function, **kwargs: (
            calls.append(1),
            _function(*args, **kwargs),
        )[1]
    losses = []
    for encoder in (model, checkpointed):
        loss = encoder(**inputs, return_loss=True).loss
        loss.backward()
        losses.append(loss.detach())
    assert len(calls) == len(layers)  # every mixing block and cross-attention, once
    torch.testing.assert_close(losses[1], losses[0], atol=0, rtol=0)
    gradients = dict(checkpointed.named_parameters())
    for key, parameter in model.named_parameters():
        if parameter.grad is None:
            assert gradients[key].grad is None, key
        else:
            torch.testing.assert_close(gradients[key].grad, parameter.grad, atol=1e-6, rtol=1e-5, msg=key)
    assert model.mixing_blocks[0].mlp[0].weight.grad.abs().max() > 0


# Half precision.


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["frames", "resampler", "fused"])
def test_builds_in_half_precision(name, dtype):
    model = VeltrixEncoderModel._from_config(CONFIGS[name](), dtype=dtype)
    assert {parameter.dtype for parameter in model.parameters()} == {dtype}
    if name == "fused":
        weight = model.audio_embedding.weight.float()  # orthonormal rows, to the precision of `dtype`
        torch.testing.assert_close(weight @ weight.T, torch.eye(weight.shape[0]), atol=2e-2, rtol=0)
        assert model.fusion.rotation_matrix.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["frames", "resampler", "fused"])
def test_half_precision_forward_matches_float32(name, dtype):
    model, inputs = build(name), inputs_for(name)
    half = copy.deepcopy(model).to(dtype)
    half_inputs = {key: value.to(dtype) if value.is_floating_point() else value for key, value in inputs.items()}
    with torch.no_grad():
        out = half(**half_inputs, return_loss=True)
        reference = model(**inputs, return_loss=True)
    assert out.units.dtype == dtype and out.units.isfinite().all() and out.loss.isfinite()
    assert (out.units.float() - reference.units).abs().max() < 0.1
    if name == "fused":
        q = half.fusion.rotation_matrix.float()  # a perturbed rotation, computed in float32 and rounded
        assert (q - torch.eye(16)).abs().max() > 0.1
        torch.testing.assert_close(q.T @ q, torch.eye(16), atol=3e-2, rtol=0)
        with torch.no_grad():
            audio = half(half_inputs["pixel_values"], audio_values=(WAVEFORM.expand(2, 3, 320)).to(dtype))
        assert audio.audio_codes.shape == (2, 3, 2)


@pytest.mark.parametrize("orthogonal_map", ["cayley", "matrix_exp"])
def test_rotation_trains_in_bfloat16(orthogonal_map):
    fusion = VeltrixOrthogonalFusion({"frames": 3, "audio": 2}, orthogonal_map=orthogonal_map).to(torch.bfloat16)
    target = torch.randn(5, 5, generator=torch.Generator().manual_seed(0))
    (fusion.rotation_matrix.float() * target).sum().backward()  # the Cayley map's solve has no bfloat16 CPU kernel
    assert fusion.rotation.parametrizations.weight.original.grad.abs().max() > 0
    with pytest.raises(ValueError, match="`rotation` must have shape"):
        fusion.rotation.weight = torch.eye(4, dtype=torch.bfloat16)


def test_init_helpers_reject_what_they_do_not_handle():
    with pytest.raises(ValueError, match="`module` must be one of .*got Linear"):
        init_quantizer_buffers_(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="`orthogonal_map` must be one of .*got 'householder'"):
        VeltrixOrthogonalMap(4, "householder")
