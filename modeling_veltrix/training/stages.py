"""The `nn.Module` of each training stage: it owns the models it trains and returns the stage's loss to `Trainer`."""

from typing import Protocol

import datasets
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..modeling_veltrix_decoder import VeltrixDecoderModel, flow_matching_loss
from ..modeling_veltrix_encoder import VeltrixEncoderModel
from ..modeling_veltrix_evolver import lyapunov_penalty, midpoint_rollout
from ..pipeline_veltrix import VeltrixPipeline
from .physics import VeltrixPhysicsProbe, physics_conservation_loss
from .recipe import VeltrixTrainingRecipe

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


class VeltrixPredictor(Protocol):
    """What the evolver stage trains: `VeltrixEvolverModel`, or a baseline predictor with the same interface
    (`forward(units, timestamps=, actions=).predicted_units` (B, T, U, D) and
    `rollout(context, num_steps, actions=, timestamps=).units` (B, K, U, D)), an `nn.Module`."""

    def __call__(self, units: torch.Tensor, timestamps: torch.Tensor, actions: torch.Tensor): ...

    def rollout(self, context: torch.Tensor, num_steps: int, actions: torch.Tensor, timestamps: torch.Tensor): ...


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


class VeltrixFrozenEncoderStage(nn.Module):
    """A stage that trains on the units of a frozen encoder: the encoder gets no gradients and stays in eval mode
    (no nested dropout) whatever `Trainer` sets."""

    def __init__(self, encoder: VeltrixEncoderModel, recipe: VeltrixTrainingRecipe):
        super().__init__()
        self.encoder = encoder.requires_grad_(False).eval()
        self.recipe = recipe

    def train(self, mode: bool = True) -> "VeltrixFrozenEncoderStage":
        super().train(mode)
        self.encoder.eval()
        return self


