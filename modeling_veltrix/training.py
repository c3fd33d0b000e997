"""Staged training of Veltrix with `transformers.Trainer`.

Stages (DESIGN §9): `encoder` (encoder + frame readout by reconstruction) -> `evolver` (frozen encoder; one-step
teacher forcing over whole trajectories plus an open-loop rollout over a local window, in latent and pixel space)
-> `decoder` (flow matching of frames on frozen units). The same code runs on one CPU or under `accelerate launch`;
checkpoints are resumable; each finished stage is saved with `save_pretrained` under `<output_dir>/<component>`.
"""

import json
import os
import shutil
from dataclasses import asdict, dataclass, field

import datasets
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import nn
from tqdm.auto import tqdm
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from .configuration_veltrix import VeltrixEncoderConfig, VeltrixEvolverConfig
from .modeling_veltrix_decoder import VeltrixDecoderModel, flow_matching_loss
from .modeling_veltrix_encoder import VeltrixEncoderModel
from .modeling_veltrix_evolver import VeltrixEvolverModel, lyapunov_penalty, midpoint_rollout
from .pipeline_veltrix import VeltrixPipeline
from .worlds import build_world_dataset, world_metadata

STAGES = ("encoder", "evolver", "decoder", "reflow")
COMPONENTS = ("encoder", "evolver", "decoder")
# The component each stage trains; `reflow` fine-tunes the decoder for few-step sampling.
STAGE_COMPONENT = {"encoder": "encoder", "evolver": "evolver", "decoder": "decoder", "reflow": "decoder"}


@dataclass
class VeltrixStageRecipe:
    """Optimisation of one training stage."""

    max_steps: int = 300
    learning_rate: float = 1e-3
    batch_size: int = 8
    weight_decay: float = 0.0
    warmup_steps: int = 20
    save_steps: int = 100

    def __post_init__(self) -> None:
        for name in ("max_steps", "learning_rate", "batch_size", "save_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}.")


