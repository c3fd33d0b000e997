"""The three SSD paths (sequential reference, chunked, recurrent step) agree on random inputs."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling_veltrix.selective_ssm import segment_sum, ssd_chunked_scan, ssd_sequential_scan, ssd_step


def random_problem(seed: int, batch: int, length: int, heads: int, groups: int, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    x = randn(batch, length, heads, 3)
    # Irregular, sometimes large steps: dt spans two orders of magnitude.
    dt = torch.exp(randn(batch, length, heads) * 1.2) * 0.3
    A = -torch.exp(randn(heads))
    B, C = randn(batch, length, groups, 5), randn(batch, length, groups, 5)
    initial = randn(batch, heads, 3, 5)
    return x, dt, A, B, C, initial


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    length=st.integers(1, 40),
    chunk_size=st.sampled_from([1, 3, 8, 16]),
    groups_heads=st.sampled_from([(1, 1), (1, 4), (2, 4)]),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_chunked_matches_sequential(seed, length, chunk_size, groups_heads, dtype):
    groups, heads = groups_heads
    x, dt, A, B, C, initial = random_problem(seed, 2, length, heads, groups, dtype)
    tolerance = 1e-5 if dtype == torch.float64 else 1e-4
    y_seq, state_seq = ssd_sequential_scan(x, dt, A, B, C, initial_state=initial)
    y_chunk, state_chunk = ssd_chunked_scan(x, dt, A, B, C, chunk_size, initial_state=initial)
    scale = 1 + y_seq.abs().max()
    assert (y_seq - y_chunk).abs().max() / scale < tolerance
    assert (state_seq - state_chunk).abs().max() / (1 + state_seq.abs().max()) < tolerance


def test_steps_continue_a_chunked_prefix():
    x, dt, A, B, C, _ = random_problem(1, 3, 20, 4, 2, torch.float64)
    y_full, state_full = ssd_sequential_scan(x, dt, A, B, C)
    y_prefix, state = ssd_chunked_scan(x[:, :12], dt[:, :12], A, B[:, :12], C[:, :12], chunk_size=5)
    steps = []
    for t in range(12, 20):
        y_t, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.cat([y_prefix, torch.stack(steps, 1)], 1), y_full, rtol=0, atol=1e-10)
    torch.testing.assert_close(state, state_full, rtol=0, atol=1e-10)


def test_in_place_steps_equal_steps_that_make_new_states():
    x, dt, A, B, C, initial = random_problem(2, 3, 6, 4, 2, torch.float64)
    state, owned = initial, initial.clone()
    for t in range(6):
        y, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state)
        y_in_place, updated = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], owned, in_place=True)
        assert updated is owned  # the given state was updated, nothing state-sized was made
        torch.testing.assert_close(y_in_place, y, rtol=0, atol=0)
        torch.testing.assert_close(owned, state, rtol=0, atol=0)
        owned = state.clone() if t == 2 else owned  # also from a state in the out-of-place step's memory order


def test_recurrence_by_hand():
    """One head, one channel, state size one: h_t = exp(dt A) h_{t-1} + dt x B, y = C h."""
    x = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    dt = torch.tensor([0.5, 1.0, 0.25], dtype=torch.float64).reshape(1, 3, 1)
    A = torch.tensor([-2.0], dtype=torch.float64)
    B = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    C = torch.tensor([3.0, 1.0, -1.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    h, expected = 0.0, []
    for t in range(3):
        h = torch.exp(dt[0, t, 0] * A[0]) * h + dt[0, t, 0] * x[0, t, 0, 0] * B[0, t, 0, 0]
        expected.append(C[0, t, 0, 0] * h)
    y, _ = ssd_chunked_scan(x, dt, A, B, C, chunk_size=2)
    torch.testing.assert_close(y.flatten(), torch.stack(expected))


def test_segment_sum():
    x = torch.tensor([1.0, 2.0, 3.0])
    out = segment_sum(x)
    assert out[2, 0] == 5.0 and out[2, 2] == 0.0 and out[1, 0] == 2.0
    assert torch.isneginf(out[0, 1])


def test_factorised_and_exact_heads_match_the_reference():
    """One head decays gently (the factorised chunk form), one by ~1000 per chunk (the exact segment-sum form):
    outputs, final state and gradients all match the sequential reference."""
    x, dt, _, B, C, initial = random_problem(2, 2, 29, 4, 2, torch.float64)
    dt = dt.clamp(max=1.0)
    A = torch.tensor([-0.05, -200.0, -1.0, -900.0], dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in (x, dt, B, C, initial)]
    reference = [t.clone().requires_grad_() for t in (x, dt, B, C, initial)]
    y_chunk, state_chunk = ssd_chunked_scan(inputs[0], inputs[1], A, inputs[2], inputs[3], 8, initial_state=inputs[4])
    y_seq, state_seq = ssd_sequential_scan(*reference[:2], A, *reference[2:4], initial_state=reference[4])
    torch.testing.assert_close(y_chunk, y_seq, rtol=0, atol=1e-10)
    torch.testing.assert_close(state_chunk, state_seq, rtol=0, atol=1e-10)
    weights = torch.randn_like(y_seq)
    ((y_chunk * weights).sum() + state_chunk.sum()).backward()
    ((y_seq * weights).sum() + state_seq.sum()).backward()
    for mine, theirs in zip(inputs, reference, strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=0, atol=1e-9)


def test_half_precision_is_computed_in_float32():
    x, dt, A, B, C, _ = random_problem(4, 1, 20, 2, 1, torch.float32)
    y32, state32 = ssd_chunked_scan(x, dt, A, B, C, 8)
    y16, state16 = ssd_chunked_scan(*(t.bfloat16() for t in (x, dt, A, B, C)), 8)
    assert y16.dtype == state16.dtype == torch.bfloat16
    assert (y16.float() - y32).abs().max() / (1 + y32.abs().max()) < 5e-2
    assert torch.isfinite(state16).all()


def test_cached_constants_serve_autograd_after_inference_mode():
    """The chunk constants are cached per size: made first under inference mode, they must still be usable in a
    backward pass (an inference tensor cannot be saved for backward)."""
    x, dt, A, B, C, _ = random_problem(6, 1, 24, 2, 1, torch.float32)
    dt[..., 1], A[1] = 30.0, -5.0  # one head past the factorisation limit: the segment-sum masks are used too
    with torch.inference_mode():
        ssd_chunked_scan(x, dt, A, B, C, 12)
    inputs = [t.requires_grad_() for t in (x, dt, A, B, C)]
    y, _ = ssd_chunked_scan(*inputs, 12)
    y.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in inputs)


def test_the_mixer_over_time_segments_matches_one_pass(monkeypatch):
    """The PyTorch mixer runs long sequences in segments that carry the conv and SSM states: the same outputs and
    final states as one pass and as the sequential reference, also with segments shorter than the conv window."""
    from modeling_veltrix import selective_ssm
    from modeling_veltrix.configuration_veltrix import VeltrixEvolverConfig

    def mixer(scan_implementation: str) -> selective_ssm.VeltrixSelectiveSSM:
        torch.manual_seed(0)
        config = VeltrixEvolverConfig(
            hidden_size=16,
            state_size=4,
            head_dim=4,
            n_groups=1,
            conv_kernel=4,
            chunk_size=2,
            scan_implementation=scan_implementation,
        )
        module = selective_ssm.VeltrixSelectiveSSM(config)
        module.reset_ssm_parameters()
        return module.double()

    hidden, gaps = torch.randn(3, 11, 16, dtype=torch.float64), torch.rand(3, 11, dtype=torch.float64) + 0.5
    chunked, sequential = mixer("chunked"), mixer("sequential")
    whole = chunked(hidden, gaps)
    monkeypatch.setattr(selective_ssm, "_SEGMENT_POSITIONS", 3 * 2)  # one chunk of 2 steps per segment
    assert chunked._segment_length(hidden) == 2
    segmented = chunked(hidden, gaps)
    for expected, reference, actual in zip(whole, sequential(hidden, gaps), segmented, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(actual, reference, rtol=1e-8, atol=1e-8)
