"""Selective state-space scans in the Mamba-2 / SSD form (Dao & Gu, "Transformers are SSMs", 2024).

The recurrence, per head with a scalar decay::

    h_t = exp(dt_t · A) · h_{t-1} + dt_t · x_t ⊗ B_t        h_t ∈ R^{P×N}
    y_t = h_t · C_t

Three PyTorch implementations that agree to float tolerance (tests/test_selective_ssm.py):

- `ssd_step`: one step of the recurrence (recurrent rollout, O(1) state);
- `ssd_sequential_scan`: the step applied over a sequence (the reference);
- `ssd_chunked_scan`: the SSD block decomposition: an attention-like quadratic form inside chunks of length Q and a
  recurrence over chunk states that is linear in the number of chunks.

The optional CUDA kernels of `mamba-ssm` (`mamba_chunk_scan_combined`, `selective_state_update`) and
`causal-conv1d` (`causal_conv1d_fn`, `causal_conv1d_update`) are imported here, each replaced by `None` where it is
not installed; `modeling_veltrix_evolver.VeltrixSelectiveSSM` dispatches to them on CUDA.

Shapes: `b` batch, `l` length, `h` heads, `p` head channels, `g` groups of `B`/`C`, `n` state size, `c` chunks,
`q` positions in a chunk. `dt` is already positive (softplus and Δt scaling are applied by the caller).
"""

import functools

import torch
import torch.nn.functional as F

# Module-level and inside `try`, each on its own: a saved model's code then loads with `trust_remote_code=True`
# where these packages are absent (transformers' import check skips `try` blocks, and fails on an import inside a
# function).
try:
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
except ImportError:
    mamba_chunk_scan_combined = None
try:
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update
except ImportError:
    selective_state_update = None
try:
    from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
except ImportError:
    causal_conv1d_fn, causal_conv1d_update = None, None

# Largest total decay `-Σ dt·A` of one chunk for which the intra-chunk decay matrix is factorised as
# exp(a_i - a_j) = exp(a_i - m) · exp(m - a_j) around the chunk's midpoint m. The factors stay within exp(±limit/2)
# (1e21 in float32), so their products with inputs cannot overflow, and the rounding error of the prefix sums
# (~ eps · total) stays below 1e-5 relative; heads past the limit in some chunk take the exact segment-sum path.
_FACTORIZATION_LIMIT = {torch.float32: 100.0, torch.float64: 600.0}


def mamba_kernels_available() -> bool:
    """Whether all four CUDA kernels (mamba-ssm and causal-conv1d) were importable."""
    return None not in (mamba_chunk_scan_combined, selective_state_update, causal_conv1d_fn, causal_conv1d_update)