@dataclass
class VeltrixTrainingRecipe:
    """Everything a training run depends on besides the model configs: data, windows, loss weights, stages.

    `world_options` are overrides of the world's config (e.g. `{"audio": true, "captions": true}` for the speaking,
    captioning world that a multimodal encoder trains on). `rollout_window` is the training window W: the evolver
    is trained to roll out W steps open loop from `context_length` observed steps. `stability_weight` (default 0:
    off) weighs the Lyapunov-like regulariser `modeling_veltrix_evolver.lyapunov_penalty` on that rollout, with a
    context perturbation of relative size `stability_perturbation`. `time_consistency_weight` (default 0: off) weighs
    the same window rolled out at twice the frame rate (`modeling_veltrix_evolver.midpoint_rollout`), which teaches
    rollouts at other frame rates. With an encoder that models text and a world with captions, `caption_loss_weight`
    (default 0: off) weighs the frozen caption head's cross-entropy on the predicted states' text subspace against the
    true captions, the text counterpart of the pixel loss. On the speaking preset, weight 1 did not make evolved
    states caption future events (0 of the eventful held-out steps, as without it) and made frames worse.
    """

    world: str = "bouncing_balls"
    world_options: dict = field(default_factory=dict)
    num_train_trajectories: int = 512
    num_eval_trajectories: int = 32
    trajectory_length: int = 32
    train_seed: int = 0
    eval_seed: int = 1_000_000
    context_length: int = 8
    rollout_window: int = 8
    latent_loss_weight: float = 1.0
    pixel_loss_weight: float = 1.0
    teacher_forcing_weight: float = 1.0
    open_loop_weight: float = 1.0
    stability_weight: float = 0.0
    stability_perturbation: float = 1e-2
    time_consistency_weight: float = 0.0
    caption_loss_weight: float = 0.0
    decoder_frames_per_trajectory: int = 8
    decoder_time_sampling: str = "logit_normal"
    decoder_loss_weighting: str = "none"
    reflow_num_pairs: int = 4096
    reflow_teacher_steps: int = 16
    reflow_time_sampling: str = "uniform"
    seed: int = 0
    encoder: VeltrixStageRecipe = field(default_factory=VeltrixStageRecipe)
    evolver: VeltrixStageRecipe = field(default_factory=VeltrixStageRecipe)
    decoder: VeltrixStageRecipe = field(default_factory=VeltrixStageRecipe)
    reflow: VeltrixStageRecipe = field(default_factory=VeltrixStageRecipe)

    def __post_init__(self) -> None:
        if not isinstance(self.world_options, dict):
            raise ValueError(f"`world_options` must be a dict of world config overrides, got {self.world_options!r}.")
        for name in STAGES:
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, VeltrixStageRecipe(**value))
        if self.context_length + self.rollout_window > self.trajectory_length:
            raise ValueError(
                f"`context_length + rollout_window` ({self.context_length + self.rollout_window}) must be <= "
                f"`trajectory_length` ({self.trajectory_length})."
            )
        if self.context_length < 1 or self.rollout_window < 1:
            raise ValueError(
                f"`context_length` and `rollout_window` must be >= 1, got {self.context_length}, {self.rollout_window}."
            )
        if not 1 <= self.decoder_frames_per_trajectory <= self.trajectory_length:
            raise ValueError(
                f"`decoder_frames_per_trajectory` must be in [1, {self.trajectory_length}], "
                f"got {self.decoder_frames_per_trajectory}."
            )
        for name in ("stability_weight", "time_consistency_weight", "caption_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if self.stability_perturbation <= 0:
            raise ValueError(f"`stability_perturbation` must be > 0, got {self.stability_perturbation}.")

    @classmethod
    def from_json_file(cls, path: str) -> "VeltrixTrainingRecipe":
        with open(path, encoding="utf-8") as handle:
            return cls(**json.load(handle))

    def to_json_file(self, path: str) -> None:
        write_json_atomic(path, asdict(self))


def write_json_atomic(path: str, payload: dict) -> None:
    """Writes JSON to a temporary file next to `path`, then renames it, so no half-written file is left."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)


def save_pretrained_atomic(model, path: str) -> None:
    """`model.save_pretrained` into a temporary folder next to `path`, then renamed to `path`: a folder at `path`
    is always complete (works for transformers and diffusers models and pipelines)."""
    tmp = f"{path}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


MODALITY_COLUMNS = {"text": ("input_ids", "attention_mask"), "audio": ("audio_values",)}


def observed_modalities(encoder: VeltrixEncoderModel, batch: dict) -> dict[str, torch.Tensor]:
    """The caption and audio columns of a world batch (`input_ids`, `attention_mask`, `audio_values`; missing or
    None ones skipped) that `encoder` models: a frames-only encoder ignores a speaking world's extra columns."""
    return {
        column: batch[column]
        for modality, columns in MODALITY_COLUMNS.items()
        if modality in encoder.config.modalities
        for column in columns
        if batch.get(column) is not None
    }


class VeltrixEncoderStage(nn.Module):
    """Encoder + frame readout trained by reconstruction of every frame; a multimodal encoder also learns its caption
    head, audio tokenizer and alignment on the world's captions and audio."""

    def __init__(self, encoder: VeltrixEncoderModel):
        super().__init__()
        self.encoder = encoder

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        audio_values: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        columns = {"input_ids": input_ids, "attention_mask": attention_mask, "audio_values": audio_values}
        observed = observed_modalities(self.encoder, columns)
        return {"loss": self.encoder(pixel_values, **observed, return_loss=True).loss}


class VeltrixEvolverStage(nn.Module):
    """Evolver on the frozen encoder's units: one-step teacher forcing + an open-loop window, latent + pixel."""

    def __init__(self, encoder: VeltrixEncoderModel, evolver: VeltrixEvolverModel, recipe: VeltrixTrainingRecipe):
        super().__init__()
        self.encoder = encoder.requires_grad_(False).eval()
        self.evolver = evolver
        self.recipe = recipe

    def train(self, mode: bool = True) -> "VeltrixEvolverStage":
        super().train(mode)
        self.encoder.eval()
        return self

    def _state_loss(
        self,
        predicted: torch.Tensor,
        target_units: torch.Tensor,
        target_frames: torch.Tensor,
        target_captions: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Latent MSE + pixel MSE of the frozen readout of predicted units (B, T, U, D) vs frames (B, T, C, H, W),
        + with `target_captions` (`input_ids`, `attention_mask` (B, T, L)) the frozen caption head's cross-entropy
        on the predicted text subspace."""
        latent = F.mse_loss(predicted, target_units)
        pixel = F.mse_loss(self.encoder.decode_frames(predicted), target_frames)
        loss = self.recipe.latent_loss_weight * latent + self.recipe.pixel_loss_weight * pixel
        if target_captions is not None and self.recipe.caption_loss_weight:
            loss = loss + self.recipe.caption_loss_weight * self.encoder.caption_loss(predicted, *target_captions)
        return loss

    def forward(
        self,
        pixel_values: torch.Tensor,
        timestamps: torch.Tensor,
        actions: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        audio_values: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """With a multimodal encoder, the units are the fused states of every observed modality, so the evolver
        learns to evolve the caption and audio subspaces with the frames'."""
        recipe = self.recipe
        columns = {"input_ids": input_ids, "attention_mask": attention_mask, "audio_values": audio_values}
        observed = observed_modalities(self.encoder, columns)
        with torch.no_grad():
            units = self.encoder(pixel_values, **observed).units

        def captions(steps: slice) -> tuple[torch.Tensor, torch.Tensor] | None:
            """The observed captions of `steps`, targets of the predicted text subspace (None without text)."""
            if "input_ids" not in observed:
                return None
            return observed["input_ids"][:, steps], observed["attention_mask"][:, steps]

        teacher = self.evolver(units, timestamps=timestamps, actions=actions).predicted_units
        teacher_loss = self._state_loss(teacher[:, :-1], units[:, 1:], pixel_values[:, 1:], captions(slice(1, None)))

        context, window = recipe.context_length, recipe.rollout_window
        start = int(torch.randint(0, units.shape[1] - context - window + 1, ()))
        end = start + context + window
        rollout = self.evolver.rollout(
            units[:, start : start + context],
            window,
            conditions=actions[:, start:end],
            timestamps=timestamps[:, start:end],
        )
        future = slice(start + context, end)
        open_loop_loss = self._state_loss(rollout.units, units[:, future], pixel_values[:, future], captions(future))
        loss = recipe.teacher_forcing_weight * teacher_loss + recipe.open_loop_weight * open_loop_loss
        if recipe.stability_weight:
            penalty = lyapunov_penalty(
                self.evolver,
                units[:, start : start + context],
                rollout.units,
                conditions=actions[:, start:end],
                timestamps=timestamps[:, start:end],
                perturbation=recipe.stability_perturbation,
            )
            loss = loss + recipe.stability_weight * penalty
        if recipe.time_consistency_weight:
            midpoints = midpoint_rollout(
                self.evolver,
                units[:, start : start + context],
                window,
                conditions=actions[:, start:end],
                timestamps=timestamps[:, start:end],
            )
            consistency = self._state_loss(midpoints, units[:, future], pixel_values[:, future], captions(future))
            loss = loss + recipe.time_consistency_weight * consistency
        return {"loss": loss}


class VeltrixReflowStage(nn.Module):
    """Reflow (Liu et al. 2022): flow matching on (noise, teacher sample) pairs straightens the decoder's paths,
    so that a few Euler steps (down to one) land where many did."""

    def __init__(self, decoder: VeltrixDecoderModel, recipe: VeltrixTrainingRecipe):
        super().__init__()
        self.decoder = decoder
        self.recipe = recipe

    def forward(
        self,
        noise: torch.Tensor,
        pixel_values: torch.Tensor,
        units: torch.Tensor,
        previous_frame: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        loss = flow_matching_loss(
            self.decoder,
            pixel_values,
            units,
            noise=noise,
            time_sampling=self.recipe.reflow_time_sampling,
            previous_frame=previous_frame,
        )
        return {"loss": loss}


@torch.no_grad()
def build_reflow_pairs(
    pipeline: VeltrixPipeline, train_dataset: datasets.Dataset, recipe: VeltrixTrainingRecipe, batch_size: int = 256
) -> datasets.Dataset:
    """`recipe.reflow_num_pairs` (noise, teacher sample, units) triples: frames drawn from `train_dataset` (torch
    format) are encoded, and the current decoder samples each from its own noise with
    `recipe.reflow_teacher_steps` Euler steps. `units (N, U, d)` are the frame subspace of the states, which is what
    the decoder reads. Deterministic for `recipe.seed`."""
    generator = torch.Generator().manual_seed(recipe.seed)
    temporal = pipeline.decoder.config.temporal_context
    first = 1 if temporal else 0  # a temporal decoder needs a previous frame
    num_trajectories, span = len(train_dataset), recipe.trajectory_length - first
    picks = torch.randperm(num_trajectories * span, generator=generator)[: recipe.reflow_num_pairs]
    pipeline.set_progress_bar_config(disable=True)
    columns = {"noise": [], "pixel_values": [], "units": []} | ({"previous_frame": []} if temporal else {})
    for start in tqdm(range(0, len(picks), batch_size), desc="reflow pairs"):
        chunk = picks[start : start + batch_size]
        trajectories, steps = (chunk // span).tolist(), chunk % span + first
        trajectory_frames = train_dataset[trajectories]["pixel_values"]  # (N, T, C, H, W)
        rows = torch.arange(len(chunk))
        frames = trajectory_frames[rows, steps]  # (N, C, H, W)
        previous = trajectory_frames[rows, steps - 1] if temporal else None
        units = pipeline.encoder(frames[:, None]).units[:, 0]  # (N, U, D)
        noise = pipeline.prepare_latents(len(chunk), units.dtype, units.device, generator)
        samples = pipeline.decode_units(units, recipe.reflow_teacher_steps, latents=noise, previous_frame=previous)
        columns["noise"].append(noise)
        columns["pixel_values"].append(samples)
        columns["units"].append(pipeline.encoder.frame_subspace(units))  # what the decoder reads
        if temporal:
            columns["previous_frame"].append(previous)
    arrays = {name: torch.cat(values).cpu().numpy() for name, values in columns.items()}
    features = datasets.Features(
        {name: datasets.Array3D(array.shape[1:], "float32") for name, array in arrays.items() if name != "units"}
        | {"units": datasets.Array2D(arrays["units"].shape[1:], "float32")}
    )
    return datasets.Dataset.from_dict(arrays, features=features).with_format("torch")


class VeltrixDecoderStage(nn.Module):
    """Flow-matching decoder of frames conditioned on the frozen encoder's units of the same step."""

    def __init__(self, encoder: VeltrixEncoderModel, decoder: VeltrixDecoderModel, recipe: VeltrixTrainingRecipe):
        super().__init__()
        self.encoder = encoder.requires_grad_(False).eval()
        self.decoder = decoder
        self.recipe = recipe

    def train(self, mode: bool = True) -> "VeltrixDecoderStage":
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        b, t = pixel_values.shape[:2]
        temporal = self.decoder.config.temporal_context
        first = 1 if temporal else 0  # a temporal decoder needs a previous frame
        k = min(self.recipe.decoder_frames_per_trajectory, t - first)
        picks = first + torch.rand(b, t - first).argsort(dim=1)[:, :k]  # (B, k) distinct steps
        rows = torch.arange(b)[:, None]
        frames = pixel_values[rows, picks]  # (B, k, C, H, W)
        previous = pixel_values[rows, picks - 1].flatten(0, 1) if temporal else None
        with torch.no_grad():
            units = self.encoder.frame_subspace(self.encoder(frames).units)  # the decoder reads the frame subspace
        loss = flow_matching_loss(
            self.decoder,
            frames.flatten(0, 1),
            units.flatten(0, 1),
            time_sampling=self.recipe.decoder_time_sampling,
            previous_frame=previous,
            loss_weighting=self.recipe.decoder_loss_weighting,
        )
        return {"loss": loss}


def world_action_dim(recipe: VeltrixTrainingRecipe) -> int:
    """Width of the actions of the recipe's world."""
    return world_metadata(recipe.world).action_dim


def build_datasets(recipe: VeltrixTrainingRecipe) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The recipe's world as (train, held-out) `datasets.Dataset`s in torch format; held-out uses another seed."""
    common = {"world": recipe.world, "num_steps": recipe.trajectory_length, **recipe.world_options}
    train = build_world_dataset(num_trajectories=recipe.num_train_trajectories, seed=recipe.train_seed, **common)
    held_out = build_world_dataset(num_trajectories=recipe.num_eval_trajectories, seed=recipe.eval_seed, **common)
    return train.with_format("torch"), held_out.with_format("torch")


def load_or_create_models(
    model_dir: str, output_dir: str, action_dim: int | None = None
) -> tuple[VeltrixEncoderModel, VeltrixEvolverModel, VeltrixDecoderModel]:
    """Loads each component trained already in `output_dir`, else creates it from the preset folder `model_dir`
    (`<model_dir>/{encoder,evolver,decoder}/config.json`); `action_dim` overrides the preset's action width
    (a world's actions decide it)."""
    overrides = {} if action_dim is None else {"action_dim": action_dim}

    def trained(component: str) -> str | None:
        path = os.path.join(output_dir, component)
        return path if os.path.isdir(path) else None

    encoder_path, evolver_path = trained("encoder"), trained("evolver")
    decoder_path = trained("reflow") or trained("decoder")
    encoder = (
        VeltrixEncoderModel.from_pretrained(encoder_path)
        if encoder_path
        else VeltrixEncoderModel(VeltrixEncoderConfig.from_pretrained(os.path.join(model_dir, "encoder"), **overrides))
    )
    evolver = (
        VeltrixEvolverModel.from_pretrained(evolver_path)
        if evolver_path
        else VeltrixEvolverModel(VeltrixEvolverConfig.from_pretrained(os.path.join(model_dir, "evolver"), **overrides))
    )
    decoder = (
        VeltrixDecoderModel.from_pretrained(decoder_path)
        if decoder_path
        else VeltrixDecoderModel.from_config(VeltrixDecoderModel.load_config(os.path.join(model_dir, "decoder")))
    )
    check_compatible(encoder, evolver, decoder)
    return encoder, evolver, decoder


def check_compatible(encoder: VeltrixEncoderModel, evolver: VeltrixEvolverModel, decoder: VeltrixDecoderModel) -> None:
    """The three components must agree on unit count and width, action width and frame format."""
    enc, evo, dec = encoder.config, evolver.config, decoder.config
    pairs = [
        ("evolver.num_units", evo.num_units, "encoder.num_units_per_step", enc.num_units_per_step),
        ("evolver.unit_dim", evo.unit_dim, "encoder.unit_dim", enc.unit_dim),
        ("evolver.action_dim", evo.action_dim, "encoder.action_dim", enc.action_dim),
        ("decoder.cross_attention_dim", dec.cross_attention_dim, "encoder.frame_unit_dim", enc.frame_unit_dim),
        ("decoder.sample_size", dec.sample_size, "encoder.image_size", enc.image_size),
        ("decoder.in_channels", dec.in_channels, "encoder.num_channels", enc.num_channels),
    ]
    for name, value, other, expected in pairs:
        if value != expected:
            raise ValueError(f"`{name}` must equal `{other}` ({expected}), got {value}.")
    if dec.max_context_units < enc.num_units_per_step:
        raise ValueError(
            f"`decoder.max_context_units` must be >= `encoder.num_units_per_step` ({enc.num_units_per_step}), "
            f"got {dec.max_context_units}."
        )


def train_stage(
    stage: str,
    models: tuple[VeltrixEncoderModel, VeltrixEvolverModel, VeltrixDecoderModel],
    train_dataset: datasets.Dataset,
    recipe: VeltrixTrainingRecipe,
    output_dir: str,
    resume: bool = True,
) -> dict[str, float]:
    """Trains one stage with `transformers.Trainer` and saves the trained component to `<output_dir>/<stage>`.

    `train_dataset` holds trajectories, or for `reflow` the pairs of `build_reflow_pairs`.

    Checkpoints go to `<output_dir>/checkpoints/<stage>`; with `resume=True` training continues from the last one.
    Returns the Trainer's training metrics.
    """
    if stage not in STAGES:
        raise ValueError(f"`stage` must be one of {STAGES}, got {stage!r}.")
    encoder, evolver, decoder = models
    module = {
        "encoder": lambda: VeltrixEncoderStage(encoder),
        "evolver": lambda: VeltrixEvolverStage(encoder, evolver, recipe),
        "decoder": lambda: VeltrixDecoderStage(encoder, decoder, recipe),
        "reflow": lambda: VeltrixReflowStage(decoder, recipe),
    }[stage]()
    stage_recipe: VeltrixStageRecipe = getattr(recipe, stage)
    checkpoint_dir = os.path.join(output_dir, "checkpoints", stage)
    args = TrainingArguments(
        output_dir=checkpoint_dir,
        max_steps=stage_recipe.max_steps,
        per_device_train_batch_size=stage_recipe.batch_size,
        learning_rate=stage_recipe.learning_rate,
        weight_decay=stage_recipe.weight_decay,
        warmup_steps=stage_recipe.warmup_steps,
        lr_scheduler_type="cosine",
        logging_steps=max(1, stage_recipe.max_steps // 20),
        save_steps=stage_recipe.save_steps,
        save_total_limit=1,
        report_to=[],
        seed=recipe.seed,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=module, args=args, train_dataset=train_dataset)
    last = get_last_checkpoint(checkpoint_dir) if resume and os.path.isdir(checkpoint_dir) else None
    result = trainer.train(resume_from_checkpoint=last)
    component = {"encoder": encoder, "evolver": evolver, "decoder": decoder}[STAGE_COMPONENT[stage]]
    if trainer.is_world_process_zero():
        save_pretrained_atomic(component, os.path.join(output_dir, stage))
    return result.metrics


def assemble_pipeline(
    models: tuple[VeltrixEncoderModel, VeltrixEvolverModel, VeltrixDecoderModel], preset_dir: str
) -> VeltrixPipeline:
    """The trained components + the preset's scheduler as a `VeltrixPipeline` in eval mode."""
    encoder, evolver, decoder = (model.eval() for model in models)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(preset_dir, subfolder="scheduler")
    return VeltrixPipeline(encoder=encoder, evolver=evolver, decoder=decoder, scheduler=scheduler)


def train_stages(
    stages: tuple[str, ...],
    models: tuple[VeltrixEncoderModel, VeltrixEvolverModel, VeltrixDecoderModel],
    preset_dir: str,
    train_dataset: datasets.Dataset,
    recipe: VeltrixTrainingRecipe,
    output_dir: str,
    skip_finished: bool = False,
    resume: bool = True,
) -> None:
    """Trains `stages` in order (building the reflow pairs when `reflow` comes); with `skip_finished`, a stage
    whose folder `<output_dir>/<stage>` exists is not trained again."""
    for stage in stages:
        if skip_finished and os.path.isdir(os.path.join(output_dir, stage)):
            print(f"[veltrix] stage {stage}: already trained, loaded from {os.path.join(output_dir, stage)}")
            continue
        data = (
            build_reflow_pairs(assemble_pipeline(models, preset_dir), train_dataset, recipe)
            if stage == "reflow"
            else train_dataset
        )
        print(f"[veltrix] stage {stage}: training {getattr(recipe, stage).max_steps} steps")
        metrics = train_stage(stage, models, data, recipe, output_dir, resume=resume)
        print(f"[veltrix] stage {stage} finished: train_loss={metrics['train_loss']:.5g}")
