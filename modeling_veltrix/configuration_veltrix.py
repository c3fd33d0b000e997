"""Configuration classes of the Veltrix encoder (MPE), evolver (TRE) and Engram memory.

Both are `transformers.PreTrainedConfig` dataclasses: every hyper-parameter of the model lives here, is saved
to `config.json` by `save_pretrained` and validated on construction (a `ValueError` names the argument, what
was expected and what came).
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

UNIT_LAYOUTS = ("grid", "resampler")
MODALITIES = ("frames", "text", "audio")
ORTHOGONAL_MAPS = ("cayley", "matrix_exp")
UNIT_MIXERS = ("conv", "attention")
SCAN_IMPLEMENTATIONS = ("chunked", "sequential")
MAX_NGRAM_ORDER = 4
TABLE_VALUES = ("next_state", "delta")


def _require_positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"`{name}` must be > 0, got {value}.")


def _require_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


@strict
class VeltrixEncoderConfig(PreTrainedConfig):
    r"""
    Configuration of [`VeltrixEncoderModel`], the multimodal perception encoder (MPE) that turns frames into
    bounded state units.

    Args:
        image_size (`int`, *optional*, defaults to 32):
            Height and width of the (square) input frames.
        num_channels (`int`, *optional*, defaults to 3):
            Channels of the input frames.
        patch_size (`int`, *optional*, defaults to 4):
            Side of the square patches; `image_size` must be a multiple of it.
        hidden_size (`int`, *optional*, defaults to 64):
            Width of the encoder's internal patch features.
        unit_dim (`int`, *optional*, defaults to 32):
            Width `D` of a state unit, i.e. of the shared latent space.
        unit_layout (`str`, *optional*, defaults to `"grid"`):
            `"grid"`: one unit per patch, aligned with the patch grid (finest granularity, tracks motion best).
            `"resampler"`: `num_resampled_units` learned queries cross-attending to the patches (coarser, compact).
        num_resampled_units (`int`, *optional*, defaults to 16):
            Number of units of the `"resampler"` layout. Ignored by the `"grid"` layout, whose unit count is
            `(image_size // patch_size) ** 2`.
        num_mixing_layers (`int`, *optional*, defaults to 2):
            Residual local-mixing blocks (depthwise convolution + MLP) over the patch grid.
        mixing_kernel_size (`int`, *optional*, defaults to 3):
            Odd kernel size of the depthwise convolutions of the local-mixing blocks.
        mlp_ratio (`float`, *optional*, defaults to 2.0):
            Width of the MLPs relative to `hidden_size`.
        num_attention_heads (`int`, *optional*, defaults to 4):
            Heads of the resampler's and of the resampler readout's cross-attention.
        action_dim (`int`, *optional*, defaults to 2):
            Width of the per-step action vectors that the encoder passes through for the evolver.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the normalisation layers.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the position embeddings and learned queries
            (linear and convolution layers use fan-in scaled initialisation).
        modalities (`list[str]`, *optional*, defaults to `["frames"]`):
            Observed modalities, `"frames"` first, then any of `"text"`, `"audio"`. With frames alone the units are
            the frame units (no fusion). With more, every unit is the orthogonal direct sum (`orthogonal_fusion`)
            `Q · [frames ; text ; audio ; latent]` of blocks of widths `frame_dim`, `text_dim`, `audio_dim`,
            `latent_dim`, which must add up to `unit_dim`.
        frame_dim (`int`, *optional*, defaults to 0):
            Width of the frame block of a fused unit (used only with more than one modality).
        text_dim (`int`, *optional*, defaults to 0):
            Width of the text block; text fills the first `num_text_units` unit slots of a step.
        audio_dim (`int`, *optional*, defaults to 0):
            Width of the audio block; audio fills the first `num_audio_units` unit slots of a step.
        latent_dim (`int`, *optional*, defaults to 0):
            Width of the latent block for unobserved dynamics (zero at encoding; the evolver may write into it).
        fusion_orthogonal_map (`str`, *optional*, defaults to `"cayley"`):
            Parametrization of the learned rotation `Q`: `"cayley"` or `"matrix_exp"`.
        num_text_units (`int`, *optional*, defaults to 4):
            Resampled text units `U_text` per step (at most `num_units_per_step`).
        text_hidden_size (`int`, *optional*, defaults to 64):
            Width of the byte-level text transformer and of the caption head.
        text_num_layers (`int`, *optional*, defaults to 2):
            Layers of the byte-level text transformer and of the autoregressive caption head.
        text_num_heads (`int`, *optional*, defaults to 4):
            Attention heads of the text transformer, its resampler and the caption head.
        text_max_length (`int`, *optional*, defaults to 192):
            Bytes `L` per caption (`input_ids` of shape `(B, T, L)`).
        audio_sample_rate (`int`, *optional*, defaults to 16000):
            Sample rate of `audio_values` in Hz.
        audio_window (`int`, *optional*, defaults to 1600):
            Samples `S` of one step's audio window (`audio_values` of shape `(B, T, S)`).
        audio_n_fft (`int`, *optional*, defaults to 400):
            STFT size (and Hann window length) of the log-mel spectrogram (25 ms at 16 kHz).
        audio_hop_length (`int`, *optional*, defaults to 160):
            STFT hop (10 ms at 16 kHz).
        audio_num_mels (`int`, *optional*, defaults to 32):
            Mel bands of the log-mel spectrogram.
        audio_num_codebooks (`int`, *optional*, defaults to 4):
            Codebooks `K` of the residual quantizer (`audio_codes` of shape `(B, T, K)`).
        audio_codebook_dim (`int`, *optional*, defaults to 8):
            Dimension `V` of a code vector (`audio_features` of shape `(B, T, K, V)`).
        audio_codebook_size (`int`, *optional*, defaults to 64):
            Codes per codebook; `audio_codes` lie in `[0, audio_codebook_size)`.
        num_audio_units (`int`, *optional*, defaults to 4):
            Unit slots `U_audio` of the audio block; `num_audio_units * audio_dim >= K * V` keeps the linear `φ_audio`
            injective, so `D_audio` inverts it exactly.
        align_loss_weight (`float`, *optional*, defaults to 0.1):
            Weight of the InfoNCE alignment `L_align` between the modalities of the same step.
        align_dim (`int`, *optional*, defaults to 32):
            Width of the alignment embeddings (one small MLP head per modality on its flattened block).
        align_temperature (`float`, *optional*, defaults to 0.1):
            Initial temperature of the InfoNCE logits; the encoder learns it (as a log inverse temperature,
            clamped at 1/100).
        text_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the caption head's byte cross-entropy.
        audio_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the audio tokenizer's loss (log-mel reconstruction + commitment).
        nested_dropout (`bool`, *optional*, defaults to `False`):
            In training, keep only the first `k ~ U{1..num_resampled_units}` resampled frame units
            (`unit_layout="resampler"`) per step and zero the rest (Rippel et al. 2014), so that the first `k` units
            summarise coarsely and `num_resampled_units=k` can be chosen at inference.

    Example:

    ```python
    >>> from modeling_veltrix import VeltrixEncoderConfig, VeltrixEncoderModel

    >>> config = VeltrixEncoderConfig(unit_layout="grid")
    >>> model = VeltrixEncoderModel(config)
    >>> config.num_units_per_step
    64
    ```
    """

    model_type = "veltrix_encoder"

    image_size: int = 32
    num_channels: int = 3
    patch_size: int = 4
    hidden_size: int = 64
    unit_dim: int = 32
    unit_layout: str = "grid"
    num_resampled_units: int = 16
    num_mixing_layers: int = 2
    mixing_kernel_size: int = 3
    mlp_ratio: float = 2.0
    num_attention_heads: int = 4
    action_dim: int = 2
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    modalities: list[str] | tuple[str, ...] = ("frames",)
    frame_dim: int = 0
    text_dim: int = 0
    audio_dim: int = 0
    latent_dim: int = 0
    fusion_orthogonal_map: str = "cayley"
    num_text_units: int = 4
    text_hidden_size: int = 64
    text_num_layers: int = 2
    text_num_heads: int = 4
    text_max_length: int = 192
    audio_sample_rate: int = 16000
    audio_window: int = 1600
    audio_n_fft: int = 400
    audio_hop_length: int = 160
    audio_num_mels: int = 32
    audio_num_codebooks: int = 4
    audio_codebook_dim: int = 8
    audio_codebook_size: int = 64
    num_audio_units: int = 4
    align_loss_weight: float = 0.1
    align_dim: int = 32
    align_temperature: float = 0.1
    text_loss_weight: float = 1.0
    audio_loss_weight: float = 1.0
    nested_dropout: bool = False

    def __post_init__(self, **kwargs):
        for name in (
            "image_size",
            "num_channels",
            "patch_size",
            "hidden_size",
            "unit_dim",
            "num_resampled_units",
            "mixing_kernel_size",
            "mlp_ratio",
            "num_attention_heads",
            "layer_norm_eps",
        ):
            _require_positive(name, getattr(self, name))
        if self.num_mixing_layers < 0:
            raise ValueError(f"`num_mixing_layers` must be >= 0, got {self.num_mixing_layers}.")
        if self.action_dim < 0:
            raise ValueError(f"`action_dim` must be >= 0, got {self.action_dim}.")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"`image_size` must be a multiple of `patch_size` ({self.patch_size}), got {self.image_size}."
            )
        if self.mixing_kernel_size % 2 == 0:
            raise ValueError(f"`mixing_kernel_size` must be odd, got {self.mixing_kernel_size}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` must be a multiple of `num_attention_heads` ({self.num_attention_heads}), "
                f"got {self.hidden_size}."
            )
        _require_choice("unit_layout", self.unit_layout, UNIT_LAYOUTS)
        self._check_modalities()
        super().__post_init__(**kwargs)

    def _check_modalities(self) -> None:
        modalities = tuple(self.modalities)
        if not modalities or modalities[0] != "frames" or len(set(modalities)) != len(modalities):
            raise ValueError(f"`modalities` must start with 'frames' and hold no repeats, got {list(modalities)}.")
        for modality in modalities:
            _require_choice("modalities", modality, MODALITIES)
        if not self.is_fused:
            return
        _require_choice("fusion_orthogonal_map", self.fusion_orthogonal_map, ORTHOGONAL_MAPS)
        widths = {name: getattr(self, name) for name in ("frame_dim", "text_dim", "audio_dim", "latent_dim")}
        required = ["frame_dim"] + [f"{m}_dim" for m in modalities[1:]]
        for name in required:
            _require_positive(name, widths[name])
        used = {name: widths[name] for name in required} | {"latent_dim": widths["latent_dim"]}
        if self.latent_dim < 0 or sum(used.values()) != self.unit_dim:
            raise ValueError(f"`unit_dim` must equal the sum of the block widths {used}, got {self.unit_dim}.")
        for name in ("align_loss_weight", "text_loss_weight", "audio_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        for name in ("align_dim", "align_temperature"):
            _require_positive(name, getattr(self, name))
        if "text" in modalities:
            for name in ("num_text_units", "text_hidden_size", "text_num_layers", "text_num_heads", "text_max_length"):
                _require_positive(name, getattr(self, name))
            if self.num_text_units > self.num_units_per_step:
                raise ValueError(
                    f"`num_text_units` must be <= `num_units_per_step` ({self.num_units_per_step}), "
                    f"got {self.num_text_units}."
                )
            if self.text_hidden_size % self.text_num_heads:
                raise ValueError(
                    f"`text_hidden_size` must be a multiple of `text_num_heads` ({self.text_num_heads}), "
                    f"got {self.text_hidden_size}."
                )
        if "audio" in modalities:
            for name in (
                "audio_sample_rate",
                "audio_window",
                "audio_n_fft",
                "audio_hop_length",
                "audio_num_mels",
                "audio_num_codebooks",
                "audio_codebook_dim",
                "audio_codebook_size",
                "num_audio_units",
            ):
                _require_positive(name, getattr(self, name))
            if self.num_audio_units > self.num_units_per_step:
                raise ValueError(
                    f"`num_audio_units` must be <= `num_units_per_step` ({self.num_units_per_step}), "
                    f"got {self.num_audio_units}."
                )
            if self.num_audio_units * self.audio_dim < self.audio_num_codebooks * self.audio_codebook_dim:
                raise ValueError(
                    "`num_audio_units * audio_dim` must be >= `audio_num_codebooks * audio_codebook_dim` "
                    f"({self.audio_num_codebooks * self.audio_codebook_dim}) so that `φ_audio` is injective, "
                    f"got {self.num_audio_units * self.audio_dim}."
                )

    @property
    def is_fused(self) -> bool:
        """Whether units are the orthogonal direct sum of several modalities (more than frames)."""
        return len(self.modalities) > 1

    @property
    def frame_unit_dim(self) -> int:
        """Width of the frame units: `unit_dim` for frames alone, else the frame block `frame_dim`."""
        return self.frame_dim if self.is_fused else self.unit_dim

    @property
    def grid_size(self) -> int:
        """Side of the patch grid, `image_size // patch_size`."""
        return self.image_size // self.patch_size

    @property
    def num_units_per_step(self) -> int:
        """Number `U` of state units the encoder emits per step."""
        return self.grid_size**2 if self.unit_layout == "grid" else self.num_resampled_units


@strict
class VeltrixEvolverConfig(PreTrainedConfig):
    r"""
    Configuration of [`VeltrixEvolverModel`], the trajectory reasoning evolver (TRE): blocks of unit mixing
    within a step, a temporal selective state-space model (Mamba-2 / SSD form) over time per unit, and a SwiGLU
    MLP, conditioned per step on actions and the step size by adaLN.

    Args:
        unit_dim (`int`, *optional*, defaults to 32):
            Width `D` of the state units (must equal the encoder's `unit_dim`).
        num_units_per_step (`int`, *optional*, defaults to 64):
            Units `U` per step (must equal the encoder's `num_units_per_step`).
        unit_mixer (`str`, *optional*, defaults to `"conv"`):
            How units exchange information within a step: `"conv"` (depthwise convolution over the unit grid,
            for grid units; `num_units_per_step` must be a perfect square) or `"attention"` (self-attention over units).
        mixing_kernel_size (`int`, *optional*, defaults to 3):
            Odd kernel size of the `"conv"` unit mixer.
        hidden_size (`int`, *optional*, defaults to 64):
            Width of the evolver's residual stream.
        num_hidden_layers (`int`, *optional*, defaults to 2):
            Number of evolver blocks.
        num_attention_heads (`int`, *optional*, defaults to 4):
            Heads of the `"attention"` unit mixer.
        state_size (`int`, *optional*, defaults to 16):
            SSM state size `N` per head.
        expand (`int`, *optional*, defaults to 2):
            The SSM's inner width is `expand * hidden_size`.
        head_dim (`int`, *optional*, defaults to 16):
            Channels `P` per SSM head; `expand * hidden_size` must be a multiple of it.
        n_groups (`int`, *optional*, defaults to 1):
            Groups sharing the input-dependent `B` and `C` projections; must divide the number of heads.
        conv_kernel (`int`, *optional*, defaults to 4):
            Width of the causal depthwise convolution over time in front of the SSM.
        chunk_size (`int`, *optional*, defaults to 64):
            Chunk length of the chunked SSD scan.
        time_step_min (`float`, *optional*, defaults to 1e-3):
            Smallest initial SSM step size (per reference interval).
        time_step_max (`float`, *optional*, defaults to 0.1):
            Largest initial SSM step size (per reference interval).
        time_step_floor (`float`, *optional*, defaults to 1e-4):
            Floor of the initial SSM step size.
        A_init_range (`tuple[float, float]`, *optional*, defaults to `(1.0, 16.0)`):
            Range of the initial decay rates `-A`.
        dt_reference (`float`, *optional*, defaults to 0.1):
            Reference interval `Δt_ref` in seconds: the SSM step is `softplus(raw + bias) · Δt / Δt_ref`, and the
            state moves by `Δt · dS/dt`, so irregular sampling and other frame rates are handled by the
            discretisation.
        intermediate_size (`int`, *optional*, defaults to 128):
            Width of the SwiGLU MLP.
        action_dim (`int`, *optional*, defaults to 2):
            Width of the actions (0: the evolver takes none).
        condition_size (`int`, *optional*, defaults to 64):
            Width of the per-step condition embedding that drives adaLN.
        scan_implementation (`str`, *optional*, defaults to `"chunked"`):
            PyTorch scan used for whole sequences: `"chunked"` (SSD, parallel within chunks, linear across
            chunks) or `"sequential"` (the step-by-step reference).
        use_mamba_kernels (`bool`, *optional*, defaults to `True`):
            On CUDA, run whole sequences with `mamba-ssm`'s `mamba_chunk_scan_combined` and `causal-conv1d`'s
            `causal_conv1d_fn`, and inference steps with `selective_state_update` and `causal_conv1d_update`, when
            those packages are installed (`pip install "veltrix[cuda]"`). `False`, or a missing package (logged
            once), runs the PyTorch path, which computes the same function.
        rms_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the RMS norms.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of linear layers.
        sampling_head_layers (`int`, *optional*, defaults to 0):
            Blocks of the stochastic head, a flow-matching sampler of the next state's change given the evolver's
            per-step output (`rollout(..., sample=True)`); 0 builds no head, and the evolver only predicts the mean.
        sampling_steps (`int`, *optional*, defaults to 4):
            Euler steps of the stochastic head's flow from noise to a sampled change.

    Example:

    ```python
    >>> from modeling_veltrix import VeltrixEvolverConfig, VeltrixEvolverModel

    >>> config = VeltrixEvolverConfig(unit_dim=32, num_units_per_step=64)
    >>> model = VeltrixEvolverModel(config)
    >>> config.num_heads
    8
    ```
    """

    model_type = "veltrix_evolver"

    unit_dim: int = 32
    num_units_per_step: int = 64
    unit_mixer: str = "conv"
    mixing_kernel_size: int = 3
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    state_size: int = 16
    expand: int = 2
    head_dim: int = 16
    n_groups: int = 1
    conv_kernel: int = 4
    chunk_size: int = 64
    time_step_min: float = 1e-3
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    A_init_range: list[float] | tuple[float, ...] = (1.0, 16.0)
    dt_reference: float = 0.1
    intermediate_size: int = 128
    action_dim: int = 2
    condition_size: int = 64
    scan_implementation: str = "chunked"
    use_mamba_kernels: bool = True
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    sampling_head_layers: int = 0
    sampling_steps: int = 4

    def __post_init__(self, **kwargs):
        for name in (
            "unit_dim",
            "num_units_per_step",
            "mixing_kernel_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "state_size",
            "expand",
            "head_dim",
            "n_groups",
            "conv_kernel",
            "chunk_size",
            "time_step_min",
            "time_step_max",
            "time_step_floor",
            "dt_reference",
            "intermediate_size",
            "condition_size",
            "rms_norm_eps",
        ):
            _require_positive(name, getattr(self, name))
        if self.action_dim < 0:
            raise ValueError(f"`action_dim` must be >= 0, got {self.action_dim}.")
        for name in ("sampling_head_layers", "sampling_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "sampling_steps" else 0):
                raise ValueError(f"`{name}` must be an int >= {int(name == 'sampling_steps')}, got {value!r}.")
        _require_choice("unit_mixer", self.unit_mixer, UNIT_MIXERS)
        _require_choice("scan_implementation", self.scan_implementation, SCAN_IMPLEMENTATIONS)
        if self.unit_mixer == "conv":
            side = round(self.num_units_per_step**0.5)
            if side * side != self.num_units_per_step:
                raise ValueError(
                    "`num_units_per_step` must be a perfect square for `unit_mixer='conv'`, "
                    f"got {self.num_units_per_step}."
                )
            if self.mixing_kernel_size % 2 == 0:
                raise ValueError(f"`mixing_kernel_size` must be odd, got {self.mixing_kernel_size}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` must be a multiple of `num_attention_heads` ({self.num_attention_heads}), "
                f"got {self.hidden_size}."
            )
        if (self.expand * self.hidden_size) % self.head_dim:
            raise ValueError(
                f"`expand * hidden_size` ({self.expand * self.hidden_size}) must be a multiple of `head_dim`, "
                f"got head_dim={self.head_dim}."
            )
        if self.num_heads % self.n_groups:
            raise ValueError(f"`n_groups` must divide the number of heads ({self.num_heads}), got {self.n_groups}.")
        if len(self.A_init_range) != 2 or not 0 < self.A_init_range[0] <= self.A_init_range[1]:
            raise ValueError(f"`A_init_range` must be (low, high) with 0 < low <= high, got {self.A_init_range}.")
        if not self.time_step_min <= self.time_step_max:
            raise ValueError(
                f"`time_step_min` must be <= `time_step_max` ({self.time_step_max}), got {self.time_step_min}."
            )
        super().__post_init__(**kwargs)

    @property
    def intermediate_ssm_size(self) -> int:
        """Inner width of the SSM mixer, `expand * hidden_size`."""
        return self.expand * self.hidden_size

    @property
    def num_heads(self) -> int:
        """Number of SSM heads, `expand * hidden_size // head_dim`."""
        return self.intermediate_ssm_size // self.head_dim

    @property
    def unit_grid_size(self) -> int:
        """Side of the unit grid used by the `"conv"` unit mixer."""
        return round(self.num_units_per_step**0.5)


def is_prime(value: int) -> bool:
    """Whether the int `value` is a prime (trial division; table sizes are small)."""
    return value >= 2 and all(value % divisor for divisor in range(2, int(value**0.5) + 1))


def primes_from(start: int, count: int) -> list[int]:
    """The `count` smallest primes >= `start`: the sizes of the hash heads' tables (distinct per head)."""
    primes, candidate = [], max(start, 2)
    while len(primes) < count:
        if is_prime(candidate):
            primes.append(candidate)
        candidate += 1
    return primes


@strict
class VeltrixEngramConfig(PreTrainedConfig):
    r"""
    Configuration of [`VeltrixEngramModel`], the Engram memory: each step's state is quantized (FSQ of a linear
    projection) to a code; the n-grams of the last codes are hashed, by several heads into prime-sized tables, to
    address two memories that share this addressing:

    - the *non-parametric* table (Mem-JEPA): per slot the mean observed next state, its mean step size and a count,
      filled by one streaming pass over training trajectories; a rollout step whose n-gram is found (count >=
      `hit_threshold`) is pulled towards the remembered state by a learned gate, `Ŝ = Ŝ_pred + α·(m − Ŝ_pred)`;
    - the *parametric* tables (Engram, Cheng et al. 2026): learned n-gram embeddings whose keys and values are
      injected into the evolver's residual stream at `injection_layers`, gated by
      `σ(RMSNorm(h)·RMSNorm(k)/√H)`, trained end to end with the evolver.

    Args:
        unit_dim (`int`, *optional*, defaults to 32):
            Width `D` of the state units (the evolver's and encoder's `unit_dim`).
        num_units_per_step (`int`, *optional*, defaults to 64):
            Units `U` per step.
        fsq_levels (`list[int]`, *optional*, defaults to `[8, 5, 5, 5]`):
            Levels of the finite scalar quantizer (Mentzer et al. 2023), one per projected dimension; the number of
            codes is their product. Each level must be >= 3.
        ngram_orders (`list[int]`, *optional*, defaults to `[1, 2, 3]`):
            The n-gram orders N (1 … 4) whose keys address the tables, increasing; a lookup backs off from the
            highest order found to the lowest.
        num_hash_heads (`int`, *optional*, defaults to 2):
            Hash heads per order; each has its own multipliers and its own prime table size, and a lookup reads the
            head whose slot holds the fewest observations (the least collided, as in a count-min sketch).
        table_size (`int`, *optional*, defaults to 1021):
            Slots of the non-parametric table: head h gets the h-th prime >= `table_size`.
        use_table (`bool`, *optional*, defaults to `True`):
            Whether the model has the non-parametric table and its gate.
        table_value (`str`, *optional*, defaults to `"next_state"`):
            What a slot remembers: `"next_state"` (the mean observed next state, which pulls a drifting rollout back
            to states seen in training) or `"delta"` (the mean change over a step, applied to the current state and
            scaled by the step size relative to the remembered one).
        snap_to_seen_codes (`bool`, *optional*, defaults to `True`):
            Whether a state whose code never occurred in the training states takes the nearest code (on the FSQ
            grid) that did: a drifting rollout is then addressed by the remembered cell closest to it instead of
            missing. Set when the table is built (`set_seen_codes`).
        hit_threshold (`int`, *optional*, defaults to 2):
            A lookup hits when its slot's count is at least this.
        verify_keys (`bool`, *optional*, defaults to `False`):
            Whether a lookup also requires the slot's stored fingerprint (of the first n-gram stored there) to be
            its own n-gram's; a slot first filled by another n-gram is then a miss and the lookup backs off.
        gate_hidden_size (`int`, *optional*, defaults to 32):
            Width of the fusion gate's hidden layer.
        fixed_gate (`float`, *optional*):
            When set, every hit fuses with this α instead of the learned gate's (the fixed-gate ablation).
        bypass_min_count (`int`, *optional*, defaults to 0):
            A rollout step whose highest-order n-gram hits with at least this count takes the remembered state and
            skips the evolver's prediction (its recurrent state is still advanced); 0 disables the bypass.
        injection_layers (`list[int]`, *optional*, defaults to `[]`):
            Evolver layers before which the parametric memory is added to the residual stream; empty: no parametric
            memory.
        embedding_dim (`int`, *optional*, defaults to 16):
            Width of each (order, head) n-gram embedding of the parametric memory.
        parametric_table_size (`int`, *optional*, defaults to 1021):
            Rows per (order, head) of the parametric tables: head h gets the h-th prime >= it.
        hidden_size (`int`, *optional*, defaults to 64):
            The evolver's `hidden_size`, which the parametric memory's keys and values have.
        hash_seed (`int`, *optional*, defaults to 0):
            Seed of the hash multipliers: a memory built with one seed is addressed only by the same seed.
        encoder_fingerprint (`str`, *optional*):
            Fingerprint (`weights_fingerprint`) of the encoder whose states the table holds; a pipeline refuses to
            combine the memory with another encoder.
        evolver_fingerprint (`str`, *optional*):
            Fingerprint of the evolver the gate (and parametric memory) were trained with.
        rms_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the gate's RMS norms.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of linear layers and embeddings.
    """

    model_type = "veltrix_engram"

    unit_dim: int = 32
    num_units_per_step: int = 64
    fsq_levels: list[int] | tuple[int, ...] = (8, 5, 5, 5)
    ngram_orders: list[int] | tuple[int, ...] = (1, 2, 3)
    num_hash_heads: int = 2
    table_size: int = 1021
    use_table: bool = True
    table_value: str = "next_state"
    snap_to_seen_codes: bool = True
    hit_threshold: int = 2
    verify_keys: bool = False
    gate_hidden_size: int = 32
    fixed_gate: float | None = None
    bypass_min_count: int = 0
    injection_layers: list[int] | tuple[int, ...] = ()
    embedding_dim: int = 16
    parametric_table_size: int = 1021
    hidden_size: int = 64
    hash_seed: int = 0
    encoder_fingerprint: str | None = None
    evolver_fingerprint: str | None = None
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        for name in (
            "unit_dim",
            "num_units_per_step",
            "num_hash_heads",
            "table_size",
            "hit_threshold",
            "gate_hidden_size",
            "embedding_dim",
            "parametric_table_size",
            "hidden_size",
            "rms_norm_eps",
        ):
            _require_positive(name, getattr(self, name))
        self.fsq_levels = list(self.fsq_levels)
        self.ngram_orders = list(self.ngram_orders)
        self.injection_layers = list(self.injection_layers)
        if not self.fsq_levels or any(not isinstance(level, int) or level < 3 for level in self.fsq_levels):
            raise ValueError(f"`fsq_levels` must be a non-empty list of ints >= 3, got {self.fsq_levels}.")
        _require_choice("table_value", self.table_value, TABLE_VALUES)
        orders = self.ngram_orders
        if not orders or orders != sorted(set(orders)) or not all(1 <= n <= MAX_NGRAM_ORDER for n in orders):
            raise ValueError(
                f"`ngram_orders` must be increasing, distinct orders in 1 … {MAX_NGRAM_ORDER}, got {orders}."
            )
        layers = self.injection_layers
        if layers != sorted(set(layers)) or any(layer < 0 for layer in layers):
            raise ValueError(f"`injection_layers` must be increasing, distinct layer indices >= 0, got {layers}.")
        if not self.use_table and not layers:
            raise ValueError("The Engram memory needs `use_table=True` or some `injection_layers`, got neither.")
        if self.fixed_gate is not None and not 0.0 <= self.fixed_gate <= 1.0:
            raise ValueError(f"`fixed_gate` must be None or in [0, 1], got {self.fixed_gate}.")
        if self.bypass_min_count < 0:
            raise ValueError(f"`bypass_min_count` must be >= 0 (0 disables the bypass), got {self.bypass_min_count}.")
        super().__post_init__(**kwargs)

    @property
    def num_codes(self) -> int:
        """Codes of the quantizer, the product of `fsq_levels`."""
        product = 1
        for level in self.fsq_levels:
            product *= level
        return product

    @property
    def max_order(self) -> int:
        """The highest n-gram order: how many recent codes a rollout keeps."""
        return max(self.ngram_orders)

    @property
    def table_primes(self) -> list[int]:
        """The non-parametric table size of each hash head (distinct primes)."""
        return primes_from(self.table_size, self.num_hash_heads)

    @property
    def parametric_primes(self) -> list[int]:
        """The parametric table size of each hash head (distinct primes)."""
        return primes_from(self.parametric_table_size, self.num_hash_heads)


__all__ = ["VeltrixEncoderConfig", "VeltrixEngramConfig", "VeltrixEvolverConfig"]
