"""The training recipe: data, windows, loss weights and the optimisation of each stage, saved next to every run."""

import json
import math
import numbers
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple

from ..modeling_veltrix_decoder import FLOW_TIME_SAMPLINGS, LOSS_WEIGHTINGS
from ..repository_check import write_json_atomic
from ..worlds import get_world
from ..worlds.dataset import WORLDS

STAGES = ("encoder", "evolver", "decoder", "reflow")
COMPONENTS = ("encoder", "evolver", "decoder")
# The component each stage trains; `reflow` fine-tunes the decoder for few-step sampling.
STAGE_COMPONENT = {"encoder": "encoder", "evolver": "evolver", "decoder": "decoder", "reflow": "decoder"}
# Stages outside the pipeline's `STAGES`, each with a stage recipe like the others': `probe` trains the physics probe
# of `training.physics` on the frozen encoder's units (`load_or_train_probe`); `joint` fine-tunes encoder and evolver
# together after the staged ones (`runner.train_joint`); `quantizer` and `gate` build the Engram memory on the trained
# encoder and evolver (`training.engram`: the quantizer's projections, then the fusion gate of its table).
AUXILIARY_STAGES = ("probe", "joint", "quantizer", "gate")
RECIPE_STAGES = STAGES + AUXILIARY_STAGES
STAGE_DEFAULTS = {
    # The probe is a small MLP on one step's units: larger batches.
    "probe": {"max_steps": 300, "learning_rate": 1e-3, "batch_size": 16},
    # A fine-tune of trained components: a lower learning rate.
    "joint": {"max_steps": 300, "learning_rate": 1e-4, "batch_size": 8},
    # Two small linear maps of one step's state: larger batches, a higher learning rate.
    "quantizer": {"max_steps": 500, "learning_rate": 3e-3, "batch_size": 16},
    # A tiny gate network behind a frozen evolver's open-loop windows.
    "gate": {"max_steps": 200, "learning_rate": 1e-3, "batch_size": 8},
}


SEED_LIMIT = 2**32  # numpy's seeds (seeded by `transformers.set_seed`) must be below 2**32


class _Rule(NamedTuple):
    """What a recipe field must hold: its type (`int`: any integer, `float`: any finite real, `str`, `dict`), a
    lower bound (`exclusive`: the bound itself is refused), an exclusive upper bound, or the allowed choices."""

    kind: type
    minimum: float | None = None
    exclusive: bool = False
    below: float | None = None
    choices: tuple | None = None


STAGE_RULES = {
    "max_steps": _Rule(int, 1),
    "learning_rate": _Rule(float, 0, exclusive=True),
    "batch_size": _Rule(int, 1),
    "weight_decay": _Rule(float, 0),
    "warmup_steps": _Rule(int, 0),
    "save_steps": _Rule(int, 1),
}
_WEIGHT = _Rule(float, 0)
RECIPE_RULES = {
    "world": _Rule(str, choices=tuple(sorted(WORLDS))),
    "world_options": _Rule(dict),
    "num_train_trajectories": _Rule(int, 1),
    "num_eval_trajectories": _Rule(int, 1),
    "trajectory_length": _Rule(int, 2),
    "train_seed": _Rule(int, 0, below=SEED_LIMIT),
    "eval_seed": _Rule(int, 0, below=SEED_LIMIT),
    "context_length": _Rule(int, 1),
    "rollout_window": _Rule(int, 1),
    "latent_loss_weight": _WEIGHT,
    "pixel_loss_weight": _WEIGHT,
    "teacher_forcing_weight": _WEIGHT,
    "open_loop_weight": _WEIGHT,
    "stability_weight": _WEIGHT,
    "stability_perturbation": _Rule(float, 0, exclusive=True),
    "time_consistency_weight": _WEIGHT,
    "caption_loss_weight": _WEIGHT,
    "sampling_loss_weight": _WEIGHT,
    "physics_loss_weight": _WEIGHT,
    "probe_hidden_size": _Rule(int, 1),
    "joint_align_weight": _WEIGHT,
    "joint_physics_weight": _WEIGHT,
    "joint_reconstruction_weight": _WEIGHT,
    "decoder_frames_per_trajectory": _Rule(int, 1),
    "decoder_time_sampling": _Rule(str, choices=FLOW_TIME_SAMPLINGS),
    "decoder_loss_weighting": _Rule(str, choices=LOSS_WEIGHTINGS),
    "reflow_num_pairs": _Rule(int, 1),
    "reflow_teacher_steps": _Rule(int, 1),
    "reflow_time_sampling": _Rule(str, choices=FLOW_TIME_SAMPLINGS),
    "engram_batch_size": _Rule(int, 1),
    "seed": _Rule(int, 0, below=SEED_LIMIT),
}


