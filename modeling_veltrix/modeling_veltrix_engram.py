"""Engram: a hashed n-gram memory of latent codes that anchors long rollouts (DESIGN §5).

Each step's state `(U, D)` is standardised, projected and quantized by finite scalar quantization (FSQ, Mentzer et
al. 2023, from `vector-quantize-pytorch`) to one code. The n-grams of the last N codes (N in `ngram_orders`) are
hashed by several heads (random odd multipliers per position, XOR-mixed, modulo a distinct prime per head) into
tables shared by two memories:

- the non-parametric table (the Mem-JEPA note): per slot the mean observed next state (or, with
  `table_value="delta"`, the mean change over a step), its mean step size, a count,
  the fingerprint of the first key stored there and whether another key collided into it. `recall` reads, per order,
  the head with the fewest observations (count-min) and backs off from the highest order that hits;
  `anchor` fuses the evolver's prediction with the remembered state, `Ŝ = Ŝ_pred + α·(m − Ŝ_pred)`, α from a small
  gate network per unit (zero on misses);
- the parametric tables (Engram, Cheng et al. 2026): learned n-gram embeddings whose keys and values `inject` adds
  into the evolver's residual stream, gated by `σ(RMSNorm(h)·RMSNorm(k)/√H)` (no short convolution on the values).

The evolver drives both (`VeltrixEvolverModel.forward/rollout(..., engram=)`); this module imports no evolver code.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput
from vector_quantize_pytorch import FSQ

from .configuration_veltrix import VeltrixEngramConfig
from .input_validation import check_shape, checks_enabled, input_device
from .weights_check import VeltrixCheckedLoadingMixin, weights_fingerprint

# Multipliers stay below 2**31 and shifted codes below 2**17, so every product fits int64 exactly.
MULTIPLIER_BITS = 31
MISSING_CODE = -1


def hash_constants(config: VeltrixEngramConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The n-gram hash's constants, fixed by `config.hash_seed` (drawn on the CPU, so every device and build agrees):
    per (order, head, position) an odd multiplier (orders, heads + 1, max_order) and per (order, head) a salt
    (orders, heads + 1), both int64 in [0, 2**MULTIPLIER_BITS); the extra "head" makes the fingerprint that tells two
    keys of a slot apart."""
    generator = torch.Generator().manual_seed(config.hash_seed)
    orders, heads, high = len(config.ngram_orders), config.num_hash_heads, 2**MULTIPLIER_BITS
    shape = (orders, heads + 1, config.max_order)
    multipliers = torch.randint(0, high // 2, shape, generator=generator, device="cpu") * 2 + 1
    salts = torch.randint(0, high, (orders, heads + 1), generator=generator, device="cpu")
    return multipliers, salts


@dataclass
class VeltrixEngramRecall(ModelOutput):
    """
    What the non-parametric table remembers after a history of codes, per trajectory.

    Args:
        states (`torch.Tensor` of shape `(B, U, D)`): the remembered next state (zeros on a miss); with
            `table_value="delta"`, the current state moved by the remembered change.
        counts (`torch.Tensor` of shape `(B,)`): observations behind it (0 on a miss).
        orders (`torch.Tensor` of shape `(B,)`): the n-gram order that hit (0 on a miss).
        step_sizes (`torch.Tensor` of shape `(B,)`): the mean step size (seconds) of those observations.
        hits (`torch.Tensor` of shape `(B,)`): whether a slot with count >= `hit_threshold` was found.
        foreign (`torch.Tensor` of shape `(B,)`): hits whose slot was first filled by another n-gram (a collision
            the lookup could not avoid).
        confident (`torch.Tensor` of shape `(B,)`): hits of the highest order with count >= `bypass_min_count`
            (always False when the bypass is disabled).
    """

    states: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    orders: torch.Tensor | None = None
    step_sizes: torch.Tensor | None = None
    hits: torch.Tensor | None = None
    foreign: torch.Tensor | None = None
    confident: torch.Tensor | None = None


class VeltrixEngramPreTrainedModel(VeltrixCheckedLoadingMixin, PreTrainedModel):
    config_class = VeltrixEngramConfig
    base_model_prefix = "engram"
    main_input_name = "units"

    def _init_weights(self, module: nn.Module) -> None:
        """Initialises every parameter and buffer of `module` (also after a build on the meta device): the library's
        defaults, then the memory's own: an empty table, identity standardisation and code snap, and the hash
        multipliers, salts and primes that `config.hash_seed` and the table sizes fix. Only
        `transformers.initialization` functions are used, so buffers loaded by `from_pretrained` stay as loaded."""
        super()._init_weights(module)
        if isinstance(module, VeltrixEngramModel):
            module.reset_buffers()
            init.copy_(module.code_snap, torch.arange(module.config.num_codes))
            multipliers, salts = hash_constants(module.config)
            init.copy_(module.hash_multipliers, multipliers)
            init.copy_(module.hash_salts, salts)
            init.copy_(module.table_primes, torch.tensor(module.config.table_primes))
            init.copy_(module.parametric_primes, torch.tensor(module.config.parametric_primes))
        elif isinstance(module, FSQ):
            # Its buffers are not saved (non-persistent): `from_pretrained` re-initialises them here.
            levels = torch.tensor(self.config.fsq_levels, dtype=torch.int32)
            init.copy_(module._levels, levels)
            init.copy_(module._basis, torch.cumprod(torch.cat([levels.new_ones(1), levels[:-1]]), 0, dtype=torch.int32))
            codebook = module._indices_to_codes(torch.arange(module.codebook_size, device=levels.device))
            init.copy_(module.implicit_codebook, codebook.to(module.implicit_codebook))
        elif isinstance(module, VeltrixEngramZeroInitLinear):
            # By design zero: an untrained parametric memory adds nothing (the evolver starts as it would without
            # it), and an untrained gate weighs every hit by σ(0) = 0.5.
            init.zeros_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)

    def get_input_embeddings(self) -> None:
        """None: the memory reads continuous states, not tokens (its n-gram `embeddings` are addressed by hashes of
        codes, not by input ids), as transformers' image backbones without token embeddings."""
        return None

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Raises `NotImplementedError`: the memory has no token embeddings to replace."""
        raise NotImplementedError(f"{type(self).__name__} reads continuous states and has no token embeddings to set.")


class VeltrixEngramZeroInitLinear(nn.Linear):
    """A linear layer initialised to zero (`_init_weights`)."""


class VeltrixEngramGate(nn.Module):
    """α per unit from the prediction, the remembered state and the lookup: features (B, U, F) -> (B, U, 1)."""

    def __init__(self, config: VeltrixEngramConfig):
        super().__init__()
        # similarity, log distance, log1p(count), log step-size ratio, one-hot order
        self.num_features = 4 + len(config.ngram_orders)
        self.hidden = nn.Linear(self.num_features, config.gate_hidden_size)
        self.output = VeltrixEngramZeroInitLinear(config.gate_hidden_size, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.output(F.silu(self.hidden(features))))


class VeltrixEngramInjection(nn.Module):
    """The parametric memory's key and value projections for one evolver layer."""

    def __init__(self, config: VeltrixEngramConfig, memory_width: int):
        super().__init__()
        self.key_proj = nn.Linear(memory_width, config.hidden_size, bias=False)
        self.value_proj = VeltrixEngramZeroInitLinear(memory_width, config.hidden_size, bias=False)
        self.eps = config.rms_norm_eps

    def forward(self, hidden: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, U, H), memory (B, T, E) -> the residual update (B, T, U, H)."""
        key = F.rms_norm(self.key_proj(memory), (hidden.shape[-1],), eps=self.eps)[..., None, :]
        query = F.rms_norm(hidden, (hidden.shape[-1],), eps=self.eps)
        gate = torch.sigmoid((query * key).sum(dim=-1, keepdim=True) / math.sqrt(hidden.shape[-1]))
        return gate * self.value_proj(memory)[..., None, :]


class VeltrixEngramModel(VeltrixEngramPreTrainedModel):
    """The Engram memory of a Veltrix world model (see the module docstring). Its tables are persistent buffers, so
    `save_pretrained` writes them to safetensors with the learned quantizer, gate and parametric embeddings."""

    def __init__(self, config: VeltrixEngramConfig):
        super().__init__(config)
        width = config.num_units_per_step * config.unit_dim
        orders, heads = len(config.ngram_orders), config.num_hash_heads
        # FSQ computes its codebook size with `.item()` when built, which the meta device (where `from_pretrained`
        # builds modules) cannot do: it is built on the CPU, its projections filled from the checkpoint as usual.
        with torch.device("cpu"):
            self.quantizer = FSQ(levels=list(config.fsq_levels), dim=width)
        self.register_buffer("state_mean", torch.zeros(width))
        self.register_buffer("state_scale", torch.ones(width))
        # The code each raw code is read as: itself, or with `snap_to_seen_codes` the nearest code seen in training.
        self.register_buffer("code_snap", torch.arange(config.num_codes))
        # Saved with the tables (persistent), so that a loaded memory is addressed exactly as it was built.
        multipliers, salts = hash_constants(config)
        self.register_buffer("hash_multipliers", multipliers)
        self.register_buffer("hash_salts", salts)
        self.register_buffer("table_primes", torch.tensor(config.table_primes))
        self.register_buffer("parametric_primes", torch.tensor(config.parametric_primes))
        if config.use_table:
            slots = max(config.table_primes)
            self.register_buffer("table_states", torch.zeros(orders, heads, slots, width))
            self.register_buffer("table_counts", torch.zeros(orders, heads, slots))
            self.register_buffer("table_step_sizes", torch.zeros(orders, heads, slots))
            self.register_buffer("table_fingerprints", torch.zeros(orders, heads, slots, dtype=torch.int64))
            self.register_buffer("table_collided", torch.zeros(orders, heads, slots, dtype=torch.bool))
            self.gate = VeltrixEngramGate(config)
        if config.injection_layers:
            rows = max(config.parametric_primes)
            self.embeddings = nn.Embedding(orders * heads * rows, config.embedding_dim)
            memory_width = orders * heads * config.embedding_dim
            self.injections = nn.ModuleDict(
                {str(layer): VeltrixEngramInjection(config, memory_width) for layer in config.injection_layers}
            )
        self.post_init()

    def reset_buffers(self) -> None:
        """Empties the table and resets the standardisation to the identity."""
        init.zeros_(self.state_mean)
        init.ones_(self.state_scale)
        if self.config.use_table:
            for name in ("table_states", "table_counts", "table_step_sizes", "table_fingerprints", "table_collided"):
                init.zeros_(getattr(self, name))

    @property
    def has_table(self) -> bool:
        return self.config.use_table

    @property
    def has_parametric_memory(self) -> bool:
        return bool(self.config.injection_layers)

    def check_fits_evolver(self, evolver_config) -> None:
        """Raises `ValueError` unless this memory fits an evolver of `evolver_config`: the same state shape, and the
        injection layers and hidden width of its parametric memory."""
        config = self.config
        for name in ("unit_dim", "num_units_per_step"):
            if getattr(config, name) != getattr(evolver_config, name):
                raise ValueError(
                    f"`engram` was built for states with {name}={getattr(config, name)}, but the evolver has "
                    f"{name}={getattr(evolver_config, name)}."
                )
        if config.injection_layers:
            if config.hidden_size != evolver_config.hidden_size:
                raise ValueError(
                    f"`engram`'s parametric memory has hidden_size={config.hidden_size}, but the evolver has "
                    f"hidden_size={evolver_config.hidden_size}."
                )
            if max(config.injection_layers) >= evolver_config.num_hidden_layers:
                raise ValueError(
                    f"`engram` injects into evolver layers {config.injection_layers}, but the evolver has "
                    f"{evolver_config.num_hidden_layers} layers."
                )

    def _check_units(self, name: str, units: torch.Tensor, leading: int) -> None:
        config = self.config
        shape = (*units.shape[:leading], config.num_units_per_step, config.unit_dim)
        check_shape(name, units, shape, dtype=self.dtype, device=input_device(self))

    def standardise(self, units: torch.Tensor) -> torch.Tensor:
        """units (..., U, D) -> the standardised flat states (..., U·D) the quantizer reads."""
        return (units.flatten(-2) - self.state_mean) / self.state_scale

    def quantize(self, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """units (B, T, U, D) -> (the quantizer's reconstruction of the standardised states (B, T, U·D), codes
        (B, T) int64). The reconstruction has a straight-through gradient (the quantizer's training signal)."""
        if checks_enabled():
            self._check_units("units", units, leading=2)
        reconstruction, codes = self.quantizer(self.standardise(units))
        return reconstruction.to(units.dtype), codes.long()

    def codes(self, units: torch.Tensor) -> torch.Tensor:
        """units (B, T, U, D) -> codes (B, T) int64 in [0, num_codes): the quantizer's, each read through `code_snap`
        (the nearest code seen in training, with `snap_to_seen_codes` once the table is built; else itself)."""
        raw = self.quantize(units)[1]
        return self.code_snap[raw] if self.config.snap_to_seen_codes else raw

    def reset_code_snap(self) -> None:
        """Reads every code as itself again (before a table is rebuilt from raw codes)."""
        self.code_snap.copy_(torch.arange(self.config.num_codes, device=self.code_snap.device))

    @torch.no_grad()
    def set_seen_codes(self, counts: torch.Tensor) -> None:
        """counts (num_codes,): how often each code occurred in the training states. Each code is then read as the
        nearest seen one on the FSQ grid of level indices (itself when seen; ties to the lowest index)."""
        check_shape("counts", counts, (self.config.num_codes,), integer=not counts.is_floating_point())
        seen = torch.nonzero(counts.to(self.code_snap.device) > 0)[:, 0]
        if seen.numel() == 0:
            raise ValueError("`counts` must count at least one code, got none.")
        codes = torch.arange(self.config.num_codes, device=self.code_snap.device)
        grid = self.quantizer.indices_to_level_indices(codes).float()  # (num_codes, len(fsq_levels))
        nearest = torch.cdist(grid, grid[seen]).argmin(dim=1)
        self.code_snap.copy_(seen[nearest])

    def ngram_keys(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """codes (..., max_order), the last entry the newest and `MISSING_CODE` where the history is shorter ->
        (hash keys (..., orders, heads + 1) int64 >= 0, the last "head" being the fingerprint; valid (..., orders),
        False where an order reaches past the start of the history)."""
        config = self.config
        shifted = codes.long() + 1  # 0 marks a missing code
        keys, valid = [], []
        for index, order in enumerate(config.ngram_orders):
            window = shifted[..., -order:]  # (..., order), newest last
            mixed = window[..., None, :] * self.hash_multipliers[index, :, :order]  # (..., heads + 1, order)
            key = self.hash_salts[index].expand(mixed.shape[:-1]).clone()
            for position in range(order):
                key = torch.bitwise_xor(key, mixed[..., position])
            keys.append(key)
            valid.append((window > 0).all(dim=-1))
        return torch.stack(keys, dim=-2), torch.stack(valid, dim=-1)

    def slots(self, keys: torch.Tensor, parametric: bool = False) -> torch.Tensor:
        """keys (..., orders, heads + 1) -> slot per (order, head) (..., orders, heads) in each head's table."""
        primes = self.parametric_primes if parametric else self.table_primes
        return torch.remainder(keys[..., :-1], primes)

    @staticmethod
    def push_codes(history: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """history (B, max_order) newest last, codes (B,) -> the history with `codes` appended (oldest dropped)."""
        return torch.cat([history[:, 1:], codes[:, None]], dim=1)

    def empty_history(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """A history (batch_size, max_order) of missing codes."""
        return torch.full((batch_size, self.config.max_order), MISSING_CODE, dtype=torch.long, device=device)

    def histories(self, codes: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """codes (B, T) -> for every step the history ending at it (B, T, max_order), continuing `history`
        (B, max_order) when given (else missing codes before the first step)."""
        b = codes.shape[0]
        start = self.empty_history(b, codes.device) if history is None else history
        padded = torch.cat([start, codes], dim=1)
        return padded.unfold(1, self.config.max_order, 1)[:, 1:]

    def recall(
        self, history: torch.Tensor, state: torch.Tensor | None = None, step_sizes: torch.Tensor | None = None
    ) -> VeltrixEngramRecall:
        """history (B, max_order) of codes, newest last -> what the table remembers after it (see
        [`VeltrixEngramRecall`]). With `table_value="delta"` the remembered next state is `state` (B, U, D) plus the
        remembered change scaled by `step_sizes` (B,) (seconds) over the remembered step size; both are required
        then."""
        config = self.config
        if config.table_value == "delta" and (state is None or step_sizes is None):
            raise ValueError("`state` and `step_sizes` are required by recall with table_value='delta', got None.")
        keys, valid = self.ngram_keys(history)  # (B, O, H + 1), (B, O)
        slots = self.slots(keys)  # (B, O, H)
        orders, heads = len(config.ngram_orders), config.num_hash_heads
        order_index = torch.arange(orders, device=history.device)[None, :, None]
        head_index = torch.arange(heads, device=history.device)[None, None, :]
        counts = self.table_counts[order_index, head_index, slots]  # (B, O, H)
        best_head = counts.argmin(dim=-1, keepdim=True)  # count-min: the least collided head
        best_slot = slots.gather(-1, best_head)[..., 0]  # (B, O)
        order_only = order_index[..., 0].expand_as(best_slot)
        best_head = best_head[..., 0]
        count = counts.gather(-1, best_head[..., None])[..., 0] * valid  # (B, O)
        found = count >= config.hit_threshold
        if config.verify_keys:  # a slot first filled by another n-gram is a miss: back off to a lower order
            found = found & (self.table_fingerprints[order_only, best_head, best_slot] == keys[..., -1])
        # Back off from the highest order that hits: the last True along the orders.
        ranks = torch.arange(1, orders + 1, device=history.device)
        chosen = (found * ranks).argmax(dim=-1)  # (B,)
        hits = found.any(dim=-1)
        rows = torch.arange(history.shape[0], device=history.device)
        order_pick, head_pick, slot_pick = order_only[rows, chosen], best_head[rows, chosen], best_slot[rows, chosen]
        states = self.table_states[order_pick, head_pick, slot_pick] * hits[:, None]
        remembered_steps = self.table_step_sizes[order_pick, head_pick, slot_pick] * hits
        if config.table_value == "delta":
            scale = step_sizes.to(states.dtype) / remembered_steps.clamp(min=torch.finfo(states.dtype).tiny)
            states = (state.flatten(1) + states * scale[:, None]) * hits[:, None]
        fingerprint = self.table_fingerprints[order_pick, head_pick, slot_pick]
        foreign = hits & (fingerprint != keys[rows, chosen, -1])
        counts_hit = count[rows, chosen] * hits
        top = hits & (chosen == orders - 1)
        confident = top & (counts_hit >= config.bypass_min_count) if config.bypass_min_count > 0 else top & False
        return VeltrixEngramRecall(
            states=states.reshape(-1, config.num_units_per_step, config.unit_dim),
            counts=counts_hit,
            orders=torch.tensor(config.ngram_orders, device=history.device)[chosen] * hits,
            step_sizes=remembered_steps,
            hits=hits,
            foreign=foreign,
            confident=confident,
        )

    def gate_features(
        self, predicted: torch.Tensor, recall: VeltrixEngramRecall, step_sizes: torch.Tensor
    ) -> torch.Tensor:
        """predicted (B, U, D), step_sizes (B,) in seconds -> the gate's features (B, U, F): per unit the
        RMS-normalised similarity of prediction and memory and their log distance; per trajectory log1p(count), the
        log ratio of the step size to the remembered one and the order (one-hot)."""
        config = self.config
        eps = config.rms_norm_eps
        width = (predicted.shape[-1],)
        similarity = (F.rms_norm(predicted, width, eps=eps) * F.rms_norm(recall.states, width, eps=eps)).sum(-1)
        similarity = similarity / math.sqrt(predicted.shape[-1])
        distance = torch.log((predicted - recall.states).pow(2).mean(dim=-1) + eps)
        ratio = torch.log((step_sizes.to(predicted.dtype) + eps) / (recall.step_sizes + eps))
        order_one_hot = torch.stack([recall.orders == n for n in config.ngram_orders], dim=-1).to(predicted.dtype)
        per_trajectory = torch.cat([torch.log1p(recall.counts)[:, None], ratio[:, None], order_one_hot], dim=-1).to(
            predicted.dtype
        )
        units = predicted.shape[1]
        return torch.cat(
            [similarity[..., None], distance[..., None], per_trajectory[:, None].expand(-1, units, -1)], dim=-1
        )

    def anchor(
        self, predicted: torch.Tensor, recall: VeltrixEngramRecall, step_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gated residual fusion of a prediction (B, U, D) with the recalled state:
        `Ŝ = Ŝ_pred + α·(m − Ŝ_pred)`, α (B, U, 1) from the gate (or `fixed_gate`), zero on misses.
        Returns the fused state and α."""
        if self.config.fixed_gate is None:
            alpha = self.gate(self.gate_features(predicted, recall, step_sizes))
        else:
            alpha = torch.full_like(predicted[..., :1], self.config.fixed_gate)
        alpha = alpha * recall.hits[:, None, None].to(alpha.dtype)
        return predicted + alpha * (recall.states - predicted), alpha

    def memory_vectors(self, histories: torch.Tensor) -> torch.Tensor:
        """histories (..., max_order) -> the parametric memory's n-gram embeddings, concatenated over orders and
        heads (..., orders · heads · embedding_dim); zero for orders that reach past the history's start."""
        config = self.config
        keys, valid = self.ngram_keys(histories)
        slots = self.slots(keys, parametric=True)  # (..., O, H)
        orders, heads = len(config.ngram_orders), config.num_hash_heads
        rows = max(config.parametric_primes)
        offsets = torch.arange(orders * heads, device=slots.device).reshape(orders, heads) * rows
        vectors = self.embeddings(slots + offsets) * valid[..., None, None].to(self.embeddings.weight.dtype)
        return vectors.flatten(-3)

    def inject(self, layer: int, hidden: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """The parametric memory's residual update for evolver layer `layer` (one of `injection_layers`):
        hidden (B, T, U, H), memory (B, T, E) from `memory_vectors`."""
        return self.injections[str(layer)](hidden, memory)

    def injects_into(self, layer: int) -> bool:
        """Whether the parametric memory is added in front of evolver layer `layer`."""
        return layer in self.config.injection_layers

    def table_statistics(self) -> dict[str, float]:
        """Occupancy of the non-parametric table: slots used, slots holding more than one n-gram (collisions), the
        observations stored, per order and in all."""
        config = self.config
        record: dict[str, float] = {}
        used_all = collided_all = 0
        for index, order in enumerate(config.ngram_orders):
            used = int((self.table_counts[index] > 0).sum())
            collided = int(self.table_collided[index].sum())
            record[f"slots_used_order{order}"] = used
            record[f"collided_slot_fraction_order{order}"] = collided / max(used, 1)
            used_all, collided_all = used_all + used, collided_all + collided
        record["slots_used"] = used_all
        record["slots_total"] = len(config.ngram_orders) * sum(config.table_primes)
        record["collided_slot_fraction"] = collided_all / max(used_all, 1)
        record["observations"] = float(self.table_counts[:, 0].sum())
        codes = torch.arange(config.num_codes, device=self.code_snap.device)
        record["codes_seen"] = int((self.code_snap == codes).sum())
        return record


__all__ = ["VeltrixEngramModel", "VeltrixEngramRecall", "weights_fingerprint"]
