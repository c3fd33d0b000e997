"""Energy drift: how far a rollout's predicted energy strays from the true energy, relative to its scale.

Per trajectory `i` with true energies E_{i,t} and predicted energies Ê_{i,t} (e.g. from a physics probe of the
predicted state), t = 1 … H_i:

    s_i = mean_t |E_{i,t}|                      (energy may be negative, e.g. gravitational; s_i = 0 raises)
    d_{i,t} = |Ê_{i,t} − E_{i,t}| / s_i
    drift_per_horizon[t] = mean_i d_{i,t}       (over the trajectories that reach step t)
    drift = mean over all (i, t) of d_{i,t}
    final_drift = mean_i d_{i,H_i}              (each trajectory's last step)

An `evaluate` script (its shared input checks, `trajectory_inputs.py`, are copied along with it): load it with
`modeling_veltrix.evaluation.metric_loading.load_metric("energy_drift")`.
"""

import datasets
import evaluate
import numpy as np

from .trajectory_inputs import MetricTexts, TrajectoryFormat, ValidatedTrajectories, per_horizon_mean

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


def _energy_steps(label: str, array: np.ndarray, value) -> np.ndarray:
    if array.ndim != 1 or array.shape[0] == 0:
        raise ValueError(f"{label} must have shape (H,) with H >= 1, got {array.shape}.")
    return array


def _nonzero_energy_scale(index: int, reference: np.ndarray) -> None:
    if np.mean(np.abs(reference)) == 0:
        raise ValueError(
            f"`references[{index}]` must have mean_t |E_t| > 0 (the drift's scale), got all-zero energies."
        )


class EnergyDrift(ValidatedTrajectories, evaluate.Metric):
    texts = MetricTexts(_DESCRIPTION, _KWARGS_DESCRIPTION, _CITATION)
    inputs = TrajectoryFormat(
        stacked_rank_ok=lambda ndim: ndim == 2,
        stacked_form="one (num_trajectories, H) array or a list of (H,) arrays",
        step_shape="(H,)",
        dtype=np.float64,
        feature=datasets.Sequence(datasets.Value("float64")),  # (H,), H free
        shaped=_energy_steps,
        check_reference=_nonzero_energy_scale,
    )

    def _compute(self, predictions, references):
        drifts = []  # (H_i,) per trajectory
        for prediction, reference in zip(predictions, references, strict=True):
            prediction, reference = np.asarray(prediction, np.float64), np.asarray(reference, np.float64)
            drifts.append(np.abs(prediction - reference) / np.mean(np.abs(reference)))
        return {
            "drift_per_horizon": per_horizon_mean(drifts),
            "drift": float(np.mean(np.concatenate(drifts))),
            "final_drift": float(np.mean([d[-1] for d in drifts])),
        }
