"""Unit mixing within a step, shared by the evolver's blocks and its sampling head: a depthwise convolution over the
unit grid or self-attention over the units; and the zero-initialised linear layer of adaLN modulation and heads."""

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_veltrix import VeltrixEvolverConfig


class VeltrixZeroInitLinear(nn.Linear):
    """A linear layer initialised to zero: adaLN modulation (identity at init) and the velocity head."""


class VeltrixConvUnitMixer(nn.Module):
    """Mixes units within a step by a depthwise convolution over the unit grid, then a pointwise projection."""

    def __init__(self, config: VeltrixEvolverConfig):
        super().__init__()
        self.grid_size = config.unit_grid_size
        self.depthwise = nn.Conv2d(
            config.hidden_size,
            config.hidden_size,
            config.mixing_kernel_size,
            padding=config.mixing_kernel_size // 2,
            groups=config.hidden_size,
        )
        self.pointwise = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, U, H) -> (N, U, H), with U = grid_size² units in row-major grid order."""
        n, u, h = x.shape
        # The units already lie channels-last on the grid: (N, rows, cols, H) permuted to (N, H, rows, cols) is a
        # view, channels-last with a proper batch stride even at N = 1 (a transpose-then-reshape gives that size-1
        # axis stride H, which sends oneDNN to its NCHW kernel with a copy in and out), and the channels-last output
        # reads back as (N, U, H) without a copy.
        grid = x.reshape(n, self.grid_size, self.grid_size, h)
        if torch.compiler.is_compiling():
            mixed = self._depthwise_by_shifts(grid).reshape(n, u, h)
        else:
            mixed = self.depthwise(grid.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(n, u, h)
        return self.pointwise(F.gelu(mixed))

    def _depthwise_by_shifts(self, grid: torch.Tensor) -> torch.Tensor:
        """`depthwise` on a channels-last grid (N, rows, cols, H) as a sum of its kernel² shifted, channel-scaled
        copies: the same products and sums, which `torch.compile` fuses into one loop over the grid (a oneDNN
        convolution call costs tens of µs on a grid of 64 units)."""
        size = self.depthwise.kernel_size[0]
        pad = size // 2
        rows, cols = grid.shape[1:3]
        padded = F.pad(grid, (0, 0, pad, pad, pad, pad))
        # (size, size, H): each tap's channel weights contiguous, so the loop over channels vectorises.
        weight = self.depthwise.weight[:, 0].permute(1, 2, 0).contiguous()
        mixed = self.depthwise.bias
        for i in range(size):
            for j in range(size):
                mixed = mixed + padded[:, i : i + rows, j : j + cols] * weight[i, j]
        return mixed


class VeltrixAttentionUnitMixer(nn.Module):
    """Mixes units within a step by multi-head self-attention over the unit axis."""

    def __init__(self, config: VeltrixEvolverConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, U, H) -> (N, U, H)."""
        n, u, h = x.shape
        q, k, v = self.qkv(x).reshape(n, u, 3, self.num_heads, h // self.num_heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v)  # (N, heads, U, head_dim)
        return self.out_proj(attended.transpose(1, 2).reshape(n, u, h))


UNIT_MIXER_CLASSES = {"conv": VeltrixConvUnitMixer, "attention": VeltrixAttentionUnitMixer}


__all__ = ["UNIT_MIXER_CLASSES", "VeltrixAttentionUnitMixer", "VeltrixConvUnitMixer", "VeltrixZeroInitLinear"]
