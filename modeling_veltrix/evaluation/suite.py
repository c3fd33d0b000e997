"""The "prove it" suite: per world, one encoder and decoder shared by the evolver and its two equal-size baselines
(trained by the same evolver stage on the same data), rolled out from held-out contexts to many times the training
window, and scored against copy-last-frame and mean-of-context with the `evaluate` metric modules.

Everything trained lands under `<output_dir>/<world>/`: `encoder/`, `decoder/`, `probe/` and `evolver/` (the
staged run), `transformer/evolver/` and `gru/evolver/` (the baselines, trained by the evolver stage into their own
folders); each world's scores are written to `<output_dir>/<world>/evaluation.json`. A rerun loads what is there
and trains or scores only what is missing (an interrupted stage resumes from its last checkpoint).
"""

import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from ..benchmarks.reports import environment_record, save_report
from ..modeling_veltrix_encoder import VeltrixEncoderModel
from ..pipeline_veltrix import VeltrixPipeline
from ..repository_check import write_json_atomic
from ..training import (
    VeltrixTrainingRecipe,
    assemble_pipeline,
    build_datasets,
    load_or_create_models,
    seed_everything,
    train_stage,
    train_stages,
    world_action_dim,
)
from ..training.physics import VeltrixPhysicsProbe, load_or_train_probe
from ..worlds import WORLDS, build_world_dataset, get_world
from .baselines import (
    ARCHITECTURES,
    BASELINE_CLASSES,
    VeltrixBaselinePredictor,
    build_baseline,
    count_parameters,
    matched_baseline_config,
)
from .event_recall import evaluate_event_recall, event_recall_targets
from .metric_loading import load_metric
from .sample_metrics import best_and_mean_of_k_error, object_persistence, sharpness_ratio
from .visualization import save_error_grid

LEARNED = ("veltrix", *ARCHITECTURES)
REFERENCES = ("copy_last", "mean_of_context")
MODELS = (*LEARNED, *REFERENCES)
# Veltrix's stochastic head (`rollout(sample=True)`), scored beside the deterministic models when the evolver has one.
SAMPLED = "veltrix_sampled"
HORIZON_MULTIPLES = (1, 3, 10)


@dataclass
class SuiteSettings:
    """What the suite trains and how it scores.

    Args:
        preset: the preset folder (component configs and scheduler) every world's models are created from.
        recipe: the training recipe; its `world` is replaced by each of `worlds`, and its `rollout_window` W is the
            training window the horizons are multiples of.
        worlds: the built-in worlds to train and score.
        horizon_multiple: the rollouts run `horizon_multiple · W` steps past the context.
        num_inference_steps: Euler steps of the decoder for the scored samples.
        num_sample_trajectories: how many held-out trajectories the decoder's samples are scored on (the direct
            readout is scored on all; sampling every step of every trajectory costs the most).
        batch_size: trajectories per rollout batch.
        horizon_window: the window W the horizons are multiples of (default: the recipe's `rollout_window`); set it
            to compare a model trained on another window at the same horizons.
        num_samples: futures sampled from each held-out context by the evolver's stochastic head (when it has one),
            for the best-of-K and mean-of-K errors; the first sample is also scored as the model `veltrix_sampled`.
        speaking_preset: a speaking, captioning preset (e.g. `configuration/veltrix-tiny-speaking`) whose models are
            trained with `speaking_recipe` and scored for future event recall (deterministic and sampled, with
            `num_samples` futures); None skips it. With it, `worlds` may be empty (the event recall alone).
        speaking_recipe: the recipe of `speaking_preset` (a world with captions); given exactly when it is.
    """

    preset: str
    recipe: VeltrixTrainingRecipe
    worlds: tuple[str, ...] = ("bouncing_balls", "pendulum", "mass_spring", "two_body")
    horizon_multiple: int = 10
    num_inference_steps: int = 4
    num_sample_trajectories: int = 8
    batch_size: int = 16
    horizon_window: int | None = None
    num_samples: int = 8
    speaking_preset: str | None = None
    speaking_recipe: VeltrixTrainingRecipe | None = None

    def __post_init__(self) -> None:
        if any(world not in WORLDS for world in self.worlds) or not (self.worlds or self.speaking_preset):
            raise ValueError(
                f"`worlds` must be a subset of {sorted(WORLDS)}, non-empty unless `speaking_preset` is given, got "
                f"{self.worlds!r} (speaking_preset={self.speaking_preset!r})."
            )
        if (self.speaking_preset is None) != (self.speaking_recipe is None):
            raise ValueError(
                "`speaking_recipe` must be given exactly when `speaking_preset` is, got speaking_preset="
                f"{self.speaking_preset!r} and speaking_recipe {'None' if self.speaking_recipe is None else 'given'}."
            )
        names = ("horizon_multiple", "num_inference_steps", "num_sample_trajectories", "batch_size", "num_samples")
        for name in names + (() if self.horizon_window is None else ("horizon_window",)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}.")
        if self.horizon_multiple < max(HORIZON_MULTIPLES):
            raise ValueError(
                f"`horizon_multiple` must be >= {max(HORIZON_MULTIPLES)} (the table reports 10× the training window), "
                f"got {self.horizon_multiple}."
            )

    @property
    def window(self) -> int:
        """The window W the horizons are multiples of."""
        return self.recipe.rollout_window if self.horizon_window is None else self.horizon_window

    @property
    def horizon(self) -> int:
        return self.horizon_multiple * self.window