class VeltrixEvolverStage(VeltrixFrozenEncoderStage):
    """Evolver on the frozen encoder's units: one-step teacher forcing + an open-loop window, latent + pixel.

    `evolver` is any `VeltrixPredictor` (the evolver or an equal-size baseline); only its `forward` and `rollout`
    are called. With `recipe.physics_loss_weight > 0`, the frozen physics `probe` (required) adds
    `physics_conservation_loss` on the open-loop window against the last context state. An evolver with a stochastic
    head (`can_sample`) also learns it, weighted by `recipe.sampling_loss_weight`: flow matching of the true next
    state from the teacher-forced steps and from the open-loop window's steps (fed its own mean predictions), whose
    change scale `fit_change_scale` sets from the data first."""

    # The recipe field that weighs the physics term (`VeltrixJointStage` has its own).
    physics_weight_field = "physics_loss_weight"

    def __init__(
        self,
        encoder: VeltrixEncoderModel,
        evolver: VeltrixPredictor,
        recipe: VeltrixTrainingRecipe,
        probe: VeltrixPhysicsProbe | None = None,
    ):
        super().__init__(encoder, recipe)
        self.evolver = evolver
        name = self.physics_weight_field
        self.physics_weight = getattr(recipe, name)
        if self.physics_weight and probe is None:
            raise ValueError(
                f"`{name}` is {self.physics_weight}, which needs a physics probe: pass `probe` "
                f"(`training.physics.load_or_train_probe`) or set `{name}` to 0."
            )
        self.probe = None if probe is None else probe.requires_grad_(False).eval()
        self.sampling_weight = recipe.sampling_loss_weight if getattr(evolver, "can_sample", False) else 0.0

    @torch.no_grad()
    def fit_change_scale(self, dataset: datasets.Dataset, num_trajectories: int = 64, batch_size: int = 16) -> None:
        """Sets the stochastic head's `change_scale` (D,) to the root-mean-square per channel of the encoded state's
        change per reference interval over the first `num_trajectories` trajectories of `dataset` (torch format),
        so that the flow works on changes of unit scale (deterministic: the same data give the same scale)."""
        count = min(num_trajectories, len(dataset))
        squares, steps = 0.0, 0
        reference = self.evolver.config.dt_reference
        for start in range(0, count, batch_size):
            batch = dataset[start : min(start + batch_size, count)]
            observed = observed_modalities(self.encoder, batch)
            units = self.encoder(batch["pixel_values"], **observed).units
            intervals = (batch["timestamps"].diff(dim=1) / reference).to(units.dtype)
            change = units.diff(dim=1) / intervals[..., None, None]
            squares = squares + change.pow(2).sum(dim=(0, 1, 2))
            steps += change.shape[0] * change.shape[1] * change.shape[2]
        scale = (squares / steps).sqrt().clamp_min(1e-6)
        self.evolver.sampling_head.change_scale.copy_(scale)

    def train(self, mode: bool = True) -> "VeltrixEvolverStage":
        super().train(mode)
        if self.probe is not None:
            self.probe.eval()
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
        actions: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        audio_values: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """With a multimodal encoder, the units are the fused states of every observed modality, so the evolver
        learns to evolve the caption and audio subspaces with the frames'."""
        columns = {"input_ids": input_ids, "attention_mask": attention_mask, "audio_values": audio_values}
        observed = observed_modalities(self.encoder, columns)
        with torch.no_grad():
            units = self.encoder(pixel_values, **observed).units
        return {"loss": self.trajectory_loss(units, pixel_values, timestamps, actions, observed)}

    def trajectory_loss(
        self,
        units: torch.Tensor,
        pixel_values: torch.Tensor,
        timestamps: torch.Tensor,
        actions: torch.Tensor | None,
        observed: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """`L_traj` (+ `physics_weight · L_phys`) of the encoded trajectories `units (B, T, U, D)`: teacher forcing
        over every step and an open-loop window from a random start, with the recipe's optional terms. The target
        states are `units.detach()` (with a trainable encoder, the latent targets must not pull it to collapse).
        `actions (B, T, A)` may be None (frames-only data): the evolver's null condition then drives every step."""
        recipe = self.recipe
        targets = units.detach()

        def acted(steps: slice) -> torch.Tensor | None:
            """The actions of `steps`, or None without actions."""
            return None if actions is None else actions[:, steps]

        def captions(steps: slice) -> tuple[torch.Tensor, torch.Tensor] | None:
            """The observed captions of `steps`, targets of the predicted text subspace (None without text)."""
            if "input_ids" not in observed:
                return None
            return observed["input_ids"][:, steps], observed["attention_mask"][:, steps]

        sampling_loss = 0.0
        if self.sampling_weight:
            teacher_output = self.evolver(
                units[:, :-1],
                timestamps=timestamps[:, :-1],
                actions=acted(slice(None, -1)),
                prediction_timestamps=timestamps[:, 1:],
                sampling_targets=targets[:, 1:],
            )
            teacher, sampling_loss = teacher_output.predicted_units, teacher_output.sampling_loss
        else:
            teacher = self.evolver(units, timestamps=timestamps, actions=actions).predicted_units[:, :-1]
        teacher_loss = self._state_loss(teacher, targets[:, 1:], pixel_values[:, 1:], captions(slice(1, None)))

        context, window = recipe.context_length, recipe.rollout_window
        start = int(torch.randint(0, units.shape[1] - context - window + 1, ()))
        end = start + context + window
        rollout = self.evolver.rollout(
            units[:, start : start + context],
            window,
            actions=acted(slice(start, end)),
            timestamps=timestamps[:, start:end],
        )
        future = slice(start + context, end)
        open_loop_loss = self._state_loss(rollout.units, targets[:, future], pixel_values[:, future], captions(future))
        loss = recipe.teacher_forcing_weight * teacher_loss + recipe.open_loop_weight * open_loop_loss
        if self.sampling_weight:
            # The window's steps fed the evolver's own (mean) predictions, as a sampled rollout feeds its samples.
            fed = torch.cat([units[:, start : start + context], rollout.units[:, :-1].detach()], dim=1)
            open_loop_sampling = self.evolver(
                fed,
                timestamps=timestamps[:, start : end - 1],
                actions=acted(slice(start, end - 1)),
                prediction_timestamps=timestamps[:, start + 1 : end],
                sampling_targets=targets[:, start + 1 : end],
            ).sampling_loss
            loss = loss + self.sampling_weight * (sampling_loss + open_loop_sampling)
        if recipe.stability_weight:
            penalty = lyapunov_penalty(
                self.evolver,
                units[:, start : start + context],
                rollout.units,
                actions=acted(slice(start, end)),
                timestamps=timestamps[:, start:end],
                perturbation=recipe.stability_perturbation,
            )
            loss = loss + recipe.stability_weight * penalty
        if recipe.time_consistency_weight:
            midpoints = midpoint_rollout(
                self.evolver,
                units[:, start : start + context],
                window,
                actions=acted(slice(start, end)),
                timestamps=timestamps[:, start:end],
            )
            consistency = self._state_loss(midpoints, targets[:, future], pixel_values[:, future], captions(future))
            loss = loss + recipe.time_consistency_weight * consistency
        if self.physics_weight:
            reference = targets[:, start + context - 2 : start + context]  # the last two context states
            # The impulses that reach the window: the action at step t first shows at t + 1, so those of the last
            # context step to the step before the last predicted one.
            impulses = acted(slice(start + context - 1, end - 1))
            physics = physics_conservation_loss(self.probe, rollout.units, reference, impulses)
            loss = loss + self.physics_weight * physics
        return loss


class VeltrixJointStage(VeltrixEvolverStage):
    """The optional joint fine-tune (DESIGN §9): encoder and evolver trained together on

        L = L_traj + λ1·L_align + λ2·L_phys + λ3·L_recon

    `L_traj` is the evolver stage's loss (`trajectory_loss`, its recipe weights) with gradients reaching the encoder
    through the evolver's inputs and the frame readout (the latent targets are detached); `L_align` the encoder's
    `loss_terms["align"]` when it fuses several modalities (else 0); `L_phys` `physics_conservation_loss` with the
    frozen `probe` (required when `λ2 > 0`); `L_recon` the encoder's frame reconstruction MSE. λ1, λ2, λ3 are
    `recipe.joint_align_weight`, `joint_physics_weight`, `joint_reconstruction_weight`."""

    physics_weight_field = "joint_physics_weight"

    def __init__(
        self,
        encoder: VeltrixEncoderModel,
        evolver: VeltrixPredictor,
        recipe: VeltrixTrainingRecipe,
        probe: VeltrixPhysicsProbe | None = None,
    ):
        super().__init__(encoder, evolver, recipe, probe)
        self.encoder.requires_grad_(True)

    def train(self, mode: bool = True) -> "VeltrixJointStage":
        nn.Module.train(self, mode)  # the encoder trains too (the frozen stages keep it in eval mode)
        if self.probe is not None:
            self.probe.eval()
        return self

    def forward(
        self,
        pixel_values: torch.Tensor,
        timestamps: torch.Tensor,
        actions: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        audio_values: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        recipe = self.recipe
        columns = {"input_ids": input_ids, "attention_mask": attention_mask, "audio_values": audio_values}
        observed = observed_modalities(self.encoder, columns)
        encoded = self.encoder(pixel_values, **observed, return_loss=True)
        terms = encoded.loss_terms or {}
        reconstruction = terms.get("frames", encoded.loss)
        loss = self.trajectory_loss(encoded.units, pixel_values, timestamps, actions, observed)
        loss = loss + recipe.joint_reconstruction_weight * reconstruction
        if "align" in terms and recipe.joint_align_weight:
            loss = loss + recipe.joint_align_weight * terms["align"]
        return {"loss": loss}


class VeltrixProbeStage(VeltrixFrozenEncoderStage):
    """The physics probe on the frozen encoder's units of every step after the first, each with the step before it:
    normalised MSE against the dataset's `physics` column restricted to the world's `probe_fields`. With a
    multimodal encoder the units are the fused states of every observed modality, as the evolver sees them."""

    def __init__(self, encoder: VeltrixEncoderModel, probe: VeltrixPhysicsProbe, recipe: VeltrixTrainingRecipe):
        super().__init__(encoder, recipe)
        self.probe = probe
        self.register_buffer("field_index", torch.tensor(probe.world.probe_indices), persistent=False)

    def forward(
        self,
        pixel_values: torch.Tensor,
        physics: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        audio_values: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        columns = {"input_ids": input_ids, "attention_mask": attention_mask, "audio_values": audio_values}
        with torch.no_grad():
            units = self.encoder(pixel_values, **observed_modalities(self.encoder, columns)).units  # (B, T, U, D)
        pairs = torch.stack([units[:, :-1], units[:, 1:]], dim=2)  # (B, T - 1, 2, U, D): each step after its previous
        prediction = self.probe.normalized(pairs)  # (B, T - 1, P)
        mean, std = self.probe.field_statistics(prediction)
        target = (physics[:, 1:, self.field_index].to(prediction.dtype) - mean) / std
        return {"loss": F.mse_loss(prediction, target)}


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


class VeltrixDecoderStage(VeltrixFrozenEncoderStage):
    """Flow-matching decoder of frames conditioned on the frozen encoder's units of the same step."""

    def __init__(self, encoder: VeltrixEncoderModel, decoder: VeltrixDecoderModel, recipe: VeltrixTrainingRecipe):
        super().__init__(encoder, recipe)
        self.decoder = decoder

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
