"""TRE: the Veltrix trajectory evolver, `S_{t+Δt} = S_t + Δt · Φ(S_t, C_t, Δt)`.

A stack of blocks over state units `(B, T, U, D)`: unit mixing within a step, a temporal selective state-space
model over time per unit (Mamba-2 / SSD, Dao & Gu 2024) whose step size scales with the elapsed time, and a
SwiGLU MLP; every block is conditioned per step on the action and the step size by adaLN (Perez et al. 2018,
Peebles & Xie 2023). A zero-initialised head predicts `dS/dt`, so an untrained evolver predicts "nothing moves".

Whole sequences run the chunked (or sequential) PyTorch scan; rollouts run one recurrent step at a time with a
`VeltrixEvolverCache` whose size does not depend on the horizon.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_veltrix import VeltrixEvolverConfig
from .input_validation import check_finite, check_increasing, check_shape
from .selective_ssm import ssd_chunked_scan, ssd_sequential_scan, ssd_step


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

    `forward` runs a whole sequence through the PyTorch scan chosen by `config.scan_implementation` and returns
    the recurrent state at its end; `step` advances that state by one observation.
    """

    def __init__(self, config: VeltrixEvolverConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.state_size = config.state_size
        self.n_groups = config.n_groups
        self.chunk_size = config.chunk_size
        self.scan_implementation = config.scan_implementation
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
        length = hidden_states.shape[1]
        z, xbc, dt_raw = self._split_projection(self.in_proj(hidden_states))
        xbc_channels = xbc.transpose(1, 2)  # (N, conv_dim, L)
        conv_state = F.pad(xbc_channels, (self.conv_kernel - 1 - length, 0))[..., -(self.conv_kernel - 1) :]
        xbc = F.silu(self.conv1d(xbc_channels)[..., :length].transpose(1, 2))
        x, B, C = self._split_xbc(xbc)
        dt = self._discretize(dt_raw, gaps)
        A = -torch.exp(self.A_log.float())
        if self.scan_implementation == "chunked":
            y, ssm_state = ssd_chunked_scan(x, dt, A, B, C, self.chunk_size)
        else:
            y, ssm_state = ssd_sequential_scan(x, dt, A, B, C)
        y = y + x * self.D[:, None]
        output = self.out_proj(self.norm(y.flatten(-2), z))
        return output, conv_state, ssm_state

    def step(
        self, hidden_states: torch.Tensor, gaps: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One recurrent step: hidden (N, hidden), gaps (N,), states as returned by `forward`."""
        z, xbc, dt_raw = self._split_projection(self.in_proj(hidden_states))
        window = torch.cat([conv_state, xbc[..., None]], dim=-1)  # (N, conv_dim, conv_kernel)
        conv_state = window[..., 1:]
        xbc = F.silu((window * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias)
        x, B, C = self._split_xbc(xbc)
        dt = self._discretize(dt_raw, gaps)
        A = -torch.exp(self.A_log.float())
        y, ssm_state = ssd_step(x, dt, A, B, C, ssm_state)
        y = y + x * self.D[:, None]
        output = self.out_proj(self.norm(y.flatten(-2), z))
        return output, conv_state, ssm_state


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


@dataclass
class VeltrixEvolverCache:
    """Recurrent state of a rollout: per layer a conv state (B·U, conv_dim, conv_kernel - 1) and an SSM state
    (B·U, heads, head_dim, state_size), plus the time (B,) of the last observed step. Its size does not depend on
    how many steps have been taken."""

    conv_states: list[torch.Tensor]
    ssm_states: list[torch.Tensor]
    last_timestamps: torch.Tensor


class VeltrixEvolverPreTrainedModel(PreTrainedModel):
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


class VeltrixEvolverModel(VeltrixEvolverPreTrainedModel):
    """The Veltrix evolver. `forward` predicts, in parallel over a trajectory of units, the state at the next
    timestamp from every step (teacher forcing); `step` and `rollout` evolve a state recurrently."""

    def __init__(self, config: VeltrixEvolverConfig):
        super().__init__(config)
        self.condition_embedding = VeltrixConditionEmbedding(config)
        self.in_proj = nn.Linear(config.unit_dim, config.hidden_size)
        self.layers = nn.ModuleList(VeltrixEvolverBlock(config) for _ in range(config.num_hidden_layers))
        self.norm_f = VeltrixRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.velocity_head = VeltrixZeroInitLinear(config.hidden_size, config.unit_dim)
        self.post_init()

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
            The predicted state (B, U, D) at `prediction_timestamp` and the updated cache.
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

    def rollout(
        self,
        context: torch.Tensor,
        num_steps: int,
        conditions: torch.Tensor | None = None,
        timestamps: torch.Tensor | None = None,
    ) -> VeltrixRolloutOutput:
        r"""Evolves the state `num_steps` steps past the context, feeding each prediction back (open loop).

        Args:
            context (`torch.Tensor` of shape `(B, T, U, D)`): observed states.
            num_steps (`int`): how many future states to produce (>= 1).
            conditions (`torch.Tensor` of shape `(B, T + num_steps, A)`, *optional*): the action at every step of
                the whole trajectory, context and future (the last one acts after the horizon and is unused);
                `None` evolves freely under the learned null condition.
            timestamps (`torch.Tensor` of shape `(B, T + num_steps)`, *optional*): strictly increasing times of
                the whole trajectory; defaults to a regular grid of `config.dt_reference`.
        """
        self._check_units("context", context, steps=True)
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"`num_steps` must be an int >= 1, got {num_steps!r}.")
        b, t = context.shape[:2]
        total = t + num_steps
        if timestamps is None:
            timestamps = regular_timestamps(b, total, self.config.dt_reference, context)
        check_shape("timestamps", timestamps, (b, total))
        check_finite("timestamps", timestamps)
        check_increasing("timestamps", timestamps)
        self._check_conditions("conditions", conditions, (b, total))

        def action_at(i: int) -> torch.Tensor | None:
            return None if conditions is None else conditions[:, i]

        output = self(
            context,
            timestamps=timestamps[:, :t],
            actions=None if conditions is None else conditions[:, :t],
            prediction_timestamps=timestamps[:, 1 : t + 1],
            use_cache=True,
        )
        state, cache = output.predicted_units[:, -1], output.cache
        future = [state]
        for i in range(t, total - 1):
            state, cache = self.step(state, cache, timestamps[:, i], timestamps[:, i + 1], action_at(i))
            future.append(state)
        return VeltrixRolloutOutput(units=torch.stack(future, dim=1), timestamps=timestamps[:, t:])


__all__ = [
    "VeltrixEvolverCache",
    "VeltrixEvolverModel",
    "VeltrixEvolverOutput",
    "VeltrixEvolverPreTrainedModel",
    "VeltrixRolloutOutput",
]