@dataclass
class WorldModels:
    """A world's trained models: the shared encoder and decoder pipeline, the three predictors, the probe."""

    pipeline: VeltrixPipeline
    predictors: dict[str, torch.nn.Module]
    probe: VeltrixPhysicsProbe


def world_recipe(settings: SuiteSettings, world: str) -> VeltrixTrainingRecipe:
    """The settings' recipe for `world` (a copy; the world options are dropped, they belong to another world)."""
    values = asdict(settings.recipe) | {"world": world, "world_options": {}}
    return VeltrixTrainingRecipe(**values)


def _load_or_train_baseline(
    architecture: str, models: tuple, train: datasets.Dataset, recipe: VeltrixTrainingRecipe, world_dir: str
) -> VeltrixBaselinePredictor:
    """The baseline trained by the evolver stage into `<world_dir>/<architecture>/evolver`, loaded when there."""
    encoder, evolver, decoder = models
    folder = os.path.join(world_dir, architecture)
    saved = os.path.join(folder, "evolver")
    if os.path.isdir(saved):
        return BASELINE_CLASSES[architecture].from_pretrained(saved)
    seed_everything(recipe.seed, f"init/{architecture}")
    baseline = build_baseline(matched_baseline_config(architecture, evolver.config))
    print(f"[veltrix] {recipe.world}: training the {architecture} baseline ({count_parameters(baseline)} parameters)")
    train_stage("evolver", (encoder, baseline, decoder), train, recipe, folder)
    return baseline.eval()


def train_world(settings: SuiteSettings, world: str, output_dir: str) -> WorldModels:
    """Trains (or loads) everything the suite scores on `world` under `<output_dir>/<world>`."""
    recipe = world_recipe(settings, world)
    world_dir = os.path.join(output_dir, world)
    train, _ = build_datasets(recipe)
    models = load_or_create_models(settings.preset, world_dir, world_action_dim(recipe), seed=recipe.seed)
    train_stages(("encoder", "decoder"), models, settings.preset, train, recipe, world_dir, skip_finished=True)
    probe = load_or_train_probe(models[0], train, recipe, world_dir)
    train_stages(("evolver",), models, settings.preset, train, recipe, world_dir, skip_finished=True, probe=probe)
    predictors = {"veltrix": models[1].eval()}
    for architecture in ARCHITECTURES:
        predictors[architecture] = _load_or_train_baseline(architecture, models, train, recipe, world_dir).eval()
    return WorldModels(assemble_pipeline(models, settings.preset), predictors, probe.eval())


def held_out_dataset(recipe: VeltrixTrainingRecipe, world: str, horizon: int) -> datasets.Dataset:
    """Held-out trajectories of `world` (the recipe's evaluation count and seed) long enough for its context and
    `horizon` future steps (torch format)."""
    return build_world_dataset(
        world,
        num_trajectories=recipe.num_eval_trajectories,
        num_steps=recipe.context_length + horizon,
        seed=recipe.eval_seed,
    ).with_format("torch")


