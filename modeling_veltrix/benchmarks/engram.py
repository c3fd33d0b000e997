"""The logic behind `scripts/benchmark_engram.py`: does the Engram memory anchor long rollouts, and is it retrieval?

Per world (the worlds and trained models of `scripts/evaluate.py`, reused from its output folder, trained where
missing), the memory is built for the trained encoder and evolver (quantizer -> table -> gate, `training.engram`),
then the evolver is rolled out from held-out contexts to `horizon_multiple` times the training window:

- without memory, with the memory, and with it bypassing the evolver on confident hits;
- with the three ablations that would expose a side path (arXiv 2605.13179): (a) the table's values replaced by
  random values of the same per-channel statistics, (b) the gate fixed to its mean α on hits, (c) keys shuffled (each
  slot answers with another occupied slot's entry).

Each variant is scored by latent and pixel (the encoder's direct readout) MSE per horizon, hit rate, the rate of
hits answered by a collided slot, FLOPs per rollout step (counted with `torch.utils.flop_counter`), and the RMS
distance of its states to the nearest encoded training state (the "manifold projection" claim). The allocation
experiment trains evolvers with parametric memory at one parameter budget, varying the share of the tables.
"""

import copy
import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from ..configuration_veltrix import VeltrixEngramConfig, VeltrixEvolverConfig
from ..evaluation.rollouts import per_horizon_mse
from ..evaluation.suite import held_out_dataset, write_table_into_card
from ..evaluation.visualization import save_error_grid
from ..modeling_veltrix_encoder import VeltrixEncoderModel
from ..modeling_veltrix_engram import VeltrixEngramModel, weights_fingerprint
from ..modeling_veltrix_evolver import VeltrixEvolverModel
from ..repository_check import write_json_atomic
from ..training import (
    VeltrixTrainingRecipe,
    build_datasets,
    load_or_create_models,
    seed_everything,
    train_stage,
    train_stages,
    world_action_dim,
)
from ..training.engram import build_engram, memory_config_for, train_parametric
from ..worlds import WORLDS
from .reports import save_report

VARIANTS = ("no_memory", "memory", "bypass", "random_table", "fixed_gate", "shuffled_keys")
ABLATIONS = ("random_table", "fixed_gate", "shuffled_keys")
HORIZON_MULTIPLES = (1, 3, 10)


@dataclass
class EngramBenchmarkSettings:
    """What the Engram benchmark builds, rolls out and trains.

    Args:
        preset: the preset folder the world models are created from.
        recipe: the training recipe (`evaluation_recipe.json`); its `rollout_window` W is the training window.
        worlds: the built-in worlds to measure.
        engram: `VeltrixEngramConfig` fields of the memory (the state shape is the evolver's).
        horizon_multiple: rollouts run `horizon_multiple · W` steps past the context.
        batch_size: trajectories per rollout batch.
        bypass_min_count: the bypass variant's `bypass_min_count`.
        num_reference_states: encoded training states the manifold distance is measured against.
        allocation_world: the world of the allocation experiment.
        allocation_shares: shares of the parameter budget given to the parametric tables (0: the evolver alone);
            empty: no allocation experiment.
        allocation_embedding_dim: width of each n-gram embedding in the allocation experiment.
    """

    preset: str
    recipe: VeltrixTrainingRecipe
    worlds: tuple[str, ...] = ("bouncing_balls", "pendulum", "mass_spring", "two_body")
    engram: dict = field(default_factory=dict)
    horizon_multiple: int = 10
    batch_size: int = 16
    bypass_min_count: int = 8
    num_reference_states: int = 4096
    allocation_world: str = "pendulum"
    allocation_shares: tuple[float, ...] = (0.0, 0.1, 0.25, 0.4, 0.6)
    allocation_embedding_dim: int = 8

    def __post_init__(self) -> None:
        if not self.worlds or any(world not in WORLDS for world in self.worlds):
            raise ValueError(f"`worlds` must be a non-empty subset of {sorted(WORLDS)}, got {self.worlds!r}.")
        if self.allocation_world not in WORLDS:
            raise ValueError(f"`allocation_world` must be one of {sorted(WORLDS)}, got {self.allocation_world!r}.")
        for name in ("horizon_multiple", "batch_size", "bypass_min_count", "num_reference_states"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}.")
        if self.horizon_multiple < max(HORIZON_MULTIPLES):
            raise ValueError(f"`horizon_multiple` must be >= {max(HORIZON_MULTIPLES)}, got {self.horizon_multiple}.")
        shares = self.allocation_shares
        if any(not 0.0 <= share < 1.0 for share in shares) or list(shares) != sorted(set(shares)):
            raise ValueError(
                f"`allocation_shares` must be increasing, distinct values in [0, 1) (none: no allocation experiment), "
                f"got {shares!r}."
            )
        memory_config_for(VeltrixEvolverConfig(), self.engram)  # bad or unknown memory fields fail before training

    @property
    def window(self) -> int:
        return self.recipe.rollout_window

    @property
    def horizon(self) -> int:
        return self.horizon_multiple * self.window


