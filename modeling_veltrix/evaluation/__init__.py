"""Evaluation of trained Veltrix pipelines: rollout error per horizon against baselines, read-back of captions and
audio from encoded and evolved states, image quality, and the pictures of rollouts (GIFs, error plots, the app's
viewer); the equal-size learned baselines (`baselines`), the rollout metrics as `evaluate` modules
(`metric_loading.load_metric`), the suite behind `scripts/evaluate.py` (`suite`) and the evaluation of a run trained
on your own data (`own_data`, `scripts/evaluate.py --run-dir`).

`metric_loading` (and `suite`, which uses it) are not imported here: they import the `evaluate` library, which a
script run from `scripts/` would find shadowed by `scripts/evaluate.py`."""

from .baselines import (
    VeltrixBaselineConfig,
    VeltrixGRUPredictor,
    VeltrixTransformerPredictor,
    build_baseline,
    count_parameters,
    matched_baseline_config,
)
from .own_data import evaluate_own_data, own_data_rollouts
from .rollouts import (
    PREDICTORS,
    RolloutEvaluation,
    caption_scores,
    evaluate_encoded_modalities,
    evaluate_future_modalities,
    evaluate_rollouts,
    image_quality,
    per_horizon_image_quality,
    per_horizon_mse,
    retrieval_r1,
    rollout_targets,
)

__all__ = [
    "VeltrixBaselineConfig",
    "VeltrixGRUPredictor",
    "VeltrixTransformerPredictor",
    "build_baseline",
    "count_parameters",
    "matched_baseline_config",
    "evaluate_own_data",
    "own_data_rollouts",
    "PREDICTORS",
    "RolloutEvaluation",
    "caption_scores",
    "evaluate_encoded_modalities",
    "evaluate_future_modalities",
    "evaluate_rollouts",
    "image_quality",
    "per_horizon_image_quality",
    "per_horizon_mse",
    "retrieval_r1",
    "rollout_targets",
]
