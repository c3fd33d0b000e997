"""Frame quality of predicted rollouts: PSNR and SSIM per predicted step, frames in [0, 1].

For trajectory `i` and predicted step `t`, with frames of shape (C, Hh, W):

    psnr_{i,t} = 10 · log10(1 / max(mean((x̂_{i,t} − x_{i,t})²), 1e-10))   (data range 1; identical frames give
                                                                           the cap PSNR_CAP_DB = 100 dB, not inf)
    ssim_{i,t} = SSIM(x̂_{i,t}, x_{i,t}), 11×11 Gaussian window, σ = 1.5, data range 1, K1 = 0.01, K2 = 0.03,
                 averaged over channels and pixels (torchmetrics' `structural_similarity_index_measure`)
    psnr_per_horizon[t] = mean_i psnr_{i,t}, ssim_per_horizon[t] = mean_i ssim_{i,t}   (over the trajectories that
                                                                                       reach step t)
    psnr, ssim = means over all (i, t)

An `evaluate` script (its shared input checks, `trajectory_inputs.py`, are copied along with it): load it with
`modeling_veltrix.evaluation.metric_loading.load_metric("frame_quality")`.
"""

import datasets
import evaluate
import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from .trajectory_inputs import MetricTexts, TrajectoryFormat, ValidatedTrajectories, per_horizon_mean

PSNR_CAP_DB = 100.0  # the PSNR of frames whose MSE is below 1e-10, identical frames included
SSIM_WINDOW = 11
SSIM_CHUNK_VALUES = 2**22  # pixel values per SSIM call (16 MB in float32): bounds its intermediate maps

_DESCRIPTION = """PSNR and SSIM (11×11 Gaussian window, σ = 1.5, data range 1) per predicted step of rollouts of frames
in [0, 1], averaged over trajectories. PSNR is capped at 100 dB (identical frames)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per trajectory the predicted frames, an (H, C, Hh, W) or (H, Hh, W) array in [0, 1] (list of
        arrays/tensors, or one stacked array/tensor); Hh and W at least 11 (the SSIM window).
    references: the true frames, same shapes, in [0, 1].
Returns:
    psnr_per_horizon (`list[float]`), ssim_per_horizon (`list[float]`): length max H, means over trajectories.
    psnr (`float`), ssim (`float`): means over all trajectories and steps.
Examples:
    >>> metric = load_metric("frame_quality")
    >>> frames = np.full((2, 1, 16, 16), 0.5)
    >>> metric.compute(predictions=[frames], references=[frames])["ssim"]
    1.0
"""

_CITATION = """@article{wang2004ssim,
  title={Image quality assessment: from error visibility to structural similarity},
  author={Wang, Zhou and Bovik, Alan C and Sheikh, Hamid R and Simoncelli, Eero P},
  journal={IEEE Transactions on Image Processing},
  volume={13}, number={4}, pages={600--612}, year={2004}
}"""


def _frames(label: str, array: np.ndarray, value) -> np.ndarray:
    """(H, C, Hh, W) or (H, Hh, W) -> (H, C, Hh, W), frames at least the SSIM window."""
    if array.ndim == 3:
        array = array[:, None]  # (H, Hh, W) -> (H, 1, Hh, W)
    if array.ndim != 4 or array.shape[0] == 0 or min(array.shape[1:]) == 0:
        raise ValueError(f"{label} must have shape (H, C, Hh, W) or (H, Hh, W), got {np.shape(value)}.")
    if min(array.shape[2:]) < SSIM_WINDOW:
        raise ValueError(
            f"{label} must have frames of at least {SSIM_WINDOW}×{SSIM_WINDOW} pixels (the SSIM "
            f"window), got {array.shape[2]}×{array.shape[3]}."
        )
    return array


class FrameQuality(ValidatedTrajectories, evaluate.Metric):
    texts = MetricTexts(_DESCRIPTION, _KWARGS_DESCRIPTION, _CITATION)
    inputs = TrajectoryFormat(
        stacked_rank_ok=lambda ndim: ndim in (4, 5),
        stacked_form=(
            "one (num_trajectories, H, C, Hh, W) or (num_trajectories, H, Hh, W) array "
            "or a list of per-trajectory arrays"
        ),
        step_shape="(H, C, Hh, W)",
        dtype=np.float32,
        # (H, C, Hh, W), every size free: nested sequences (an ArrayND feature fixes all but the first size).
        feature=datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float32"))))),
        shaped=_frames,
        unit_interval=True,
    )

    def _compute(self, predictions, references):
        predictions = [np.asarray(p, np.float32) for p in predictions]  # (H_i, C, Hh, W) per trajectory
        references = [np.asarray(r, np.float32) for r in references]
        psnrs = []
        for prediction, reference in zip(predictions, references, strict=True):
            mse = np.mean((prediction.astype(np.float64) - reference) ** 2, axis=(1, 2, 3))  # (H,)
            psnrs.append(10 * np.log10(1 / np.maximum(mse, 10 ** (-PSNR_CAP_DB / 10))))
        ssims = [None] * len(predictions)
        # Frames of the same shape go through SSIM together, about SSIM_CHUNK_VALUES values at a time: small calls
        # (one per trajectory) cost several times more on CPU, one call for everything holds every frame's maps.
        groups = {}
        for index, prediction in enumerate(predictions):
            groups.setdefault(prediction.shape[1:], []).append(index)
        for indices in groups.values():
            prediction = torch.from_numpy(np.concatenate([predictions[i] for i in indices]))  # (sum H_i, C, Hh, W)
            reference = torch.from_numpy(np.concatenate([references[i] for i in indices]))
            chunk = max(1, SSIM_CHUNK_VALUES // prediction[0].numel())  # frames per call
            ssim = torch.cat(
                [
                    # float32: SSIM's 11×11 convolutions run several times slower in float64 on CPU.
                    structural_similarity_index_measure(
                        prediction[start : start + chunk],
                        reference[start : start + chunk],
                        gaussian_kernel=True,
                        sigma=1.5,
                        kernel_size=SSIM_WINDOW,
                        data_range=1.0,
                        reduction="none",
                    )
                    for start in range(0, len(prediction), chunk)
                ]
            )  # (sum H_i,)
            for i, values in zip(indices, ssim.double().split([len(predictions[i]) for i in indices]), strict=True):
                ssims[i] = values.numpy()
        return {
            "psnr_per_horizon": per_horizon_mean(psnrs),
            "ssim_per_horizon": per_horizon_mean(ssims),
            "psnr": float(np.mean(np.concatenate(psnrs))),
            "ssim": float(np.mean(np.concatenate(ssims))),
        }
