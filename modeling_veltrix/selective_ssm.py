"""The evolver's selective state-space model in the Mamba-2 / SSD form (Dao & Gu, "Transformers are SSMs", 2024):
the scans and the mixer that runs them.

The recurrence, per head with a scalar decay::

    h_t = exp(dt_t · A) · h_{t-1} + dt_t · x_t ⊗ B_t        h_t ∈ R^{P×N}
    y_t = h_t · C_t

Three PyTorch scans that agree to float tolerance (tests/test_selective_ssm.py):

- `ssd_step`: one step of the recurrence (recurrent rollout, O(1) state);
- `ssd_sequential_scan`: the step applied over a sequence (the reference);
- `ssd_chunked_scan`: the SSD block decomposition: an attention-like quadratic form inside chunks of length Q and a
  recurrence over chunk states that is linear in the number of chunks.

The optional CUDA kernels of `mamba-ssm` (`mamba_chunk_scan_combined`, `selective_state_update`) and
`causal-conv1d` (`causal_conv1d_fn`, `causal_conv1d_update`) are imported here, each replaced by `None` where it is
not installed. Each has a PyTorch fallback with its signature (the arguments the mixer passes, under the kernel's
names and defaults): `torch_chunk_scan_combined` (or `torch_sequential_scan_combined` on the reference scan),
`torch_selective_state_update`, `torch_causal_conv1d_fn` and `torch_causal_conv1d_update`. `VeltrixSelectiveSSM`,
the Mamba-2 mixer with a Δt-aware step, runs the kernels on CUDA, or its PyTorch path: the whole-sequence fallbacks
over cache-sized time segments, and the step's computation out of place (no state copies).

Shapes: `b` batch, `l` length, `h` heads, `p` head channels, `g` groups of `B`/`C`, `n` state size, `c` chunks,
`q` positions in a chunk. `dt` is already positive (softplus and Δt scaling are applied by the mixer).
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import logging

from .configuration_veltrix import VeltrixEvolverConfig

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

logger = logging.get_logger(__name__)


def mamba_kernels_available() -> bool:
    """Whether all four CUDA kernels (mamba-ssm and causal-conv1d) were importable."""
    return None not in (mamba_chunk_scan_combined, selective_state_update, causal_conv1d_fn, causal_conv1d_update)


# Largest total decay `-Σ dt·A` of one chunk for which the intra-chunk decay matrix is factorised as
# exp(a_i - a_j) = exp(a_i - m) · exp(m - a_j) around the chunk's midpoint m. The factors stay within exp(±limit/2)
# (1e21 in float32), so their products with inputs cannot overflow, and the rounding error of the prefix sums
# (~ eps · total) stays below 1e-5 relative; heads past the limit in some chunk take the exact segment-sum path.
_FACTORIZATION_LIMIT = {torch.float32: 100.0, torch.float64: 600.0}

# Positions (rows × time steps) per segment of the mixer's PyTorch whole-sequence path. Its largest intermediates
# (the in-projection's output, the chunk states) are 5-10 times the input's size: at 4096 positions of the reference
# dimensions they stay within a CPU's last-level cache, and beyond it the mixer became memory-bound (86k tokens/s at
# 4k tokens, 49k at 16k on 2 cores).
_SEGMENT_POSITIONS = 4096


def scan_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a scan computes in: float32 or float64 as given, float32 for half precision (in bfloat16 the decays
    `exp(dt·A)` and the state's running sums would lose most of their digits)."""
    return dtype if dtype in _FACTORIZATION_LIMIT else torch.float32


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
    in_place: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrence step.

    Args:
        x: (b, h, p) inputs.
        dt: (b, h) positive step sizes.
        A: (h,) negative decay rates.
        B, C: (b, g, n) input and output projections.
        state: (b, h, p, n) state before the step.
        in_place: update `state` in place and return it (the caller gives it up), instead of making a new one.

    Returns:
        y: (b, h, p) and the new state (b, h, p, n).
    """
    b, h, p = x.shape
    g, n = B.shape[-2:]
    q = (h // g) * p
    decay = torch.exp(dt * A)  # (b, h)
    x_dt = x * dt[..., None]
    # Both ways compute decay · state, then add dt·x ⊗ B to it (the same roundings: in place or not, the numbers are
    # equal). Out of place, the new state is made in (b, n, h, p) memory order and returned as a (b, h, p, n) view of
    # it: the outer product then runs its inner loop over a group's h/g·p channels instead of the n state entries (on
    # CPU several times faster for small n), and the old state is read once. In place (the caller gives `state` up),
    # nothing state-sized is allocated: on CPU, writing fresh pages costs more than the arithmetic.
    if in_place:
        new_state = state.mul_(decay[..., None, None])
        by_entry = new_state.permute(0, 3, 1, 2)  # (b, n, h, p)
    else:
        # (a copy into that order only when `state` is not in it yet: a state from the chunked scan)
        by_entry = (state.permute(0, 3, 1, 2) * decay[:, None, :, None]).contiguous()
        new_state = by_entry.permute(0, 2, 3, 1)
    by_entry.unflatten(2, (g, h // g)).addcmul_(x_dt.view(b, 1, g, h // g, p), B.transpose(1, 2)[..., None, None])
    # y = C · state per group: one (1 × n) @ (n × h/g·p) product per row and group.
    y = torch.matmul(C[:, :, None, :], by_entry.reshape(b, n, g, q).transpose(1, 2)).view(b, h, p)
    return y, new_state


def step_layout(conv_state: torch.Tensor, ssm_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of one layer's recurrent states, conv (N, conv_dim, conv_kernel - 1) and SSM (N, heads, head_dim,
    state), in the memory orders that the PyTorch step updates in place fastest, shapes unchanged: the conv state's
    columns contiguous ((N, conv_kernel - 1, conv_dim) in memory) and the SSM state's entries outermost ((N, state,
    heads, head_dim) in memory), the orders of the states a step makes out of place."""
    conv = conv_state.transpose(1, 2).clone(memory_format=torch.contiguous_format).transpose(1, 2)
    ssm = ssm_state.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format).permute(0, 2, 3, 1)
    return conv, ssm


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
    dtype = scan_dtype(out_dtype)
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


