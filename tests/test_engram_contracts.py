"""VeltrixEngramModel keeps transformers' common-model contracts that apply to a memory without a `forward`: every
parameter and buffer initialised by `_init_weights` (also on the meta device; the hash constants equal a normal
build's), safetensors save/load (float32, an fp16 variant, bfloat16 loading) restoring tables and hashing,
determinism, batch ≡ single rows, its recall output's dict ≡ tuple, bfloat16 construction and use with a bfloat16
evolver, and no token embeddings."""

import pytest
import torch
from conftest import randomize_, tiny_evolver_config

from modeling_veltrix import VeltrixEvolverModel
from modeling_veltrix.configuration_veltrix import VeltrixEngramConfig
from modeling_veltrix.modeling_veltrix_engram import VeltrixEngramModel, VeltrixEngramZeroInitLinear

UNITS, DIM = 16, 8
SENTINEL = 1e38
INT_SENTINEL = 123_456_789


def engram_config(**overrides) -> VeltrixEngramConfig:
    values = dict(
        unit_dim=DIM,
        num_units_per_step=UNITS,
        fsq_levels=[5, 4, 3],
        table_size=37,
        parametric_table_size=17,
        hidden_size=16,
        embedding_dim=4,
        injection_layers=[0, 1],
    )
    return VeltrixEngramConfig(**{**values, **overrides})


def make_engram(dtype: torch.dtype = torch.float32) -> VeltrixEngramModel:
    """A memory with nothing left at its initial value: filled tables, a standardisation, random projections and
    non-zero zero-initialised layers (biases included)."""
    torch.manual_seed(0)
    engram = randomize_(VeltrixEngramModel(engram_config()))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in engram.parameters():
            if parameter.dim() == 1:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
        engram.state_mean.copy_(torch.randn(engram.state_mean.shape, generator=generator) * 0.1)
        engram.state_scale.copy_(torch.rand(engram.state_scale.shape, generator=generator) + 0.5)
        engram.table_counts.copy_(torch.randint(0, 9, engram.table_counts.shape, generator=generator))
        engram.table_states.copy_(torch.randn(engram.table_states.shape, generator=generator))
        engram.table_step_sizes.copy_(torch.rand(engram.table_step_sizes.shape, generator=generator) * 0.1 + 0.05)
        engram.table_fingerprints.copy_(torch.randint(0, 2**31, engram.table_fingerprints.shape, generator=generator))
        engram.table_collided.copy_(torch.rand(engram.table_collided.shape, generator=generator) > 0.5)
        engram.code_snap.copy_(torch.randperm(engram.config.num_codes, generator=generator))
    return engram.to(dtype).eval()


def states(batch: int = 3, steps: int = 6, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, steps, UNITS, DIM, generator=generator).to(dtype)


