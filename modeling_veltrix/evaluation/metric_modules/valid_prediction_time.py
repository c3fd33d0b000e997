"""Valid prediction time (VPT): how many predicted steps stay close to the truth before the first failure.

The protocol of Botev et al. 2021, "Which priors matter? Benchmarking models for learning latent dynamics"
(NeurIPS Datasets and Benchmarks), for physics videos with pixels in [0, 1]. For trajectory `i` and predicted step
`t` (0-based over the predicted steps only, context frames excluded):

    e_{i,t} = mean((x̂_{i,t} − x_{i,t})²) / mean(x_{i,t}²)      (means over all pixels of the frame)
    VPT_i = number of leading steps with e_{i,t} <= threshold
          = the 0-based index of the first step with e_{i,t} > threshold, or H_i if there is none.

Defaults: `threshold = 0.025`. Reported: `vpt` = median_i VPT_i (the paper's summary), `vpt_mean`,
`vpt_per_trajectory`, and `normalized_error_per_horizon[t]` = mean_i e_{i,t}. A true frame with mean(x²) = 0 (all
black) leaves e undefined and raises ValueError. An `evaluate` script (its shared input checks, `trajectory_inputs.py`,
are copied along with it): load it with
`modeling_veltrix.evaluation.metric_loading.load_metric("valid_prediction_time")`.
"""

import evaluate
import numpy as np

from .trajectory_inputs import MetricTexts, ValidatedTrajectories, flattened_format, per_horizon_mean

_DESCRIPTION = """Valid prediction time (Botev et al. 2021): per trajectory, the number of leading predicted steps whose
normalised error e_t = mean((x̂_t − x_t)²) / mean(x_t²) stays <= threshold (default 0.025); pixels in [0, 1]. Reports
the median over trajectories as `vpt`."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per trajectory the predicted frames, an (H, ...) array in [0, 1] (list of arrays/tensors, or one
        (N, H, ...) array/tensor); each step is flattened to its F pixels.
    references: the true frames, same shapes, in [0, 1].
    threshold (`float`, *optional*, defaults to 0.025): the largest normalised error of a valid step.
Returns:
    vpt (`float`): median over trajectories of VPT_i (a half-integer for an even count with different middles).
    vpt_mean (`float`): mean over trajectories of VPT_i.
    vpt_per_trajectory (`list[int]`): VPT_i.
    normalized_error_per_horizon (`list[float]`): length max H, mean over trajectories of e_t.
Examples:
    >>> metric = load_metric("valid_prediction_time")
    >>> truth = [[[0.5, 0.5], [0.5, 0.5]]]
    >>> metric.compute(predictions=[[[0.5, 0.5], [0.0, 0.0]]], references=truth)["vpt_per_trajectory"]
    [1]
"""

_CITATION = """@inproceedings{botev2021priors,
  title={Which priors matter? Benchmarking models for learning latent dynamics},
  author={Botev, Aleksandar and Jaegle, Andrew and Wirnsberger, Peter and Hennes, Daniel and Higgins, Irina},
  booktitle={Thirty-fifth Conference on Neural Information Processing Systems Datasets and Benchmarks Track},
  year={2021}
}"""


def _nonzero_reference_frames(index: int, reference: np.ndarray) -> None:
    black = np.flatnonzero(np.mean(reference.astype(np.float64) ** 2, axis=1) == 0)
    if len(black):
        raise ValueError(
            f"`references[{index}]` must have mean(x_t²) > 0 at every step (e_t divides by it), got an all-zero "
            f"frame at step {int(black[0])}."
        )


def valid_prediction_time(normalized_errors: np.ndarray, threshold: float) -> int:
    """(H,) normalised errors -> the number of leading steps with e_t <= threshold."""
    over = np.flatnonzero(normalized_errors > threshold)
    return int(over[0]) if len(over) else len(normalized_errors)


class ValidPredictionTime(ValidatedTrajectories, evaluate.Metric):
    texts = MetricTexts(_DESCRIPTION, _KWARGS_DESCRIPTION, _CITATION, ("https://arxiv.org/abs/2111.05458",))
    inputs = flattened_format(unit_interval=True, check_reference=_nonzero_reference_frames)

    def _compute(self, predictions, references, threshold=0.025):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
            raise ValueError(f"`threshold` must be a number >= 0, got {threshold!r}.")
        errors = []  # (H_i,) per trajectory
        for prediction, reference in zip(predictions, references, strict=True):
            prediction, reference = np.asarray(prediction, np.float64), np.asarray(reference, np.float64)
            errors.append(np.mean((prediction - reference) ** 2, axis=1) / np.mean(reference**2, axis=1))
        vpts = [valid_prediction_time(e, threshold) for e in errors]
        return {
            "vpt": float(np.median(vpts)),
            "vpt_mean": float(np.mean(vpts)),
            "vpt_per_trajectory": vpts,
            "normalized_error_per_horizon": per_horizon_mean(errors),
        }
