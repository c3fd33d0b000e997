"""Energy drift: how far a rollout's predicted energy strays from the true energy, relative to its scale.

Per trajectory `i` with true energies E_{i,t} and predicted energies Ê_{i,t} (e.g. from a physics probe of the
predicted state), t = 1 … H_i:

    s_i = mean_t |E_{i,t}|                      (energy may be negative, e.g. gravitational; s_i = 0 raises)
    d_{i,t} = |Ê_{i,t} − E_{i,t}| / s_i
    drift_per_horizon[t] = mean_i d_{i,t}       (over the trajectories that reach step t)
    drift = mean over all (i, t) of d_{i,t}
    final_drift = mean_i d_{i,H_i}              (each trajectory's last step)

A self-contained `evaluate` script: load it with `modeling_veltrix.evaluation.load_metric("energy_drift")`.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Relative energy drift of predicted rollouts: |Ê_t − E_t| / mean_t |E_t| per trajectory and step, with
E the true and Ê the predicted energy. Trajectories may have different horizons H."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per trajectory the predicted energies, an (H,) array (list of arrays/tensors, or one (N, H) array).
    references: the true energies, same shapes; mean_t |E_t| must be > 0 for every trajectory.
Returns:
    drift_per_horizon (`list[float]`): length max H, mean over trajectories of d_t.
    drift (`float`): mean over all trajectories and steps of d_t.
    final_drift (`float`): mean over trajectories of d at their last step.
Examples:
    >>> metric = load_metric("energy_drift")
    >>> metric.compute(predictions=[[1.0, 1.0]], references=[[1.0, 3.0]])
    {'drift_per_horizon': [0.0, 1.0], 'drift': 0.5, 'final_drift': 1.0}
"""

_CITATION = ""


def _trajectories(name: str, values) -> list[np.ndarray]:
    """`values` (a list of per-trajectory arrays/tensors, or one stacked array/tensor) -> (H,) float64 arrays."""
    if values is None:
        raise ValueError(f"`{name}` is required, got None.")
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray):
        if values.ndim != 2:
            raise ValueError(
                f"`{name}` must be one (num_trajectories, H) array or a list of (H,) arrays, got an array of shape "
                f"{values.shape}."
            )
        values = list(values)
    if len(values) == 0:
        raise ValueError(f"`{name}` must hold at least one trajectory, got 0.")
    trajectories = []
    for index, value in enumerate(values):
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"`{name}[{index}]` must be a numeric (H,) array, got {type(value).__name__}: {error}"
            ) from None
        if array.ndim != 1 or array.shape[0] == 0:
            raise ValueError(f"`{name}[{index}]` must have shape (H,) with H >= 1, got {array.shape}.")
        if not np.isfinite(array).all():
            raise ValueError(
                f"`{name}[{index}]` must be finite, got {int((~np.isfinite(array)).sum())} NaN/inf values."
            )
        trajectories.append(array)
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
                f"`predictions[{index}]` must have the shape of `references[{index}]` {reference.shape}, got "
                f"{prediction.shape}."
            )
        if np.mean(np.abs(reference)) == 0:
            raise ValueError(
                f"`references[{index}]` must have mean_t |E_t| > 0 (the drift's scale), got all-zero energies."
            )
    return predictions, references


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class EnergyDrift(evaluate.Metric):
    def _info(self):
        values = datasets.Sequence(datasets.Value("float64"))  # (H,), H free
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

    def _compute(self, predictions, references):
        drifts = []  # (H_i,) per trajectory
        for prediction, reference in zip(predictions, references, strict=True):
            prediction, reference = np.asarray(prediction, np.float64), np.asarray(reference, np.float64)
            drifts.append(np.abs(prediction - reference) / np.mean(np.abs(reference)))
        padded = np.full((len(drifts), max(len(d) for d in drifts)), np.nan)  # (N, H), NaN past a trajectory's end
        for index, d in enumerate(drifts):
            padded[index, : len(d)] = d
        return {
            "drift_per_horizon": np.nanmean(padded, axis=0).tolist(),
            "drift": float(np.mean(np.concatenate(drifts))),
            "final_drift": float(np.mean([d[-1] for d in drifts])),
        }
