"""The Engram stage (DESIGN §5, §9): builds a `VeltrixEngramModel` on a trained encoder and evolver.

1. `train_quantizer`: one streaming pass fits the standardisation (`state_mean`, `state_scale`) of the frozen
   encoder's states, then the FSQ projections learn to reconstruct the standardised state; `codebook_statistics`
   reports how much of the codebook the data uses.
2. `build_table`: one streaming, deterministic pass over the training trajectories stores, per hashed n-gram slot,
   the mean observed next state, its mean step size, a count, the first key's fingerprint and a collision flag.
   `table_hit_rate` measures how often held-out histories find a slot.
3. `train_gate`: the fusion gate, behind the frozen evolver and the fixed table, on open-loop windows.
4. `train_parametric`: the evolver and the parametric memory trained end to end by the evolver stage
   (`VeltrixEngramPredictor` in the evolver's place), with its losses, steps, seed and data order.

`build_engram` runs 1-3 in order and records the fingerprints of the models the memory was built for.
"""

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator

import datasets
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..configuration_veltrix import VeltrixEngramConfig, VeltrixEvolverConfig
from ..modeling_veltrix_encoder import VeltrixEncoderModel
from ..modeling_veltrix_engram import VeltrixEngramModel
from ..modeling_veltrix_evolver import VeltrixEvolverModel, VeltrixRolloutOutput
from ..weights_check import weights_fingerprint
from .checkpoints import seed_everything
from .physics import VeltrixPhysicsProbe
from .recipe import VeltrixStageRecipe, VeltrixTrainingRecipe
from .runner import run_trainer
from .stages import VeltrixEvolverStage, observed_modalities

# The smallest per-dimension scale of the standardisation: a dimension that never varies is left as it is.
MIN_STATE_SCALE = 1e-6
TABLE_BUFFERS = ("table_states", "table_counts", "table_step_sizes", "table_fingerprints", "table_collided")


def _check_encoder(engram: VeltrixEngramModel, encoder: VeltrixEncoderModel) -> None:
    """Raises a `ValueError` unless the encoder's states have the memory's unit width."""
    if encoder.config.unit_dim != engram.config.unit_dim:
        raise ValueError(
            f"`encoder` must produce units of the memory's width unit_dim={engram.config.unit_dim}, got "
            f"unit_dim={encoder.config.unit_dim}."
        )


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")


def _check_dataset(dataset: datasets.Dataset, name: str) -> None:
    if len(dataset) == 0:
        raise ValueError(f"`{name}` must hold at least one trajectory, got an empty dataset.")


@torch.no_grad()
def _encode(encoder: VeltrixEncoderModel, batch: dict, device: torch.device) -> torch.Tensor:
    """The frozen encoder's states (B, T, U, D) of a batch of trajectories (every modality it models)."""
    observed = {name: value.to(device) for name, value in observed_modalities(encoder, batch).items()}
    return encoder(batch["pixel_values"].to(device, encoder.dtype), **observed).units


def _ordered_batches(dataset: datasets.Dataset, batch_size: int, desc: str) -> Iterator[dict]:
    """The trajectories of `dataset` (torch format) in order, `batch_size` at a time, with a progress bar."""
    for start in tqdm(range(0, len(dataset), batch_size), desc=desc):
        yield dataset[start : start + batch_size]


def _shuffled_batches(dataset: datasets.Dataset, batch_size: int, generator: torch.Generator) -> Iterator[dict]:
    """Endless batches of `min(batch_size, len(dataset))` trajectories, reshuffled by `generator` every epoch."""
    size = min(batch_size, len(dataset))
    while True:
        order = torch.randperm(len(dataset), generator=generator)
        for start in range(0, len(dataset) - size + 1, size):
            yield dataset[order[start : start + size].tolist()]


