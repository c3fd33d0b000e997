"""Rollout error: mean squared error of a world model's predicted future per step `h = 1 … H`.

A self-contained Hugging Face `evaluate` metric script (evaluate copies it into its module cache, so it imports
nothing from `modeling_veltrix`). Load it with `modeling_veltrix.evaluation.load_metric("rollout_error")`.

For trajectory `i` and predicted step `t` (1-based), with `F` values per step (a flattened frame or latent state):

    mse_{i,t} = mean_f (x̂_{i,t,f} − x_{i,t,f})²
    mse_per_horizon[t] = mean_i mse_{i,t}      (over the trajectories that reach step t)
    mse = mean over all (i, t) of mse_{i,t}
"""

import datasets
import evaluate
import numpy as np

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


def _trajectories(name: str, values) -> list[np.ndarray]:
    """`values` (a list of per-trajectory arrays/tensors, or one stacked array/tensor) -> (H, F) float32 arrays."""
    if values is None:
        raise ValueError(f"`{name}` is required, got None.")
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray):
        if values.ndim < 3:
            raise ValueError(
                f"`{name}` must be one (num_trajectories, H, ...) array of rank >= 3 or a list of (H, ...) arrays, "
                f"got an array of shape {values.shape}."
            )
        values = list(values)
    if len(values) == 0:
        raise ValueError(f"`{name}` must hold at least one trajectory, got 0.")
    trajectories = []
    for index, value in enumerate(values):
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        try:
            array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"`{name}[{index}]` must be a numeric (H, ...) array, got {type(value).__name__}: {error}"
            ) from None
        if array.ndim < 2 or array.shape[0] == 0:
            raise ValueError(
                f"`{name}[{index}]` must have shape (H, ...) with H >= 1 and rank >= 2, got {array.shape}."
            )
        if not np.isfinite(array).all():
            raise ValueError(
                f"`{name}[{index}]` must be finite, got {int((~np.isfinite(array)).sum())} NaN/inf values."
            )
        trajectories.append(array.reshape(array.shape[0], -1))  # (H, F)
    return trajectories


def _validated(predictions, references) -> tuple[list[np.ndarray], list[np.ndarray]]:
    predictions, references = _trajectories("predictions", predictions), _trajectories("references", references)
    if len(predictions) != len(references):
        raise ValueError(
            f"`predictions` and `references` must hold as many trajectories, got {len(predictions)} and "
            f"{len(references)}."
        )
    for index, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        if prediction.shape != reference.shape:
            raise ValueError(
                f"`predictions[{index}]` must have the shape of `references[{index}]` {reference.shape} (flattened "
                f"to (H, F)), got {prediction.shape}."
            )
    return predictions, references


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RolloutError(evaluate.Metric):
    def _info(self):
        values = datasets.Sequence(datasets.Sequence(datasets.Value("float32")))  # (H, F), H and F free
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": values, "references": values}),
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Validates a batch of trajectories (ValueError naming the argument) and adds it."""
        predictions, references = _validated(predictions, references)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Validates one trajectory (ValueError naming the argument) and adds it."""
        self.add_batch(predictions=[prediction], references=[reference], **kwargs)

    def _compute(self, predictions, references, horizons=None):
        per_step = [  # (H_i,) per trajectory
            np.mean((np.asarray(p, dtype=np.float64) - np.asarray(r, dtype=np.float64)) ** 2, axis=1)
            for p, r in zip(predictions, references, strict=True)
        ]
        max_horizon = max(len(errors) for errors in per_step)
        padded = np.full((len(per_step), max_horizon), np.nan)  # (N, H), NaN past a trajectory's end
        for index, errors in enumerate(per_step):
            padded[index, : len(errors)] = errors
        mse_per_horizon = np.nanmean(padded, axis=0)
        result = {"mse_per_horizon": mse_per_horizon.tolist(), "mse": float(np.mean(np.concatenate(per_step)))}
        if horizons is not None:
            bad = [h for h in horizons if not isinstance(h, (int, np.integer)) or not 1 <= h <= max_horizon]
            if bad:
                raise ValueError(f"`horizons` must be 1-based steps in [1, {max_horizon}], got {list(horizons)}.")
            result["mse_at_horizon"] = {int(h): float(mse_per_horizon[h - 1]) for h in horizons}
        return result
