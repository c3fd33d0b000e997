"""MPE: the Veltrix encoder, frames -> bounded state units in the shared latent space.

Frames are cut into patches (ViT, Dosovitskiy et al. 2021) and mixed locally by depthwise-convolution blocks
(ConvNeXt-style, Liu et al. 2022). The units are then either the patch grid itself (`unit_layout="grid"`, one
unit per patch, finest) or `num_resampled_units` learned queries cross-attending to the patches (`"resampler"`, as in
Perceiver / Flamingo, coarser). Units pass through `tanh`, so the evolver works in a bounded space.

`decode_frames` is the direct frame readout `D_frames` from units back to pixels, trained with the encoder by
reconstruction; the flow-matching decoder (`VeltrixDecoderModel`) renders sharp frames from the same units.

Opt-in multimodal units (`config.modalities` beyond `"frames"`, DESIGN.md §3): captions (byte tokens, `text_units`)
and audio (`audio_codes` / `audio_features` / raw `audio_values`, `audio_units`) become units of their own blocks, and
each unit is their orthogonal direct sum `Q · [frames ; text ; audio ; latent]` (`orthogonal_fusion`). Each modality
reads back from its own subspace: `decode_frames`, `generate_captions` (caption head), `decode_audio` (exact inverse
`D_audio` of the linear `φ_audio` + nearest code). `L_align` is InfoNCE between the modalities of the same step
(CLIP, Radford et al. 2021); nested dropout over resampled units (Rippel et al. 2014) makes `num_resampled_units=k` a
choice at inference.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .audio_units import QUANTIZER_MODULES, VeltrixAudioTokenizer, init_quantizer_buffers_
from .configuration_veltrix import VeltrixEncoderConfig
from .frame_units import (
    VeltrixCrossAttention,
    VeltrixGridReadout,
    VeltrixLocalMixingBlock,
    VeltrixResamplerReadout,
    grid_positions,
)
from .input_validation import check_finite, check_indices, check_range, check_shape, checks_enabled, input_device
from .orthogonal_fusion import VeltrixLinearEmbedding, VeltrixOrthogonalFusion, VeltrixOrthogonalMap
from .text_units import VeltrixCaptionHead, VeltrixTextUnitEncoder, byte_detokenize, caption_targets
from .weights_check import VeltrixCheckedLoadingMixin

# The text and audio inputs of `forward`, in its order.
OBSERVED_INPUTS = ("input_ids", "attention_mask", "audio_values", "audio_codes", "audio_features")


def info_nce(
    first: torch.Tensor, second: torch.Tensor, logit_scale: torch.Tensor, duplicates: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE of paired embeddings `(N, E)`: row i of each is the positive of row i of the other.

    `logit_scale` multiplies the cosine similarities (the inverse temperature). `duplicates (N, N)` bool marks pairs
    `(i, j)`, `i != j`, whose inputs are identical in either modality: they are not negatives of each other (two steps
    with the same caption, or two silent steps, must not be pushed apart) and are left out of the softmax.
    """
    logits = logit_scale * (F.normalize(first, dim=-1) @ F.normalize(second, dim=-1).T)
    if duplicates is not None:
        off_diagonal = ~torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(duplicates & off_diagonal, float("-inf"))
    targets = torch.arange(first.shape[0], device=first.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def identical_rows(values: torch.Tensor) -> torch.Tensor:
    """`(N, ...)` -> `(N, N)` bool: whether rows i and j are equal entry for entry."""
    flat = values.flatten(1)
    return (flat[:, None] == flat[None]).all(-1)


def trim_caption_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(..., L)` caption bytes and mask cut after the last kept byte of any caption plus one (its end byte), as int64.

    Exact for the text encoder (it masks padding) and for the caption loss (it ignores the bytes after each end
    byte), and saves most of their compute: captions are far shorter than `text_max_length`.
    """
    positions = torch.arange(1, input_ids.shape[-1] + 1, device=input_ids.device)
    length = min(input_ids.shape[-1], int((attention_mask * positions).max()) + 1)
    return input_ids[..., :length].long(), attention_mask[..., :length]


class VeltrixEncoderPreTrainedModel(VeltrixCheckedLoadingMixin, PreTrainedModel):
    config_class = VeltrixEncoderConfig
    base_model_prefix = "encoder"
    main_input_name = "pixel_values"
    _no_split_modules = ["VeltrixLocalMixingBlock", "VeltrixCrossAttention"]
    # The mixing blocks and cross-attentions are `GradientCheckpointingLayer`s.
    supports_gradient_checkpointing = True
    # No token embeddings: like transformers' vision models, the input embedding is the patch embedding.
    _input_embed_layer = "patch_embedding"

    def _init_weights(self, module: nn.Module) -> None:
        """Initialises every parameter and buffer of `module` (its own, not its children's) with
        `transformers.initialization`, which skips the tensors that `from_pretrained` loaded. Buffers that are a
        function of the config (the mel filterbank, `Q`'s base) are recomputed exactly, so a model built on the meta
        device and then initialised equals one built directly.

        Each tensor is set by the branch of the module that holds it directly: transformers skips a module of custom
        code whose own tensors are all loaded (or that has none), so a parent cannot initialise its children's."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            # Fan-in scaled (PyTorch's default) rather than a fixed small std: the encoder is a short chain of
            # projections without residual normalisation around each, and a 0.02 std starves its gradients.
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            fan_in = module.weight[0].numel()
            init.uniform_(module.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
            return
        super()._init_weights(module)
        if isinstance(module, VeltrixEncoderModel):
            init.normal_(module.position_embedding, std=std)
            if module.unit_queries is not None:
                init.normal_(module.unit_queries, std=std)
                # Unit-variance pooled features: each weight ~ N(0, 1 / number of patches).
                init.normal_(module.unit_pooling, std=module.unit_pooling.shape[1] ** -0.5)
            if module.align_logit_scale is not None:
                init.constant_(module.align_logit_scale, -math.log(self.config.align_temperature))
        elif isinstance(module, VeltrixResamplerReadout):
            init.normal_(module.patch_queries, std=std)
            init.normal_(module.unit_unpooling, std=module.unit_unpooling.shape[1] ** -0.5)
        elif isinstance(module, VeltrixTextUnitEncoder):
            init.normal_(module.position_embedding, std=std)
            init.normal_(module.queries, std=std)
        elif isinstance(module, VeltrixCaptionHead):
            init.normal_(module.position_embedding, std=std)
        elif isinstance(module, VeltrixLinearEmbedding):
            # Orthonormal rows, as its `reset_parameters` (`init.orthogonal_` factorises half precisions in float32).
            init.orthogonal_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, parametrize.ParametrizationList) and isinstance(module[0], VeltrixOrthogonalMap):
            init.zeros_(module.original)  # the fusion's Q = base · map(0) = base
        elif isinstance(module, VeltrixOrthogonalMap):
            init.eye_(module.base)  # Q starts at the identity: each block on its own coordinates
        elif isinstance(module, VeltrixAudioTokenizer):
            init.copy_(module.filterbank, module.mel_filterbank())
        elif isinstance(module, QUANTIZER_MODULES):
            init_quantizer_buffers_(module)


@dataclass
class VeltrixEncoderOutput(ModelOutput):
    """
    The fields in this order are also the tuple of `return_dict=False` (`to_tuple()`: the fields that are not `None`),
    so with `return_loss=True` the loss comes first, as in transformers.

    Args:
        loss (`torch.Tensor`, *optional*): with `return_loss=True`, the reconstruction MSE, plus with several
            modalities the weighted caption, audio-tokenizer and alignment terms.
        units (`torch.Tensor` of shape `(B, T, U, D)`): the bounded state units of every step (with several
            modalities, their orthogonal direct sum).
        actions (`torch.Tensor` of shape `(B, T, A)`, *optional*): the actions, passed through for the evolver.
        reconstruction (`torch.Tensor` of shape `(B, T, C, H, W)`, *optional*): the frame readout of the units,
            returned when `return_loss=True`.
        unit_mask (`torch.Tensor` of shape `(B, T, U)`, *optional*): with several modalities, which unit slots hold
            kept content (frame slots past `num_resampled_units` are zero).
        subspaces (`dict[str, slice]`, *optional*): with several modalities, each block's coordinates before the
            rotation `Q`; `decompose` returns the parts.
        loss_terms (`dict[str, torch.Tensor]`, *optional*): with several modalities and `return_loss=True`, the
            unweighted `frames`, `text`, `audio` and `align` terms.
        audio_codes (`torch.Tensor` of shape `(B, T, K)`, *optional*): the codes of the step's audio, when audio
            was given.
        hidden_states (`tuple(torch.Tensor)`, *optional*): with `output_hidden_states=True`, the patch features
            `(B, T, G, G, hidden_size)` of every step after the patch and position embedding and after each mixing
            layer: `num_mixing_layers + 1` tensors.
    """

    loss: torch.Tensor | None = None
    units: torch.Tensor | None = None
    actions: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    unit_mask: torch.Tensor | None = None
    subspaces: dict | None = None
    loss_terms: dict | None = None
    audio_codes: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class VeltrixEncoderModel(VeltrixEncoderPreTrainedModel):
    """The Veltrix encoder (MPE): frames `(B, T, C, H, W)` in [-1, 1] -> units `(B, T, U, D)` in (-1, 1)."""

    def __init__(self, config: VeltrixEncoderConfig):
        super().__init__(config)
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size
        )
        self.position_embedding = nn.Parameter(torch.zeros(1, config.grid_size, config.grid_size, config.hidden_size))
        self.mixing_blocks = nn.ModuleList(
            VeltrixLocalMixingBlock(
                config.hidden_size, config.mixing_kernel_size, config.mlp_ratio, config.layer_norm_eps
            )
            for _ in range(config.num_mixing_layers)
        )
        if config.unit_layout == "resampler":
            self.unit_queries = nn.Parameter(torch.zeros(1, config.num_resampled_units, config.hidden_size))
            self.unit_pooling = nn.Parameter(
                torch.zeros(config.num_resampled_units, config.grid_size**2, config.hidden_size)
            )
            self.resampler = VeltrixCrossAttention(
                config.hidden_size, config.num_attention_heads, config.mlp_ratio, config.layer_norm_eps
            )
            self.readout = VeltrixResamplerReadout(config)
        else:
            self.unit_queries = self.unit_pooling = None
            self.resampler = None
            self.readout = VeltrixGridReadout(config)
        self.unit_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.unit_proj = nn.Linear(config.hidden_size, config.frame_unit_dim)
        self.fusion = self.text_encoder = self.caption_head = self.audio_tokenizer = self.audio_embedding = None
        self.align_projections = self.align_logit_scale = None
        if config.is_fused:
            self._build_modalities(config)
        self.post_init()

    def _build_modalities(self, config: VeltrixEncoderConfig) -> None:
        """The fusion, the text and audio unit tokenizers and read-backs, and the alignment projections."""
        blocks = {"frames": config.frame_dim}
        slots = {"frames": config.num_units_per_step}
        if "text" in config.modalities:
            blocks["text"], slots["text"] = config.text_dim, config.num_text_units
            self.text_encoder = VeltrixTextUnitEncoder(
                config.text_hidden_size,
                config.text_num_layers,
                config.text_num_heads,
                config.text_max_length,
                config.num_text_units,
                config.text_dim,
                config.layer_norm_eps,
            )
            self.caption_head = VeltrixCaptionHead(
                config.text_dim,
                config.text_hidden_size,
                config.text_num_heads,
                config.text_num_layers,
                config.text_max_length,
                config.layer_norm_eps,
            )
        if "audio" in config.modalities:
            blocks["audio"], slots["audio"] = config.audio_dim, config.num_audio_units
            self.audio_tokenizer = VeltrixAudioTokenizer(
                config.audio_sample_rate,
                config.audio_window,
                config.audio_n_fft,
                config.audio_hop_length,
                config.audio_num_mels,
                config.audio_num_codebooks,
                config.audio_codebook_dim,
                config.audio_codebook_size,
            )
            self.audio_embedding = VeltrixLinearEmbedding(
                config.audio_num_codebooks * config.audio_codebook_dim, config.num_audio_units, config.audio_dim
            )
        if config.latent_dim:
            blocks["latent"] = config.latent_dim
        self.modality_slots = slots
        self.fusion = VeltrixOrthogonalFusion(blocks, orthogonal_map=config.fusion_orthogonal_map)
        # One small MLP head per modality on its flattened block (its slots keep their order, so where things are in
        # a frame survives) into the shared alignment space (SimCLR-style projection heads, Chen et al. 2020).
        self.align_projections = nn.ModuleDict(
            {
                name: nn.Sequential(
                    nn.LayerNorm(slots[name] * blocks[name], eps=config.layer_norm_eps),
                    nn.Linear(slots[name] * blocks[name], 2 * config.align_dim),
                    nn.GELU(),
                    nn.Linear(2 * config.align_dim, config.align_dim),
                )
                for name in slots
            }
        )
        # Learned inverse temperature of the InfoNCE logits (CLIP), stored as a log and clamped at 100.
        self.align_logit_scale = nn.Parameter(torch.tensor(-math.log(config.align_temperature)))

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        """Validates `(B, T, C, H, W)` frames: shape, finiteness and the [-1, 1] range."""
        c, size = self.config.num_channels, self.config.image_size
        check_shape(
            "pixel_values", pixel_values, ("B", "T", c, size, size), dtype=self.dtype, device=input_device(self)
        )
        check_finite("pixel_values", pixel_values)
        check_range("pixel_values", pixel_values, -1.0, 1.0)

    def check_units(self, units: torch.Tensor) -> None:
        """Validates `(B, T, U, D)` units of this encoder."""
        expected = ("B", "T", self.config.num_units_per_step, self.config.unit_dim)
        check_shape("units", units, expected, dtype=self.dtype, device=input_device(self))
        check_finite("units", units)

    def encode_units(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Frames `(B, T, C, H, W)` -> frame units `(B, T, U, frame_unit_dim)`, without input checks (callers
        validate), and with `output_hidden_states` the patch features `(B, T, G, G, hidden_size)` after the embedding
        and after each mixing layer (else `None`)."""
        b, t = pixel_values.shape[:2]
        frames = pixel_values.flatten(0, 1)
        grid = self.patch_embedding(frames).permute(0, 2, 3, 1) + self.position_embedding  # (N, G, G, H)
        hidden_states = [grid] if output_hidden_states else None
        for block in self.mixing_blocks:
            grid = block(grid)
            if output_hidden_states:
                hidden_states.append(grid)
        tokens = grid.flatten(1, 2)  # (N, G·G, H)
        if self.resampler is not None:
            tokens = tokens + grid_positions(self.config.grid_size, self.config.hidden_size, tokens)
            # Each query starts from its own learned linear pooling of the patches, then attends to them. Pure
            # attention pooling starts near uniform, so the units barely depend on where things are and training
            # sits on the mean frame for about a thousand steps; the linear path carries "where" from the start.
            queries = self.unit_queries + torch.einsum("uph,nph->nuh", self.unit_pooling, tokens)
            tokens = self.resampler(queries, tokens)
        units = torch.tanh(self.unit_proj(self.unit_norm(tokens)))
        if output_hidden_states:
            hidden_states = tuple(state.reshape(b, t, *state.shape[1:]) for state in hidden_states)
        return units.reshape(b, t, *units.shape[1:]), hidden_states

    def frame_subspace(self, units: torch.Tensor) -> torch.Tensor:
        """What the frame readouts (`decode_frames`, the flow decoder) read of state units `(..., U, D)`: the frame
        block `(..., U, frame_dim)` with several modalities, the units themselves with frames alone."""
        return units if self.fusion is None else self.fusion.decompose(units)["frames"]

    def decode_frames(self, units: torch.Tensor) -> torch.Tensor:
        """Direct frame readout from the frame subspace: units (B, T, U, D) -> frames (B, T, C, H, W)."""
        if checks_enabled():
            self.check_units(units)
        b, t = units.shape[:2]
        frames = self.readout(self.frame_subspace(units).flatten(0, 1))
        return frames.reshape(b, t, *frames.shape[1:])

    def decompose(self, units: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fused units `(B, T, U, D)` -> each block's part `(B, T, U_m, d_m)` (`Q_mᵀ C` on the block's slots)."""
        self._require_fused("decompose")
        if checks_enabled():
            self.check_units(units)
        return self.fusion.decompose(units, self.modality_slots)

    def caption_loss(self, units: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Byte cross-entropy of the caption head reading the text subspace of units `(B, T, U, D)` (encoded or
        evolved) against the captions `input_ids`, `attention_mask (B, T, L)`, teacher-forced; the bytes after each
        caption's end byte are ignored."""
        self._require_modality("text", "caption_loss")
        input_ids, _ = trim_caption_padding(input_ids, attention_mask)
        logits = self.caption_head(self.decompose(units)["text"].flatten(0, 1), input_ids.flatten(0, 1))
        targets = caption_targets(input_ids.flatten(0, 1)).flatten()
        return F.cross_entropy(logits.flatten(0, 1), targets, ignore_index=-100)

    def generate_captions(self, units: torch.Tensor) -> list[list[str]]:
        """Captions read from the text subspace of units `(B, T, U, D)` (encoded or evolved): `B` lists of `T`
        strings, decoded greedily byte by byte up to the end byte."""
        self._require_modality("text", "generate_captions")
        part = self.decompose(units)["text"]
        ids = self.caption_head.generate(part.flatten(0, 1)).reshape(*part.shape[:2], -1)  # (B, T, L)
        return [byte_detokenize(row) for row in ids]

    def decode_audio(self, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio read from the audio subspace of units `(B, T, U, D)`: `D_audio`, the exact inverse of the linear
        `φ_audio`, gives features `(B, T, K, V)`; the nearest code per codebook gives codes `(B, T, K)`."""
        self._require_modality("audio", "decode_audio")
        part = self.decompose(units)["audio"]
        config = self.config
        features = self.audio_embedding.inverse(part).reshape(
            *part.shape[:2], config.audio_num_codebooks, config.audio_codebook_dim
        )
        return features, self.audio_tokenizer.nearest_codes(features)

    def _require_fused(self, method: str) -> None:
        if self.fusion is None:
            raise ValueError(f"`{method}` needs a multimodal encoder: `config.modalities` is {self.config.modalities}.")

    def _require_modality(self, modality: str, method: str) -> None:
        if modality not in self.config.modalities:
            raise ValueError(
                f"`{method}` needs '{modality}' in `config.modalities`, got {list(self.config.modalities)}."
            )

    def check_inputs(
        self,
        pixel_values: torch.Tensor,
        actions: torch.Tensor | None = None,
        observed: dict[str, torch.Tensor | None] | None = None,
        num_resampled_units: int | None = None,
    ) -> None:
        """Validates the inputs of `forward`: the frames (`check_pixel_values`), and the actions and the `observed`
        text and audio (`forward`'s `input_ids`, `attention_mask`, `audio_values`, `audio_codes`, `audio_features`;
        absent or `None` when not given) against the frames' `(B, T)` and the config."""
        config = self.config
        unknown = sorted(set(observed or {}) - set(OBSERVED_INPUTS))
        if unknown:
            raise ValueError(f"`observed` takes {list(OBSERVED_INPUTS)}, got {unknown}.")
        input_ids, attention_mask, audio_values, audio_codes, audio_features = (
            (observed or {}).get(name) for name in OBSERVED_INPUTS
        )
        self.check_pixel_values(pixel_values)
        b, t = pixel_values.shape[:2]
        if actions is not None:
            check_shape("actions", actions, (b, t, config.action_dim), dtype=self.dtype, device=input_device(self))
            check_finite("actions", actions)
        if input_ids is not None or attention_mask is not None:
            self._require_modality("text", "input_ids")
            if input_ids is None or attention_mask is None:
                raise ValueError("`input_ids` and `attention_mask` must be given together, got only one of them.")
            check_shape("input_ids", input_ids, (b, t, config.text_max_length), integer=True, device=input_device(self))
            check_indices("input_ids", input_ids, 256)
            check_shape(
                "attention_mask",
                attention_mask,
                (b, t, config.text_max_length),
                integer=True,
                device=input_device(self),
            )
            check_indices("attention_mask", attention_mask, 2)
            if not bool((attention_mask.sum(-1) > 0).all()):
                raise ValueError("`attention_mask` must keep at least one byte of every step's caption, got none.")
        audio = {"audio_values": audio_values, "audio_codes": audio_codes, "audio_features": audio_features}
        given = [name for name, value in audio.items() if value is not None]
        if given:
            self._require_modality("audio", given[0])
            if len(given) > 1:
                raise ValueError(f"Give one of `audio_values`, `audio_codes`, `audio_features`, got {given}.")
        k, v = config.audio_num_codebooks, config.audio_codebook_dim
        if audio_values is not None:
            check_shape(
                "audio_values", audio_values, (b, t, config.audio_window), dtype=self.dtype, device=input_device(self)
            )
            check_finite("audio_values", audio_values)
        if audio_codes is not None:
            check_shape("audio_codes", audio_codes, (b, t, k), integer=True, device=input_device(self))
            check_indices("audio_codes", audio_codes, config.audio_codebook_size)
        if audio_features is not None:
            check_shape("audio_features", audio_features, (b, t, k, v), dtype=self.dtype, device=input_device(self))
            check_finite("audio_features", audio_features)
        if num_resampled_units is not None:
            if config.unit_layout != "resampler":
                raise ValueError(
                    "`num_resampled_units` needs resampled frame units (`unit_layout='resampler'`), "
                    f"got {config.unit_layout!r}."
                )
            if (
                not isinstance(num_resampled_units, int)
                or isinstance(num_resampled_units, bool)
                or not 1 <= num_resampled_units <= config.num_resampled_units
            ):
                raise ValueError(
                    f"`num_resampled_units` must be an int in [1, {config.num_resampled_units}], "
                    f"got {num_resampled_units!r}."
                )

    def _keep_first_units(self, units: torch.Tensor, num_resampled_units: int | None) -> torch.Tensor:
        """Zeroes the frame units past the first `k` of `(N, U, d)`: `k = num_resampled_units` when given, else in
        training with nested dropout `k ~ U{1..U}` per step, else all are kept (resampler layout only)."""
        if self.config.unit_layout != "resampler":
            return units
        count = units.shape[1]
        if num_resampled_units is not None:
            kept = torch.full((units.shape[0], 1), min(num_resampled_units, count), device=units.device)
        elif self.training and self.config.nested_dropout:
            kept = torch.randint(1, count + 1, (units.shape[0], 1), device=units.device)
        else:
            return units
        mask = torch.arange(count, device=units.device) < kept  # (N, U_m)
        return units * mask[..., None].to(units.dtype)

    def forward(
        self,
        pixel_values: torch.Tensor,
        actions: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        audio_values: torch.Tensor | None = None,
        audio_codes: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        num_resampled_units: int | None = None,
        return_loss: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> VeltrixEncoderOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(B, T, C, H, W)`): frames in [-1, 1].
            actions (`torch.Tensor` of shape `(B, T, A)`, *optional*): actions, passed through for the evolver.
            input_ids (`torch.Tensor` of shape `(B, T, L)`, *optional*): caption bytes per step (`byte_tokenize`);
                needs `"text"` in `config.modalities`.
            attention_mask (`torch.Tensor` of shape `(B, T, L)`, *optional*): 1 on caption bytes, 0 on padding.
            audio_values (`torch.Tensor` of shape `(B, T, S)`, *optional*): each step's waveform window; tokenized
                to codes here. Needs `"audio"` in `config.modalities`; at most one of the three audio inputs.
            audio_codes (`torch.Tensor` of shape `(B, T, K)`, *optional*): codes in `[0, audio_codebook_size)`.
            audio_features (`torch.Tensor` of shape `(B, T, K, V)`, *optional*): code vectors (or any features of
                that shape).
            num_resampled_units (`int`, *optional*): keep only the first `num_resampled_units` resampled frame units
                (the rest are zero); needs `unit_layout="resampler"`, see `config.nested_dropout`.
            return_loss (`bool`, defaults to `False`): also compute the frame readout and the training loss.
            output_hidden_states (`bool`, *optional*, defaults to `config.output_hidden_states`): also return the
                patch features after the embedding and after each mixing layer (`VeltrixEncoderOutput.hidden_states`).
            return_dict (`bool`, *optional*, defaults to `config.return_dict`): a `VeltrixEncoderOutput`, else its
                `to_tuple()` (the loss first when computed).

        Absent modalities leave their blocks zero.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        for name, flag in (
            ("return_loss", return_loss),
            ("output_hidden_states", output_hidden_states),
            ("return_dict", return_dict),
        ):
            if not isinstance(flag, bool):
                raise ValueError(f"`{name}` must be a bool, got {flag!r}.")
        if checks_enabled():
            given = (input_ids, attention_mask, audio_values, audio_codes, audio_features)
            observed = dict(zip(OBSERVED_INPUTS, given, strict=True))
            self.check_inputs(pixel_values, actions, observed, num_resampled_units)
        if self.fusion is None:
            units, hidden_states = self.encode_units(pixel_values, output_hidden_states)
            units = self._keep_first_units(units.flatten(0, 1), num_resampled_units).reshape(units.shape)
            reconstruction = loss = None
            if return_loss:
                reconstruction = self.decode_frames(units)
                loss = F.mse_loss(reconstruction, pixel_values)
            output = VeltrixEncoderOutput(
                loss=loss, units=units, actions=actions, reconstruction=reconstruction, hidden_states=hidden_states
            )
        else:
            text = (input_ids, attention_mask)
            audio = (audio_values, audio_codes, audio_features)
            output = self._forward_fused(
                pixel_values, actions, text, audio, num_resampled_units, return_loss, output_hidden_states
            )
        return output if return_dict else output.to_tuple()

    def _forward_fused(
        self,
        pixel_values: torch.Tensor,
        actions: torch.Tensor | None,
        text: tuple[torch.Tensor | None, torch.Tensor | None],
        audio: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
        num_resampled_units: int | None,
        return_loss: bool,
        output_hidden_states: bool,
    ) -> VeltrixEncoderOutput:
        """Each modality's units into its block, fused by `Q`; the losses of the representation stage.

        `text` is `(input_ids, attention_mask)` and `audio` is `(audio_values, audio_codes, audio_features)`, as
        validated by `forward`."""
        config = self.config
        input_ids, attention_mask = text
        audio_values, audio_codes, audio_features = audio
        b, t = pixel_values.shape[:2]
        # `full` keeps every unit (alignment is learned on it, as retrieval reads it); `parts` is what gets fused.
        frame_units, hidden_states = self.encode_units(pixel_values, output_hidden_states)
        full = {"frames": frame_units.flatten(0, 1)}  # (N, U, d_frames), N = B·T
        if input_ids is not None:
            input_ids, attention_mask = trim_caption_padding(input_ids, attention_mask)
            full["text"] = self.text_encoder(input_ids.flatten(0, 1), attention_mask.flatten(0, 1))
        parts = {**full, "frames": self._keep_first_units(full["frames"], num_resampled_units)}
        tokenizer_loss = None
        if audio_values is not None:
            audio_codes, audio_features, tokenizer_loss = self.audio_tokenizer(audio_values.flatten(0, 1))
            audio_codes = audio_codes.reshape(b, t, -1)
        if audio_codes is not None and audio_features is None:
            audio_features = self.audio_tokenizer.features_from_codes(audio_codes.long())
        if audio_features is not None:
            parts["audio"] = full["audio"] = self.audio_embedding(audio_features.reshape(b * t, -1))
        units = self.fusion.fuse(parts, config.num_units_per_step).reshape(b, t, config.num_units_per_step, -1)
        kept = max(
            min(num_resampled_units, part.shape[1]) if num_resampled_units and name == "frames" else part.shape[1]
            for name, part in parts.items()
        )
        unit_mask = (torch.arange(config.num_units_per_step, device=units.device) < kept).expand(b, t, -1)

        reconstruction = loss = loss_terms = None
        if return_loss:
            reconstruction = self.decode_frames(units)
            loss_terms = {"frames": F.mse_loss(reconstruction, pixel_values)}
            loss = loss_terms["frames"]
            if input_ids is not None:
                loss_terms["text"] = self.caption_loss(units, input_ids, attention_mask)
                loss = loss + config.text_loss_weight * loss_terms["text"]
            if tokenizer_loss is not None:
                loss_terms["audio"] = tokenizer_loss
                loss = loss + config.audio_loss_weight * tokenizer_loss
            if len(parts) > 1:
                # Content keys: steps with identical captions or identical audio (silence) are not negatives. Frames
                # of a moving world are never identical, and comparing them would cost N² · C·H·W.
                keys = {}
                if input_ids is not None:
                    keys["text"] = input_ids.flatten(0, 1)
                if "audio" in parts:
                    keys["audio"] = (
                        audio_features.reshape(b * t, -1) if audio_codes is None else audio_codes.flatten(0, 1)
                    )
                loss_terms["align"] = self.alignment_loss(full, keys)
                loss = loss + config.align_loss_weight * loss_terms["align"]
        return VeltrixEncoderOutput(
            loss=loss,
            units=units,
            actions=actions,
            reconstruction=reconstruction,
            unit_mask=unit_mask,
            subspaces=dict(self.fusion.slices),
            loss_terms=loss_terms,
            audio_codes=audio_codes,
            hidden_states=hidden_states,
        )

    def alignment_embeddings(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each modality's block `(N, U_m, d_m)` -> its alignment embedding `(N, align_dim)`."""
        return {name: self.align_projections[name](part.flatten(1)) for name, part in parts.items()}

    def alignment_loss(
        self, parts: dict[str, torch.Tensor], keys: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """`L_align`: InfoNCE averaged over every pair of the given modalities, the steps of the batch as negatives.

        Args:
            parts: modality -> its block `(N, U_m, d_m)` of `N` steps.
            keys: modality -> the step's input `(N, ...)` (caption bytes, audio codes); two steps whose inputs are
                identical in either modality of a pair are not negatives of each other in that pair.
        """
        embeddings = self.alignment_embeddings(parts)
        names = list(embeddings)
        pairs = [(a, c) for i, a in enumerate(names) for c in names[i + 1 :]]
        logit_scale = self.align_logit_scale.clamp(max=math.log(100.0)).exp()
        same = {name: identical_rows(key) for name, key in (keys or {}).items()}
        total = 0.0
        for a, c in pairs:
            masks = [same[name] for name in (a, c) if name in same]
            duplicates = torch.stack(masks).any(0) if masks else None
            total = total + info_nce(embeddings[a], embeddings[c], logit_scale, duplicates)
        return total / len(pairs)

    def embed_for_retrieval(self, units: torch.Tensor) -> dict[str, torch.Tensor]:
        """Alignment embeddings `(B, T, align_dim)` of each modality, read from its subspace of units `(B, T, U, D)`
        (a modality that was absent embeds its zero block)."""
        parts = {name: part.flatten(0, 1) for name, part in self.decompose(units).items() if name != "latent"}
        embeddings = self.alignment_embeddings(parts)
        return {name: value.reshape(*units.shape[:2], -1) for name, value in embeddings.items()}


__all__ = ["VeltrixEncoderModel", "VeltrixEncoderOutput", "VeltrixEncoderPreTrainedModel"]