def world_recipe(settings: EngramBenchmarkSettings, world: str) -> VeltrixTrainingRecipe:
    """The settings' recipe for `world` (its world options dropped: they belong to another world)."""
    return VeltrixTrainingRecipe(**(asdict(settings.recipe) | {"world": world, "world_options": {}}))


def load_world_models(
    settings: EngramBenchmarkSettings, world: str, runs_dir: str
) -> tuple[VeltrixEncoderModel, VeltrixEvolverModel]:
    """The world's encoder and evolver from `<runs_dir>/<world>` (as `scripts/evaluate.py` trains them), trained
    there first where missing."""
    recipe = world_recipe(settings, world)
    world_dir = os.path.join(runs_dir, world)
    train, _ = build_datasets(recipe)
    models = load_or_create_models(settings.preset, world_dir, world_action_dim(recipe), seed=recipe.seed)
    train_stages(("encoder", "evolver"), models, settings.preset, train, recipe, world_dir, skip_finished=True)
    encoder, evolver, _ = models
    return encoder.eval(), evolver.eval()


def load_or_build_memory(
    settings: EngramBenchmarkSettings,
    world: str,
    encoder: VeltrixEncoderModel,
    evolver: VeltrixEvolverModel,
    folder: str,
) -> tuple[VeltrixEngramModel, dict]:
    """The world's memory, loaded from `folder` when it was built there for these models with this configuration,
    else built (`training.engram.build_engram`: quantizer, table, gate) and saved there; with the build
    statistics."""
    config = memory_config_for(evolver.config, settings.engram)
    statistics_path = os.path.join(folder, "build_statistics.json")
    if os.path.isfile(statistics_path):
        engram = VeltrixEngramModel.from_pretrained(folder)
        # The memory's own hyper-parameters (not the library's bookkeeping, nor the fingerprints, compared next).
        names = [name for name in VeltrixEngramConfig.__annotations__ if not name.endswith("fingerprint")]
        same = all(getattr(engram.config, name) == getattr(config, name) for name in names)
        fits = engram.config.encoder_fingerprint == weights_fingerprint(encoder)
        fits = fits and engram.config.evolver_fingerprint == weights_fingerprint(evolver)
        if same and fits:
            print(f"[veltrix] {world}: memory loaded from {folder}")
            with open(statistics_path, encoding="utf-8") as handle:
                return engram.eval(), json.load(handle)
    recipe = world_recipe(settings, world)
    train, _ = build_datasets(recipe)
    seed_everything(recipe.seed, "init/engram")
    engram = VeltrixEngramModel(config)
    statistics = build_engram(engram, encoder, evolver, train, recipe)
    engram.save_pretrained(folder)
    write_json_atomic(statistics_path, statistics)
    return engram.eval(), statistics


def with_random_table(engram: VeltrixEngramModel, seed: int) -> VeltrixEngramModel:
    """Ablation (a): a copy whose occupied slots hold random values of the table's per-channel mean and standard
    deviation (over occupied slots); counts, step sizes and keys are kept, so it hits exactly where the memory does."""
    ablated = copy.deepcopy(engram)
    occupied = engram.table_counts > 0
    values = engram.table_states[occupied]
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(values.shape, generator=generator, dtype=values.dtype)
    with torch.no_grad():
        ablated.table_states[occupied] = values.mean(dim=0) + noise * values.std(dim=0)
    return ablated


