"""Input conversion and validation shared by the rollout metric scripts in this folder.

Not a metric: each script imports it with `from .trajectory_inputs import ...`, which `evaluate`'s `get_imports` reads
as a local dependency and copies next to the script in its module cache (the cache hash covers both files). Nothing
here comes from `modeling_veltrix`, so the cached copy works on its own.

Each metric describes its inputs with a `TrajectoryFormat`; `TrajectoryFormat.validated` turns `predictions` and
`references` (a list of per-trajectory arrays/tensors, or one stacked array/tensor) into lists of numpy arrays, raising
`ValueError` naming the argument. A metric class derives from `ValidatedTrajectories` (before `evaluate.Metric`), which
runs that check in `add_batch` and `add` and builds the `MetricInfo` from the format and the metric's `MetricTexts`.
"""

from collections.abc import Callable
from dataclasses import dataclass

import datasets
import evaluate
import numpy as np


def _numpy(value):
    """A torch tensor -> its numpy array on the CPU; anything else unchanged."""
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


@dataclass(frozen=True)
class TrajectoryFormat:
    """How one metric reads a trajectory.

    stacked_rank_ok: whether one stacked array of that rank (num_trajectories first) is accepted.
    stacked_form: the accepted inputs, for the error on a stacked array of the wrong rank.
    step_shape: one trajectory's shape, for the error on a non-numeric trajectory, e.g. "(H, ...)".
    dtype: the dtype trajectories are converted to.
    feature: the `datasets` feature of one trajectory, as stored by `evaluate` (sizes left free).
    shaped: `(label, array, value) -> array` checks one converted trajectory's shape (raising ValueError starting
        with `label`, e.g. "`predictions[0]`") and returns it in the metric's layout; runs before the finiteness check.
    unit_interval: whether values must lie in [0, 1] (pixels).
    shape_note: appended to the reference's shape in the error on mismatched shapes.
    check_reference: `(index, reference) -> None` further checks each reference once its prediction matches it.
    """

    stacked_rank_ok: Callable[[int], bool]
    stacked_form: str
    step_shape: str
    dtype: type
    feature: object
    shaped: Callable[[str, np.ndarray, object], np.ndarray]
    unit_interval: bool = False
    shape_note: str = ""
    check_reference: Callable[[int, np.ndarray], None] | None = None

    def trajectories(self, name: str, values) -> list[np.ndarray]:
        """`values` (a list of per-trajectory arrays/tensors, or one stacked array/tensor) -> arrays of `dtype`."""
        if values is None:
            raise ValueError(f"`{name}` is required, got None.")
        values = _numpy(values)
        if isinstance(values, np.ndarray):
            if not self.stacked_rank_ok(values.ndim):
                raise ValueError(f"`{name}` must be {self.stacked_form}, got an array of shape {values.shape}.")
            values = list(values)
        if len(values) == 0:
            raise ValueError(f"`{name}` must hold at least one trajectory, got 0.")
        trajectories = []
        for index, value in enumerate(values):
            value = _numpy(value)
            label = f"`{name}[{index}]`"
            try:
                array = np.asarray(value, dtype=self.dtype)
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"{label} must be a numeric {self.step_shape} array, got {type(value).__name__}: {error}"
                ) from None
            array = self.shaped(label, array, value)
            if not np.isfinite(array).all():
                raise ValueError(f"{label} must be finite, got {int((~np.isfinite(array)).sum())} NaN/inf values.")
            if self.unit_interval and (array.min() < 0.0 or array.max() > 1.0):
                raise ValueError(f"{label} must hold pixels in [0, 1], got values in [{array.min()}, {array.max()}].")
            trajectories.append(array)
        return trajectories

    def validated(self, predictions, references) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Both arguments converted, as many trajectories, matching shapes, then `check_reference` on each pair."""
        predictions, references = (
            self.trajectories("predictions", predictions),
            self.trajectories("references", references),
        )
        if len(predictions) != len(references):
            raise ValueError(
                f"`predictions` and `references` must hold as many trajectories, got {len(predictions)} and "
                f"{len(references)}."
            )
        for index, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
            if prediction.shape != reference.shape:
                raise ValueError(
                    f"`predictions[{index}]` must have the shape of `references[{index}]` {reference.shape}"
                    f"{self.shape_note}, got {prediction.shape}."
                )
            if self.check_reference is not None:
                self.check_reference(index, reference)
        return predictions, references


def flattened_steps(label: str, array: np.ndarray, value) -> np.ndarray:
    """An (H, ...) trajectory of rank >= 2 with H >= 1 -> (H, F), F values per step."""
    if array.ndim < 2 or array.shape[0] == 0:
        raise ValueError(f"{label} must have shape (H, ...) with H >= 1 and rank >= 2, got {array.shape}.")
    return array.reshape(array.shape[0], -1)


def flattened_format(
    *, unit_interval: bool = False, check_reference: Callable[[int, np.ndarray], None] | None = None
) -> TrajectoryFormat:
    """Trajectories given as (H, ...) arrays (list, or one (N, H, ...) array/tensor), stored as float32 (H, F)."""
    return TrajectoryFormat(
        stacked_rank_ok=lambda ndim: ndim >= 3,
        stacked_form="one (num_trajectories, H, ...) array of rank >= 3 or a list of (H, ...) arrays",
        step_shape="(H, ...)",
        dtype=np.float32,
        feature=datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),  # (H, F), H and F free
        shaped=flattened_steps,
        unit_interval=unit_interval,
        shape_note=" (flattened to (H, F))",
        check_reference=check_reference,
    )


def per_horizon_mean(values: list[np.ndarray]) -> list[float]:
    """(H_i,) per trajectory -> (max H,) mean over the trajectories that reach each step."""
    padded = np.full((len(values), max(len(v) for v in values)), np.nan)  # (N, H), NaN past a trajectory's end
    for index, v in enumerate(values):
        padded[index, : len(v)] = v
    return np.nanmean(padded, axis=0).tolist()


@dataclass(frozen=True)
class MetricTexts:
    """A metric's `MetricInfo` texts: its `_DESCRIPTION`, `_KWARGS_DESCRIPTION` and `_CITATION`, and reference URLs."""

    description: str
    inputs_description: str
    citation: str
    reference_urls: tuple[str, ...] = ()


class ValidatedTrajectories:
    """Mixin for an `evaluate.Metric` with class attributes `inputs: TrajectoryFormat` and `texts: MetricTexts`:
    `add_batch` and `add` validate before storing, `_info` stores `inputs.feature` as predictions and references, and
    the class docstring is description + inputs description (as `evaluate.utils.file_utils.add_start_docstrings`).
    Deliberately not an `evaluate.Metric` subclass: `evaluate` takes the first `EvaluationModule` subclass in a script's
    namespace as its metric, and this one is imported before the metric. (`texts`, not `description` etc.: those names
    are `EvaluationModule` properties.)"""

    inputs: TrajectoryFormat
    texts: MetricTexts

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__doc__ = cls.texts.description + cls.texts.inputs_description + "\n\n" + (cls.__doc__ or "")

    def _info(self):
        return evaluate.MetricInfo(
            description=self.texts.description,
            citation=self.texts.citation,
            inputs_description=self.texts.inputs_description,
            features=datasets.Features({"predictions": self.inputs.feature, "references": self.inputs.feature}),
            reference_urls=list(self.texts.reference_urls),
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Validates a batch of trajectories (ValueError naming the argument) and adds it."""
        predictions, references = self.inputs.validated(predictions, references)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Validates one trajectory (ValueError naming the argument) and adds it."""
        self.add_batch(predictions=[prediction], references=[reference], **kwargs)