def _optimise(
    parameters: list[nn.Parameter],
    stage: VeltrixStageRecipe,
    loss_of: Callable[[dict], torch.Tensor],
    dataset: datasets.Dataset,
    generator: torch.Generator,
    desc: str,
) -> list[float]:
    """AdamW with linear warmup and cosine decay (as `run_trainer`) over `stage.max_steps` batches of `dataset`;
    `loss_of(batch)` is the loss of a batch. Returns the loss of every step."""
    optimizer = torch.optim.AdamW(parameters, lr=stage.learning_rate, weight_decay=stage.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, min(stage.warmup_steps, stage.max_steps), stage.max_steps)
    losses = []
    batches = _shuffled_batches(dataset, stage.batch_size, generator)
    with tqdm(range(stage.max_steps), desc=desc) as bar:
        for _ in bar:
            loss = loss_of(next(batches))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
    return losses


@torch.no_grad()
def fit_standardisation(
    engram: VeltrixEngramModel, encoder: VeltrixEncoderModel, dataset: datasets.Dataset, batch_size: int
) -> None:
    """Sets `engram.state_mean` and `state_scale` (U·D,) to the mean and standard deviation, per flat dimension, of
    the encoder's states over every step of `dataset`: one streaming pass of float64 sums (a scale below
    `MIN_STATE_SCALE` is raised to it)."""
    _check_encoder(engram, encoder)
    _check_batch_size(batch_size)
    _check_dataset(dataset, "dataset")
    width = engram.state_mean.numel()
    total = torch.zeros(width, dtype=torch.float64)
    squares = torch.zeros(width, dtype=torch.float64)
    count = 0
    for batch in _ordered_batches(dataset, batch_size, "engram standardisation"):
        flat = _encode(encoder, batch, engram.device).flatten(-2).flatten(0, 1).double().cpu()  # (B·T, U·D)
        total += flat.sum(dim=0)
        squares += flat.pow(2).sum(dim=0)
        count += flat.shape[0]
    mean = total / count
    scale = (squares / count - mean.pow(2)).clamp_min(0.0).sqrt().clamp_min(MIN_STATE_SCALE)
    engram.state_mean.copy_(mean.to(engram.state_mean))
    engram.state_scale.copy_(scale.to(engram.state_scale))


def train_quantizer(
    engram: VeltrixEngramModel,
    encoder: VeltrixEncoderModel,
    train_dataset: datasets.Dataset,
    recipe: VeltrixTrainingRecipe,
) -> list[float]:
    """The quantizer stage: with the encoder frozen, fits the standardisation (`fit_standardisation`, batches of
    `recipe.engram_batch_size` trajectories), then trains the FSQ projections (`quantizer.project_in`,
    `project_out`) to reconstruct the standardised states (MSE on `engram.quantize(units)[0]`, straight-through),
    with `recipe.quantizer`'s optimisation under `derive_seed(recipe.seed, "quantizer")`. Returns the loss of every
    step."""
    recipe.validate()
    _check_dataset(train_dataset, "train_dataset")
    encoder.requires_grad_(False).eval()
    fit_standardisation(engram, encoder, train_dataset, recipe.engram_batch_size)
    seed = seed_everything(recipe.seed, "quantizer")
    generator = torch.Generator().manual_seed(seed)
    projections = [engram.quantizer.project_in, engram.quantizer.project_out]
    parameters = [parameter.requires_grad_(True) for module in projections for parameter in module.parameters()]

    def loss_of(batch: dict) -> torch.Tensor:
        units = _encode(encoder, batch, engram.device)
        reconstruction, _ = engram.quantize(units)
        return F.mse_loss(reconstruction, engram.standardise(units))

    return _optimise(parameters, recipe.quantizer, loss_of, train_dataset, generator, "engram quantizer")


