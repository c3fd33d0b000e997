"""Physics probe and the energy-conservation term `L_phys` (DESIGN §9).

A `VeltrixPhysicsProbe` is a small MLP that reads a world's physical state (`World.probe_fields`: positions and
velocities or momenta) at a step from the units of that step and the step before: one frame shows where things are,
not how fast they move, and the encoder encodes frames one at a time. It is trained by the `probe` stage on the
frozen encoder's units against the dataset's `physics` column. Through the world's `energy`, it gives the energy of
any pair of consecutive states of the model, encoded or predicted, so that

    L_phys = mean_k ((E(probe(S_pred_{k-1}, S_pred_k)) - E(probe(S_ref))) / energy_scale)²

measures how far an open-loop rollout drifts from the energy of its last observed state (`S_ref`, the last two context
states; `S_pred_{-1}` is the last context state). Impulses change the energy, so only trajectories with no non-zero
action in the window count. The probe is frozen in `L_phys`: gradients reach the predicted units only.

    >>> probe = load_or_train_probe(encoder, train_dataset, recipe, output_dir)  # <output_dir>/probe
    >>> train_stage("evolver", models, train_dataset, recipe, output_dir, probe=probe)  # physics_loss_weight > 0
"""

import logging
import math
import os

import datasets
import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from ..modeling_veltrix_encoder import VeltrixEncoderModel
from ..worlds import get_world
from ..worlds.dataset import WORLDS
from .checkpoints import seed_everything
from .recipe import VeltrixTrainingRecipe

logger = logging.getLogger(__name__)

PROBE_FOLDER = "probe"


