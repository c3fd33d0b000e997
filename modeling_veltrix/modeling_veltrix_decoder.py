"""MGD frame decoder of Veltrix: a conditional flow-matching DiT over frames.

The decoder maps a noisy frame ``x_σ = (1 − σ)·x_0 + σ·ε`` and the flow time ``σ`` to the velocity
``ε − x_0``, conditioned on the state units of one world-model step through cross-attention. It is a small
Diffusion Transformer (DiT, Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"): the frame
is patchified, each block applies adaLN-Zero-modulated self-attention, cross-attention to the units and an
MLP, and a zero-initialised adaLN + linear head unpatchifies the velocity. Training follows rectified flow
/ flow matching (Liu et al. 2022, "Flow Straight and Fast"; Lipman et al. 2022, "Flow Matching for
Generative Modeling"), see :func:`flow_matching_loss`; sampling uses diffusers'
``FlowMatchEulerDiscreteScheduler``, whose timesteps are ``σ · num_train_timesteps``::

    scheduler.set_timesteps(num_inference_steps)
    for t in scheduler.timesteps:
        velocity = decoder(x, t.expand(batch_size), units).sample
        x = scheduler.step(velocity, t, x).prev_sample
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin, FeedForward
from diffusers.models.attention_processor import Attention, AttentionProcessor, AttnProcessor2_0
from diffusers.models.embeddings import PatchEmbed, TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormContinuous
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from .input_validation import check_generator, check_tensor, checks_enabled, input_device
from .modulation import modulate
from .weights_check import VeltrixCheckedLoadingMixin

FLOW_TIME_SAMPLINGS = ("logit_normal", "uniform", "mode")
LOSS_WEIGHTINGS = ("none", "sigma_sqrt", "cosmap")
ATTENTION_SLICE_SIZES = ("auto", "max")


def describe(value: object) -> str:
    """Shape of a tensor, or type name of anything else, for error messages."""
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


class VeltrixAttnProcessor:
    r"""The reference attention of the decoder's `Attention` layers, unfused and optionally sliced: diffusers'
    `AttnProcessor` and `SlicedAttnProcessor` with the per-head query/key normalisation (`norm_q`, `norm_k`, the
    decoder's `qk_norm`) that those two skip, so that it computes what the default `AttnProcessor2_0`
    (scaled-dot-product attention) computes.

    Args:
        slice_size (`int`, *optional*): compute the attention of `slice_size` rows of the (batch · heads) axis at a
            time, which bounds the memory of the (slice_size, N, M) score matrix; `None` computes all at once.
    """

    def __init__(self, slice_size: int | None = None) -> None:
        if slice_size is not None and (
            isinstance(slice_size, bool) or not isinstance(slice_size, int) or slice_size < 1
        ):
            raise ValueError(f"`slice_size` must be None or an int >= 1, got {slice_size!r}.")
        self.slice_size = slice_size

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`hidden_states` (B, N, D) attend to `encoder_hidden_states` (B, M, D_ctx) (to themselves when `None`);
        returns (B, N, D)."""
        batch_size, _, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch_size)
        heads = attn.heads
        # (B, L, H·d) -> per-head norm over d -> (B·H, L, d)
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        if attn.norm_q is not None:
            query = attn.norm_q(query.unflatten(-1, (heads, -1))).flatten(-2)
        if attn.norm_k is not None:
            key = attn.norm_k(key.unflatten(-1, (heads, -1))).flatten(-2)
        query, key, value = (attn.head_to_batch_dim(tensor) for tensor in (query, key, value))
        rows = query.shape[0]
        step = rows if self.slice_size is None else self.slice_size
        output = query.new_empty(rows, query.shape[1], value.shape[-1])  # (B·H, N, d)
        for start in range(0, rows, step):
            rows_mask = None if attention_mask is None else attention_mask[start : start + step]
            probabilities = attn.get_attention_scores(query[start : start + step], key[start : start + step], rows_mask)
            output[start : start + step] = torch.bmm(probabilities, value[start : start + step])
        return attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(output)))  # (B, N, D)