@dataclass
class WorldRollouts:
    """Every model's future on the held-out trajectories: states (N, H, U, D) of the learned predictors and the
    references, the direct readout frames (N, H, C, Hi, Wi) in [-1, 1] and the decoder's samples of the first
    trajectories, the probed energies (N, H), and the truth (frames, encoded states, energies). With a stochastic
    evolver, also the readout frames (N, K, H, C, Hi, Wi) of all K sampled futures and their spread (N, H)."""

    units: dict[str, torch.Tensor]
    readout: dict[str, torch.Tensor]
    samples: dict[str, torch.Tensor]
    energies: dict[str, torch.Tensor]
    true_frames: torch.Tensor
    true_units: torch.Tensor
    true_energies: torch.Tensor
    probed_true_energies: torch.Tensor
    sampled_readout: torch.Tensor | None = None
    sample_spread: torch.Tensor | None = None


@torch.no_grad()
def roll_out_world(
    models: WorldModels, held_out: datasets.Dataset, settings: SuiteSettings, world: str
) -> WorldRollouts:
    """Rolls every predictor out from the first `context_length` steps of every held-out trajectory, with the
    trajectory's actions and timestamps, for `settings.horizon` steps; the references copy the last context state
    (frame) or average the context's. A stochastic Veltrix evolver also samples `settings.num_samples` futures per
    context (batch i's noise from `eval_seed + i`)."""
    encoder: VeltrixEncoderModel = models.pipeline.encoder
    context_length, horizon = settings.recipe.context_length, settings.horizon
    simulator = get_world(world)
    probe_index = [simulator.physics_fields.index(name) for name in simulator.probe_fields]
    collected: dict[str, dict[str, list]] = {key: defaultdict(list) for key in ("units", "readout", "energies")}
    truth = {"frames": [], "units": [], "energies": [], "probed": []}
    sampled_readout, spreads = [], []
    veltrix = models.predictors["veltrix"]
    for index, start in enumerate(tqdm(range(0, len(held_out), settings.batch_size), desc="rolling out")):
        batch = held_out[start : start + settings.batch_size]
        frames, actions, timestamps = batch["pixel_values"], batch["actions"], batch["timestamps"]
        context, future = frames[:, :context_length], frames[:, context_length:]
        context_units = encoder(context).units
        future_units = encoder(future).units
        outcomes = {
            name: predictor.rollout(context_units, horizon, actions=actions, timestamps=timestamps).units
            for name, predictor in models.predictors.items()
        }
        if getattr(veltrix, "can_sample", False):
            sampled = veltrix.rollout(
                context_units,
                horizon,
                actions=actions,
                timestamps=timestamps,
                sample=True,
                num_samples=settings.num_samples,
                generator=torch.Generator().manual_seed(settings.recipe.eval_seed + index),
            )
            futures = sampled.units.unflatten(0, (len(context_units), settings.num_samples))
            outcomes[SAMPLED] = futures[:, 0]
            frames_of_futures = encoder.decode_frames(sampled.units).clamp(-1, 1)
            sampled_readout.append(frames_of_futures.unflatten(0, futures.shape[:2]))
            spreads.append(sampled.sample_spread)
        outcomes["copy_last"] = context_units[:, -1:].expand_as(future_units)
        outcomes["mean_of_context"] = context_units.mean(dim=1, keepdim=True).expand_as(future_units)
        frame_references = {
            "copy_last": context[:, -1:].expand_as(future),
            "mean_of_context": context.mean(dim=1, keepdim=True).expand_as(future),
        }
        for name, units in outcomes.items():
            collected["units"][name].append(units)
            readout = frame_references.get(name)
            collected["readout"][name].append(encoder.decode_frames(units).clamp(-1, 1) if readout is None else readout)
            collected["energies"][name].append(models.probe.trajectory_energy(units, context_units[:, -1]))
        truth["frames"].append(future)
        truth["units"].append(future_units)
        truth["energies"].append(simulator.energy(batch["physics"][:, context_length:, probe_index].double()).float())
        truth["probed"].append(models.probe.trajectory_energy(future_units, context_units[:, -1]))
    joined = {key: {name: torch.cat(values) for name, values in parts.items()} for key, parts in collected.items()}
    samples = decode_samples(models.pipeline, joined["units"], held_out, settings)
    return WorldRollouts(
        units=joined["units"],
        readout=joined["readout"],
        samples=samples,
        energies=joined["energies"],
        true_frames=torch.cat(truth["frames"]),
        true_units=torch.cat(truth["units"]),
        true_energies=torch.cat(truth["energies"]),
        probed_true_energies=torch.cat(truth["probed"]),
        sampled_readout=torch.cat(sampled_readout) if sampled_readout else None,
        sample_spread=torch.cat(spreads) if spreads else None,
    )


