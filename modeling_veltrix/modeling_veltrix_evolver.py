"""TRE: the Veltrix trajectory evolver, `S_{t+Δt} = S_t + Δt · Φ(S_t, C_t, Δt)`.

A stack of blocks over state units `(B, T, U, D)`: unit mixing within a step, a temporal selective state-space
model over time per unit (Mamba-2 / SSD, Dao & Gu 2024) whose step size scales with the elapsed time, and a
SwiGLU MLP; every block is conditioned per step on the action and the step size by adaLN (Perez et al. 2018,
Peebles & Xie 2023). A zero-initialised head predicts `dS/dt`, so an untrained evolver predicts "nothing moves".

Whole sequences run the chunked (or sequential) SSD scan, recurrent steps the one-step update: in PyTorch, or on
CUDA with the mamba-ssm / causal-conv1d kernels when installed (`VeltrixEvolverModel.kernel_path` says which).
Rollouts run one recurrent step at a time with a `VeltrixEvolverCache` whose size does not depend on the horizon,
in the whitepaper's three modes: free (a learned null condition), conditional (actions) and counterfactual (the
same context, a branch with edited conditions or state, and the branches' divergence). `lyapunov_penalty` (a
stability regulariser) and `midpoint_rollout` (a time-consistency objective) are optional training terms.
"""

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .configuration_veltrix import VeltrixEvolverConfig
from .input_validation import check_finite, check_increasing, check_shape
from .selective_ssm import (
    causal_conv1d_fn,
    causal_conv1d_update,
    mamba_chunk_scan_combined,
    mamba_kernels_available,
    selective_state_update,
    ssd_chunked_scan,
    ssd_sequential_scan,
    ssd_step,
)
from .weights_check import VeltrixCheckedLoadingMixin

logger = logging.get_logger(__name__)


def regular_timestamps(batch_size: int, length: int, interval: float, like: torch.Tensor) -> torch.Tensor:
    """Timestamps `0, interval, 2·interval, ...` of shape (batch_size, length)."""
    steps = torch.arange(length, dtype=like.dtype, device=like.device) * interval
    return steps.expand(batch_size, length)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation; `shift`/`scale` broadcast over the unit axis: x (B, T, U, H), shift (B, T, 1, H)."""
    return x * (1 + scale) + shift


class VeltrixRMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale (Zhang & Sennrich 2019)."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight


class VeltrixGatedRMSNorm(VeltrixRMSNorm):
    """RMS norm of `y · silu(z)`: the output gate of the Mamba-2 mixer."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return super().forward(x * F.silu(gate))


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
        """x: (N, U, H) -> (N, U, H), with U = grid_size²."""
        n, u, h = x.shape
        grid = x.transpose(1, 2).reshape(n, h, self.grid_size, self.grid_size)
        mixed = self.depthwise(grid).reshape(n, h, u).transpose(1, 2)
        return self.pointwise(F.gelu(mixed))


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


