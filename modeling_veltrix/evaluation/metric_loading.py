"""Rollout metrics as Hugging Face `evaluate` modules, loaded from the scripts shipped inside this package (no Hub).

The four metric scripts sit side by side in one folder, `metric_modules/<name>.py`, each with its card
`metric_modules/<name>.md`, and share their input conversion and validation through
`metric_modules/trajectory_inputs.py`, imported with `from .trajectory_inputs import ...`. `evaluate.load(<path of the
.py file>)` reads that relative import as a local dependency (`evaluate.loading.get_imports`) and copies
`trajectory_inputs.py` next to the script in its module cache, so it works offline (`HF_HUB_OFFLINE=1`,
`HF_DATASETS_OFFLINE=1`). The cards are for people: a local `evaluate` module does not read them (one card per metric
cannot be `README.md` in a shared folder, hence `<name>.md`).

>>> metric = load_metric("rollout_error")
>>> metric.compute(predictions=[[[1.0], [2.0]]], references=[[[0.0], [0.0]]])
{'mse_per_horizon': [1.0, 4.0], 'mse': 2.5}
"""

from pathlib import Path

import evaluate

METRIC_MODULES_DIR = Path(__file__).resolve().parent / "metric_modules"
METRIC_NAMES = ("rollout_error", "valid_prediction_time", "frame_quality", "energy_drift")
SHARED_MODULE = "trajectory_inputs"  # metric_modules/trajectory_inputs.py, the scripts' one relative import


def metric_path(name: str) -> Path:
    """The absolute path of metric `name`'s script `metric_modules/<name>.py` (its card is `<name>.md` beside it)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; the known metrics are {list(METRIC_NAMES)}.")
    return METRIC_MODULES_DIR / f"{name}.py"


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """Loads metric `name` (one of `METRIC_NAMES`) from its local script (with the shared `trajectory_inputs.py`);
    `kwargs` go to `evaluate.load` (e.g. `experiment_id`, `keep_in_memory`)."""
    return evaluate.load(str(metric_path(name)), **kwargs)
