"""Selective state-space scans in the Mamba-2 / SSD form, in plain PyTorch.

The recurrence (Dao & Gu, "Transformers are SSMs", 2024), per head with scalar decay::

    h_t = exp(dt_t · A) · h_{t-1} + dt_t · x_t ⊗ B_t        h_t ∈ R^{P×N}
    y_t = h_t · C_t

Three implementations that must agree to float tolerance:

- `ssd_step`: one step of the recurrence (recurrent rollout, O(1) state);
- `ssd_sequential_scan`: the step applied over a sequence (the reference);
- `ssd_chunked_scan`: the SSD block decomposition: quadratic attention-like form inside chunks of length Q,
  and a recurrence over chunk states that is linear in the number of chunks.

Shapes: `b` batch, `l` length, `h` heads, `p` head channels, `g` groups of `B`/`C`, `n` state size.
`dt` is already positive (softplus and Δt scaling are applied by the caller).
"""

import torch


def _expand_groups(bc: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Repeats group-shared `B`/`C` (..., g, n) to every head (..., h, n)."""
    return bc.repeat_interleave(num_heads // bc.shape[-2], dim=-2)


def segment_sum(x: torch.Tensor) -> torch.Tensor:
    """Stable segment sums: (..., q) -> (..., q, q) with out[i, j] = x[j+1] + ... + x[i] for i >= j, -inf above.

    Computed by a masked cumulative sum rather than a difference of cumulative sums, which loses precision
    when the sums are large.
    """
    q = x.shape[-1]
    x = x[..., None].expand(*x.shape, q)  # (..., q, q): x[..., i, j] = x_i
    strictly_lower = torch.tril(torch.ones(q, q, dtype=torch.bool, device=x.device), diagonal=-1)
    sums = torch.cumsum(x.masked_fill(~strictly_lower, 0.0), dim=-2)
    lower = torch.tril(torch.ones(q, q, dtype=torch.bool, device=x.device))
    return sums.masked_fill(~lower, float("-inf"))


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
    state = state * decay[..., None, None] + torch.einsum("bhp,bhn->bhpn", x * dt[..., None], B)
    y = torch.einsum("bhpn,bhn->bhp", state, C)
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

    The sequence is padded to a multiple of `chunk_size` with `dt = 0` (no decay, no input), which leaves the
    state unchanged, so the final state is exact.
    """
    b, length, h, p = x.shape
    n = B.shape[-1]
    pad = (-length) % chunk_size
    if pad:
        x, dt, B, C = (torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    num_chunks = x.shape[1] // chunk_size
    x = x.reshape(b, num_chunks, chunk_size, h, p)
    dt = dt.reshape(b, num_chunks, chunk_size, h)
    B = _expand_groups(B, h).reshape(b, num_chunks, chunk_size, h, n)
    C = _expand_groups(C, h).reshape(b, num_chunks, chunk_size, h, n)

    x_dt = x * dt[..., None]  # (b, c, q, h, p)
    dA = (dt * A).permute(0, 3, 1, 2)  # (b, h, c, q)
    dA_cumsum = torch.cumsum(dA, dim=-1)  # (b, h, c, q)

    # 1. Outputs from inputs of the same chunk (the diagonal blocks): a masked, decayed attention.
    decay_within = torch.exp(segment_sum(dA))  # (b, h, c, q, q)
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, decay_within, x_dt)

    # 2. Each chunk's contribution to the state at its end.
    decay_to_end = torch.exp(dA_cumsum[..., -1:] - dA_cumsum)  # (b, h, c, q)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_to_end, x_dt)  # (b, c, h, p, n)

    # 3. Recurrence over chunk states: linear in the number of chunks.
    chunk_decay = torch.exp(dA_cumsum[..., -1])  # (b, h, c)
    state = x.new_zeros(b, h, p, n) if initial_state is None else initial_state
    states_entering = []
    for k in range(num_chunks):
        states_entering.append(state)
        state = state * chunk_decay[:, :, k, None, None] + chunk_states[:, k]
    entering = torch.stack(states_entering, dim=1)  # (b, c, h, p, n)

    # 4. Outputs from the state entering each chunk, decayed to each position.
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, entering, torch.exp(dA_cumsum))
    y = (y_diag + y_off).reshape(b, num_chunks * chunk_size, h, p)[:, :length]
    return y, state
