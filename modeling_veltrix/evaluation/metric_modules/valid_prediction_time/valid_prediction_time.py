"""Valid prediction time (VPT): how many predicted steps stay close to the truth before the first failure.

The protocol of Botev et al. 2021, "Which priors matter? Benchmarking models for learning latent dynamics"
(NeurIPS Datasets and Benchmarks), for physics videos with pixels in [0, 1]. For trajectory `i` and predicted step
`t` (0-based over the predicted steps only, context frames excluded):

    e_{i,t} = mean((x̂_{i,t} − x_{i,t})²) / mean(x_{i,t}²)      (means over all pixels of the frame)
    VPT_i = number of leading steps with e_{i,t} <= threshold
          = the 0-based index of the first step with e_{i,t} > threshold, or H_i if there is none.

Defaults: `threshold = 0.025`. Reported: `vpt` = median_i VPT_i (the paper's summary), `vpt_mean`,
`vpt_per_trajectory`, and `normalized_error_per_horizon[t]` = mean_i e_{i,t}. A true frame with mean(x²) = 0 (all
black) leaves e undefined and raises ValueError. A self-contained `evaluate` script: load it with
`modeling_veltrix.evaluation.load_metric("valid_prediction_time")`.
"""

import datasets
import evaluate
import numpy as np

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
        if array.min() < 0.0 or array.max() > 1.0:
            raise ValueError(
                f"`{name}[{index}]` must hold pixels in [0, 1], got values in [{array.min()}, {array.max()}]."
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
        black = np.flatnonzero(np.mean(reference.astype(np.float64) ** 2, axis=1) == 0)
        if len(black):
            raise ValueError(
                f"`references[{index}]` must have mean(x_t²) > 0 at every step (e_t divides by it), got an all-zero "
                f"frame at step {int(black[0])}."
            )
    return predictions, references


def valid_prediction_time(normalized_errors: np.ndarray, threshold: float) -> int:
    """(H,) normalised errors -> the number of leading steps with e_t <= threshold."""
    over = np.flatnonzero(normalized_errors > threshold)
    return int(over[0]) if len(over) else len(normalized_errors)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ValidPredictionTime(evaluate.Metric):
    def _info(self):
        values = datasets.Sequence(datasets.Sequence(datasets.Value("float32")))  # (H, F), H and F free
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": values, "references": values}),
            reference_urls=["https://arxiv.org/abs/2111.05458"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Validates a batch of trajectories (ValueError naming the argument) and adds it."""
        predictions, references = _validated(predictions, references)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Validates one trajectory (ValueError naming the argument) and adds it."""
        self.add_batch(predictions=[prediction], references=[reference], **kwargs)

    def _compute(self, predictions, references, threshold=0.025):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
            raise ValueError(f"`threshold` must be a number >= 0, got {threshold!r}.")
        errors = []  # (H_i,) per trajectory
        for prediction, reference in zip(predictions, references, strict=True):
            prediction, reference = np.asarray(prediction, np.float64), np.asarray(reference, np.float64)
            errors.append(np.mean((prediction - reference) ** 2, axis=1) / np.mean(reference**2, axis=1))
        vpts = [valid_prediction_time(e, threshold) for e in errors]
        padded = np.full((len(errors), max(len(e) for e in errors)), np.nan)  # (N, H), NaN past a trajectory's end
        for index, e in enumerate(errors):
            padded[index, : len(e)] = e
        return {
            "vpt": float(np.median(vpts)),
            "vpt_mean": float(np.mean(vpts)),
            "vpt_per_trajectory": vpts,
            "normalized_error_per_horizon": np.nanmean(padded, axis=0).tolist(),
        }