class VeltrixSelectiveSSM(nn.Module):
    """Mamba-2 mixer over time with a Δt-aware step: `dt = softplus(raw + bias) · Δt / Δt_ref`.

    Two named paths per entry point, chosen by one dispatch line: `cuda_kernels_forward` / `cuda_kernels_step` (the
    mamba-ssm and causal-conv1d kernels, on CUDA when installed and `config.use_mamba_kernels`) and `torch_forward`
    / `torch_step` (plain PyTorch, everywhere). `forward` runs a whole sequence from a zero state and returns the
    recurrent state at its end; `step` advances that state by one observation. The step kernels have no backward,
    so steps under autograd take the PyTorch path.
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

    def _split_projection(self, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., in_proj_out) -> gate z (..., inner), xBC (..., conv_dim), raw dt (..., heads)."""
        return torch.split(projected, [self.inner_size, self.conv_dim, self.num_heads], dim=-1)

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

    def _discretize(self, dt_raw: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        """Positive step sizes (..., heads) from raw dt and the elapsed time in reference intervals (...)."""
        return F.softplus(dt_raw + self.dt_bias) * gaps[..., None]

    def _conv_state(self, xbc: torch.Tensor) -> torch.Tensor:
        """The last `conv_kernel - 1` convolution inputs of xbc (N, L, conv_dim), zero-padded on the left when the
        sequence is shorter: (N, conv_dim, conv_kernel - 1)."""
        window = xbc[:, -(self.conv_kernel - 1) :].transpose(1, 2)
        return F.pad(window, (self.conv_kernel - 1 - window.shape[-1], 0))

    def _causal_conv(self, xbc: torch.Tensor) -> torch.Tensor:
        """Causal depthwise convolution over time of xbc (N, L, conv_dim), in that layout: a sum of shifted,
        channel-scaled copies, which on CPU beats transposing to `nn.Conv1d`'s (N, C, L) and back."""
        length, width = xbc.shape[1], self.conv_kernel
        weight = self.conv1d.weight[:, 0]  # (conv_dim, K)
        padded = F.pad(xbc, (0, 0, width - 1, 0))  # (N, L + K - 1, conv_dim)
        out = torch.addcmul(self.conv1d.bias, padded[:, width - 1 :], weight[:, width - 1])
        for k in range(width - 1):
            out.addcmul_(padded[:, k : k + length], weight[:, k])
        return out

    def _output(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Gated RMS norm and output projection: y (..., heads, head_dim), z (..., inner) -> (..., hidden)."""
        return self.out_proj(self.norm(y.flatten(-2), z))

    def forward(
        self, hidden_states: torch.Tensor, gaps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Whole-sequence path.

        Args:
            hidden_states: (N, L, hidden).
            gaps: (N, L) elapsed time since the previous observation, in reference intervals.

        Returns:
            output (N, L, hidden), conv state (N, conv_dim, conv_kernel - 1), SSM state (N, heads, head_dim, state).
        """
        path = self.cuda_kernels_forward if self.uses_cuda_kernels(hidden_states.device) else self.torch_forward
        return path(hidden_states, gaps)

    def torch_forward(
        self, hidden_states: torch.Tensor, gaps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward` in plain PyTorch: the chunked SSD (or the sequential reference) of `selective_ssm`."""
        z, xbc, dt_raw = self._split_projection(self.in_proj(hidden_states))
        conv_state = self._conv_state(xbc)
        x, B, C = self._split_xbc(F.silu(self._causal_conv(xbc)))
        dt = self._discretize(dt_raw, gaps)
        A = -torch.exp(self.A_log.float())
        if self.scan_implementation == "chunked":
            y, ssm_state = ssd_chunked_scan(x, dt, A, B, C, self.chunk_size)
        else:
            y, ssm_state = ssd_sequential_scan(x, dt, A, B, C)
        y = torch.addcmul(y, x, self.D[:, None])
        return self._output(y, z), conv_state, ssm_state

    def cuda_kernels_forward(
        self, hidden_states: torch.Tensor, gaps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward` with `causal_conv1d_fn` and `mamba_chunk_scan_combined`; the Δt-scaled step sizes are computed
        here and passed with `dt_softplus=False`."""
        z, xbc, dt_raw = self._split_projection(self.in_proj(hidden_states))
        conv_state = self._conv_state(xbc)
        # Channel-first and contiguous: the kernel's channel-last mode needs strides that are multiples of 8.
        xbc = causal_conv1d_fn(
            xbc.transpose(1, 2).contiguous(), self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu"
        ).transpose(1, 2)
        x, B, C = self._split_xbc(xbc)
        dt = self._discretize(dt_raw, gaps)
        A = -torch.exp(self.A_log.float())
        y, ssm_state = mamba_chunk_scan_combined(
            x, dt, A, B, C, self.chunk_size, D=self.D, dt_softplus=False, return_final_states=True
        )
        return self._output(y, z), conv_state, ssm_state.to(x.dtype)

    def step(
        self, hidden_states: torch.Tensor, gaps: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One recurrent step: hidden (N, hidden), gaps (N,), states as returned by `forward`; returns the output
        (N, hidden) and new states (the given ones are left untouched, so a cache can be shared by branches)."""
        use_kernels = not torch.is_grad_enabled() and self.uses_cuda_kernels(hidden_states.device)
        path = self.cuda_kernels_step if use_kernels else self.torch_step
        return path(hidden_states, gaps, conv_state, ssm_state)

    def torch_step(
        self, hidden_states: torch.Tensor, gaps: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`step` in plain PyTorch (`selective_ssm.ssd_step`)."""
        z, xbc, dt_raw = self._split_projection(self.in_proj(hidden_states))
        window = torch.cat([conv_state, xbc[..., None]], dim=-1)  # (N, conv_dim, conv_kernel)
        xbc = F.silu((window * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias)
        x, B, C = self._split_xbc(xbc)
        dt = self._discretize(dt_raw, gaps)
        A = -torch.exp(self.A_log.float())
        y, ssm_state = ssd_step(x, dt, A, B, C, ssm_state)
        y = torch.addcmul(y, x, self.D[:, None])
        return self._output(y, z), window[..., 1:], ssm_state

    def cuda_kernels_step(
        self, hidden_states: torch.Tensor, gaps: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`step` with `causal_conv1d_update` and `selective_state_update` (inference only: no backward)."""
        z, xbc, dt_raw = self._split_projection(self.in_proj(hidden_states))
        # Both kernels update their state in place; they get copies, so the caller's cache stays valid.
        conv_state, ssm_state = conv_state.clone(), ssm_state.clone()
        xbc = causal_conv1d_update(xbc, conv_state, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu")
        x, B, C = self._split_xbc(xbc)
        dt = self._discretize(dt_raw, gaps)
        A = -torch.exp(self.A_log.float())
        heads, head_dim, state_size = self.num_heads, self.head_dim, self.state_size
        # Per-head scalars broadcast over the head's channels with stride 0 (the kernel's "tied head dim" mode,
        # which also reads `dt_bias`'s strides: a zero bias leaves our already-discretised dt unchanged).
        y = selective_state_update(
            ssm_state,
            x,
            dt[..., None].expand(-1, heads, head_dim),
            A[:, None, None].expand(heads, head_dim, state_size),
            B,
            C,
            D=self.D[:, None].expand(heads, head_dim),
            dt_bias=dt.new_zeros(heads)[:, None].expand(heads, head_dim),
            dt_softplus=False,
        )
        return self._output(y, z), conv_state, ssm_state


class VeltrixConditionEmbedding(nn.Module):
    """Per-step condition `c_t` from the action (or a learned null condition) and the step size to take."""

    def __init__(self, config: VeltrixEvolverConfig):
        super().__init__()
        self.action_proj = nn.Linear(config.action_dim, config.condition_size) if config.action_dim else None
        self.null_condition = nn.Parameter(torch.zeros(config.condition_size))
        self.step_proj = nn.Linear(2, config.condition_size)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(config.condition_size, config.condition_size))

    def forward(self, step_sizes: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
        """step_sizes (...,) in reference intervals, actions (..., A) or None -> (..., condition_size)."""
        step_features = torch.stack([step_sizes, torch.log(step_sizes)], dim=-1)
        action_term = self.null_condition if actions is None else self.action_proj(actions)
        return self.mlp(self.step_proj(step_features) + action_term)


class VeltrixEvolverBlock(nn.Module):
    """adaLN-conditioned block: unit mixing within a step -> selective SSM over time -> SwiGLU MLP."""

    def __init__(self, config: VeltrixEvolverConfig):
        super().__init__()
        hidden = config.hidden_size
        self.mix_norm = VeltrixRMSNorm(hidden, config.rms_norm_eps)
        self.unit_mixer = UNIT_MIXER_CLASSES[config.unit_mixer](config)
        self.ssm_norm = VeltrixRMSNorm(hidden, config.rms_norm_eps)
        self.ssm = VeltrixSelectiveSSM(config)
        self.mlp_norm = VeltrixRMSNorm(hidden, config.rms_norm_eps)
        self.gate_up_proj = nn.Linear(hidden, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, hidden, bias=False)
        self.modulation = VeltrixZeroInitLinear(config.condition_size, 6 * hidden)

    def _mix_units(self, h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """h (B, T, U, H) -> residual update of the unit mixer."""
        b, t, u, hidden = h.shape
        mixed = self.unit_mixer(modulate(self.mix_norm(h), shift, scale).reshape(b * t, u, hidden))
        return mixed.reshape(b, t, u, hidden)

    def _mlp(self, h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(modulate(self.mlp_norm(h), shift, scale)).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)

    def _modulation(self, condition: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """condition (B, T, C) -> six (B, T, 1, H) shift/scale tensors."""
        return self.modulation(condition)[..., None, :].chunk(6, dim=-1)

    def forward(
        self, h: torch.Tensor, condition: torch.Tensor, gaps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h (B, T, U, H), condition (B, T, C), gaps (B, T) -> h, conv state, SSM state (batched over B·U)."""
        shift_mix, scale_mix, shift_ssm, scale_ssm, shift_mlp, scale_mlp = self._modulation(condition)
        h = h + self._mix_units(h, shift_mix, scale_mix)
        b, t, u, hidden = h.shape
        ssm_in = modulate(self.ssm_norm(h), shift_ssm, scale_ssm).transpose(1, 2).reshape(b * u, t, hidden)
        unit_gaps = gaps[:, None, :].expand(b, u, t).reshape(b * u, t)
        ssm_out, conv_state, ssm_state = self.ssm(ssm_in, unit_gaps)
        h = h + ssm_out.reshape(b, u, t, hidden).transpose(1, 2)
        h = h + self._mlp(h, shift_mlp, scale_mlp)
        return h, conv_state, ssm_state

    def step(
        self,
        h: torch.Tensor,
        condition: torch.Tensor,
        gaps: torch.Tensor,
        conv_state: torch.Tensor,
        ssm_state: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step: h (B, U, H), condition (B, C), gaps (B,); states batched over B·U."""
        h, condition, gaps = h[:, None], condition[:, None], gaps[:, None]
        shift_mix, scale_mix, shift_ssm, scale_ssm, shift_mlp, scale_mlp = self._modulation(condition)
        h = h + self._mix_units(h, shift_mix, scale_mix)
        b, _, u, hidden = h.shape
        ssm_in = modulate(self.ssm_norm(h), shift_ssm, scale_ssm).reshape(b * u, hidden)
        unit_gaps = gaps.expand(b, u).reshape(b * u)
        ssm_out, conv_state, ssm_state = self.ssm.step(ssm_in, unit_gaps, conv_state, ssm_state)
        h = h + ssm_out.reshape(b, 1, u, hidden)
        h = h + self._mlp(h, shift_mlp, scale_mlp)
        return h[:, 0], conv_state, ssm_state


EVOLUTION_MODES = ("free", "conditional", "counterfactual")


@dataclass
class VeltrixEvolverCache:
    """Recurrent state of a rollout: per layer a conv state (B·U, conv_dim, conv_kernel - 1) and an SSM state
    (B·U, heads, head_dim, state_size), plus the time (B,) of the last observed step. Its size does not depend on
    how many steps have been taken; steps return a new cache and leave the old one valid (branches can share it)."""

    conv_states: list[torch.Tensor]
    ssm_states: list[torch.Tensor]
    last_timestamps: torch.Tensor

    def num_bytes(self) -> int:
        """Memory held by the cache's tensors, in bytes."""
        tensors = [*self.conv_states, *self.ssm_states, self.last_timestamps]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class VeltrixIntervention:
    """An edit of the counterfactual branch of `VeltrixEvolverModel.rollout(..., mode="counterfactual")`.

    Args:
        step (`int`):
            The first future step (0 = the first predicted state) the edit can change; before it the counterfactual
            branch is the factual one.
        conditions (`torch.Tensor` of shape `(B, num_steps - step, A)`, *optional*):
            Replacement actions: entry `i` drives the transition that produces future step `step + i` (trajectory
            index `T + step + i - 1` of `rollout`'s `conditions`). With a free factual branch, the counterfactual one
            is conditioned from `step` on.
        state_delta (`torch.Tensor` of shape `(B, U, D)`, *optional*):
            Added to the predicted state of future step `step` (an impulse on the state itself); later steps evolve
            from the edited state.
    """

    step: int
    conditions: torch.Tensor | None = None
    state_delta: torch.Tensor | None = None


class VeltrixEvolverPreTrainedModel(VeltrixCheckedLoadingMixin, PreTrainedModel):
    config_class = VeltrixEvolverConfig
    base_model_prefix = "evolver"
    main_input_name = "units"
    _no_split_modules = ["VeltrixEvolverBlock"]
    supports_gradient_checkpointing = False

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, VeltrixSelectiveSSM):
            module.reset_ssm_parameters()
        elif isinstance(module, VeltrixZeroInitLinear):
            # Identity modulation (scale = shift = 0) and dS/dt = 0: an untrained evolver predicts no motion.
            init.zeros_(module.weight)
            init.zeros_(module.bias)


@dataclass
class VeltrixEvolverOutput(ModelOutput):
    """
    Args:
        predicted_units (`torch.Tensor` of shape `(B, T, U, D)`):
            For every input step t, the predicted state at `prediction_timestamps[:, t]`.
        velocities (`torch.Tensor` of shape `(B, T, U, D)`):
            The predicted time derivative `dS/dt` (per second) at every step.
        cache (`VeltrixEvolverCache`, *optional*):
            The recurrent state after the last step, returned when `use_cache=True`.
    """

    predicted_units: torch.Tensor | None = None
    velocities: torch.Tensor | None = None
    cache: VeltrixEvolverCache | None = None


@dataclass
class VeltrixRolloutOutput(ModelOutput):
    """
    Args:
        units (`torch.Tensor` of shape `(B, num_steps, U, D)`): the evolved future states.
        timestamps (`torch.Tensor` of shape `(B, num_steps)`): their times in seconds.
    """

    units: torch.Tensor | None = None
    timestamps: torch.Tensor | None = None


@dataclass
class VeltrixCounterfactualRolloutOutput(VeltrixRolloutOutput):
    """
    Args:
        units (`torch.Tensor` of shape `(B, num_steps, U, D)`): the factual branch (the given conditions).
        timestamps (`torch.Tensor` of shape `(B, num_steps)`): the times of both branches, in seconds.
        counterfactual_units (`torch.Tensor` of shape `(B, num_steps, U, D)`): the branch with the interventions.
        divergence (`torch.Tensor` of shape `(B, num_steps)`): per step, the root-mean-square difference of the two
            branches over units and channels; zero before the first intervened step.
    """

    counterfactual_units: torch.Tensor | None = None
    divergence: torch.Tensor | None = None


class VeltrixEvolverModel(VeltrixEvolverPreTrainedModel):
    """The Veltrix evolver. `forward` predicts, in parallel over a trajectory of units, the state at the next
    timestamp from every step (teacher forcing); `step`, `rollout` and `rollout_stream` evolve a state recurrently,
    with a cache whose size does not depend on the horizon."""

    def __init__(self, config: VeltrixEvolverConfig):
        super().__init__(config)
        self.condition_embedding = VeltrixConditionEmbedding(config)
        self.in_proj = nn.Linear(config.unit_dim, config.hidden_size)
        self.layers = nn.ModuleList(VeltrixEvolverBlock(config) for _ in range(config.num_hidden_layers))
        self.norm_f = VeltrixRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.velocity_head = VeltrixZeroInitLinear(config.hidden_size, config.unit_dim)
        self.post_init()

    @property
    def kernel_path(self) -> str:
        """`"mamba_ssm"` when whole sequences run the mamba-ssm / causal-conv1d CUDA kernels (model on CUDA, packages
        installed, `config.use_mamba_kernels`), else `"torch"` (logged once when CUDA lacks the packages)."""
        return "mamba_ssm" if self.layers[0].ssm.uses_cuda_kernels(self.device) else "torch"

    def _check_units(self, name: str, units: torch.Tensor, steps: bool) -> None:
        expected = (
            ("B", "T", self.config.num_units, self.config.unit_dim)
            if steps
            else ("B", self.config.num_units, self.config.unit_dim)
        )
        check_shape(name, units, expected)
        check_finite(name, units)

    def _check_conditions(self, name: str, actions: torch.Tensor | None, lead: tuple[int, ...]) -> None:
        if actions is None:
            return
        if not self.config.action_dim:
            raise ValueError(f"`{name}` was given but this evolver takes no actions (config.action_dim=0).")
        check_shape(name, actions, (*lead, self.config.action_dim))
        check_finite(name, actions)

    def _velocity_to_units(
        self, units: torch.Tensor, hidden: torch.Tensor, step_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """S_next = S + Δt · dS/dt; the head's output is the change per reference interval."""
        change_per_interval = self.velocity_head(self.norm_f(hidden))
        predicted = units + step_sizes[..., None, None] * change_per_interval
        return predicted, change_per_interval / self.config.dt_reference

    def forward(
        self,
        units: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
        prediction_timestamps: torch.Tensor | None = None,
        use_cache: bool = False,
        return_dict: bool = True,
    ) -> VeltrixEvolverOutput | tuple:
        r"""
        Args:
            units (`torch.Tensor` of shape `(B, T, U, D)`): observed (or encoded) states.
            timestamps (`torch.Tensor` of shape `(B, T)`, *optional*): strictly increasing times in seconds;
                defaults to a regular grid of `config.dt_reference`.
            actions (`torch.Tensor` of shape `(B, T, A)`, *optional*): the action applied at each step; `None`
                evolves freely under the learned null condition.
            prediction_timestamps (`torch.Tensor` of shape `(B, T)`, *optional*): the time each step predicts;
                defaults to the next timestamp, and for the last step one more interval of the same length.
            use_cache (`bool`): also return the recurrent state after the last step, to continue with `step`.
        """
        self._check_units("units", units, steps=True)
        b, t = units.shape[:2]
        if timestamps is None:
            timestamps = regular_timestamps(b, t, self.config.dt_reference, units)
        check_shape("timestamps", timestamps, (b, t))
        check_finite("timestamps", timestamps)
        check_increasing("timestamps", timestamps)
        self._check_conditions("actions", actions, (b, t))
        if prediction_timestamps is None:
            last_gap = (
                timestamps[:, -1:] - timestamps[:, -2:-1]
                if t > 1
                else torch.full_like(timestamps[:, -1:], self.config.dt_reference)
            )
            prediction_timestamps = torch.cat([timestamps[:, 1:], timestamps[:, -1:] + last_gap], dim=1)
        check_shape("prediction_timestamps", prediction_timestamps, (b, t))
        check_finite("prediction_timestamps", prediction_timestamps)
        if not bool((prediction_timestamps > timestamps).all()):
            raise ValueError("`prediction_timestamps` must be later than `timestamps` at every step.")

        reference = self.config.dt_reference
        gaps = torch.cat([torch.ones_like(timestamps[:, :1]), timestamps.diff(dim=1) / reference], dim=1)
        step_sizes = (prediction_timestamps - timestamps) / reference
        condition = self.condition_embedding(step_sizes, actions)
        hidden = self.in_proj(units)
        conv_states, ssm_states = [], []
        for layer in self.layers:
            hidden, conv_state, ssm_state = layer(hidden, condition, gaps)
            conv_states.append(conv_state)
            ssm_states.append(ssm_state)
        predicted, velocities = self._velocity_to_units(units, hidden, step_sizes)
        cache = VeltrixEvolverCache(conv_states, ssm_states, timestamps[:, -1]) if use_cache else None
        if not return_dict:
            return tuple(v for v in (predicted, velocities, cache) if v is not None)
        return VeltrixEvolverOutput(predicted_units=predicted, velocities=velocities, cache=cache)

    def step(
        self,
        units: torch.Tensor,
        cache: VeltrixEvolverCache,
        timestamp: torch.Tensor,
        prediction_timestamp: torch.Tensor,
        action: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, VeltrixEvolverCache]:
        """Feeds one observed (or predicted) state and predicts the next.

        Args:
            units: (B, U, D) the state at `timestamp`.
            cache: the recurrent state after the previous step (from `forward(..., use_cache=True)` or `step`).
            timestamp: (B,) its time, later than `cache.last_timestamps`.
            prediction_timestamp: (B,) the time to predict, later than `timestamp`.
            action: (B, A) the action applied at this step, or `None` for the null condition.

        Returns:
            The predicted state (B, U, D) at `prediction_timestamp` and the updated cache (`cache` stays valid).
        """
        self._check_units("units", units, steps=False)
        b = units.shape[0]
        for name, value in (("timestamp", timestamp), ("prediction_timestamp", prediction_timestamp)):
            check_shape(name, value, (b,))
            check_finite(name, value)
        if not bool((timestamp > cache.last_timestamps).all()):
            raise ValueError("`timestamp` must be later than the cache's last timestamp.")
        if not bool((prediction_timestamp > timestamp).all()):
            raise ValueError("`prediction_timestamp` must be later than `timestamp`.")
        self._check_conditions("action", action, (b,))
        return self._step(units, cache, timestamp, prediction_timestamp, action)

    def _step(
        self,
        units: torch.Tensor,
        cache: VeltrixEvolverCache,
        timestamp: torch.Tensor,
        prediction_timestamp: torch.Tensor,
        action: torch.Tensor | None,
    ) -> tuple[torch.Tensor, VeltrixEvolverCache]:
        """`step` without input checks (rollouts check their inputs once)."""
        reference = self.config.dt_reference
        gaps = (timestamp - cache.last_timestamps) / reference
        step_sizes = (prediction_timestamp - timestamp) / reference
        condition = self.condition_embedding(step_sizes, action)
        hidden = self.in_proj(units)
        conv_states, ssm_states = [], []
        for layer, conv_state, ssm_state in zip(self.layers, cache.conv_states, cache.ssm_states, strict=True):
            hidden, conv_state, ssm_state = layer.step(hidden, condition, gaps, conv_state, ssm_state)
            conv_states.append(conv_state)
            ssm_states.append(ssm_state)
        predicted, _ = self._velocity_to_units(units[:, None], hidden[:, None], step_sizes[:, None])
        return predicted[:, 0], VeltrixEvolverCache(conv_states, ssm_states, timestamp)

    def _check_rollout_inputs(
        self, context: torch.Tensor, num_steps: int, conditions: torch.Tensor | None, timestamps: torch.Tensor | None
    ) -> None:
        """Checks a rollout's inputs (`timestamps` may be None: a regular grid)."""
        self._check_units("context", context, steps=True)
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"`num_steps` must be an int >= 1, got {num_steps!r}.")
        b, t = context.shape[:2]
        if timestamps is not None:
            check_shape("timestamps", timestamps, (b, t + num_steps))
            check_finite("timestamps", timestamps)
            check_increasing("timestamps", timestamps)
        self._check_conditions("conditions", conditions, (b, t + num_steps))

    def _rollout_times(
        self, context: torch.Tensor, timestamps: torch.Tensor | None
    ) -> tuple[torch.Tensor, Callable[[int], torch.Tensor]]:
        """The context's timestamps (B, T) and `time_at(k)`, the time (B,) of trajectory index T - 1 + k (k = 0: the
        last context step, k >= 1: future step k - 1). Default timestamps are made one at a time, so a stream holds
        nothing that grows with the horizon."""
        b, t = context.shape[:2]
        if timestamps is not None:
            return timestamps[:, :t], lambda k: timestamps[:, t - 1 + k]
        interval = self.config.dt_reference
        grid = regular_timestamps(b, t, interval, context)
        return grid, lambda k: torch.full((b,), t - 1 + k, dtype=context.dtype, device=context.device) * interval

    def check_rollout_mode(
        self,
        mode: str | None,
        conditions: torch.Tensor | None,
        interventions: object,
        batch_size: int,
        num_steps: int,
    ) -> tuple[str, list[VeltrixIntervention]]:
        """Checks `rollout`'s `mode` against its `conditions` and `interventions` (see `rollout` for the default
        mode); returns the mode and the interventions as a list (empty unless the mode is counterfactual)."""
        if mode is None:
            mode = (
                "counterfactual" if interventions is not None else "conditional" if conditions is not None else "free"
            )
        if mode not in EVOLUTION_MODES:
            raise ValueError(f"`mode` must be one of {EVOLUTION_MODES}, got {mode!r}.")
        if mode == "free" and conditions is not None:
            raise ValueError("`conditions` must be None for mode='free' (the null condition drives it).")
        if mode == "conditional" and conditions is None:
            raise ValueError("`conditions` of shape (B, T + num_steps, A) are required for mode='conditional'.")
        if mode == "counterfactual" and interventions is None:
            raise ValueError("`interventions` are required for mode='counterfactual'.")
        if mode != "counterfactual" and interventions is not None:
            raise ValueError(f"`interventions` are only used by mode='counterfactual', got mode={mode!r}.")
        edits = self._check_interventions(interventions, batch_size, num_steps) if mode == "counterfactual" else []
        return mode, edits

    def _check_interventions(self, interventions: object, batch_size: int, num_steps: int) -> list[VeltrixIntervention]:
        """Checks `rollout`'s interventions (one or a sequence); returns them as a list."""
        items = [interventions] if isinstance(interventions, VeltrixIntervention) else interventions
        if not isinstance(items, (list, tuple)) or not items:
            raise ValueError(
                f"`interventions` must be a VeltrixIntervention or a non-empty list of them, got {interventions!r}."
            )
        unit_shape = (batch_size, self.config.num_units, self.config.unit_dim)
        for index, intervention in enumerate(items):
            name = f"interventions[{index}]"
            if not isinstance(intervention, VeltrixIntervention):
                raise ValueError(f"`{name}` must be a VeltrixIntervention, got {type(intervention).__name__}.")
            step = intervention.step
            if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < num_steps:
                raise ValueError(f"`{name}.step` must be an int in [0, num_steps={num_steps}), got {step!r}.")
            if intervention.conditions is None and intervention.state_delta is None:
                raise ValueError(f"`{name}` must set `conditions`, `state_delta` or both.")
            self._check_conditions(f"{name}.conditions", intervention.conditions, (batch_size, num_steps - step))
            if intervention.state_delta is not None:
                check_shape(f"{name}.state_delta", intervention.state_delta, unit_shape)
                check_finite(f"{name}.state_delta", intervention.state_delta)
        return list(items)

    def _prefill(
        self, context: torch.Tensor, context_times: torch.Tensor, conditions: torch.Tensor | None
    ) -> VeltrixEvolverCache:
        """The cache after all context steps but the last, which the first rollout step feeds (so that a branch can
        fork before it); with a single context step, zero states whose first gap is one reference interval, as in
        `forward`."""
        b, t = context.shape[:2]
        if t > 1:
            return self(
                context[:, :-1],
                timestamps=context_times[:, :-1],
                actions=None if conditions is None else conditions[:, : t - 1],
                prediction_timestamps=context_times[:, 1:],
                use_cache=True,
            ).cache
        rows = b * self.config.num_units
        conv_states, ssm_states = [], []
        for layer in self.layers:
            ssm = layer.ssm
            conv_states.append(context.new_zeros(rows, ssm.conv_dim, ssm.conv_kernel - 1))
            ssm_states.append(context.new_zeros(rows, ssm.num_heads, ssm.head_dim, ssm.state_size))
        return VeltrixEvolverCache(conv_states, ssm_states, context_times[:, 0] - self.config.dt_reference)

    def _advance(
        self,
        state: torch.Tensor,
        cache: VeltrixEvolverCache,
        time_at: Callable[[int], torch.Tensor],
        action_at: Callable[[int], torch.Tensor | None],
        state_deltas: dict[int, torch.Tensor],
        start: int,
        stop: int,
    ) -> Iterator[tuple[torch.Tensor, VeltrixEvolverCache]]:
        """Open-loop future steps `start, ..., stop - 1`: step k feeds the state (B, U, D) at `time_at(k)` and
        predicts the one at `time_at(k + 1)` under `action_at(k)`, then adds `state_deltas.get(k)`; yields the
        predicted state and the cache after each step."""
        for k in range(start, stop):
            state, cache = self._step(state, cache, time_at(k), time_at(k + 1), action_at(k))
            if k in state_deltas:
                state = state + state_deltas[k]
            yield state, cache

    def rollout(
        self,
        context: torch.Tensor,
        num_steps: int,
        conditions: torch.Tensor | None = None,
        timestamps: torch.Tensor | None = None,
        mode: str | None = None,
        interventions: VeltrixIntervention | list[VeltrixIntervention] | None = None,
    ) -> VeltrixRolloutOutput | VeltrixCounterfactualRolloutOutput:
        r"""Evolves the state `num_steps` steps past the context, feeding each prediction back (open loop).

        Args:
            context (`torch.Tensor` of shape `(B, T, U, D)`): observed states.
            num_steps (`int`): how many future states to produce (>= 1).
            conditions (`torch.Tensor` of shape `(B, T + num_steps, A)`, *optional*): the action at every step of
                the whole trajectory, context and future (the last one acts after the horizon and is unused).
            timestamps (`torch.Tensor` of shape `(B, T + num_steps)`, *optional*): strictly increasing times of
                the whole trajectory; defaults to a regular grid of `config.dt_reference`.
            mode (`str`, *optional*): the evolution mode (the whitepaper's three):
                - `"free"`: no conditions; the learned null condition drives every step;
                - `"conditional"`: `conditions` drive the steps;
                - `"counterfactual"`: from the same context, a factual branch (under `conditions`, or free when
                  None) and a counterfactual branch edited by `interventions`; returns both and their divergence.
                Defaults to `"counterfactual"` when `interventions` are given, else `"conditional"` when
                `conditions` are, else `"free"`.
            interventions ([`VeltrixIntervention`] or a list of them, *optional*): the edits of the counterfactual
                branch (replacement conditions and/or a state impulse from a step on); required by, and only used
                by, `mode="counterfactual"`.

        Returns:
            [`VeltrixRolloutOutput`], or [`VeltrixCounterfactualRolloutOutput`] for `mode="counterfactual"`.
        """
        self._check_rollout_inputs(context, num_steps, conditions, timestamps)
        b, t = context.shape[:2]
        mode, edits = self.check_rollout_mode(mode, conditions, interventions, b, num_steps)
        if timestamps is None:
            timestamps = regular_timestamps(b, t + num_steps, self.config.dt_reference, context)
        context_times, time_at = self._rollout_times(context, timestamps)

        def action_at(k: int) -> torch.Tensor | None:
            """The base action driving future step k (trajectory index T - 1 + k)."""
            return None if conditions is None else conditions[:, t - 1 + k]

        cache = self._prefill(context, context_times, conditions)
        fork_step = min((edit.step for edit in edits), default=num_steps)
        fork = (context[:, -1], cache)
        factual = []
        steps = self._advance(context[:, -1], cache, time_at, action_at, {}, 0, num_steps)
        for k, (state, cache_after) in enumerate(steps):
            factual.append(state)
            if k + 1 == fork_step:
                fork = (state, cache_after)
        units = torch.stack(factual, dim=1)
        if mode != "counterfactual":
            return VeltrixRolloutOutput(units=units, timestamps=timestamps[:, t:])

        def edited_action_at(k: int) -> torch.Tensor | None:
            """The last intervention replacing the condition of step k wins; else the base action."""
            for edit in reversed(edits):
                if edit.conditions is not None and k >= edit.step:
                    return edit.conditions[:, k - edit.step]
            return action_at(k)

        state_deltas = {}
        for edit in edits:
            if edit.state_delta is not None:
                previous = state_deltas.get(edit.step)
                state_deltas[edit.step] = edit.state_delta if previous is None else previous + edit.state_delta
        branch = self._advance(*fork, time_at, edited_action_at, state_deltas, fork_step, num_steps)
        counterfactual = torch.cat([units[:, :fork_step], torch.stack([s for s, _ in branch], dim=1)], dim=1)
        divergence = (counterfactual - units).pow(2).mean(dim=(2, 3)).sqrt()
        return VeltrixCounterfactualRolloutOutput(
            units=units,
            timestamps=timestamps[:, t:],
            counterfactual_units=counterfactual,
            divergence=divergence,
        )

    def rollout_stream(
        self,
        context: torch.Tensor,
        num_steps: int,
        conditions: torch.Tensor | None = None,
        timestamps: torch.Tensor | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        r"""`rollout` (free or conditional) one future state at a time, in memory independent of the horizon: only
        the cache and the current state are held, and each state is handed to the caller.

        Takes `rollout`'s arguments (checked when called, before the first step) and returns an iterator over
        `(timestamp (B,), units (B, U, D))` for future steps 1 … `num_steps`.
        """
        self._check_rollout_inputs(context, num_steps, conditions, timestamps)
        t = context.shape[1]
        context_times, time_at = self._rollout_times(context, timestamps)

        def action_at(k: int) -> torch.Tensor | None:
            return None if conditions is None else conditions[:, t - 1 + k]

        cache = self._prefill(context, context_times, conditions)
        states = self._advance(context[:, -1], cache, time_at, action_at, {}, 0, num_steps)
        return ((time_at(k + 1), state) for k, (state, _) in enumerate(states))


def midpoint_rollout(
    evolver: VeltrixEvolverModel,
    context: torch.Tensor,
    num_steps: int,
    conditions: torch.Tensor | None = None,
    timestamps: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The open-loop rollout at twice the frame rate: one unobserved midpoint inside every future interval.

    Training its states at the observed times against the observations (a time-consistency objective: two half
    steps must compose to one whole step) teaches, from data at a single frame rate, how the dynamics scale with
    the step size, so the evolver can be rolled out at other rates.

    Args:
        evolver ([`VeltrixEvolverModel`]): the model.
        context (`torch.Tensor` of shape `(B, T, U, D)`): observed states.
        num_steps (`int`): future observation intervals (>= 1).
        conditions (`torch.Tensor` of shape `(B, T + num_steps, A)`, *optional*): as for `rollout`; an interval's
            action acts on its first half and none (zeros) on the second, as an impulse applied right after an
            observation (the built-in worlds' actions).
        timestamps (`torch.Tensor` of shape `(B, T + num_steps)`, *optional*): as for `rollout`.

    Returns:
        The states (B, num_steps, U, D) at the future observation times `timestamps[:, T:]`.
    """
    evolver._check_rollout_inputs(context, num_steps, conditions, timestamps)
    b, t = context.shape[:2]
    if timestamps is None:
        timestamps = regular_timestamps(b, t + num_steps, evolver.config.dt_reference, context)
    ends = timestamps[:, t - 1 :]  # (B, num_steps + 1): the last context step, then the future observations
    fine = torch.stack([(ends[:, :-1] + ends[:, 1:]) / 2, ends[:, 1:]], dim=2).flatten(1)  # midpoint, end, ...
    fine_conditions = None
    if conditions is not None:
        acting = conditions[:, t - 1 : t - 1 + num_steps]  # (B, num_steps, A): each interval's action
        halves = torch.stack([acting, torch.zeros_like(acting)], dim=2).flatten(1, 2)
        fine_conditions = torch.cat([conditions[:, : t - 1], halves, torch.zeros_like(acting[:, :1])], dim=1)
    rollout = evolver.rollout(
        context, 2 * num_steps, conditions=fine_conditions, timestamps=torch.cat([timestamps[:, :t], fine], dim=1)
    )
    return rollout.units[:, 1::2]


def lyapunov_penalty(
    evolver: VeltrixEvolverModel,
    context: torch.Tensor,
    reference: torch.Tensor,
    conditions: torch.Tensor | None = None,
    timestamps: torch.Tensor | None = None,
    perturbation: float = 1e-2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Lyapunov-like stability regulariser: penalises open-loop steps that expand a small perturbation.

    A second rollout starts from `context + δ` (δ Gaussian, its root-mean-square `perturbation` times the context's)
    under the same conditions and timestamps as `reference`. With `d_k` the root-mean-square distance of the two
    rollouts at future step k (and `d_{-1}` that of δ at the last context step), the penalty is
    `mean_k relu(log(d_k / d_{k-1}))²`: zero for steps that do not expand the perturbation, growing with the local
    expansion rate, i.e. a finite-difference estimate of the step map's largest Lyapunov exponent along δ.

    Args:
        evolver ([`VeltrixEvolverModel`]): the model being trained.
        context (`torch.Tensor` of shape `(B, T, U, D)`): the rollout's context.
        reference (`torch.Tensor` of shape `(B, K, U, D)`): `evolver.rollout(context, K, conditions, timestamps).units`.
        conditions, timestamps: as given to that rollout.
        perturbation (`float`): relative size of δ (> 0).
        generator (`torch.Generator`, *optional*): the source of δ.

    Returns:
        The penalty, a scalar tensor.
    """
    if not perturbation > 0:
        raise ValueError(f"`perturbation` must be > 0, got {perturbation}.")
    b = context.shape[0]
    check_shape("reference", reference, (b, "K", evolver.config.num_units, evolver.config.unit_dim))
    noise = torch.randn(context.shape, generator=generator, dtype=context.dtype, device=context.device)
    with torch.no_grad():
        rms = context.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
        delta = noise * (perturbation * rms / noise.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt())
    perturbed = evolver.rollout(context + delta, reference.shape[1], conditions=conditions, timestamps=timestamps)
    distances = torch.cat([delta[:, -1:], perturbed.units - reference], dim=1).pow(2).mean(dim=(2, 3)).sqrt()
    # A zero distance would give log(0); the clamp makes its growth -inf -> no penalty, and zero gradient.
    log_distances = torch.log(distances.clamp_min(torch.finfo(distances.dtype).tiny))
    return F.relu(log_distances.diff(dim=1)).pow(2).mean()


__all__ = [
    "EVOLUTION_MODES",
    "VeltrixCounterfactualRolloutOutput",
    "VeltrixEvolverCache",
    "VeltrixEvolverModel",
    "VeltrixEvolverOutput",
    "VeltrixEvolverPreTrainedModel",
    "VeltrixIntervention",
    "VeltrixRolloutOutput",
    "lyapunov_penalty",
    "midpoint_rollout",
]
