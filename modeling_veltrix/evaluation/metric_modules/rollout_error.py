"""Rollout error: mean squared error of a world model's predicted future per step `h = 1 … H`.

A Hugging Face `evaluate` metric script: evaluate copies it into its module cache together with its shared input
checks, `trajectory_inputs.py` (neither needs anything from `modeling_veltrix`). Load it with
`modeling_veltrix.evaluation.metric_loading.load_metric("rollout_error")`.

For trajectory `i` and predicted step `t` (1-based), with `F` values per step (a flattened frame or latent state):

    mse_{i,t} = mean_f (x̂_{i,t,f} − x_{i,t,f})²
    mse_per_horizon[t] = mean_i mse_{i,t}      (over the trajectories that reach step t)
    mse = mean over all (i, t) of mse_{i,t}
"""

import evaluate
import numpy as np

from .trajectory_inputs import MetricTexts, ValidatedTrajectories, flattened_format, per_horizon_mean

_DESCRIPTION = """Per-horizon mean squared error of predicted rollouts against the true futures. Each trajectory is an
(H, F) array: one row per predicted step, F values per step (a flattened frame or latent state; any (H, ...) array is
flattened to (H, F)). Trajectories may have different horizons H; step t then averages over those that reach it."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per trajectory an (H, ...) array (list of arrays/tensors, or one (N, H, ...) array/tensor).
    references: the true futures, same shapes as `predictions`.
    horizons (`list[int]`, *optional*): 1-based steps at which to report the MSE in `mse_at_horizon`.
Returns:
    mse_per_horizon (`list[float]`): length max H, mean over trajectories of the per-step MSE.
    mse (`float`): mean over all trajectories and steps of the per-step MSE.
    mse_at_horizon (`dict[int, float]`): only when `horizons` is given.
Examples:
    >>> metric = load_metric("rollout_error")
    >>> metric.compute(predictions=[[[1.0, 1.0], [2.0, 2.0]]], references=[[[0.0, 0.0], [0.0, 0.0]]], horizons=[2])
    {'mse_per_horizon': [1.0, 4.0], 'mse': 2.5, 'mse_at_horizon': {2: 4.0}}
"""

_CITATION = ""


class RolloutError(ValidatedTrajectories, evaluate.Metric):
    texts = MetricTexts(_DESCRIPTION, _KWARGS_DESCRIPTION, _CITATION)
    inputs = flattened_format()

    def _compute(self, predictions, references, horizons=None):
        per_step = [  # (H_i,) per trajectory
            np.mean((np.asarray(p, dtype=np.float64) - np.asarray(r, dtype=np.float64)) ** 2, axis=1)
            for p, r in zip(predictions, references, strict=True)
        ]
        mse_per_horizon = per_horizon_mean(per_step)
        max_horizon = len(mse_per_horizon)
        result = {"mse_per_horizon": mse_per_horizon, "mse": float(np.mean(np.concatenate(per_step)))}
        if horizons is not None:
            bad = [h for h in horizons if not isinstance(h, (int, np.integer)) or not 1 <= h <= max_horizon]
            if bad:
                raise ValueError(f"`horizons` must be 1-based steps in [1, {max_horizon}], got {list(horizons)}.")
            result["mse_at_horizon"] = {int(h): float(mse_per_horizon[h - 1]) for h in horizons}
        return result
