"""Evaluation of trained Veltrix pipelines: rollout error per horizon against baselines, read-back of captions and
audio from encoded and evolved states, image quality, and the pictures of rollouts (GIFs, error plots, the app's
viewer)."""

from .rollouts import (
    PREDICTORS,
    RolloutEvaluation,
    caption_scores,
    evaluate_encoded_modalities,
    evaluate_future_modalities,
    evaluate_rollouts,
    image_quality,
    per_horizon_mse,
    retrieval_r1,
    rollout_targets,
)

__all__ = [
    "PREDICTORS",
    "RolloutEvaluation",
    "caption_scores",
    "evaluate_encoded_modalities",
    "evaluate_future_modalities",
    "evaluate_rollouts",
    "image_quality",
    "per_horizon_mse",
    "retrieval_r1",
    "rollout_targets",
]
