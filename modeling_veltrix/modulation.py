"""adaLN modulation (Peebles & Xie 2023, DiT), shared by the evolver's conditioning and the decoder's blocks."""

import torch


def modulate(hidden_states: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x · (1 + scale) + shift``, with `shift` and `scale` broadcast over the token axis: tokens (B, N, D) with
    (B, 1, D) in the decoder, units (B, T, U, H) with (B, T, 1, H) in the evolver."""
    return modulate_with_gain(hidden_states, shift, 1 + scale)


def modulate_with_gain(hidden_states: torch.Tensor, shift: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """`modulate` given the gain `1 + scale` (a block makes the gains of all its modulations in one addition): one
    multiply-add kernel."""
    return torch.addcmul(shift, hidden_states, gain)