def memory_outputs(engram: VeltrixEngramModel, units: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the memory computes from trajectories units (B, T, U, D): codes, the table's recall and fusion after the
    last step, and the parametric memory's update of an evolver layer."""
    codes = engram.codes(units)
    histories = engram.histories(codes)
    step_sizes = torch.full(units.shape[:1], 0.1, dtype=units.dtype)
    recall = engram.recall(histories[:, -1], units[:, -1], step_sizes)
    fused, alpha = engram.anchor(units[:, -1] * 0.9, recall, step_sizes)
    memory = engram.memory_vectors(histories)
    hidden = torch.ones(*units.shape[:3], engram.config.hidden_size, dtype=units.dtype)
    injected = engram.inject(0, hidden, memory)
    return {
        "codes": codes,
        **{f"recall.{k}": v for k, v in recall.items()},
        "fused": fused,
        "alpha": alpha,
        "memory": memory,
        "injected": injected,
    }


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    tensors_a = {**dict(a.named_parameters()), **dict(a.named_buffers())}
    tensors_b = {**dict(b.named_parameters()), **dict(b.named_buffers())}
    assert sorted(tensors_a) == sorted(tensors_b)
    for name, tensor in tensors_a.items():
        assert tensor.dtype == tensors_b[name].dtype, name
        torch.testing.assert_close(tensor, tensors_b[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("use_table", [True, False])
def test_init_weights_covers_every_parameter_and_buffer_on_meta(use_table):
    config = engram_config(use_table=use_table, fixed_gate=None if use_table else 0.5)
    with torch.device("meta"):
        engram = VeltrixEngramModel(config)
    engram.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in [*engram.parameters(), *engram.buffers()]:
            tensor.fill_(SENTINEL if tensor.is_floating_point() else INT_SENTINEL if tensor.dtype != torch.bool else 1)
    engram.init_weights()
    torch.manual_seed(0)
    normal = VeltrixEngramModel(config)
    for name, tensor in engram.named_parameters():
        assert bool(tensor.isfinite().all()) and bool((tensor.abs() < SENTINEL / 2).all()), f"{name} not initialised"
    buffers = dict(engram.named_buffers())
    assert sorted(buffers) == sorted(dict(normal.named_buffers()))
    for name, buffer in normal.named_buffers():  # deterministic: the hash constants, primes, empty tables, FSQ grid
        torch.testing.assert_close(buffers[name], buffer, rtol=0, atol=0, msg=name)
    for layer in (m for m in engram.modules() if isinstance(m, VeltrixEngramZeroInitLinear)):
        assert not layer.weight.any() and (layer.bias is None or not layer.bias.any())
    # With the same saved tensors, the same codes: the quantizer's non-persistent grid was rebuilt too.
    engram.load_state_dict(normal.state_dict())
    units = states()
    torch.testing.assert_close(engram.codes(units), normal.codes(units), rtol=0, atol=0)


def test_missing_weights_are_initialised_by_from_pretrained():
    engram = VeltrixEngramModel.from_pretrained(None, config=engram_config(), state_dict={})
    normal = VeltrixEngramModel(engram_config())
    for name, tensor in [*engram.named_parameters(), *engram.named_buffers()]:
        assert tensor.device.type == "cpu", name
        assert not tensor.is_floating_point() or bool(tensor.isfinite().all()), name
    for name, buffer in normal.named_buffers():
        torch.testing.assert_close(dict(engram.named_buffers())[name], buffer, rtol=0, atol=0, msg=name)


def test_save_load_round_trip_restores_tables_and_hashing(tmp_path):
    engram = make_engram()
    engram.save_pretrained(tmp_path / "float32")
    assert (tmp_path / "float32" / "model.safetensors").is_file()
    loaded = VeltrixEngramModel.from_pretrained(tmp_path / "float32").eval()
    assert_same_state(engram, loaded)
    units = states()
    expected = memory_outputs(engram, units)
    for name, value in memory_outputs(loaded, units).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)

    half = make_engram(torch.float16)
    half.save_pretrained(tmp_path / "variant", variant="fp16")
    assert (tmp_path / "variant" / "model.fp16.safetensors").is_file()
    assert_same_state(
        half, VeltrixEngramModel.from_pretrained(tmp_path / "variant", variant="fp16", dtype=torch.float16)
    )

    bf16 = VeltrixEngramModel.from_pretrained(tmp_path / "float32", dtype=torch.bfloat16).eval()
    assert_same_state(engram.to(torch.bfloat16), bf16)
    assert bf16.hash_multipliers.dtype == torch.int64 and bf16.table_collided.dtype == torch.bool


def test_memory_is_deterministic_and_each_row_alone_equals_its_batched_row():
    engram = make_engram()
    units = states(batch=4)
    batched = memory_outputs(engram, units)
    assert bool(batched["recall.hits"].any()) and bool(batched["alpha"].any()) and bool(batched["injected"].any())
    for name, value in memory_outputs(engram, units).items():
        torch.testing.assert_close(value, batched[name], rtol=0, atol=0, msg=name)
    for row in range(4):
        for name, value in memory_outputs(engram, units[row : row + 1]).items():
            torch.testing.assert_close(value, batched[name][row : row + 1], rtol=0, atol=1e-6, msg=name)


def test_recall_output_dict_equals_its_tuple():
    engram = make_engram()
    codes = engram.codes(states())
    recall = engram.recall(engram.histories(codes)[:, -1], states()[:, -1], torch.full((3,), 0.1))
    as_tuple = recall.to_tuple()
    names = ["states", "counts", "orders", "step_sizes", "hits", "foreign", "confident"]
    assert list(recall.keys()) == names and len(as_tuple) == len(names)
    for index, name in enumerate(names):
        assert as_tuple[index] is recall[name] is recall[index] is getattr(recall, name)


def test_bfloat16_construction_and_use_with_a_bfloat16_evolver():
    engram = VeltrixEngramModel._from_config(engram_config(), dtype=torch.bfloat16)
    assert engram.dtype == torch.bfloat16
    floating = {t.dtype for t in [*engram.parameters(), *engram.buffers()] if t.is_floating_point()}
    assert floating == {torch.bfloat16}
    reference = make_engram()
    engram.load_state_dict(reference.state_dict())
    units = states()
    expected = memory_outputs(reference, units)
    out = memory_outputs(engram, units.bfloat16())
    assert out["fused"].dtype == out["injected"].dtype == torch.bfloat16
    # Codes are a rounding of the standardised state: bfloat16 moves few of them to a neighbouring level.
    assert float((out["codes"] == expected["codes"]).float().mean()) >= 0.5
    for name in ("fused", "injected"):
        assert bool(out[name].isfinite().all()), name

    torch.manual_seed(0)
    evolver = randomize_(VeltrixEvolverModel(tiny_evolver_config())).to(torch.bfloat16).eval()
    with torch.no_grad():
        forward = evolver(units.bfloat16(), engram=engram, use_cache=True)
        rollout = evolver.rollout(units.bfloat16(), 3, engram=engram)
    assert forward.predicted_units.dtype == rollout.units.dtype == torch.bfloat16
    assert bool(rollout.units.isfinite().all()) and rollout.memory_hits.shape == (3, 3)


def test_no_token_embeddings_is_said_the_library_way():
    engram = make_engram()
    assert engram.get_input_embeddings() is None and engram.get_output_embeddings() is None
    with pytest.raises(NotImplementedError, match="no token embeddings"):
        engram.set_input_embeddings(torch.nn.Embedding(4, 4))