@strict
class VeltrixPhysicsProbeConfig(PreTrainedConfig):
    r"""
    Configuration of [`VeltrixPhysicsProbe`], which reads a world's physical state at a step from the units of that
    step and the one before.

    Args:
        num_units_per_step (`int`, *optional*, defaults to 16):
            Units `U` per step of the states it reads.
        unit_dim (`int`, *optional*, defaults to 64):
            Width `D` of each unit.
        hidden_size (`int`, *optional*, defaults to 128):
            Width of the MLP's hidden layer.
        world (`str`, *optional*, defaults to `"pendulum"`):
            Name of the built-in world whose `probe_fields` it predicts and whose `energy` it computes.
        world_options (`dict`, *optional*):
            Overrides of the world's config (its `energy` depends on them, e.g. the pendulum's `rod_length`).
        probe_fields (`list[str]`, *optional*):
            The predicted fields, which must be the world's `probe_fields` (the default).
        field_mean (`list[float]`, *optional*, defaults to zeros):
            Mean of each field in the training data; the MLP predicts `(field - field_mean) / field_std`.
        field_std (`list[float]`, *optional*, defaults to ones):
            Standard deviation (> 0) of each field in the training data.
        energy_scale (`float`, *optional*, defaults to 1.0):
            Mean absolute energy of the training data (> 0), the unit of `physics_conservation_loss`.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the linear layers.

    >>> config = VeltrixPhysicsProbeConfig(num_units_per_step=16, unit_dim=8, world="pendulum")
    >>> probe = VeltrixPhysicsProbe(config)
    """

    model_type = "veltrix_physics_probe"

    num_units_per_step: int = 16
    unit_dim: int = 64
    hidden_size: int = 128
    world: str = "pendulum"
    world_options: dict | None = None
    probe_fields: list[str] | tuple[str, ...] | None = None
    field_mean: list[float] | tuple[float, ...] | None = None
    field_std: list[float] | tuple[float, ...] | None = None
    energy_scale: float = 1.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        for name in ("num_units_per_step", "unit_dim", "hidden_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        if self.world not in WORLDS:
            raise ValueError(f"`world` must be one of {sorted(WORLDS)}, got {self.world!r}.")
        self.world_options = dict(self.world_options or {})
        try:
            fields = tuple(get_world(self.world, **self.world_options).probe_fields)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"`world_options` {self.world_options!r} do not fit world {self.world!r}: {error}"
            ) from None
        if self.probe_fields is None:
            self.probe_fields = list(fields)
        if tuple(self.probe_fields) != fields:
            raise ValueError(
                f"`probe_fields` must be the probe fields of world {self.world!r}, {list(fields)}, got "
                f"{list(self.probe_fields)}."
            )
        self.probe_fields = list(self.probe_fields)
        size = len(fields)
        for name, default, positive in (("field_mean", 0.0, False), ("field_std", 1.0, True)):
            values = getattr(self, name)
            values = [default] * size if values is None else list(values)
            finite = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
            if len(values) != size or not finite or (positive and min(values) <= 0):
                raise ValueError(
                    f"`{name}` must be {size} finite numbers{' > 0' if positive else ''} (one per probe field), "
                    f"got {values!r}."
                )
            setattr(self, name, [float(v) for v in values])
        for name in ("energy_scale", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
        super().__post_init__(**kwargs)


class VeltrixPhysicsProbePreTrainedModel(PreTrainedModel):
    config_class = VeltrixPhysicsProbeConfig
    base_model_prefix = "probe"
    main_input_name = "units"
    _no_split_modules = []


class VeltrixPhysicsProbe(VeltrixPhysicsProbePreTrainedModel):
    """An MLP on the flattened units of two consecutive steps: `(..., 2, U, D)` (the step before, then the step) →
    the world's `probe_fields` `(..., P)` at the step, in world units (de-normalised with the training data's
    `field_mean` / `field_std`)."""

    def __init__(self, config: VeltrixPhysicsProbeConfig):
        super().__init__(config)
        size = len(config.probe_fields)
        self.mlp = nn.Sequential(
            nn.Linear(2 * config.num_units_per_step * config.unit_dim, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, size),
        )
        self.world = get_world(config.world, **config.world_options)
        self.post_init()

    def field_statistics(self, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`field_mean`, `field_std` as tensors on `reference`'s device and dtype (from the config, so that no
        buffer needs loading)."""
        mean = torch.tensor(self.config.field_mean, device=reference.device, dtype=reference.dtype)
        std = torch.tensor(self.config.field_std, device=reference.device, dtype=reference.dtype)
        return mean, std

    def normalized(self, pairs: torch.Tensor) -> torch.Tensor:
        """The normalised prediction `(field - field_mean) / field_std`, `(..., 2, U, D)` → `(..., P)`."""
        expected = (2, self.config.num_units_per_step, self.config.unit_dim)
        if tuple(pairs.shape[-3:]) != expected:
            raise ValueError(
                f"`pairs` must have shape (..., 2, {expected[1]}, {expected[2]}) (the step before, then the step), "
                f"got {tuple(pairs.shape)}."
            )
        return self.mlp(pairs.flatten(-3))  # (..., 2 * U * D) → (..., P)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        """`(..., 2, U, D)` units of a step and the one before → `(..., P)` physical state at the step in world
        units, laid out as `config.probe_fields`."""
        prediction = self.normalized(pairs)
        mean, std = self.field_statistics(prediction)
        return prediction * std + mean

    def energy(self, pairs: torch.Tensor) -> torch.Tensor:
        """`(..., 2, U, D)` → `(...,)`: the world's energy of the probed state."""
        return self.world.energy(self(pairs))

    def trajectory_energy(self, units: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Units `(B, K, U, D)` of K consecutive steps and the units `(B, U, D)` of the step before them →
        `(B, K)`: the probed energy at every step."""
        return self.energy(consecutive_pairs(units, previous))


def consecutive_pairs(units: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Units `(B, K, U, D)` and the step before them `(B, U, D)` → `(B, K, 2, U, D)`: each step after the one
    before it."""
    if units.ndim != 4 or tuple(previous.shape) != (units.shape[0], *units.shape[2:]):
        raise ValueError(
            f"`units` must be (B, K, U, D) and `previous` (B, U, D), got {tuple(units.shape)} and "
            f"{tuple(previous.shape)}."
        )
    before = torch.cat([previous[:, None], units[:, :-1]], dim=1)
    return torch.stack([before, units], dim=2)


def physics_conservation_loss(
    probe: VeltrixPhysicsProbe,
    predicted_units: torch.Tensor,
    reference_units: torch.Tensor,
    actions: torch.Tensor | None = None,
) -> torch.Tensor:
    """`mean_k ((E(pred_{k-1}, pred_k) - E(ref)) / energy_scale)²` over the trajectories whose window has no impulse.

    Args:
        probe: the frozen physics probe (no gradient reaches its weights).
        predicted_units: `(B, K, U, D)` the predicted states of the window.
        reference_units: `(B, 2, U, D)` the last two context states: their energy is the one the window should keep,
            and the last is the step before the first predicted one.
        actions: `(B, K, A)` the window's actions, or None (no impulses); a trajectory with any non-zero action
            does not count.

    Returns:
        A scalar: the mean over the counted trajectories and steps; 0 (still attached to `predicted_units`'s graph)
        when none counts.
    """
    if (
        predicted_units.ndim != 4
        or reference_units.shape != predicted_units[:, :2].shape[:1] + (2,) + predicted_units.shape[2:]
    ):
        raise ValueError(
            "`predicted_units` must be (B, K, U, D) and `reference_units` (B, 2, U, D), got "
            f"{tuple(predicted_units.shape)} and {tuple(reference_units.shape)}."
        )
    if actions is not None and tuple(actions.shape[:2]) != tuple(predicted_units.shape[:2]):
        raise ValueError(
            f"`actions` must be (B, K, A) = {tuple(predicted_units.shape[:2])} + (A,), got {tuple(actions.shape)}."
        )
    # Freeze the probe without touching its `requires_grad` flags: use its parameters as detached constants.
    params = {name: value.detach() for name, value in probe.named_parameters()}
    pairs = consecutive_pairs(predicted_units, reference_units[:, 1].detach())  # (B, K, 2, U, D); a target
    predicted = probe.world.energy(torch.func.functional_call(probe, params, (pairs,)))  # (B, K)
    with torch.no_grad():
        reference = probe.energy(reference_units)  # (B,)
    drift = ((predicted - reference[:, None]) / probe.config.energy_scale) ** 2  # (B, K)
    if actions is None:
        return drift.mean()
    quiet = (actions == 0).flatten(1).all(dim=1).to(drift.dtype)  # (B,) 1 where no impulse in the window
    return (drift * quiet[:, None]).sum() / (quiet.sum() * drift.shape[1]).clamp(min=1)


def probe_statistics(train_dataset: datasets.Dataset, world: str, world_options: dict) -> dict:
    """`field_mean`, `field_std` of the world's `probe_fields` and `energy_scale` (mean |energy|) over every step
    of `train_dataset`'s `physics` column."""
    world_model = get_world(world, **world_options)
    physics = torch.as_tensor(train_dataset.with_format("torch")[:]["physics"], dtype=torch.float64)
    fields = physics[..., list(world_model.probe_indices)].flatten(0, -2)  # (N * T, P)
    energy = world_model.energy(fields).abs().mean()
    std = fields.std(dim=0).clamp(min=1e-6)
    return {
        "field_mean": fields.mean(dim=0).tolist(),
        "field_std": std.tolist(),
        "energy_scale": max(float(energy), 1e-6),
    }


def create_probe(
    encoder: VeltrixEncoderModel, train_dataset: datasets.Dataset, recipe: VeltrixTrainingRecipe
) -> VeltrixPhysicsProbe:
    """An untrained probe for `encoder`'s units and the recipe's world, normalised by `train_dataset`, initialised
    under `derive_seed(recipe.seed, "init/probe")`."""
    seed_everything(recipe.seed, "init/probe")
    config = VeltrixPhysicsProbeConfig(
        num_units_per_step=encoder.config.num_units_per_step,
        unit_dim=encoder.config.unit_dim,
        hidden_size=recipe.probe_hidden_size,
        world=recipe.world,
        world_options=dict(recipe.world_options),
        **probe_statistics(train_dataset, recipe.world, recipe.world_options),
    )
    return VeltrixPhysicsProbe(config)


def load_or_train_probe(
    encoder: VeltrixEncoderModel,
    train_dataset: datasets.Dataset,
    recipe: VeltrixTrainingRecipe,
    output_dir: str,
    resume: bool = True,
) -> VeltrixPhysicsProbe:
    """The physics probe of `<output_dir>/probe` if it exists, else a new one (`create_probe`) trained by the
    `probe` stage (`recipe.probe`; checkpoints in `<output_dir>/checkpoints/probe`, resumed with `resume=True`) and
    saved there atomically. The returned probe is in eval mode."""
    from .runner import run_trainer  # the runner and the stages import this module
    from .stages import VeltrixProbeStage

    path = os.path.join(output_dir, PROBE_FOLDER)
    if os.path.isdir(path):
        logger.info("Loading the physics probe from %s.", path)
        return VeltrixPhysicsProbe.from_pretrained(path).eval()
    recipe.validate()
    probe = create_probe(encoder, train_dataset, recipe)
    run_trainer(
        PROBE_FOLDER,
        VeltrixProbeStage(encoder, probe, recipe),
        probe.save_pretrained,
        train_dataset,
        recipe,
        output_dir,
        resume,
    )
    return probe.eval()