@torch.no_grad()
def codebook_statistics(
    engram: VeltrixEngramModel, encoder: VeltrixEncoderModel, dataset: datasets.Dataset, batch_size: int = 16
) -> dict[str, float]:
    """How the codebook is used on every step of `dataset`: `codes_used` (distinct codes), `utilisation` (their
    fraction of `num_codes`, in (0, 1]) and `perplexity` (exp of the codes' entropy, in nats; 1 … num_codes)."""
    _check_encoder(engram, encoder)
    _check_batch_size(batch_size)
    _check_dataset(dataset, "dataset")
    num_codes = engram.config.num_codes
    histogram = torch.zeros(num_codes, dtype=torch.int64)
    for batch in _ordered_batches(dataset, batch_size, "engram codebook"):
        codes = engram.codes(_encode(encoder, batch, engram.device)).flatten().cpu()
        histogram += torch.bincount(codes, minlength=num_codes)
    probabilities = histogram.double() / histogram.sum()
    used = probabilities > 0
    entropy = -(probabilities[used] * probabilities[used].log()).sum()
    return {
        "codes_used": int(used.sum()),
        "utilisation": float(used.sum()) / num_codes,
        "perplexity": math.exp(float(entropy)),
    }


@torch.no_grad()
def build_table(
    engram: VeltrixEngramModel,
    encoder: VeltrixEncoderModel,
    train_dataset: datasets.Dataset,
    batch_size: int = 16,
) -> dict[str, float]:
    """Fills the non-parametric table (replacing what it held) in one streaming, deterministic pass.

    For every valid n-gram (order, head) of every step t < T - 1 of every trajectory (an n-gram reaching before the
    trajectory's start is skipped), its slot gets the observed next state `S_{t+1}` (U·D; with
    `table_value="delta"` the change `S_{t+1} - S_t`), the step size
    `timestamps[t + 1] - timestamps[t]` (seconds) and one count. Sums are float64 in fixed-size tensors on the CPU
    (the same order of additions whatever the device: bit-identical tables for the same data; the memory does not grow
    with the data), the tables their means. A slot's fingerprint is its first key's, in trajectory then step order;
    it is flagged `collided` when a key with another fingerprint lands there later. The codes seen in the data set
    the memory's `code_snap` (`set_seen_codes`): later lookups read an unseen code as the nearest seen one.

    The fixed-size table keeps one fingerprint per slot, so the collisions observable are: `collided_slots` (slots
    that received at least two distinct n-grams) and `foreign_observations` (observations stored under another
    n-gram's first fingerprint). Returns `engram.table_statistics()` with those, `transitions` (steps with a next
    state), `build_seconds` and `table_bytes`."""
    if not engram.has_table:
        raise ValueError("`engram` must have a table (`use_table=True`) to be built, got a memory without one.")
    _check_encoder(engram, encoder)
    _check_batch_size(batch_size)
    _check_dataset(train_dataset, "train_dataset")
    started = time.perf_counter()
    encoder.requires_grad_(False).eval()
    orders, heads, slots_per_head, width = engram.table_states.shape
    cells = orders * heads * slots_per_head
    # One flat cell per (order, head, slot): the offset of each (order, head) block.
    offsets = torch.arange(orders * heads).reshape(orders, heads) * slots_per_head  # (O, H)
    sums = torch.zeros(cells, width, dtype=torch.float64)
    step_sums = torch.zeros(cells, dtype=torch.float64)
    counts = torch.zeros(cells, dtype=torch.int64)
    fingerprints = torch.zeros(cells, dtype=torch.int64)
    collided = torch.zeros(cells, dtype=torch.bool)
    foreign = torch.zeros(cells, dtype=torch.int64)
    code_counts = torch.zeros(engram.config.num_codes, dtype=torch.int64)
    transitions = 0
    engram.reset_code_snap()  # the training states are addressed by their own codes
    for batch in _ordered_batches(train_dataset, batch_size, "engram table"):
        units = _encode(encoder, batch, engram.device)  # (B, T, U, D)
        codes = engram.codes(units)
        code_counts += torch.bincount(codes.flatten().cpu(), minlength=engram.config.num_codes)
        histories = engram.histories(codes)[:, :-1]  # (B, T - 1, max_order): steps with a next state
        keys, valid = engram.ngram_keys(histories)  # (B, T - 1, O, H + 1), (B, T - 1, O)
        keys, valid = keys.cpu(), valid.cpu()
        cell = engram.slots(keys) + offsets  # (B, T - 1, O, H)
        mask = valid[..., None].expand_as(cell)
        b, steps = cell.shape[:2]
        transitions += b * steps
        # Row-major selection keeps the entries in (trajectory, step) order within each cell.
        entry_cell = cell[mask]
        entry_fingerprint = keys[..., -1:].expand_as(cell)[mask]
        entry_row = torch.arange(b * steps).reshape(b, steps, 1, 1).expand_as(cell)[mask]
        targets = units[:, 1:].flatten(-2).flatten(0, 1).double().cpu()  # (B·(T-1), U·D)
        if engram.config.table_value == "delta":
            targets = targets - units[:, :-1].flatten(-2).flatten(0, 1).double().cpu()
        timestamps = batch["timestamps"].double()
        step_sizes = (timestamps[:, 1:] - timestamps[:, :-1]).flatten()  # (B·(T-1),)
        # A cell seen for the first time takes the fingerprint of its first entry.
        order = torch.arange(entry_cell.numel())
        first_entry = torch.full((cells,), entry_cell.numel()).scatter_reduce_(0, entry_cell, order, "amin")
        new = (counts == 0) & (first_entry < entry_cell.numel())
        fingerprints[new] = entry_fingerprint[first_entry[new]]
        differs = entry_fingerprint != fingerprints[entry_cell]
        collided[entry_cell[differs]] = True
        foreign.index_add_(0, entry_cell, differs.long())
        counts.index_add_(0, entry_cell, torch.ones_like(entry_cell))
        sums.index_add_(0, entry_cell, targets[entry_row])
        step_sums.index_add_(0, entry_cell, step_sizes[entry_row])
    divisor = counts.clamp_min(1).double()
    table = {
        "table_states": sums / divisor[:, None],
        "table_counts": counts,
        "table_step_sizes": step_sums / divisor,
        "table_fingerprints": fingerprints,
        "table_collided": collided,
    }
    for name, values in table.items():
        buffer = getattr(engram, name)
        buffer.copy_(values.reshape(buffer.shape).to(buffer))
    engram.set_seen_codes(code_counts)
    statistics = engram.table_statistics()
    statistics.update(
        collided_slots=int(collided.sum()),
        foreign_observations=int(foreign.sum()),
        foreign_observation_fraction=float(foreign.sum()) / max(int(counts.sum()), 1),
        transitions=transitions,
        table_bytes=sum(getattr(engram, name).nbytes for name in TABLE_BUFFERS),
        build_seconds=time.perf_counter() - started,
    )
    return statistics