@torch.no_grad()
def decode_samples(
    pipeline: VeltrixPipeline, units: dict[str, torch.Tensor], held_out: datasets.Dataset, settings: SuiteSettings
) -> dict[str, torch.Tensor]:
    """The decoder's samples (n, H, C, Hi, Wi) of the learned predictors' states on the first
    `num_sample_trajectories` held-out trajectories, from the same noise for every predictor; the references' frames
    are not states and are scored as they are."""
    count = min(settings.num_sample_trajectories, len(held_out))
    context_length = settings.recipe.context_length
    frames = held_out[:count]["pixel_values"]
    last_context = frames[:, context_length - 1]
    future = frames[:, context_length:]
    generator = torch.Generator().manual_seed(settings.recipe.eval_seed)
    latents = pipeline.prepare_latents(count * settings.horizon, future.dtype, future.device, generator)
    pipeline.set_progress_bar_config(disable=True)
    samples = {
        name: pipeline.decode_rollout(units[name][:count], last_context, settings.num_inference_steps, latents).reshape(
            future.shape
        )
        for name in tqdm([name for name in units if name not in REFERENCES], desc="decoding samples")
    }
    samples["copy_last"] = frames[:, context_length - 1 : context_length].expand_as(future)
    samples["mean_of_context"] = frames[:, :context_length].mean(dim=1, keepdim=True).expand_as(future)
    return samples


def _unit_interval(frames: torch.Tensor) -> list[np.ndarray]:
    """Frames (N, H, C, Hi, Wi) in [-1, 1] -> per trajectory (H, C, Hi, Wi) float32 in [0, 1]."""
    return list(((frames.clamp(-1, 1) + 1) / 2).float().numpy())


def _flat(values: torch.Tensor) -> list[np.ndarray]:
    """(N, H, ...) -> per trajectory (H, F) float32."""
    return list(values.flatten(2).float().numpy())


def score_world(rollouts: WorldRollouts, window: int) -> dict:
    """Every model's scores from its rollouts: pixel MSE per horizon of the readout (the conditional mean) and of the
    decoder's samples, latent MSE, VPT, PSNR/SSIM per horizon, the probed energy's drift, and the metrics that do not
    reward blur on the readout (object persistence, sharpness ratio; for the sampled futures best-of-K and mean-of-K
    pixel MSE and their spread); and the same read at 1×, 3× and 10× the training window `window`."""
    error, vpt, quality, drift = (load_metric(name) for name in METRIC_ORDER)
    true_pixels, true_latents = _unit_interval(rollouts.true_frames), _flat(rollouts.true_units)
    sampled = len(next(iter(rollouts.samples.values())))
    scores = {}
    for name in rollouts.readout:
        readout = _unit_interval(rollouts.readout[name])
        scores[name] = {
            "pixel_mse_readout": error.compute(predictions=readout, references=true_pixels)["mse_per_horizon"],
            "pixel_mse_sample": error.compute(
                predictions=_unit_interval(rollouts.samples[name]), references=true_pixels[:sampled]
            )["mse_per_horizon"],
            "latent_mse": error.compute(predictions=_flat(rollouts.units[name]), references=true_latents)[
                "mse_per_horizon"
            ],
            "vpt": vpt.compute(predictions=readout, references=true_pixels)["vpt"],
            **{
                f"{key}_readout": value
                for key, value in quality.compute(predictions=readout, references=true_pixels).items()
                if key.endswith("per_horizon")
            },
            "energy_drift_per_horizon": drift.compute(
                predictions=list(rollouts.energies[name].float().numpy()),
                references=list(rollouts.true_energies.float().numpy()),
            )["drift_per_horizon"],
        }
        per_model = scores[name]
        per_model["energy_drift"] = float(np.mean(per_model["energy_drift_per_horizon"]))
        per_model |= _blur_free_scores(rollouts.readout[name], rollouts.true_frames)
        keys = ["pixel_mse_readout", "pixel_mse_sample", "latent_mse", "object_persistence", "sharpness_ratio"]
        if name == SAMPLED:
            per_model |= _sampled_scores(rollouts)
            keys += ["best_of_k_pixel_mse", "mean_of_k_pixel_mse", "sample_spread"]
        for multiple in HORIZON_MULTIPLES:
            step = multiple * window - 1
            for key in keys:
                per_model[f"{key}_{multiple}x"] = per_model[key][step]
    return scores