def _expected(rule: _Rule) -> str:
    """The rule in words, for an error message."""
    if rule.choices is not None:
        return f"one of {rule.choices}"
    words = {int: "an integer", float: "a finite number", str: "a string", dict: "a JSON object (dict)"}[rule.kind]
    if rule.minimum is not None:
        words += f" {'>' if rule.exclusive else '>='} {rule.minimum}"
    if rule.below is not None:
        words += f" and < {rule.below}"
    return words


def _complies(value: Any, rule: _Rule) -> bool:
    """Whether `value` has the rule's type (a bool is no number; a float must be finite) and lies in its range."""
    if rule.choices is not None:
        return isinstance(value, str) and value in rule.choices
    numeric = rule.kind in (int, float)
    if isinstance(value, bool) and numeric:
        return False
    if not isinstance(value, {int: numbers.Integral, float: numbers.Real}.get(rule.kind, rule.kind)):
        return False
    if not numeric:
        return True
    if not math.isfinite(value):
        return False
    if rule.minimum is not None and (value <= rule.minimum if rule.exclusive else value < rule.minimum):
        return False
    return rule.below is None or value < rule.below


def read_json_object(path: str, what: str) -> dict:
    """The JSON object in the file `path`; a missing file, invalid JSON or another JSON value raises a `ValueError`
    that starts with `what` (e.g. "Recipe file <path>" or "`--engram-config` <path>")."""
    if not os.path.isfile(path):
        raise ValueError(f"{what} does not exist.")
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{what} is not valid JSON: {error}.") from None
    if not isinstance(values, dict):
        raise ValueError(f"{what} must hold a JSON object, got {type(values).__name__}.")
    return values


def check_fields(values: dict[str, Any], rules: dict[str, _Rule], prefix: str = "") -> None:
    """Raises a `ValueError` naming the first field of `values` that breaks its rule: what was expected and what
    came (value and type)."""
    for name, rule in rules.items():
        value = values[name]
        if not _complies(value, rule):
            raise ValueError(f"`{prefix}{name}` must be {_expected(rule)}, got {value!r} ({type(value).__name__}).")


def _check_known(values: dict[str, Any], known: set[str], what: str) -> None:
    """Raises a `ValueError` naming the fields of `values` that `what` does not have."""
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{what} has unknown fields {unknown}; the known fields are {sorted(known)}.")