@torch.no_grad()
def table_hit_rate(
    engram: VeltrixEngramModel, encoder: VeltrixEncoderModel, dataset: datasets.Dataset, batch_size: int = 16
) -> dict[str, float]:
    """How the table answers the true code histories of `dataset` (each step t < T - 1, asking for t + 1):
    `hit_rate` (the fraction of steps that hit), `foreign_hit_rate` (hits whose slot belongs to another n-gram, as a
    fraction of hits) and `recall_mse` (MSE of the remembered next state, with `table_value="delta"` the true state
    moved by the remembered change, against the encoded one, over hits; NaN without hits)."""
    if not engram.has_table:
        raise ValueError("`engram` must have a table (`use_table=True`), got a memory without one.")
    _check_encoder(engram, encoder)
    _check_batch_size(batch_size)
    _check_dataset(dataset, "dataset")
    steps = hits = foreign = 0
    squared_error = 0.0
    for batch in _ordered_batches(dataset, batch_size, "engram hit rate"):
        units = _encode(encoder, batch, engram.device)  # (B, T, U, D)
        histories = engram.histories(engram.codes(units))[:, :-1].flatten(0, 1)  # (B·(T-1), max_order)
        timestamps = batch["timestamps"].to(units.device)
        step_sizes = (timestamps[:, 1:] - timestamps[:, :-1]).flatten().to(units.dtype)  # (B·(T-1),)
        recall = engram.recall(histories, state=units[:, :-1].flatten(0, 1), step_sizes=step_sizes)
        truth = units[:, 1:].flatten(0, 1)  # (B·(T-1), U, D)
        steps += histories.shape[0]
        hits += int(recall.hits.sum())
        foreign += int(recall.foreign.sum())
        squared_error += float((recall.states - truth)[recall.hits].double().pow(2).mean(dim=(1, 2)).sum())
    return {
        "hit_rate": hits / steps,
        "foreign_hit_rate": foreign / max(hits, 1),
        "recall_mse": squared_error / hits if hits else math.nan,
    }