def _blur_free_scores(readout: torch.Tensor, truth: torch.Tensor) -> dict[str, list[float]]:
    """Per horizon: the fraction of trajectories whose readout frame keeps the truth's objects (`object_persistence`)
    and the high-frequency energy of the readout over the truth's (`sharpness_ratio`)."""
    return {
        "object_persistence": object_persistence(readout.float(), truth.float()).float().mean(0).tolist(),
        "sharpness_ratio": sharpness_ratio(readout.float(), truth.float()).tolist(),
    }


def _sampled_scores(rollouts: WorldRollouts) -> dict:
    """Per horizon: the pixel MSE of the best of the K sampled futures (the one closest to the truth over the whole
    horizon, per trajectory) and the mean over samples of their MSE, and the samples' spread (mean over
    trajectories)."""
    best, mean, _ = best_and_mean_of_k_error(rollouts.sampled_readout.float(), rollouts.true_frames.float())
    return {
        "num_samples": rollouts.sampled_readout.shape[1],
        "best_of_k_pixel_mse": best.tolist(),
        "mean_of_k_pixel_mse": mean.tolist(),
        "sample_spread": rollouts.sample_spread.float().mean(0).tolist(),
    }


METRIC_ORDER = ("rollout_error", "valid_prediction_time", "frame_quality", "energy_drift")


def _settings_record(settings: SuiteSettings) -> dict:
    """The settings as JSON values: what a saved world evaluation must match to be reused (the speaking settings do
    not enter a world's scores)."""
    record = asdict(settings) | {"preset": os.path.abspath(settings.preset)}
    for name in ("speaking_preset", "speaking_recipe"):
        record.pop(name)
    return json.loads(json.dumps(record))


def _mean_predictor_parameters(evolver: torch.nn.Module) -> int:
    """The evolver's parameters without its stochastic head (`sampling_head`, None without one)."""
    head = evolver.sampling_head
    return count_parameters(evolver) - (0 if head is None else count_parameters(head))


def evaluate_world(settings: SuiteSettings, world: str, output_dir: str) -> tuple[dict, VeltrixPipeline]:
    """Trains (or loads) `world`'s models and scores them; the scores are saved to `<output_dir>/<world>/
    evaluation.json` and reused by a rerun with the same settings. Returns the world's result and its pipeline."""
    models = train_world(settings, world, output_dir)
    path = os.path.join(output_dir, world, "evaluation.json")
    record = _settings_record(settings)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle)
        if saved.get("settings") == record:
            print(f"[veltrix] {world}: scores loaded from {path}")
            return saved["result"], models.pipeline
    held_out = held_out_dataset(settings.recipe, world, settings.horizon)
    rollouts = roll_out_world(models, held_out, settings, world)
    probe_floor = load_metric("energy_drift").compute(
        predictions=list(rollouts.probed_true_energies.float().numpy()),
        references=list(rollouts.true_energies.float().numpy()),
    )
    result = {
        "models": score_world(rollouts, settings.window),
        "parameters": {name: count_parameters(predictor) for name, predictor in models.predictors.items()},
        # What the baselines are matched to: Veltrix's mean predictor, without its stochastic head.
        "parameters_veltrix_mean_predictor": _mean_predictor_parameters(models.predictors["veltrix"]),
        "probe_energy_drift_on_encoded_truth": probe_floor["drift"],
        "num_held_out_trajectories": len(held_out),
        "num_sampled_trajectories": min(settings.num_sample_trajectories, len(held_out)),
        "eval_seed": settings.recipe.eval_seed,
        "context_length": settings.recipe.context_length,
        "training_window": settings.recipe.rollout_window,
        "horizon_window": settings.window,
        "horizon": settings.horizon,
    }
    write_json_atomic(path, {"settings": record, "result": result})
    return result, models.pipeline