def with_fixed_gate(engram: VeltrixEngramModel, alpha: float) -> VeltrixEngramModel:
    """Ablation (b): a copy whose every hit fuses with the constant `alpha` (the learned gate's mean on hits)."""
    ablated = copy.deepcopy(engram)
    ablated.config.fixed_gate = float(min(max(alpha, 0.0), 1.0))
    return ablated


def with_shuffled_keys(engram: VeltrixEngramModel, seed: int) -> VeltrixEngramModel:
    """Ablation (c): a copy in which, per order and head, the occupied slots' entries (values, counts, step sizes,
    fingerprints) are permuted among those slots: an n-gram finds an entry, but another n-gram's."""
    ablated = copy.deepcopy(engram)
    generator = torch.Generator().manual_seed(seed)
    buffers = ("table_states", "table_counts", "table_step_sizes", "table_fingerprints", "table_collided")
    orders, heads = engram.table_counts.shape[:2]
    with torch.no_grad():
        for order in range(orders):
            for head in range(heads):
                slots = torch.nonzero(engram.table_counts[order, head] > 0)[:, 0]
                permuted = slots[torch.randperm(len(slots), generator=generator)]
                for name in buffers:
                    getattr(ablated, name)[order, head, slots] = getattr(engram, name)[order, head, permuted]
    return ablated


def with_bypass(engram: VeltrixEngramModel, min_count: int) -> VeltrixEngramModel:
    """A copy that takes the remembered state on hits of the highest order with at least `min_count`
    observations."""
    variant = copy.deepcopy(engram)
    variant.config.bypass_min_count = min_count
    return variant


@dataclass
class VariantRollout:
    """A variant's future states (N, H, U, D) and direct readout frames (N, H, C, h, w), with the memory's per-step
    hits, mean α and bypasses (N, H) (None without memory) and its FLOPs per trajectory per step."""

    units: torch.Tensor
    frames: torch.Tensor
    hits: torch.Tensor | None
    gates: torch.Tensor | None
    bypassed: torch.Tensor | None
    flops_per_step: float


@torch.no_grad()
def roll_out_variant(
    encoder: VeltrixEncoderModel,
    evolver: VeltrixEvolverModel,
    engram: VeltrixEngramModel | None,
    held_out,
    settings: EngramBenchmarkSettings,
) -> VariantRollout:
    """Rolls the evolver (with `engram`, or without when None) out from every held-out context for
    `settings.horizon` steps, counting the FLOPs of the rollouts (encoding excluded)."""
    context_length, horizon = settings.recipe.context_length, settings.horizon
    parts: dict[str, list] = {"units": [], "frames": [], "hits": [], "gates": [], "bypassed": []}
    flops, trajectories = 0, 0
    for start in range(0, len(held_out), settings.batch_size):
        batch = held_out[start : start + settings.batch_size]
        context = encoder(batch["pixel_values"][:, :context_length]).units
        with FlopCounterMode(display=False) as counter:
            output = evolver.rollout(
                context, horizon, actions=batch["actions"], timestamps=batch["timestamps"], engram=engram
            )
        flops += counter.get_total_flops()
        trajectories += len(context)
        parts["units"].append(output.units)
        parts["frames"].append(encoder.decode_frames(output.units).clamp(-1, 1))
        for key in ("hits", "gates", "bypassed"):
            value = getattr(output, f"memory_{key}")
            if value is not None:
                parts[key].append(value)
    joined = {key: torch.cat(values) if values else None for key, values in parts.items()}
    return VariantRollout(flops_per_step=flops / (trajectories * horizon), **joined)


