"""Rollout metrics as Hugging Face `evaluate` modules, loaded from the scripts shipped inside this package (no Hub).

Each metric is a self-contained script `metric_modules/<name>/<name>.py` with its card `README.md`; `evaluate.load`
copies the script into its module cache, so it works offline (`HF_HUB_OFFLINE=1`, `HF_DATASETS_OFFLINE=1`).

>>> metric = load_metric("rollout_error")
>>> metric.compute(predictions=[[[1.0], [2.0]]], references=[[[0.0], [0.0]]])
{'mse_per_horizon': [1.0, 4.0], 'mse': 2.5}
"""

from pathlib import Path

import evaluate

METRIC_MODULES_DIR = Path(__file__).resolve().parent / "metric_modules"
METRIC_NAMES = ("rollout_error", "valid_prediction_time", "frame_quality", "energy_drift")


def metric_path(name: str) -> Path:
    """The absolute folder of metric `name` (holds `<name>.py` and `README.md`)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; the known metrics are {list(METRIC_NAMES)}.")
    return METRIC_MODULES_DIR / name


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """Loads metric `name` (one of `METRIC_NAMES`) from its local script; `kwargs` go to `evaluate.load`
    (e.g. `experiment_id`, `keep_in_memory`)."""
    return evaluate.load(str(metric_path(name)), **kwargs)