def suite_targets(worlds: dict[str, dict]) -> list[dict]:
    """Per world and learned baseline: Veltrix's pixel MSE (direct readout) at 10× the training window over the
    baseline's (goal <= 0.5). With sampled futures, per world at 10×: the fraction of sampled readout frames whose
    objects persist (goal >= 0.9), their sharpness ratio (goal >= 0.8) and the best-of-K pixel MSE over the
    deterministic rollout's (goal < 1)."""
    targets = []
    for world, result in worlds.items():
        models = result["models"]
        for baseline in ARCHITECTURES:
            ratio = models["veltrix"]["pixel_mse_readout_10x"] / models[baseline]["pixel_mse_readout_10x"]
            name = f"error_ratio_veltrix_over_{baseline}_10x_{world}"
            targets.append({"name": name, "value": float(ratio), "op": "<=", "target": 0.5})
        if SAMPLED not in models:
            continue
        sampled = models[SAMPLED]
        best_ratio = sampled["best_of_k_pixel_mse_10x"] / models["veltrix"]["pixel_mse_readout_10x"]
        targets += [
            {
                "name": f"object_persistence_10x_{world}",
                "value": sampled["object_persistence_10x"],
                "op": ">=",
                "target": 0.9,
            },
            {
                "name": f"sharpness_ratio_10x_{world}",
                "value": sampled["sharpness_ratio_10x"],
                "op": ">=",
                "target": 0.8,
            },
            {
                "name": f"best_of_{sampled['num_samples']}_error_ratio_10x_{world}",
                "value": float(best_ratio),
                "op": "<",
                "target": 1.0,
            },
        ]
    return targets


def suite_results(settings: SuiteSettings, worlds: dict[str, dict]) -> dict:
    """The report's `results`: what was trained, each world's scores, and the figures the issue names
    (`vpt_<model>_<world>`, `energy_drift_<model>_<world>`) at the top level."""
    results: dict = {
        "trained": {
            "preset": os.path.abspath(settings.preset),
            "recipe": asdict(settings.recipe),
            "worlds": list(settings.worlds),
            "predictors": "one encoder, decoder and physics probe per world, shared by Veltrix and the two "
            "baselines; each predictor trained by the evolver stage with the same recipe, data order and optimiser",
            "pixel_metrics": "readout = the encoder's direct frame readout of the state (the conditional mean); "
            "sample = the flow decoder's sample; targets and VPT use the readout",
        },
        "worlds": worlds,
    }
    for world, result in worlds.items():
        for model, scores in result["models"].items():
            results[f"vpt_{model}_{world}"] = scores["vpt"]
            results[f"energy_drift_{model}_{world}"] = scores["energy_drift"]
            results[f"object_persistence_10x_{model}_{world}"] = scores["object_persistence_10x"]
            results[f"sharpness_ratio_10x_{model}_{world}"] = scores["sharpness_ratio_10x"]
    return results


