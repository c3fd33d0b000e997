"""The training recipe: data, windows, loss weights and the optimisation of each stage, saved next to every run."""

import json
from dataclasses import asdict, dataclass, field

from ..repository_check import write_json_atomic

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