# The processors of diffusers' `attention_processor` module that run the decoder's layers as they are built (unfused
# projections) and apply `norm_q` / `norm_k`; the others there (`AttnProcessor`, `SlicedAttnProcessor`,
# `XFormersAttnProcessor`, ...) skip the norms or expect other layers, and would silently change the outputs.
QK_NORM_PROCESSORS = (VeltrixAttnProcessor, AttnProcessor2_0)


class VeltrixDecoderBlock(nn.Module):
    """DiT block with cross-attention: adaLN-Zero self-attention → cross-attention → MLP.

    The nine modulation vectors (shift, scale, gate for each sub-layer) come from the flow-time embedding;
    their projection is zero-initialised by :class:`VeltrixDecoderModel`, so every gate starts at 0 and the
    block starts as the identity.
    """

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        mlp_ratio: float,
        qk_norm: str | None,
        dropout: float,
        norm_eps: float,
    ) -> None:
        super().__init__()
        head_dim = hidden_size // num_attention_heads
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=norm_eps)
        attention = dict(
            query_dim=hidden_size,
            heads=num_attention_heads,
            dim_head=head_dim,
            dropout=dropout,
            bias=True,
            qk_norm=qk_norm,
            eps=norm_eps,
        )
        self.attn1 = Attention(**attention)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=norm_eps)
        self.attn2 = Attention(cross_attention_dim=hidden_size, **attention)  # to the step's units
        self.norm3 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=norm_eps)
        self.ff = FeedForward(hidden_size, mult=mlp_ratio, dropout=dropout, activation_fn="gelu-approximate")
        self.modulation = nn.Linear(hidden_size, 9 * hidden_size)

    def forward(self, hidden_states: torch.Tensor, context: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """``hidden_states`` (B, N, D) patch tokens, ``context`` (B, U, D) embedded units, ``temb`` (B, D).

        Returns the updated tokens, (B, N, D).
        """
        modulation = self.modulation(F.silu(temb))[:, None]  # (B, 1, 9D)
        shift_sa, scale_sa, gate_sa, shift_ca, scale_ca, gate_ca, shift_ff, scale_ff, gate_ff = modulation.chunk(
            9, dim=-1
        )
        hidden_states = hidden_states + gate_sa * self.attn1(modulate(self.norm1(hidden_states), shift_sa, scale_sa))
        hidden_states = hidden_states + gate_ca * self.attn2(
            modulate(self.norm2(hidden_states), shift_ca, scale_ca), encoder_hidden_states=context
        )
        return hidden_states + gate_ff * self.ff(modulate(self.norm3(hidden_states), shift_ff, scale_ff))


@dataclass
class VeltrixDecoderOutput(BaseOutput):
    """Output of :class:`VeltrixDecoderModel`.

    Args:
        sample (`torch.Tensor` of shape `(batch_size, in_channels, sample_size, sample_size)`):
            The predicted flow velocity ``ε − x_0``.
    """

    sample: torch.Tensor


class VeltrixDecoderModel(VeltrixCheckedLoadingMixin, ModelMixin, AttentionMixin, ConfigMixin):
    """MGD frame decoder: a DiT predicting the rectified-flow velocity of a frame given a step's state units.

    Args:
        sample_size (`int`, *optional*, defaults to 32):
            Height and width of the (square) frames.
        in_channels (`int`, *optional*, defaults to 3):
            Channels of the frames; the velocity has the same channels.
        patch_size (`int`, *optional*, defaults to 4):
            Side of the square patches; must divide `sample_size`.
        hidden_size (`int`, *optional*, defaults to 96):
            Width of the transformer; a multiple of 4 (2-D sin-cos position embedding) and of
            `num_attention_heads`. Best at least `patch_size**2 * in_channels`, the values each token outputs.
        num_layers (`int`, *optional*, defaults to 4):
            Number of DiT blocks.
        num_attention_heads (`int`, *optional*, defaults to 4):
            Heads of the self- and cross-attention.
        mlp_ratio (`float`, *optional*, defaults to 4.0):
            Hidden width of the MLP as a multiple of `hidden_size`.
        cross_attention_dim (`int`, *optional*, defaults to 64):
            Width of the state units given as `encoder_hidden_states`.
        max_context_units (`int`, *optional*, defaults to 64):
            Largest number of state units; size of the learned unit-index position embedding.
        timestep_embedding_channels (`int`, *optional*, defaults to 256):
            Channels of the sinusoidal flow-time features fed to the time-embedding MLP.
        qk_norm (`str`, *optional*, defaults to `"rms_norm"`):
            Per-head query/key normalisation of the attention layers (`None`, `"layer_norm"`, `"rms_norm"`);
            keeps attention logits bounded when training at high learning rates.
        dropout (`float`, *optional*, defaults to 0.0):
            Dropout probability in attention and MLP.
        aligned_context (`bool`, *optional*, defaults to `False`):
            For units that form the decoder's patch grid (`U == (sample_size // patch_size) ** 2`, the encoder's
            `"grid"` layout with the same patch size): also add each unit's projection to its patch token, on top
            of the cross-attention. Spatially aligned conditioning makes the decoder learn far faster.
        temporal_context (`bool`, *optional*, defaults to `False`):
            Also condition on the previous frame of the trajectory (`previous_frame`, concatenated to the noisy
            sample along channels) for frame-to-frame consistency; the pipeline then decodes a rollout step by
            step in time (batched over trajectories), feeding each decoded frame to the next step.
        norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the layer norms.

    Example:

    ```python
    >>> decoder = VeltrixDecoderModel(sample_size=16, hidden_size=32, num_layers=2, cross_attention_dim=16)
    >>> velocity = decoder(torch.randn(2, 3, 16, 16), torch.tensor(500.0), torch.randn(2, 8, 16)).sample
    >>> velocity.shape
    torch.Size([2, 3, 16, 16])
    ```
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["VeltrixDecoderBlock"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        patch_size: int = 4,
        hidden_size: int = 96,
        num_layers: int = 4,
        num_attention_heads: int = 4,
        mlp_ratio: float = 4.0,
        cross_attention_dim: int = 64,
        max_context_units: int = 64,
        timestep_embedding_channels: int = 256,
        qk_norm: str | None = "rms_norm",
        dropout: float = 0.0,
        norm_eps: float = 1e-6,
        aligned_context: bool = False,
        temporal_context: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("sample_size", sample_size),
            ("in_channels", in_channels),
            ("patch_size", patch_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
            ("num_attention_heads", num_attention_heads),
            ("cross_attention_dim", cross_attention_dim),
            ("max_context_units", max_context_units),
            ("timestep_embedding_channels", timestep_embedding_channels),
        ):
            if value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value}.")
        if sample_size % patch_size != 0:
            raise ValueError(f"`sample_size` must be divisible by `patch_size` ({patch_size}), got {sample_size}.")
        if hidden_size % num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` must be divisible by `num_attention_heads` ({num_attention_heads}), "
                f"got hidden_size={hidden_size}."
            )
        if hidden_size % 4 != 0:
            raise ValueError(
                f"`hidden_size` must be a multiple of 4 (2-D sin-cos position embedding), got {hidden_size}."
            )
        if timestep_embedding_channels % 2 != 0:
            raise ValueError(f"`timestep_embedding_channels` must be even, got {timestep_embedding_channels}.")
        if mlp_ratio <= 0:
            raise ValueError(f"`mlp_ratio` must be positive, got {mlp_ratio}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout}.")
        if aligned_context and max_context_units < (sample_size // patch_size) ** 2:
            raise ValueError(
                f"`max_context_units` must be >= the number of patches ({(sample_size // patch_size) ** 2}) "
                f"with `aligned_context=True`, got {max_context_units}."
            )

        self.patch_embed = PatchEmbed(
            height=sample_size,
            width=sample_size,
            patch_size=patch_size,
            in_channels=in_channels * (2 if temporal_context else 1),
            embed_dim=hidden_size,
            pos_embed_type="sincos",
        )
        self.time_proj = Timesteps(timestep_embedding_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(timestep_embedding_channels, hidden_size)
        self.context_proj = nn.Linear(cross_attention_dim, hidden_size)
        self.context_pos_embed = nn.Embedding(max_context_units, hidden_size)
        self.context_norm = nn.LayerNorm(hidden_size, eps=norm_eps)
        self.aligned_proj = nn.Linear(cross_attention_dim, hidden_size) if aligned_context else None
        self.blocks = nn.ModuleList(
            [
                VeltrixDecoderBlock(hidden_size, num_attention_heads, mlp_ratio, qk_norm, dropout, norm_eps)
                for _ in range(num_layers)
            ]
        )
        self.norm_out = AdaLayerNormContinuous(hidden_size, hidden_size, elementwise_affine=False, eps=norm_eps)
        self.proj_out = nn.Linear(hidden_size, patch_size * patch_size * in_channels)
        self.gradient_checkpointing = False
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        """DiT initialisation: Xavier linears, N(0, 0.02) embeddings, zero adaLN modulations and head."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # The patch projection is a linear map of flattened patches, initialised like one.
        patch_proj = self.patch_embed.proj
        nn.init.xavier_uniform_(patch_proj.weight.view(patch_proj.weight.shape[0], -1))
        nn.init.zeros_(patch_proj.bias)
        nn.init.normal_(self.time_embedding.linear_1.weight, std=0.02)
        nn.init.normal_(self.time_embedding.linear_2.weight, std=0.02)
        nn.init.normal_(self.context_pos_embed.weight, std=0.02)
        # adaLN-Zero: zero gates make every block the identity and the zero head makes the velocity 0 at init.
        for block in self.blocks:
            nn.init.zeros_(block.modulation.weight)
            nn.init.zeros_(block.modulation.bias)
        for layer in (self.norm_out.linear, self.proj_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def set_attn_processor(self, processor: AttentionProcessor | dict[str, AttentionProcessor]) -> None:
        """`AttentionMixin.set_attn_processor` (one processor for every attention layer, or a dict keyed as
        `attn_processors`), refusing diffusers' processors that skip the per-head query/key normalisation of a
        decoder with `qk_norm` (they would change its outputs): use `VeltrixAttnProcessor()` (reference),
        `VeltrixAttnProcessor(slice_size)` (sliced) or `AttnProcessor2_0()` (the default)."""
        processors = processor.values() if isinstance(processor, dict) else [processor]
        if self.config.qk_norm is not None:
            for candidate in processors:
                if type(candidate).__module__ == Attention.__module__ and not isinstance(candidate, QK_NORM_PROCESSORS):
                    raise ValueError(
                        f"`processor` must apply this decoder's per-head query/key normalisation "
                        f"(qk_norm={self.config.qk_norm!r}): one of {[c.__name__ for c in QK_NORM_PROCESSORS]} or "
                        f"a processor of your own, got {type(candidate).__name__}, which skips it."
                    )
        super().set_attn_processor(processor)

    def set_use_memory_efficient_attention_xformers(
        self, valid: bool, attention_op: Callable[..., torch.Tensor] | None = None
    ) -> None:
        """`ModelMixin`'s switch to xFormers attention (`enable_xformers_memory_efficient_attention`), refused for a
        decoder with `qk_norm`: diffusers' `XFormersAttnProcessor` skips the per-head query/key normalisation and
        would change the outputs; the default `AttnProcessor2_0` already dispatches to memory-efficient kernels."""
        if valid and self.config.qk_norm is not None:
            raise ValueError(
                f"xFormers attention skips this decoder's per-head query/key normalisation "
                f"(qk_norm={self.config.qk_norm!r}); keep the default AttnProcessor2_0 (scaled-dot-product attention, "
                "memory-efficient kernels included); got valid=True."
            )
        super().set_use_memory_efficient_attention_xformers(valid, attention_op)

    def set_default_attn_processor(self) -> None:
        """Sets the reference attention (`VeltrixAttnProcessor()`, unfused), as diffusers models set `AttnProcessor`;
        its outputs match the default `AttnProcessor2_0`'s."""
        self.set_attn_processor(VeltrixAttnProcessor())

    def set_attention_slice(self, slice_size: str | int | None = "auto") -> None:
        """Sliced attention (`VeltrixAttnProcessor(slice_size)`), what `DiffusionPipeline.enable_attention_slicing`
        calls: `"auto"` computes half the heads at a time, `"max"` one row of the (batch · heads) axis at a time, an
        int that many rows (at most `num_attention_heads`), and `None` restores the default `AttnProcessor2_0`. The
        outputs do not change."""
        heads = self.config.num_attention_heads
        if slice_size is None:
            self.set_attn_processor(AttnProcessor2_0())
            return
        if isinstance(slice_size, str) and slice_size in ATTENTION_SLICE_SIZES:
            slice_size = max(heads // 2, 1) if slice_size == "auto" else 1
        if isinstance(slice_size, bool) or not isinstance(slice_size, int) or not 1 <= slice_size <= heads:
            raise ValueError(
                f"`slice_size` must be None, one of {ATTENTION_SLICE_SIZES} or an int in [1, {heads}] "
                f"(num_attention_heads), got {slice_size!r}."
            )
        self.set_attn_processor(VeltrixAttnProcessor(slice_size))

    def check_inputs(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        previous_frame: torch.Tensor | None = None,
    ) -> None:
        """Validate the inputs of :meth:`forward`.

        Raises:
            ValueError: naming the offending argument, the expected and the received shape or value.
        """
        channels, size = self.config.in_channels, self.config.sample_size
        check_tensor("sample", sample, dtype=self.dtype, device=input_device(self))
        if sample.ndim != 4 or sample.shape[1:] != (channels, size, size) or sample.shape[0] == 0:
            raise ValueError(
                f"`sample` must have shape (B, {channels}, {size}, {size}), B >= 1, got {describe(sample)}."
            )
        batch_size = sample.shape[0]
        check_tensor("encoder_hidden_states", encoder_hidden_states, dtype=self.dtype, device=input_device(self))
        width, max_units = self.config.cross_attention_dim, self.config.max_context_units
        if (
            not isinstance(encoder_hidden_states, torch.Tensor)
            or encoder_hidden_states.ndim != 3
            or encoder_hidden_states.shape[-1] != width
            or not 1 <= encoder_hidden_states.shape[1] <= max_units
        ):
            raise ValueError(
                f"`encoder_hidden_states` must have shape (B, U, {width}) with 1 <= U <= {max_units}, "
                f"got {describe(encoder_hidden_states)}."
            )
        num_patches = (size // self.config.patch_size) ** 2
        if self.config.aligned_context and encoder_hidden_states.shape[1] != num_patches:
            raise ValueError(
                f"`encoder_hidden_states` must hold one unit per patch, shape (B, {num_patches}, {width}), with "
                f"`aligned_context=True`, got {tuple(encoder_hidden_states.shape)}."
            )
        if encoder_hidden_states.shape[0] != batch_size:
            raise ValueError(
                f"`encoder_hidden_states` must have the batch size of `sample` ({batch_size}), "
                f"got {tuple(encoder_hidden_states.shape)}."
            )
        timestep = self._check_timestep(timestep, sample.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(batch_size)
        elif tuple(timestep.shape) != (batch_size,):
            raise ValueError(f"`timestep` must be a scalar or have shape ({batch_size},), got {tuple(timestep.shape)}.")
        for name, tensor in (
            ("sample", sample),
            ("timestep", timestep),
            ("encoder_hidden_states", encoder_hidden_states),
        ):
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise ValueError(f"`{name}` must be finite, got NaN or infinite values (shape {tuple(tensor.shape)}).")
        if self.config.temporal_context:
            check_tensor("previous_frame", previous_frame, dtype=self.dtype, device=input_device(self))
            if previous_frame.shape != sample.shape:
                raise ValueError(
                    f"`previous_frame` must have the shape of `sample` {tuple(sample.shape)} with "
                    f"`temporal_context=True`, got {describe(previous_frame)}."
                )
            if not torch.isfinite(previous_frame).all():
                raise ValueError("`previous_frame` must be finite, got NaN or infinite values.")
        elif previous_frame is not None:
            raise ValueError("`previous_frame` was given but this decoder has `temporal_context=False`.")

    @staticmethod
    def _check_timestep(timestep: object, device: torch.device) -> torch.Tensor:
        """`timestep` as a tensor: a real number or a real tensor (with data) is required."""
        if isinstance(timestep, bool) or not isinstance(timestep, (int, float, torch.Tensor)):
            raise ValueError(f"`timestep` must be a number or a torch.Tensor, got {type(timestep).__name__}.")
        if isinstance(timestep, torch.Tensor) and (
            timestep.is_meta or timestep.is_complex() or timestep.dtype == torch.bool
        ):
            raise ValueError(f"`timestep` must be a real tensor with data, got {timestep.dtype} on {timestep.device}.")
        return torch.as_tensor(timestep, device=device)

    def _embed_context(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """Units (B, U, cross_attention_dim) → (B, U, hidden_size): projection + unit-index embedding."""
        num_units = encoder_hidden_states.shape[1]
        positions = torch.arange(num_units, device=encoder_hidden_states.device)
        context = self.context_proj(encoder_hidden_states) + self.context_pos_embed(positions)
        return self.context_norm(context)

    def _unpatchify(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, h·w, p·p·C) patch outputs → (B, C, h·p, w·p) frames."""
        patch, channels = self.config.patch_size, self.config.in_channels
        grid = self.config.sample_size // patch
        hidden_states = hidden_states.reshape(-1, grid, grid, patch, patch, channels)  # (B, h, w, p, p, C)
        hidden_states = torch.einsum("nhwpqc->nchpwq", hidden_states)  # (B, C, h, p, w, p)
        return hidden_states.reshape(-1, channels, grid * patch, grid * patch)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        previous_frame: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> VeltrixDecoderOutput | tuple[torch.Tensor]:
        """Predict the flow velocity of a noisy frame.

        Args:
            sample (`torch.Tensor` of shape `(B, in_channels, sample_size, sample_size)`):
                The noisy frame ``x_σ = (1 − σ)·x_0 + σ·ε``.
            timestep (`torch.Tensor` of shape `(B,)` or a scalar):
                Flow time as in `FlowMatchEulerDiscreteScheduler`: ``σ · num_train_timesteps``, in [0, 1000]
                by default. A scalar is broadcast to the batch.
            encoder_hidden_states (`torch.Tensor` of shape `(B, U, cross_attention_dim)`):
                The step's state units, ``1 <= U <= max_context_units``.
            previous_frame (`torch.Tensor` of shape `(B, in_channels, sample_size, sample_size)`, *optional*):
                The trajectory's previous frame in [-1, 1]; required exactly when `temporal_context=True`.
            return_dict (`bool`, *optional*, defaults to `True`):
                Whether to return a :class:`VeltrixDecoderOutput` instead of a tuple.

        Returns:
            :class:`VeltrixDecoderOutput` or `(velocity,)`, the velocity ``ε − x_0`` of the shape of `sample`.
        """
        if checks_enabled():  # skipped inside the pipeline's sampling loop, which checked its inputs once
            self.check_inputs(sample, timestep, encoder_hidden_states, previous_frame)
        timestep = torch.as_tensor(timestep, device=sample.device).expand(sample.shape[0])  # a scalar -> (B,)
        if previous_frame is not None:
            sample = torch.cat([sample, previous_frame], dim=1)  # (B, 2C, H, W)
        hidden_states = self.patch_embed(sample)  # (B, N, D)
        if self.aligned_proj is not None:
            hidden_states = hidden_states + self.aligned_proj(encoder_hidden_states)  # unit i -> patch i
        temb = self.time_embedding(self.time_proj(timestep).to(hidden_states.dtype))  # (B, D)
        context = self._embed_context(encoder_hidden_states)  # (B, U, D)
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(block, hidden_states, context, temb)
            else:
                hidden_states = block(hidden_states, context, temb)
        hidden_states = self.proj_out(self.norm_out(hidden_states, temb))  # (B, N, p·p·C)
        velocity = self._unpatchify(hidden_states)
        if not return_dict:
            return (velocity,)
        return VeltrixDecoderOutput(sample=velocity)


def flow_matching_loss(
    decoder: VeltrixDecoderModel,
    pixel_values: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    generator: torch.Generator | None = None,
    time_sampling: str = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    num_train_timesteps: int = 1000,
    noise: torch.Tensor | None = None,
    previous_frame: torch.Tensor | None = None,
    loss_weighting: str = "none",
) -> torch.Tensor:
    """Rectified-flow (conditional flow matching) loss of `decoder` on clean frames.

    With ``σ`` drawn per example, ``x_σ = (1 − σ)·x_0 + σ·ε`` and the model, called with
    ``timestep = σ · num_train_timesteps``, regresses the velocity ``ε − x_0`` under a mean squared error.

    Args:
        decoder (`VeltrixDecoderModel`): The model to train.
        pixel_values (`torch.Tensor` of shape `(B, C, H, W)`): Clean frames ``x_0``.
        encoder_hidden_states (`torch.Tensor` of shape `(B, U, cross_attention_dim)`): The conditioning units.
        generator (`torch.Generator`, *optional*): Source of the noise and of ``σ``.
        time_sampling (`str`, *optional*, defaults to `"logit_normal"`):
            Density of ``σ``: `"logit_normal"` (SD3, ``sigmoid(N(logit_mean, logit_std))``), `"uniform"` or
            `"mode"` (SD3 mode sampling with `mode_scale`).
        logit_mean (`float`, *optional*, defaults to 0.0): Mean of the logit-normal density.
        logit_std (`float`, *optional*, defaults to 1.0): Standard deviation of the logit-normal density.
        mode_scale (`float`, *optional*, defaults to 1.29): Scale of the mode density.
        num_train_timesteps (`int`, *optional*, defaults to 1000):
            ``num_train_timesteps`` of the `FlowMatchEulerDiscreteScheduler` used for sampling.
        noise (`torch.Tensor` of shape `(B, C, H, W)`, *optional*):
            The noise ``ε`` paired with each frame; drawn independently when `None`. Reflow (Liu et al. 2022)
            passes the noise from which a teacher sampled each frame, which straightens the learned paths.
        previous_frame (`torch.Tensor` of shape `(B, C, H, W)`, *optional*):
            The previous frame of each trajectory, for a decoder with `temporal_context=True`.
        loss_weighting (`str`, *optional*, defaults to `"none"`):
            Per-example weight of the squared error as a function of σ, from diffusers' SD3 training utilities:
            `"none"`, `"sigma_sqrt"` (σ⁻²) or `"cosmap"`.

    Returns:
        `torch.Tensor`: the scalar loss, in float32.
    """
    if time_sampling not in FLOW_TIME_SAMPLINGS:
        raise ValueError(f"`time_sampling` must be one of {FLOW_TIME_SAMPLINGS}, got {time_sampling!r}.")
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"`loss_weighting` must be one of {LOSS_WEIGHTINGS}, got {loss_weighting!r}.")
    check_tensor("pixel_values", pixel_values, dtype=decoder.dtype, device=input_device(decoder))
    if pixel_values.ndim != 4 or pixel_values.shape[0] == 0:
        raise ValueError(f"`pixel_values` must have shape (B, C, H, W), B >= 1, got {describe(pixel_values)}.")
    if checks_enabled() and not bool(torch.isfinite(pixel_values).all()):
        raise ValueError("`pixel_values` must be finite, got NaN or infinite values.")
    check_generator("generator", generator, batch_size=None)
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
        raise ValueError(f"`num_train_timesteps` must be an int >= 1, got {num_train_timesteps!r}.")
    batch_size, device = pixel_values.shape[0], pixel_values.device
    sigmas = compute_density_for_timestep_sampling(
        weighting_scheme=time_sampling,
        batch_size=batch_size,
        logit_mean=logit_mean,
        logit_std=logit_std,
        mode_scale=mode_scale,
        device=generator.device if generator is not None else device,
        generator=generator,
    ).to(device=device, dtype=pixel_values.dtype)
    if noise is None:
        noise = randn_tensor(pixel_values.shape, generator=generator, device=device, dtype=pixel_values.dtype)
    elif check_tensor("noise", noise, dtype=decoder.dtype, device=device).shape != pixel_values.shape:
        raise ValueError(
            f"`noise` must have the shape of `pixel_values` {tuple(pixel_values.shape)}, got {describe(noise)}."
        )
    sigmas_4d = sigmas[:, None, None, None]  # (B, 1, 1, 1)
    noisy = (1 - sigmas_4d) * pixel_values + sigmas_4d * noise
    velocity = decoder(noisy, sigmas * num_train_timesteps, encoder_hidden_states, previous_frame).sample
    weighting = compute_loss_weighting_for_sd3(loss_weighting, sigmas.float())[:, None, None, None]
    return (weighting * (velocity.float() - (noise - pixel_values).float()).pow(2)).mean()


__all__ = [
    "VeltrixAttnProcessor",
    "VeltrixDecoderBlock",
    "VeltrixDecoderModel",
    "VeltrixDecoderOutput",
    "flow_matching_loss",
]