def _gate_window(
    units: torch.Tensor, batch: dict, recipe: VeltrixTrainingRecipe
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The longest open-loop window the trajectories hold: (context (B, C, U, D), actions (B, T, A), timestamps
    (B, T), truth (B, T - C, U, D)), C the recipe's context length and T the trajectories' length."""
    context = recipe.context_length
    if units.shape[1] <= context:
        raise ValueError(
            f"Trajectories must be longer than context_length = {context} steps to train the gate, got "
            f"{units.shape[1]}."
        )
    actions = batch["actions"].to(units)
    timestamps = batch["timestamps"].to(units.device)
    return units[:, :context], actions, timestamps, units[:, context:]


def train_gate(
    engram: VeltrixEngramModel,
    encoder: VeltrixEncoderModel,
    evolver: VeltrixEvolverModel,
    train_dataset: datasets.Dataset,
    recipe: VeltrixTrainingRecipe,
) -> list[float]:
    """The gate stage: the encoder and the evolver frozen (no gradients, eval mode), the table fixed, only
    `engram.gate` trains. Each step encodes a batch and, from its first `recipe.context_length` steps, rolls out the
    rest of the trajectories with `evolver.rollout(..., engram=engram)` (the data's actions and timestamps): the
    longest open-loop windows the data hold, past the evolver's training window, since the memory's job is the drift
    of long rollouts. It minimises the MSE to the encoded truth, with `recipe.gate`'s optimisation under
    `derive_seed(recipe.seed, "gate")`. Returns the loss of every step."""
    if not engram.has_table:
        raise ValueError("`engram` must have a table (`use_table=True`) for its gate to train, got one without.")
    if engram.config.fixed_gate is not None:
        raise ValueError(
            f"`engram.config.fixed_gate` must be None for the gate to train, got {engram.config.fixed_gate} (the "
            "fixed-gate ablation has no learned gate)."
        )
    recipe.validate()
    _check_encoder(engram, encoder)
    _check_dataset(train_dataset, "train_dataset")
    encoder.requires_grad_(False).eval()
    evolver.requires_grad_(False).eval()
    engram.requires_grad_(False)
    parameters = [parameter.requires_grad_(True) for parameter in engram.gate.parameters()]
    seed = seed_everything(recipe.seed, "gate")
    generator = torch.Generator().manual_seed(seed)

    def loss_of(batch: dict) -> torch.Tensor:
        units = _encode(encoder, batch, engram.device)
        context, actions, timestamps, truth = _gate_window(units, batch, recipe)
        rollout = evolver.rollout(context, truth.shape[1], actions=actions, timestamps=timestamps, engram=engram)
        return F.mse_loss(rollout.units, truth)

    return _optimise(parameters, recipe.gate, loss_of, train_dataset, generator, "engram gate")


class VeltrixEngramPredictor(nn.Module):
    """The evolver with an Engram memory, as a `stages.VeltrixPredictor`: `forward` injects the parametric memory
    and `rollout` also fuses the table's recall each step (`engram=` of the evolver's methods). It owns both, so the
    evolver stage's optimiser sees the parameters of both that require gradients."""

    def __init__(self, evolver: VeltrixEvolverModel, engram: VeltrixEngramModel):
        super().__init__()
        engram.check_fits_evolver(evolver.config)
        self.evolver = evolver
        self.engram = engram

    def forward(self, units: torch.Tensor, timestamps: torch.Tensor | None = None, actions: torch.Tensor | None = None):
        """units (B, T, U, D), timestamps (B, T), actions (B, T, A) -> the evolver's output (`predicted_units`
        (B, T, U, D))."""
        return self.evolver(units, timestamps=timestamps, actions=actions, engram=self.engram)

    def rollout(
        self,
        context: torch.Tensor,
        num_steps: int,
        actions: torch.Tensor | None = None,
        timestamps: torch.Tensor | None = None,
    ) -> VeltrixRolloutOutput:
        """context (B, T, U, D) -> `num_steps` open-loop states (`units` (B, num_steps, U, D)); actions
        (B, T + num_steps, A) and timestamps (B, T + num_steps) as in `VeltrixEvolverModel.rollout`."""
        return self.evolver.rollout(context, num_steps, actions=actions, timestamps=timestamps, engram=self.engram)


def memory_config_for(evolver_config: VeltrixEvolverConfig, fields: dict) -> VeltrixEngramConfig:
    """The `VeltrixEngramConfig` of `fields` for an evolver of `evolver_config`: its state shape and hidden width
    (`unit_dim`, `num_units_per_step`, `hidden_size`) filled in, and refused when `fields` sets them otherwise;
    unknown fields and values of the wrong type raise `ValueError`."""
    values = dict(fields)
    for name in ("unit_dim", "num_units_per_step", "hidden_size"):
        value = getattr(evolver_config, name)
        if values.setdefault(name, value) != value:
            raise ValueError(f"The Engram config's `{name}` must be the evolver's {value}, got {values[name]!r}.")
    known = {field.name for field in dataclasses.fields(VeltrixEngramConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"The Engram config has unknown fields {unknown}; VeltrixEngramConfig knows {sorted(known)}.")
    try:
        return VeltrixEngramConfig(**values)
    except StrictDataclassError as error:  # a value of the wrong type
        raise ValueError(f"The Engram config is invalid: {error}") from None


def create_engram(
    config: VeltrixEngramConfig,
    encoder: VeltrixEncoderModel,
    train_dataset: datasets.Dataset,
    recipe: VeltrixTrainingRecipe,
) -> VeltrixEngramModel:
    """A new memory of `config`, initialised under `derive_seed(recipe.seed, "init/engram")`, its quantizer trained
    (`train_quantizer`) and its table (if any) empty: no step hits until `build_table` fills it."""
    seed_everything(recipe.seed, "init/engram")
    engram = VeltrixEngramModel(config).to(encoder.device)
    train_quantizer(engram, encoder, train_dataset, recipe)
    return engram


def train_parametric(
    encoder: VeltrixEncoderModel,
    evolver: VeltrixEvolverModel | VeltrixEvolverConfig,
    engram: VeltrixEngramModel | VeltrixEngramConfig,
    train_dataset: datasets.Dataset,
    recipe: VeltrixTrainingRecipe,
    output_dir: str,
    resume: bool = True,
    probe: VeltrixPhysicsProbe | None = None,
) -> tuple[VeltrixEvolverModel, VeltrixEngramModel]:
    """Trains the evolver and the engram's parametric memory (embeddings and injections; the quantizer, gate and
    table stay fixed) end to end by the evolver stage: `VeltrixEvolverStage` with `VeltrixEngramPredictor` in the
    evolver's place, run by `run_trainer` as stage `evolver`, so with the same losses, `recipe.evolver`'s steps, the
    same seed and data order as the evolver alone (the allocation experiment compares the two at a fixed budget).

    `evolver` is a model, or a config from which one is created under `derive_seed(recipe.seed, "init/evolver")` (as
    `load_or_create_models` creates it). `engram` is a memory with a trained quantizer, or a config from which one is
    created by `create_engram`. Checkpoints go to `<output_dir>/checkpoints/evolver`; the trained evolver is saved to
    `<output_dir>/evolver` and its memory to `<output_dir>/evolver/engram` (one atomic write). `resume` and `probe` as
    in `runner.train_stage`. Returns the trained (evolver, engram)."""
    recipe.validate()
    if isinstance(evolver, VeltrixEvolverConfig):
        seed_everything(recipe.seed, "init/evolver")
        evolver = VeltrixEvolverModel(evolver).to(encoder.device)
    elif not isinstance(evolver, VeltrixEvolverModel):
        raise ValueError(f"`evolver` must be a VeltrixEvolverModel or VeltrixEvolverConfig, got {type(evolver)}.")
    if isinstance(engram, VeltrixEngramConfig):
        engram = create_engram(engram, encoder, train_dataset, recipe)
    elif not isinstance(engram, VeltrixEngramModel):
        raise ValueError(f"`engram` must be a VeltrixEngramModel or VeltrixEngramConfig, got {type(engram)}.")
    if not engram.has_parametric_memory:
        raise ValueError(
            "`engram` must have a parametric memory (non-empty `injection_layers`) to train it, got "
            f"injection_layers={engram.config.injection_layers}."
        )
    evolver.requires_grad_(True)
    engram.requires_grad_(False)
    engram.embeddings.requires_grad_(True)
    engram.injections.requires_grad_(True)
    predictor = VeltrixEngramPredictor(evolver, engram)
    stage = VeltrixEvolverStage(encoder, predictor, recipe, probe=probe)

    def save(folder: str) -> None:
        evolver.save_pretrained(folder)
        engram.save_pretrained(os.path.join(folder, "engram"))

    run_trainer("evolver", stage, save, train_dataset, recipe, output_dir, resume)
    engram.requires_grad_(False)
    return evolver.eval(), engram.eval()


def build_engram(
    engram: VeltrixEngramModel,
    encoder: VeltrixEncoderModel,
    evolver: VeltrixEvolverModel,
    train_dataset: datasets.Dataset,
    recipe: VeltrixTrainingRecipe,
    held_out_dataset: datasets.Dataset | None = None,
) -> dict[str, float | list[float]]:
    """Builds the memory's non-parametric part on a trained encoder and evolver: `train_quantizer`, then
    `build_table` and `train_gate` (a learned gate only; the fixed-gate ablation has none), and records
    `encoder_fingerprint` and `evolver_fingerprint` (`weights_fingerprint`) in its config.

    Returns the statistics: codebook (`codebook_statistics` on `train_dataset`), table (`build_table`'s), with
    `held_out_dataset` its `table_hit_rate` (`held_out_` prefixed), the loss curves (`quantizer_losses`,
    `gate_losses`) and `build_seconds` (the whole build)."""
    if not engram.has_table:
        raise ValueError("`engram` must have a table (`use_table=True`) to be built, got a memory without one.")
    started = time.perf_counter()
    engram.check_fits_evolver(evolver.config)
    batch_size = recipe.engram_batch_size
    quantizer_losses = train_quantizer(engram, encoder, train_dataset, recipe)
    statistics: dict[str, float | list[float]] = {"quantizer_losses": quantizer_losses}
    statistics.update(codebook_statistics(engram, encoder, train_dataset, batch_size))
    statistics.update(build_table(engram, encoder, train_dataset, batch_size))
    statistics["table_seconds"] = statistics.pop("build_seconds")
    if engram.config.fixed_gate is None:
        statistics["gate_losses"] = train_gate(engram, encoder, evolver, train_dataset, recipe)
    engram.requires_grad_(False).eval()
    if held_out_dataset is not None:
        hit_rate = table_hit_rate(engram, encoder, held_out_dataset, batch_size)
        statistics.update({f"held_out_{name}": value for name, value in hit_rate.items()})
    engram.config.encoder_fingerprint = weights_fingerprint(encoder)
    engram.config.evolver_fingerprint = weights_fingerprint(evolver)
    statistics["build_seconds"] = time.perf_counter() - started
    return statistics


__all__ = [
    "VeltrixEngramPredictor",
    "build_engram",
    "build_table",
    "codebook_statistics",
    "create_engram",
    "fit_standardisation",
    "memory_config_for",
    "table_hit_rate",
    "train_gate",
    "train_parametric",
    "train_quantizer",
]