@torch.no_grad()
def reference_states(encoder: VeltrixEncoderModel, train, count: int, batch_size: int, seed: int) -> torch.Tensor:
    """`count` encoded training states (count, U·D), drawn without replacement (seeded) over all training steps."""
    frames = train["pixel_values"]
    trajectories, steps = len(train), frames[0].shape[0]
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(trajectories * steps, generator=generator)[: min(count, trajectories * steps)]
    states = []
    for rows in torch.split(torch.unique(chosen // steps), batch_size):
        units = encoder(torch.stack([frames[int(row)] for row in rows])).units.flatten(2)  # (n, T, U·D)
        for index, row in enumerate(rows):
            keep = chosen[chosen // steps == row] % steps
            states.append(units[index, keep])
    return torch.cat(states)


@torch.no_grad()
def manifold_distance(units: torch.Tensor, references: torch.Tensor, chunk: int = 512) -> np.ndarray:
    """Per horizon, the RMS (over channels, averaged over trajectories) distance of states (N, H, U, D) to their
    nearest reference state (M, U·D)."""
    flat = units.flatten(2)
    n, horizon, width = flat.shape
    queries = flat.reshape(n * horizon, width)
    nearest = torch.cat([torch.cdist(part, references).min(dim=1).values for part in torch.split(queries, chunk)])
    return (nearest / width**0.5).reshape(n, horizon).mean(dim=0).numpy()


def mean_error_per_horizon(prediction: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """(N, H, ...) -> mean squared error per horizon (H,), averaged over trajectories."""
    return per_horizon_mse(prediction, truth).mean(dim=0).numpy()


@torch.no_grad()
def foreign_hit_rate(engram: VeltrixEngramModel, context: torch.Tensor, units: torch.Tensor) -> float:
    """The fraction of a rollout's hits that a collided slot answered (the slot was first filled by another n-gram):
    each step's lookup recomputed from the context (N, T, U, D) and the rollout's states (N, H, U, D)."""
    t = context.shape[1]
    fed = torch.cat([context, units[:, :-1]], dim=1)  # the state each step feeds, the last context one first
    histories = engram.histories(engram.codes(fed))[:, t - 1 :].flatten(0, 1)  # (N·H, max_order)
    states = fed[:, t - 1 :].flatten(0, 1)
    # Which slot answers, and whether it collided, does not depend on the step size (unit steps are passed).
    recall = engram.recall(histories, states, torch.ones(len(states), dtype=states.dtype))
    hits = recall.hits
    return float(recall.foreign[hits].float().mean()) if bool(hits.any()) else 0.0


def at_multiples(curve: np.ndarray, window: int) -> dict[str, float]:
    """A per-horizon curve read at 1×, 3× and 10× the training window."""
    return {f"{multiple}x": float(curve[multiple * window - 1]) for multiple in HORIZON_MULTIPLES}


def table_bytes(engram: VeltrixEngramModel) -> int:
    """Bytes held by the non-parametric table's buffers."""
    names = ("table_states", "table_counts", "table_step_sizes", "table_fingerprints", "table_collided")
    return sum(getattr(engram, name).numel() * getattr(engram, name).element_size() for name in names)


def world_record(settings: EngramBenchmarkSettings, engram: VeltrixEngramModel) -> dict:
    """What a saved world result must match to be reused: the settings that shape it (not the allocation
    experiment's) and the memory's fingerprint."""
    values = {key: value for key, value in asdict(settings).items() if not key.startswith("allocation_")}
    return json.loads(json.dumps(values | {"memory": weights_fingerprint(engram)}, default=str))


def measure_world(settings: EngramBenchmarkSettings, world: str, runs_dir: str, output_dir: str) -> dict:
    """Builds (or loads) the world's memory and scores every variant (`VARIANTS`); the result is saved to
    `<output_dir>/<world>/engram_benchmark.json` and reused by a rerun with the same settings and memory."""
    encoder, evolver = load_world_models(settings, world, runs_dir)
    world_dir = os.path.join(output_dir, world)
    engram, build = load_or_build_memory(settings, world, encoder, evolver, os.path.join(world_dir, "engram"))
    path = os.path.join(world_dir, "engram_benchmark.json")
    record = world_record(settings, engram)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle)
        if saved.get("settings") == record:
            print(f"[veltrix] {world}: scores loaded from {path}")
            return saved["result"]
    recipe = settings.recipe
    held_out = held_out_dataset(settings.recipe, world, settings.horizon)
    frames = held_out[:]["pixel_values"]
    with torch.no_grad():
        context = torch.cat(
            [
                encoder(frames[i : i + settings.batch_size, : recipe.context_length]).units
                for i in range(0, len(held_out), settings.batch_size)
            ]
        )
        truth = torch.cat(
            [
                encoder(frames[i : i + settings.batch_size, recipe.context_length :]).units
                for i in range(0, len(held_out), settings.batch_size)
            ]
        )
    true_frames = frames[:, recipe.context_length :]
    train, _ = build_datasets(world_recipe(settings, world))
    references = reference_states(encoder, train.with_format("torch"), settings.num_reference_states, 16, recipe.seed)
    rollouts = {}
    variants = {"no_memory": None, "memory": engram}
    for name in tqdm(VARIANTS, desc=f"{world}: variants"):
        if name == "fixed_gate":
            memory = rollouts["memory"]
            hit_gates = memory.gates[memory.hits]
            variants[name] = with_fixed_gate(engram, float(hit_gates.mean()) if hit_gates.numel() else 0.0)
        elif name == "random_table":
            variants[name] = with_random_table(engram, recipe.seed)
        elif name == "shuffled_keys":
            variants[name] = with_shuffled_keys(engram, recipe.seed)
        elif name == "bypass":
            variants[name] = with_bypass(engram, settings.bypass_min_count)
        rollouts[name] = roll_out_variant(encoder, evolver, variants[name], held_out, settings)
    scores = {}
    for name, rollout in rollouts.items():
        latent = mean_error_per_horizon(rollout.units, truth)
        pixel = mean_error_per_horizon((rollout.frames + 1) / 2, (true_frames + 1) / 2)
        variant_scores = {
            "latent_mse": latent.tolist(),
            "pixel_mse_readout": pixel.tolist(),
            "latent_mse_at": at_multiples(latent, settings.window),
            "pixel_mse_readout_at": at_multiples(pixel, settings.window),
            "manifold_distance": manifold_distance(rollout.units, references).tolist(),
            "flops_per_step": rollout.flops_per_step,
        }
        if rollout.hits is not None:
            variant_scores |= {
                "hit_rate": float(rollout.hits.float().mean()),
                "hit_rate_per_horizon": rollout.hits.float().mean(dim=0).tolist(),
                "mean_gate_on_hits": float(rollout.gates[rollout.hits].mean()) if bool(rollout.hits.any()) else 0.0,
                "bypass_rate": float(rollout.bypassed.float().mean()),
                "foreign_hit_rate": foreign_hit_rate(variants[name], context, rollout.units),
            }
        scores[name] = variant_scores
    result = {
        "variants": scores,
        "truth_manifold_distance": manifold_distance(truth, references).tolist(),
        "build": build,
        "table": engram.table_statistics() | {"table_bytes": table_bytes(engram)},
        "flops_saved_by_bypass": 1.0 - rollouts["bypass"].flops_per_step / rollouts["memory"].flops_per_step,
        "num_held_out_trajectories": len(held_out),
        "horizon": settings.horizon,
        "training_window": settings.window,
    }
    write_json_atomic(path, {"settings": record, "result": result})
    return result


def evolver_parameters(config: VeltrixEvolverConfig) -> int:
    """Parameters of an evolver of `config`."""
    with torch.device("meta"):
        return sum(p.numel() for p in VeltrixEvolverModel(config).parameters())


def allocation_configs(
    evolver_config: VeltrixEvolverConfig, share: float, settings: EngramBenchmarkSettings
) -> tuple[VeltrixEvolverConfig, VeltrixEngramConfig | None, dict]:
    """At the budget of `evolver_config`'s parameter count, a narrower evolver and a parametric memory whose n-gram
    tables hold about `share` of the budget (no memory at share 0); with the realised counts and share.

    Compute is scaled by width: the evolver's `hidden_size` (a multiple of 8, which the SSM heads and attention heads
    divide) with the MLP width in the original ratio, the one whose parameters (with the memory's key and value
    projections) come closest to `(1 - share)` of the budget; the tables take the rest."""
    budget = evolver_parameters(evolver_config)
    if share == 0.0:
        return evolver_config, None, {"share": 0.0, "budget": budget, "table": 0, "compute": budget}
    base = {"unit_dim": evolver_config.unit_dim, "num_units_per_step": evolver_config.num_units_per_step}
    memory_fields = base | settings.engram | {"use_table": False, "injection_layers": [0]}
    memory_fields |= {"embedding_dim": settings.allocation_embedding_dim}
    ratio = evolver_config.intermediate_size / evolver_config.hidden_size
    best = None
    for hidden in range(8, evolver_config.hidden_size + 1, 8):
        config = VeltrixEvolverConfig(
            **(evolver_config.to_dict() | {"hidden_size": hidden, "intermediate_size": max(round(ratio * hidden), 1)})
        )
        memory = memory_config_for(config, memory_fields | {"parametric_table_size": 2})
        with torch.device("meta"):
            engram = VeltrixEngramModel(memory)
        projections = sum(p.numel() for p in engram.parameters()) - engram.embeddings.weight.numel()
        compute = evolver_parameters(config) + projections
        if best is None or abs(compute - (1 - share) * budget) < abs(best[2] - (1 - share) * budget):
            best = (config, memory, compute)
    config, memory, compute = best
    tables = len(memory.ngram_orders) * memory.num_hash_heads
    rows = max(int((budget - compute) / (tables * memory.embedding_dim)), 2)
    memory = memory_config_for(config, memory_fields | {"parametric_table_size": rows})
    table = tables * max(memory.parametric_primes) * memory.embedding_dim
    counts = {"share": share, "budget": budget, "table": table, "compute": compute}
    return config, memory, counts | {"realised_share": table / (table + compute)}


@torch.no_grad()
def validation_error(
    encoder: VeltrixEncoderModel,
    evolver: VeltrixEvolverModel,
    engram: VeltrixEngramModel | None,
    held_out,
    settings: EngramBenchmarkSettings,
) -> dict[str, float]:
    """Latent MSE of open-loop rollouts from the held-out contexts at 1×, 3× and 10× the training window."""
    rollout = roll_out_variant(encoder, evolver, engram, held_out, settings)
    context_length = settings.recipe.context_length
    truth = torch.cat(
        [
            encoder(held_out[i : i + settings.batch_size]["pixel_values"][:, context_length:]).units
            for i in range(0, len(held_out), settings.batch_size)
        ]
    )
    return at_multiples(mean_error_per_horizon(rollout.units, truth), settings.window)


def allocation_experiment(settings: EngramBenchmarkSettings, runs_dir: str, output_dir: str) -> list[dict]:
    """At the parameter budget of the world's evolver, for every share in `allocation_shares`: the evolver (MLP width
    shrunk to the rest of the budget) and a parametric memory whose tables hold the share, trained from scratch
    end to end by the evolver stage (same recipe, steps, seed and data order; share 0 trains the evolver alone),
    then scored by open-loop validation error. Each point is saved under `<output_dir>/allocation/share_<s>/`."""
    world = settings.allocation_world
    recipe = world_recipe(settings, world)
    encoder, evolver = load_world_models(settings, world, runs_dir)
    train, _ = build_datasets(recipe)
    held_out = held_out_dataset(settings.recipe, world, settings.horizon)
    points = []
    for share in settings.allocation_shares:
        folder = os.path.join(output_dir, "allocation", f"share_{share:g}")
        path = os.path.join(folder, "point.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                points.append(json.load(handle))
            continue
        evolver_config, engram_config, counts = allocation_configs(evolver.config, share, settings)
        print(f"[veltrix] allocation {world}: share {share:g} -> {counts}")
        if engram_config is None:
            seed_everything(recipe.seed, "init/evolver")  # as `train_parametric` creates its evolver
            trained, memory = VeltrixEvolverModel(evolver_config), None
            train_stage("evolver", (encoder, trained, None), train, recipe, folder)
            trained.eval()
        else:
            trained, memory = train_parametric(encoder, evolver_config, engram_config, train, recipe, folder)
        point = counts | {"validation_latent_mse": validation_error(encoder, trained, memory, held_out, settings)}
        write_json_atomic(path, point)
        points.append(point)
    return points


def world_targets(world: str, result: dict) -> list[dict]:
    """The issue's targets of one world, on the latent rollout error (the space the memory and the rollout live in)
    and on the pixel error of the encoder's readout: error at 10× with ÷ without memory (goal < 1; 0.8 hoped), and
    the random-table ablation ÷ the real memory (goal > 1: retrieval, not a side path)."""
    targets = []
    for prefix, key in (("", "latent_mse_at"), ("pixel_", "pixel_mse_readout_at")):
        at_10x = {name: scores[key]["10x"] for name, scores in result["variants"].items()}
        targets += [
            {
                "name": f"{prefix}error_ratio_with_memory_10x_{world}",
                "value": at_10x["memory"] / at_10x["no_memory"],
                "target": 1.0,
                "op": "<",
                "hoped": 0.8,
            },
            {
                "name": f"{prefix}error_ratio_random_table_over_memory_10x_{world}",
                "value": at_10x["random_table"] / at_10x["memory"],
                "target": 1.0,
                "op": ">",
            },
        ]
    return targets


def results_record(worlds: dict[str, dict], allocation: list[dict]) -> dict:
    """The flat figures of the report: per world and variant the errors at 1×, 3×, 10×, hit and collision rates,
    FLOPs, manifold distance at 10×; table size and collisions; FLOPs saved by the bypass; the allocation points."""
    record: dict = {}
    for world, result in worlds.items():
        window = result["training_window"]
        for name, scores in result["variants"].items():
            for multiple, value in scores["pixel_mse_readout_at"].items():
                record[f"pixel_mse_{name}_{multiple}_{world}"] = value
            record[f"latent_mse_{name}_10x_{world}"] = scores["latent_mse_at"]["10x"]
            record[f"manifold_distance_{name}_10x_{world}"] = scores["manifold_distance"][10 * window - 1]
            record[f"flops_per_step_{name}_{world}"] = scores["flops_per_step"]
            for key in ("hit_rate", "foreign_hit_rate", "mean_gate_on_hits", "bypass_rate"):
                if key in scores:
                    record[f"{key}_{name}_{world}"] = scores[key]
        record[f"manifold_distance_truth_10x_{world}"] = result["truth_manifold_distance"][10 * window - 1]
        record[f"flops_saved_by_bypass_{world}"] = result["flops_saved_by_bypass"]
        table = result["table"]
        record[f"table_bytes_{world}"] = table["table_bytes"]
        record[f"table_slots_used_{world}"] = table["slots_used"]
        record[f"table_collided_slot_fraction_{world}"] = table["collided_slot_fraction"]
        build = result["build"]
        for key in ("codes_used", "utilisation", "perplexity", "build_seconds"):
            if key in build:
                record[f"codebook_{key}_{world}" if key != "build_seconds" else f"build_seconds_{world}"] = build[key]
    record["allocation"] = allocation
    return record


def save_plots(worlds: dict[str, dict], allocation: list[dict], path_prefix: str, window: int) -> dict[str, str]:
    """The error-vs-horizon grid of every world and variant, the manifold distance per horizon, and the allocation
    curve (validation error vs share of the budget in the tables); returns their paths."""
    paths = {"error_vs_horizon": f"{path_prefix}_error_vs_horizon.png"}
    curves = {
        world: {name: np.asarray(scores["pixel_mse_readout"]) for name, scores in result["variants"].items()}
        for world, result in worlds.items()
    }
    save_error_grid(curves, paths["error_vs_horizon"], window)
    paths["manifold_distance"] = f"{path_prefix}_manifold_distance.png"
    distances = {
        world: {"truth": np.asarray(result["truth_manifold_distance"])}
        | {name: np.asarray(result["variants"][name]["manifold_distance"]) for name in ("no_memory", "memory")}
        for world, result in worlds.items()
    }
    save_error_grid(distances, paths["manifold_distance"], window)
    if allocation:
        paths["allocation"] = f"{path_prefix}_allocation.png"
        figure = Figure(figsize=(5, 3.5))
        axis = figure.add_subplot()
        shares = [point.get("realised_share", point["share"]) for point in allocation]
        for multiple in HORIZON_MULTIPLES:
            axis.plot(
                shares,
                [p["validation_latent_mse"][f"{multiple}x"] for p in allocation],
                marker="o",
                label=f"{multiple}× W",
            )
        axis.set_xlabel("share of the parameter budget in the n-gram tables")
        axis.set_ylabel("validation latent MSE (open loop)")
        axis.set_title(f"Memory vs compute at {allocation[0]['budget']} parameters")
        axis.legend()
        figure.tight_layout()
        temporary = paths["allocation"] + ".tmp.png"
        figure.savefig(temporary, dpi=120)
        os.replace(temporary, paths["allocation"])
    return paths


CARD_MARKERS = ("<!-- benchmark_engram.py results: start -->", "<!-- benchmark_engram.py results: end -->")


def results_markdown(worlds: dict[str, dict], allocation: list[dict]) -> str:
    """The model card's tables: per world and variant the latent MSE at 1×, 3×, 10× W, the pixel MSE and the
    distance to the nearest training state at 10×, the hit rate, the mean α on hits and the FLOPs per step; then the
    allocation points."""
    lines = [
        "| world | variant | latent MSE 1× | 3× | 10× | pixel MSE 10× | distance to training states 10× | hit rate | "
        "mean α on hits | FLOPs / step |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for world, result in worlds.items():
        for name, scores in result["variants"].items():
            latent, pixel = scores["latent_mse_at"], scores["pixel_mse_readout_at"]
            hit = f"{scores['hit_rate']:.2f}" if "hit_rate" in scores else "–"
            gate = f"{scores['mean_gate_on_hits']:.3f}" if "mean_gate_on_hits" in scores else "–"
            lines.append(
                f"| {world} | {name} | {latent['1x']:.4f} | {latent['3x']:.4f} | {latent['10x']:.4f} | "
                f"{pixel['10x']:.4f} | {scores['manifold_distance'][-1]:.4f} | {hit} | {gate} | "
                f"{scores['flops_per_step'] / 1e6:.2f} M |"
            )
    if allocation:
        lines += [
            "",
            "| share of the budget in the tables | table parameters | other parameters | latent MSE 1× | 3× | 10× |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for point in allocation:
            error = point["validation_latent_mse"]
            share = point.get("realised_share", point["share"])
            lines.append(
                f"| {share:.2f} | {point['table']} | {point['compute']} | {error['1x']:.4f} | {error['3x']:.4f} | "
                f"{error['10x']:.4f} |"
            )
    return "\n".join(lines)


def run_benchmark(
    settings: EngramBenchmarkSettings, runs_dir: str, output_dir: str, report_path: str, card_path: str | None
) -> dict:
    """Measures every world and the allocation experiment, then writes the JSON report (BENCHMARKS.md shape) to
    `report_path`, its plots next to it, and the results tables into the model card at `card_path` (skipped when
    None). Returns the report."""
    worlds = {}
    for world in settings.worlds:
        print(f"[veltrix] engram benchmark: world {world}")
        worlds[world] = measure_world(settings, world, runs_dir, output_dir)
    allocation = allocation_experiment(settings, runs_dir, output_dir) if settings.allocation_shares else []
    report = {
        "environment": {
            "torch": torch.__version__,
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "dtype": "float32",
        },
        "settings": json.loads(json.dumps(asdict(settings), default=str)),
        "results": results_record(worlds, allocation),
        "targets": [target for world, result in worlds.items() for target in world_targets(world, result)],
    }
    report["results"]["plots"] = save_plots(worlds, allocation, os.path.splitext(report_path)[0], settings.window)
    save_report(report_path, report)
    table = results_markdown(worlds, allocation)
    print(table)
    if card_path is not None:
        recipe = settings.recipe
        caption = (
            "Measured by `scripts/benchmark_engram.py`: the evolver of `scripts/evaluate.py` on each world, rolled "
            f"out from {recipe.context_length} context steps to {settings.horizon_multiple}× its training window "
            f"W = {settings.window}, without and with the Engram memory (its table and learned gate), with the "
            "bypass and with the three ablations; MSE of the latent state and of the encoder's pixel readout (pixels "
            "in [0, 1]); distance: RMS distance of the states to the nearest encoded training state. Then the "
            "allocation experiment: evolvers with parametric memory at one parameter budget, trained from scratch."
        )
        write_table_into_card(card_path, table, caption, CARD_MARKERS, "Engram memory")
    return report