@dataclass
class VeltrixStageRecipe:
    """Optimisation of one training stage. Every field is checked on creation (`validate`)."""

    max_steps: int = 300
    learning_rate: float = 1e-3
    batch_size: int = 8
    weight_decay: float = 0.0
    warmup_steps: int = 20
    save_steps: int = 100

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, prefix: str = "") -> None:
        """Raises a `ValueError` naming `<prefix><field>` when a field has the wrong type or lies out of range."""
        check_fields(asdict(self), STAGE_RULES, prefix)

    @classmethod
    def from_dict(cls, values: Any, name: str, defaults: dict[str, Any] | None = None) -> "VeltrixStageRecipe":
        """The stage recipe `name` of a recipe file: a dict of known fields, each checked and named `<name>.<field>`;
        missing fields take `defaults`, else the class defaults."""
        if not isinstance(values, dict):
            raise ValueError(f"`{name}` must be a JSON object of {sorted(STAGE_RULES)}, got {values!r}.")
        _check_known(values, set(STAGE_RULES), f"`{name}`")
        values = {**(defaults or {}), **values}
        check_fields({**asdict(cls()), **values}, STAGE_RULES, f"{name}.")
        return cls(**values)


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
    `sampling_loss_weight` (default 1) weighs the flow-matching loss of an evolver's stochastic head
    (`VeltrixEvolverConfig.sampling_head_layers > 0`; ignored without one) on the teacher-forced and open-loop steps.

    `physics_loss_weight` (default 0: off) weighs `training.physics.physics_conservation_loss` on the evolver's
    open-loop window: the energy that a frozen physics probe reads from the predicted states should stay that of the
    last context state (trajectories without impulses in the window only); it needs a probe (`load_or_train_probe`),
    trained by the `probe` stage recipe (defaults: 300 steps, lr 1e-3, batch 16) with `probe_hidden_size` hidden
    units. The optional `joint` stage (`runner.train_joint`, recipe `joint`: 300 steps, lr 1e-4, batch 8) fine-tunes
    encoder and evolver together on `L_traj + joint_align_weight·L_align + joint_physics_weight·L_phys +
    joint_reconstruction_weight·L_recon` (defaults 1, 0, 1; `stages.VeltrixJointStage`). Recipe files without these
    fields load with the defaults.

    The Engram memory (`training.engram`, DESIGN §5) is built on the trained encoder and evolver by the stage recipes
    `quantizer` (its FSQ projections; defaults 500 steps, lr 3e-3, batch 16) and `gate` (the fusion gate of its
    table on open-loop windows of `rollout_window` steps; defaults 200 steps, lr 1e-3, batch 8); its streaming passes
    (standardisation statistics, table, codebook statistics, hit rate) read `engram_batch_size` trajectories at a
    time (default 16; the result does not depend on it). Its parametric memory trains with the evolver stage's recipe.

    `seed` seeds the run: each created component is initialised, and each stage trains, under
    `training.checkpoints.derive_seed(seed, name)` (`train_seed` and `eval_seed` seed the world's trajectories).
    Every field is checked on creation (`validate`); a bad type, a non-finite or out-of-range number or an unknown
    choice raises a `ValueError` naming the field.
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
    sampling_loss_weight: float = 1.0
    physics_loss_weight: float = 0.0
    probe_hidden_size: int = 128
    joint_align_weight: float = 1.0
    joint_physics_weight: float = 0.0
    joint_reconstruction_weight: float = 1.0
    decoder_frames_per_trajectory: int = 8
    decoder_time_sampling: str = "logit_normal"
    decoder_loss_weighting: str = "none"
    reflow_num_pairs: int = 4096
    reflow_teacher_steps: int = 16
    reflow_time_sampling: str = "uniform"
    engram_batch_size: int = 16
    seed: int = 0
    encoder: VeltrixStageRecipe = field(default_factory=VeltrixStageRecipe)
    evolver: VeltrixStageRecipe = field(default_factory=VeltrixStageRecipe)
    decoder: VeltrixStageRecipe = field(default_factory=VeltrixStageRecipe)
    reflow: VeltrixStageRecipe = field(default_factory=VeltrixStageRecipe)
    probe: VeltrixStageRecipe = field(default_factory=lambda: VeltrixStageRecipe(**STAGE_DEFAULTS["probe"]))
    joint: VeltrixStageRecipe = field(default_factory=lambda: VeltrixStageRecipe(**STAGE_DEFAULTS["joint"]))
    quantizer: VeltrixStageRecipe = field(default_factory=lambda: VeltrixStageRecipe(**STAGE_DEFAULTS["quantizer"]))
    gate: VeltrixStageRecipe = field(default_factory=lambda: VeltrixStageRecipe(**STAGE_DEFAULTS["gate"]))

    def __post_init__(self) -> None:
        for name in RECIPE_STAGES:
            value = getattr(self, name)
            if not isinstance(value, VeltrixStageRecipe):
                setattr(self, name, VeltrixStageRecipe.from_dict(value, name, STAGE_DEFAULTS.get(name)))
        self.validate()

    def validate(self) -> None:
        """Raises a `ValueError` naming the field when any field has the wrong type (a number given as a string, a
        bool as a number), is not finite, lies out of range or is not one of the known choices (`world`,
        `decoder_time_sampling`, `decoder_loss_weighting`, `reflow_time_sampling`), or when fields disagree. Runs on
        creation; `to_json_file` and `train_stages` run it again for recipes changed since."""
        values = {name: getattr(self, name) for name in RECIPE_RULES}
        check_fields(values, RECIPE_RULES)
        for name in RECIPE_STAGES:
            stage = getattr(self, name)
            if not isinstance(stage, VeltrixStageRecipe):
                raise ValueError(f"`{name}` must be a VeltrixStageRecipe, got {type(stage).__name__}.")
            stage.validate(f"{name}.")
        if self.context_length + self.rollout_window > self.trajectory_length:
            raise ValueError(
                f"`context_length + rollout_window` ({self.context_length + self.rollout_window}) must be <= "
                f"`trajectory_length` ({self.trajectory_length})."
            )
        if (self.physics_loss_weight or self.joint_physics_weight) and self.context_length < 2:
            raise ValueError(
                f"`context_length` must be >= 2 with `physics_loss_weight` or `joint_physics_weight` > 0 (the physics "
                f"probe reads the last two context states), got {self.context_length}."
            )
        if self.decoder_frames_per_trajectory > self.trajectory_length:
            raise ValueError(
                f"`decoder_frames_per_trajectory` must be in [1, {self.trajectory_length}], "
                f"got {self.decoder_frames_per_trajectory}."
            )
        self._check_world_options()

    def _check_world_options(self) -> None:
        """`world_options` must be fields of the world's config with valid values (the world checks them)."""
        try:
            get_world(self.world, **self.world_options)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"`world_options` {self.world_options!r} do not fit world {self.world!r}: {error}"
            ) from None

    @classmethod
    def from_json_file(cls, path: str) -> "VeltrixTrainingRecipe":
        """Reads and checks a recipe file; a missing or unreadable file, a field this version does not know or a
        bad value raises a `ValueError` naming the file and the field."""
        values = read_json_object(path, f"Recipe file {path}")
        _check_known(values, {item.name for item in fields(cls)}, f"Recipe file {path}")
        try:
            return cls(**values)
        except ValueError as error:
            raise ValueError(f"Recipe file {path}: {error}") from None

    def to_json_file(self, path: str) -> None:
        """Checks the recipe (`validate`), then writes it as JSON atomically: a bad recipe writes nothing."""
        self.validate()
        write_json_atomic(path, asdict(self))