def _expand_groups(bc: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Repeats group-shared `B`/`C` (..., g, n) to every head (..., h, n)."""
    return bc.repeat_interleave(num_heads // bc.shape[-2], dim=-2)


@functools.lru_cache(maxsize=32)
def _triangles(q: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Constant (q, q) matrices, built once per size, device and dtype: `upper` (ones on and above the diagonal:
    `x @ upper` is the inclusive prefix sum along the last axis) and `lower` (ones on and below: the causal mask).
    Built outside inference mode: a cached inference tensor could not be saved for backward later."""
    with torch.inference_mode(False):
        ones = torch.ones(q, q, dtype=dtype, device=device)
        return ones.triu(), ones.tril()


@functools.lru_cache(maxsize=32)
def _segment_masks(q: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (q, q) masks: not strictly below the diagonal, and above it (for `segment_sum`); built outside
    inference mode, as `_triangles`."""
    with torch.inference_mode(False):
        ones = torch.ones(q, q, dtype=torch.bool, device=device)
        return ~ones.tril(-1), ~ones.tril()


def segment_sum(x: torch.Tensor) -> torch.Tensor:
    """Stable segment sums: (..., q) -> (..., q, q) with out[i, j] = x[j+1] + ... + x[i] for i >= j, -inf above.

    Computed by a masked cumulative sum rather than a difference of cumulative sums, which loses precision
    when the sums are large.
    """
    q = x.shape[-1]
    not_strictly_lower, above = _segment_masks(q, x.device)
    x = x[..., None].expand(*x.shape, q).masked_fill(not_strictly_lower, 0.0)  # (..., q, q): x[..., i, j] = x_i
    return torch.cumsum(x, dim=-2).masked_fill(above, float("-inf"))


def ssd_step(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrence step.

    Args:
        x: (b, h, p) inputs.
        dt: (b, h) positive step sizes.
        A: (h,) negative decay rates.
        B, C: (b, g, n) input and output projections.
        state: (b, h, p, n) state before the step.

    Returns:
        y: (b, h, p) and the new state (b, h, p, n).
    """
    num_heads = x.shape[1]
    B, C = _expand_groups(B, num_heads), _expand_groups(C, num_heads)
    decay = torch.exp(dt * A)  # (b, h)
    state = torch.addcmul(state * decay[..., None, None], (x * dt[..., None])[..., None], B[:, :, None, :])
    y = torch.matmul(state, C[..., None])[..., 0]  # (b, h, p)
    return y, state


def ssd_sequential_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference scan: `ssd_step` applied step by step.

    Args:
        x: (b, l, h, p); dt: (b, l, h); A: (h,); B, C: (b, l, g, n); initial_state: (b, h, p, n) or None (zeros).

    Returns:
        y: (b, l, h, p) and the final state (b, h, p, n).
    """
    b, length, h, p = x.shape
    state = x.new_zeros(b, h, p, B.shape[-1]) if initial_state is None else initial_state
    outputs = []
    for t in range(length):
        y_t, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state)
        outputs.append(y_t)
    return torch.stack(outputs, dim=1), state


def _exact_chunk_terms(
    x_dt: torch.Tensor, dA: torch.Tensor, B: torch.Tensor, CB: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Intra-chunk outputs and chunk states of a few heads with the stable segment sums (no factorisation).

    Args:
        x_dt: (b, c, q, k, p) inputs times step sizes of k heads.
        dA: (b, c, q, k) their log-decays.
        B: (b, c, q, k, n) their input projections.
        CB: (b, c, k, q, q) their C·Bᵀ, masked to the lower triangle.

    Returns:
        y_diag (b, c, q, k, p) and chunk states (b, c, k, p, n) (each chunk's inputs decayed to its end).
    """
    dA = dA.transpose(2, 3)  # (b, c, k, q)
    decay = torch.exp(segment_sum(dA))  # (b, c, k, q, q)
    y_diag = torch.matmul(decay * CB, x_dt.transpose(2, 3))  # (b, c, k, q, p)
    # Decay from each position to the chunk's end, dA_{j+1} + ... + dA_{q-1}: a reversed cumulative sum shifted by
    # one, so no difference of large sums is taken.
    suffix = torch.flip(torch.cumsum(torch.flip(dA, [-1]), -1), [-1])
    to_end = F.pad(suffix[..., 1:], (0, 1))  # (b, c, k, q)
    weighted = x_dt.transpose(2, 3) * torch.exp(to_end)[..., None]  # (b, c, k, q, p)
    states = torch.matmul(weighted.transpose(-1, -2), B.transpose(2, 3))  # (b, c, k, p, n)
    return y_diag.transpose(2, 3), states


def ssd_chunked_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD scan, same contract as `ssd_sequential_scan`.

    Everything stays in the input's (b, c, q, h, p) layout, so the heads of a group share each chunk's matrix
    products: with `a` the prefix sums of `dt·A` in a chunk and `m` their midpoint,
    `y_i = e^{a_i - m} · Σ_{j<=i} (C_i·B_j) · e^{m - a_j} dt_j x_j + e^{a_i} · C_i · S_in`
    is one (q × q) @ (q × heads·p) product for all heads of a group, plus one (q × n) @ (n × heads·p) product for
    the state entering the chunk. Heads whose decay within some chunk exceeds `_FACTORIZATION_LIMIT` take the
    exact segment-sum form instead. Chunk states are carried by a loop over chunks (linear in their number).

    The sequence is padded to a multiple of the chunk length with `dt = 0` (no decay, no input), which leaves the
    state unchanged, so the final state is exact. Half-precision inputs are computed in float32.
    """
    b, length, h, p = x.shape
    g, n = B.shape[-2:]
    heads_per_group = h // g
    out_dtype = x.dtype
    dtype = out_dtype if out_dtype in _FACTORIZATION_LIMIT else torch.float32
    x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))
    # A sequence shorter than a chunk is one chunk of its own length: no padding work.
    q = min(chunk_size, length)
    pad = (-length) % q
    if pad:
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    c = x.shape[1] // q
    x, dt = x.reshape(b, c, q, h, p), dt.reshape(b, c, q, h)
    B, C = B.reshape(b, c, q, g, n), C.reshape(b, c, q, g, n)
    upper, lower = _triangles(q, x.device, dtype)

    # 1. Log-decays and their prefix sums in each chunk, by a matrix product (faster than cumsum on short rows).
    dA = dt * A  # (b, c, q, h)
    prefix = torch.matmul(dA.transpose(2, 3), upper).transpose(2, 3)  # (b, c, q, h): a_i = dA_0 + ... + dA_i
    total = prefix[:, :, -1]  # (b, c, h), <= 0
    exact = (total < -_FACTORIZATION_LIMIT[dtype]).any(dim=0).any(dim=0)  # (h,)
    exact_heads = exact.nonzero().flatten() if bool(exact.any()) else None
    midpoint = 0.5 * total[:, :, None, :]  # (b, c, 1, h)
    centred = prefix - midpoint
    if exact_heads is not None:
        # Keep the factorised terms of those heads finite; they are replaced below.
        centred = centred.masked_fill(exact, 0.0)

    # 2. Intra-chunk outputs of all heads (before the e^{a_i - m} row factor) and each chunk's final state.
    x_in = x * (torch.exp(-centred) * dt)[..., None]  # (b, c, q, h, p): e^{m - a_j} dt_j x_j
    x_in_groups = x_in.reshape(b, c, q, g, heads_per_group * p).transpose(2, 3)  # (b, c, g, q, r·p)
    Bg, Cg = B.transpose(2, 3), C.transpose(2, 3)  # (b, c, g, q, n)
    CB = torch.matmul(Cg, Bg.transpose(-1, -2)) * lower  # (b, c, g, q, q)
    y_diag = torch.matmul(CB, x_in_groups)  # (b, c, g, q, r·p)
    # S_chunk = Σ_j e^{a_last - a_j} dt_j x_j ⊗ B_j = e^{a_last - m} · Σ_j x_in_j ⊗ B_j
    states = torch.matmul(x_in_groups.transpose(-1, -2), Bg).reshape(b, c, h, p, n)
    states = states * torch.exp(total - midpoint[:, :, 0]).masked_fill(exact, 1.0)[..., None, None]
    if exact_heads is not None:
        group_of = exact_heads // heads_per_group
        y_exact, states_exact = _exact_chunk_terms(
            (x * dt[..., None])[:, :, :, exact_heads], dA[..., exact_heads], B[:, :, :, group_of], CB[:, :, group_of]
        )
        states = states.index_copy(2, exact_heads, states_exact)

    # 3. The state entering each chunk: a recurrence over chunks, linear in their number.
    state = x.new_zeros(b, h, p, n) if initial_state is None else initial_state.to(dtype)
    chunk_decay = torch.exp(total)[..., None, None]  # (b, c, h, 1, 1)
    entering = []
    for k in range(c):
        entering.append(state)
        state = torch.addcmul(states[:, k], state, chunk_decay[:, k])
    entering = torch.stack(entering, dim=1)  # (b, c, h, p, n)

    # 4. Add the entering state's contribution, decayed to each position, and apply the row factor.
    scale = torch.exp(midpoint[:, :, 0]).masked_fill(exact, 1.0)  # (b, c, h)
    entering_groups = (entering * scale[..., None, None]).reshape(b, c, g, heads_per_group * p, n)
    # y_diag + C · S_inᵀ as one accumulating matrix product (no separate addition pass).
    y = torch.baddbmm(y_diag.flatten(0, 2), Cg.flatten(0, 2), entering_groups.flatten(0, 2).transpose(-1, -2))
    y = (
        y.reshape(b, c, g, q, heads_per_group * p).transpose(2, 3).reshape(b, c, q, h, p)
        * torch.exp(centred)[..., None]
    )
    if exact_heads is not None:
        from_state = torch.matmul(C[:, :, :, group_of].transpose(2, 3), entering[:, :, exact_heads].transpose(-1, -2))
        y_exact = y_exact + from_state.transpose(2, 3) * torch.exp(prefix[..., exact_heads])[..., None]
        y = y.index_copy(3, exact_heads, y_exact)
    y = y.reshape(b, c * q, h, p)[:, :length]
    return y.to(out_dtype), state.to(out_dtype)