def _scan_output(
    y: torch.Tensor, state: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None, return_final_states: bool
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Adds the skip `D · x` (D (h,)) to a scan's y (b, l, h, p) and returns what `mamba_chunk_scan_combined`
    returns: y, and the final state (b, h, p, n) when `return_final_states`."""
    if D is not None:
        y = torch.addcmul(y, x, D[:, None])
    return (y, state) if return_final_states else y


def torch_chunk_scan_combined(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    *,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`mamba_chunk_scan_combined` in PyTorch (`ssd_chunked_scan`): x (b, l, h, p), dt (b, l, h) positive, A (h,),
    B and C (b, l, g, n), D (h,), initial_states (b, h, p, n) or None (zeros) -> y (b, l, h, p), and the final state
    (b, h, p, n) when `return_final_states`."""
    y, state = ssd_chunked_scan(x, dt, A, B, C, chunk_size, initial_states)
    return _scan_output(y, state, x, D, return_final_states)


def torch_sequential_scan_combined(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    *,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`torch_chunk_scan_combined` on the sequential reference scan (`chunk_size` is unused): the oracle of the
    model-level tests (`config.scan_implementation="sequential"`). Half-precision inputs are computed in float32."""
    dtype = scan_dtype(x.dtype)
    initial = None if initial_states is None else initial_states.to(dtype)
    y, state = ssd_sequential_scan(*(t.to(dtype) for t in (x, dt, A, B, C)), initial)
    return _scan_output(y.to(x.dtype), state.to(x.dtype), x, D, return_final_states)


TORCH_SCANS = {"chunked": torch_chunk_scan_combined, "sequential": torch_sequential_scan_combined}


def torch_selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    *,
    dt_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`selective_state_update` in PyTorch (`ssd_step`), in the kernel's multi-head form with a tied head dim (how
    Mamba-2 calls it): per-head values broadcast over the head's p channels.

    Args:
        state: (b, h, p, n), updated in place.
        x: (b, h, p).
        dt: (b, h, p) positive step sizes, and A (h, p, n), D and dt_bias (h, p): constant over p.
        B, C: (b, g, n).

    Returns:
        y (b, h, p), in x's dtype; half-precision inputs are computed in float32.
    """
    dtype = scan_dtype(x.dtype)
    dt = dt[..., 0] if dt_bias is None else dt[..., 0] + dt_bias[:, 0]
    # Under autograd from a copy (or a float32 copy of a half-precision state), so that the old state, which the
    # product with the decay saves for backward, can be overwritten.
    old_state = state.to(dtype, copy=torch.is_grad_enabled())
    inputs = (t.to(dtype) for t in (x, dt, A[:, 0, 0], B, C))
    y, new_state = ssd_step(*inputs, old_state)
    state.copy_(new_state)
    if D is not None:
        y = torch.addcmul(y, x.to(dtype), D.to(dtype))
    return y.to(x.dtype)


def _activate(x: torch.Tensor, activation: str | None) -> torch.Tensor:
    """The causal-conv1d kernels' activation: None, or "silu" / "swish" (the same function)."""
    return F.silu(x) if activation in ("silu", "swish") else x


def torch_causal_conv1d_fn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    initial_states: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """`causal_conv1d_fn` in PyTorch: depthwise causal convolution of x (b, dim, l) with weight (dim, width) and
    bias (dim,) -> (b, dim, l); `initial_states` (b, dim, width - 1) are the inputs before x (None: zeros).

    A sum of shifted, channel-scaled copies in the (b, l, dim) layout: on CPU this beats `nn.Conv1d`'s layout, and
    `x` given as the transposed view of a (b, l, dim) tensor is never copied to another layout.
    """
    rows = x.transpose(1, 2)  # (b, l, dim)
    length, width = rows.shape[1], weight.shape[1]
    if initial_states is None:
        padded = F.pad(rows, (0, 0, width - 1, 0))  # (b, l + width - 1, dim)
    else:
        padded = torch.cat([initial_states.transpose(1, 2).to(rows.dtype), rows], dim=1)
    start = bias if bias is not None else weight.new_zeros(())
    out = torch.addcmul(start, padded[:, width - 1 :], weight[:, width - 1])
    for k in range(width - 1):
        out.addcmul_(padded[:, k : k + length], weight[:, k])
    return _activate(out, activation).transpose(1, 2)


def torch_causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """`causal_conv1d_update` in PyTorch: one step x (b, dim) of the convolution whose last `width - 1` inputs are
    conv_state (b, dim, width - 1), updated in place; weight (dim, width), bias (dim,) -> (b, dim)."""
    window = torch.cat([conv_state, x[..., None]], dim=-1)  # (b, dim, width)
    conv_state.copy_(window[..., 1:])
    out = (window * weight).sum(-1)
    return _activate(out if bias is None else out + bias, activation)


def _contiguous_causal_conv1d_fn(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, activation: str | None = None
) -> torch.Tensor:
    """`causal_conv1d_fn` on a contiguous copy of x (b, dim, l): given the transposed view of a slice of the input
    projection, the kernel would take its channel-last mode, which needs strides that are multiples of 8."""
    return causal_conv1d_fn(x.contiguous(), weight, bias, activation=activation)


class VeltrixRMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale (Zhang & Sennrich 2019)."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in _FACTORIZATION_LIMIT and self.weight.dtype == x.dtype:
            # float32 / float64: PyTorch's fused norm gives the same numbers as the formula below in fewer kernels.
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight


class VeltrixGatedRMSNorm(VeltrixRMSNorm):
    """RMS norm of `y · silu(z)`: the output gate of the Mamba-2 mixer."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return super().forward(x * F.silu(gate))


class VeltrixSelectiveSSM(nn.Module):
    """Mamba-2 mixer over time with a Δt-aware step: `dt = softplus(raw + bias) · Δt / Δt_ref`.

    `forward` runs a whole sequence from a zero state and returns the recurrent state at its end; `step` advances
    that state by one observation. Each dispatches in one line to the mamba-ssm / causal-conv1d kernels (on CUDA
    when installed and `use_mamba_kernels`) or to its PyTorch path (`_torch_forward`: the fallbacks over time
    segments that carry the states; `_torch_step`: the fallbacks' step computed out of place); `_ssm_inputs` computes
    the projection split, the step sizes and `A` for all. The step kernels have no backward, so steps under autograd
    take the PyTorch path.
    """

    def __init__(self, config: VeltrixEvolverConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.state_size = config.state_size
        self.n_groups = config.n_groups
        self.chunk_size = config.chunk_size
        self.scan_implementation = config.scan_implementation
        self.use_mamba_kernels = config.use_mamba_kernels
        self.time_step_min = config.time_step_min
        self.time_step_max = config.time_step_max
        self.time_step_floor = config.time_step_floor
        self.A_init_range = tuple(config.A_init_range)
        self.inner_size = config.intermediate_ssm_size
        self.conv_dim = self.inner_size + 2 * self.n_groups * self.state_size
        self.conv_kernel = config.conv_kernel

        self.in_proj = nn.Linear(config.hidden_size, self.inner_size + self.conv_dim + self.num_heads, bias=False)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, config.conv_kernel, groups=self.conv_dim, padding=config.conv_kernel - 1
        )
        self.dt_bias = nn.Parameter(torch.empty(self.num_heads))
        self.A_log = nn.Parameter(torch.empty(self.num_heads))
        self.D = nn.Parameter(torch.empty(self.num_heads))
        self.norm = VeltrixGatedRMSNorm(self.inner_size, config.rms_norm_eps)
        self.out_proj = nn.Linear(self.inner_size, config.hidden_size, bias=False)

    def reset_ssm_parameters(self) -> None:
        """S4D-real style decay rates, log-uniform initial step sizes (inverse softplus), unit skip."""
        low, high = self.A_init_range
        init.copy_(self.A_log, torch.log(torch.empty(self.num_heads).uniform_(low, high)))
        dt = torch.exp(
            torch.rand(self.num_heads) * (math.log(self.time_step_max) - math.log(self.time_step_min))
            + math.log(self.time_step_min)
        ).clamp(min=self.time_step_floor)
        init.copy_(self.dt_bias, dt + torch.log(-torch.expm1(-dt)))
        init.ones_(self.D)

    def uses_cuda_kernels(self, device: torch.device) -> bool:
        """Whether whole sequences on `device` run the mamba-ssm / causal-conv1d kernels; logs once when a CUDA
        device falls back to the PyTorch path because they are not installed."""
        if device.type != "cuda" or not self.use_mamba_kernels:
            return False
        if not mamba_kernels_available():
            logger.warning_once(
                "The evolver runs on CUDA but `mamba-ssm` / `causal-conv1d` are not installed (pip install "
                "'veltrix[cuda]'): falling back to the exact but slower PyTorch path."
            )
            return False
        return True

    def _ssm_inputs(
        self, hidden_states: torch.Tensor, gaps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden (..., hidden) and the elapsed time in reference intervals gaps (...) -> the gate z (..., inner), the
        convolution input xbc (..., conv_dim), the positive step sizes dt (..., heads) and the decay rates A (heads,),
        the last two in float32 (float64 for a float64 model): in half precision the step sizes, which scale the
        decays exponentially, would keep only two or three digits."""
        z, xbc, dt_raw = torch.split(
            self.in_proj(hidden_states), [self.inner_size, self.conv_dim, self.num_heads], dim=-1
        )
        dtype = scan_dtype(hidden_states.dtype)
        dt = F.softplus(dt_raw.to(dtype) + self.dt_bias.to(dtype)) * gaps[..., None].to(dtype)
        return z, xbc, dt, -torch.exp(self.A_log.to(dtype))

    def _split_xbc(self, xbc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., conv_dim) -> x (..., heads, head_dim), B and C (..., groups, state)."""
        group_width = self.n_groups * self.state_size
        x, B, C = torch.split(xbc, [self.inner_size, group_width, group_width], dim=-1)
        lead = x.shape[:-1]
        return (
            x.reshape(*lead, self.num_heads, self.head_dim),
            B.reshape(*lead, self.n_groups, self.state_size),
            C.reshape(*lead, self.n_groups, self.state_size),
        )

    def _conv_state(self, xbc: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """The last `conv_kernel - 1` convolution inputs of xbc (N, L, conv_dim), preceded by `previous` (the conv
        state before xbc, (N, conv_dim, conv_kernel - 1)) or zeros when the sequence is shorter:
        (N, conv_dim, conv_kernel - 1)."""
        window = xbc[:, -(self.conv_kernel - 1) :].transpose(1, 2)
        missing = self.conv_kernel - 1 - window.shape[-1]
        if not missing:
            return window.clone(memory_format=torch.contiguous_format)  # a copy: a view would keep all of xbc alive
        if previous is None:
            return F.pad(window, (missing, 0))
        return torch.cat([previous[..., previous.shape[-1] - missing :], window], dim=-1)

    def _segment_length(self, hidden_states: torch.Tensor) -> int:
        """Time steps per segment of the PyTorch whole-sequence path: about `_SEGMENT_POSITIONS` positions (rows ×
        steps), a whole number of chunks; the whole sequence where the carried state would lose precision (half
        precision) or for the sequential reference scan."""
        n, length = hidden_states.shape[:2]
        if self.scan_implementation != "chunked" or scan_dtype(hidden_states.dtype) != hidden_states.dtype:
            return length
        return max(1, _SEGMENT_POSITIONS // (n * self.chunk_size)) * self.chunk_size

    def _output(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Gated RMS norm and output projection: y (..., heads, head_dim), z (..., inner) -> (..., hidden)."""
        return self.out_proj(self.norm(y.flatten(-2), z))

    def forward(
        self, hidden_states: torch.Tensor, gaps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Whole-sequence path: `causal_conv1d_fn` and `mamba_chunk_scan_combined`, or their PyTorch fallbacks (the
        chunked SSD, or the sequential reference, as `config.scan_implementation` says).

        Args:
            hidden_states: (N, L, hidden).
            gaps: (N, L) elapsed time since the previous observation, in reference intervals.

        Returns:
            output (N, L, hidden), conv state (N, conv_dim, conv_kernel - 1), SSM state (N, heads, head_dim, state).
        """
        if self.uses_cuda_kernels(hidden_states.device):
            z, xbc, dt, A = self._ssm_inputs(hidden_states, gaps)
            conv_state = self._conv_state(xbc)
            xbc = _contiguous_causal_conv1d_fn(
                xbc.transpose(1, 2), self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu"
            )
            x, B, C = self._split_xbc(xbc.transpose(1, 2))
            y, ssm_state = mamba_chunk_scan_combined(
                x, dt, A, B, C, self.chunk_size, D=self.D, return_final_states=True
            )
            return self._output(y, z), conv_state, ssm_state.to(x.dtype)
        return self._torch_forward(hidden_states, gaps)

    def _torch_forward(
        self, hidden_states: torch.Tensor, gaps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward` in PyTorch, over time segments of `_segment_length` steps that carry the conv and SSM states:
        the in-projection's output and the scan's chunk states, several times the size of the input, then stay in
        the CPU's cache instead of streaming through memory on long sequences. Segments are whole chunks, so the
        chunks and their arithmetic are those of one pass over the whole sequence."""
        chunk_scan = TORCH_SCANS[self.scan_implementation]
        segment = self._segment_length(hidden_states)
        conv_state = ssm_state = None
        outputs = []
        for start in range(0, hidden_states.shape[1], segment):
            z, xbc, dt, A = self._ssm_inputs(
                hidden_states[:, start : start + segment], gaps[:, start : start + segment]
            )
            convolved = torch_causal_conv1d_fn(
                xbc.transpose(1, 2),
                self.conv1d.weight[:, 0],
                self.conv1d.bias,
                initial_states=conv_state,
                activation="silu",
            )
            conv_state = self._conv_state(xbc, conv_state)
            x, B, C = self._split_xbc(convolved.transpose(1, 2))
            y, ssm_state = chunk_scan(
                x, dt, A, B, C, self.chunk_size, D=self.D, initial_states=ssm_state, return_final_states=True
            )
            outputs.append(self._output(y, z))
        output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
        return output, conv_state, ssm_state.to(hidden_states.dtype)

    def step(
        self,
        hidden_states: torch.Tensor,
        gaps: torch.Tensor,
        conv_state: torch.Tensor,
        ssm_state: torch.Tensor,
        in_place: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One recurrent step (`causal_conv1d_update` and `selective_state_update`, or their PyTorch fallbacks):
        hidden (N, hidden), gaps (N,), states as returned by `forward`; returns the output (N, hidden) and new states.
        The given states are left untouched, so a cache can be shared by branches, unless `in_place`: then the caller
        gives them up and they are updated in place and returned (no state is allocated; without gradients only)."""
        if in_place and torch.is_grad_enabled():
            raise ValueError("`in_place` overwrites states that backpropagation needs: step without gradients.")
        if not torch.is_grad_enabled() and self.uses_cuda_kernels(hidden_states.device):
            return self._kernel_step(hidden_states, gaps, conv_state, ssm_state, in_place)
        return self._torch_step(hidden_states, gaps, conv_state, ssm_state, in_place)

    def _torch_step(
        self,
        hidden_states: torch.Tensor,
        gaps: torch.Tensor,
        conv_state: torch.Tensor,
        ssm_state: torch.Tensor,
        in_place: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`step` in PyTorch: the computation of `torch_causal_conv1d_update` and `torch_selective_state_update`
        (`ssd_step`). Out of place, the caller's states are read once and never copied (a rollout step is dominated by
        passes over the (N, heads, head_dim, state) SSM state, not by arithmetic); in place, nothing state-sized is
        allocated."""
        z, xbc, dt, A = self._ssm_inputs(hidden_states, gaps)
        if in_place:
            columns = [*conv_state.unbind(-1), xbc]
        else:
            # The window's columns contiguous ((N, conv_kernel, conv_dim) in memory), and so those of the new conv
            # state that later in-place steps shift.
            window = torch.stack([*conv_state.unbind(-1), xbc], dim=1)
            columns = window.unbind(1)
        # The depthwise product as a sum of channel-scaled columns (a reduction over the short last axis is slow), each
        # tap's weights contiguous (compiled, the loop over channels then vectorises).
        taps = self.conv1d.weight[:, 0].t().contiguous()  # (conv_kernel, conv_dim)
        convolved = torch.addcmul(self.conv1d.bias, columns[0], taps[0])
        for k in range(1, self.conv_kernel):
            convolved.addcmul_(columns[k], taps[k])
        if in_place:
            for older, newer in zip(columns[:-2], columns[1:-1], strict=True):
                older.copy_(newer)
            columns[-2].copy_(xbc)
        else:
            conv_state = window[:, 1:].transpose(1, 2)  # the new conv state is a view of the window: no copy
        xbc = F.silu(convolved)
        x, B, C = self._split_xbc(xbc)
        dtype = scan_dtype(x.dtype)
        y, ssm_state = ssd_step(*(t.to(dtype) for t in (x, dt, A, B, C, ssm_state)), in_place=in_place)
        y = torch.addcmul(y, x.to(dtype), self.D.to(dtype)[:, None])
        return self._output(y.to(x.dtype), z), conv_state, ssm_state.to(x.dtype)

    def _kernel_step(
        self,
        hidden_states: torch.Tensor,
        gaps: torch.Tensor,
        conv_state: torch.Tensor,
        ssm_state: torch.Tensor,
        in_place: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`step` with the `causal_conv1d_update` and `selective_state_update` kernels, which update their states in
        place."""
        conv1d_update, state_update = causal_conv1d_update, selective_state_update
        z, xbc, dt, A = self._ssm_inputs(hidden_states, gaps)
        if not in_place:  # the kernels get copies, so the caller's cache stays valid
            conv_state = conv_state.clone(memory_format=torch.contiguous_format)
            ssm_state = ssm_state.clone(memory_format=torch.contiguous_format)
        else:  # a state from the PyTorch step may lie in its memory order; the kernels take contiguous ones
            conv_state, ssm_state = conv_state.contiguous(), ssm_state.contiguous()
        xbc = conv1d_update(xbc, conv_state, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu")
        x, B, C = self._split_xbc(xbc)
        heads, head_dim, state_size = self.num_heads, self.head_dim, self.state_size
        # Per-head scalars broadcast over the head's channels with stride 0 (the kernel's "tied head dim" mode,
        # which also reads `dt_bias`'s strides: a zero bias leaves the already-discretised dt unchanged).
        y = state_update(
            ssm_state,
            x,
            dt[..., None].expand(-1, heads, head_dim),
            A[:, None, None].expand(heads, head_dim, state_size),
            B,
            C,
            D=self.D[:, None].expand(heads, head_dim),
            dt_bias=dt.new_zeros(heads)[:, None].expand(heads, head_dim),
        )
        return self._output(y, z), conv_state, ssm_state