def results_markdown(worlds: dict[str, dict]) -> str:
    """The results table: per world and model, pixel MSE of the readout at 1×, 3× and 10× the training window, of
    the decoder's sample at 10×, latent MSE at 10×, VPT (steps), energy drift, object persistence and sharpness
    ratio at 10×, best-of-K and mean-of-K pixel MSE at 10× (sampled futures only), parameters."""
    lines = [
        "| world | model | parameters | pixel MSE 1× | 3× | 10× | sample MSE 10× | latent MSE 10× | VPT "
        "| energy drift | persistence 10× | sharpness 10× | best-of-K 10× | mean-of-K 10× |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for world, result in worlds.items():
        for model, s in result["models"].items():
            count = result["parameters"].get(model, 0)
            of_k = [
                f"{s[key]:.4f}" if key in s else "–" for key in ("best_of_k_pixel_mse_10x", "mean_of_k_pixel_mse_10x")
            ]
            lines.append(
                f"| {world} | {model} | {count or '–'} | {s['pixel_mse_readout_1x']:.4f} | "
                f"{s['pixel_mse_readout_3x']:.4f} | {s['pixel_mse_readout_10x']:.4f} | "
                f"{s['pixel_mse_sample_10x']:.4f} | "
                f"{s['latent_mse_10x']:.4f} | {s['vpt']:g} | {s['energy_drift']:.3f} | "
                f"{s['object_persistence_10x']:.2f} | {s['sharpness_ratio_10x']:.2f} | {of_k[0]} | {of_k[1]} |"
            )
    return "\n".join(lines)


CARD_START, CARD_END = "<!-- evaluate.py results: start -->", "<!-- evaluate.py results: end -->"


def write_table_into_card(
    card_path: str,
    table: str,
    caption: str,
    markers: tuple[str, str] = (CARD_START, CARD_END),
    section: str = "Compared with equal-size baselines",
) -> None:
    """Replaces the text between the card's `markers` (by default `CARD_START` and `CARD_END`) by `caption` and
    `table` (appending a `section` with the markers when the card has none); written to a temporary file, then
    renamed."""
    start, end = markers
    with open(card_path, encoding="utf-8") as handle:
        text = handle.read()
    block = f"{start}\n{caption}\n\n{table}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## {section}\n\n" + block + "\n"
    temporary = f"{card_path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, card_path)


def run_suite(settings: SuiteSettings, output_dir: str, report_path: str, card_path: str | None) -> dict:
    """Trains and scores every world of `settings` under `output_dir`, then writes the report (BENCHMARKS.md shape)
    to `report_path`, the error-vs-horizon plot of every world and model next to it, and the results table into
    the model card at `card_path` (skipped when None). Returns the report."""
    worlds, environment = {}, None
    for world in settings.worlds:
        print(f"[veltrix] world {world}")
        worlds[world], pipeline = evaluate_world(settings, world, output_dir)
        environment = environment or environment_record(pipeline)
    report = {"environment": environment, "results": suite_results(settings, worlds), "targets": suite_targets(worlds)}
    if settings.speaking_preset is not None:
        print(f"[veltrix] future event recall: {settings.speaking_preset}")
        speaking, speaking_pipeline = evaluate_event_recall(
            settings.speaking_preset,
            settings.speaking_recipe,
            os.path.join(output_dir, "speaking"),
            settings.num_samples,
        )
        report["environment"] = environment or environment_record(speaking_pipeline)
        report["results"]["speaking"] = speaking
        for name in ("deterministic", "sampled"):
            scores = speaking[name]
            recall = None if scores is None else scores["caption_event_accuracy_on_event_steps"]
            report["results"][f"future_event_recall_speaking_{name}"] = recall
        report["targets"] += event_recall_targets(speaking)
    if not worlds:
        save_report(report_path, report)
        return report
    plot_path = os.path.splitext(report_path)[0] + "_error_vs_horizon.png"
    report["results"]["plot"] = os.path.abspath(plot_path)
    save_report(report_path, report)
    curves = {
        world: {model: np.asarray(scores["pixel_mse_readout"]) for model, scores in result["models"].items()}
        for world, result in worlds.items()
    }
    save_error_grid(curves, plot_path, settings.window)
    table = results_markdown(worlds)
    print(table)
    if card_path is not None:
        caption = (
            f"Measured by `scripts/evaluate.py` ({len(settings.worlds)} worlds; {settings.recipe.context_length} "
            f"context steps, rollouts to {settings.horizon_multiple}× the training window W = "
            f"{settings.window}; {next(iter(worlds.values()))['num_held_out_trajectories']} held-out "
            "trajectories per world). Pixel MSE (pixels in [0, 1]) of the encoder's direct readout of the state (the "
            f"conditional mean) at 1×, 3× and 10× W; sample MSE: the flow decoder's sample "
            f"({settings.num_inference_steps} Euler steps) on the first {settings.num_sample_trajectories} "
            "trajectories; VPT: valid prediction time in steps (threshold 0.025, median); energy drift: mean relative "
            "error of the probed state's energy."
        )
        write_table_into_card(card_path, table, caption)
    return report
