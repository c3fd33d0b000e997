"""The blur-proof rollout metrics on synthetic frames of bright squares on black: persistence of objects, sharpness
against blurred copies, best-of-K chosen per sequence, and the input checks."""

import pytest
import torch
import torch.nn.functional as F

from modeling_veltrix.evaluation.sample_metrics import (
    best_and_mean_of_k_error,
    foreground_masks,
    high_frequency_energy,
    object_persistence,
    sharpness_ratio,
)

SIZE = 16


def squares(*boxes: tuple[int, int, int, int]) -> torch.Tensor:
    """One frame (3, SIZE, SIZE) on black with a white rectangle (row, col, height, width) per box."""
    frame = torch.full((3, SIZE, SIZE), -1.0)
    for row, col, height, width in boxes:
        frame[:, row : row + height, col : col + width] = 1.0
    return frame


def frames(*steps: torch.Tensor) -> torch.Tensor:
    """One trajectory (1, H, 3, SIZE, SIZE) of the given frames."""
    return torch.stack(steps).unsqueeze(0)


def moving_truth() -> torch.Tensor:
    """Two trajectories of three steps (2, 3, 3, SIZE, SIZE): two squares passing each other, one square falling."""
    two = [squares((2, 2 + t, 4, 4), (10, 10 - t, 4, 4)) for t in range(3)]
    one = [squares((3 + 2 * t, 6, 4, 4)) for t in range(3)]
    return torch.cat([frames(*two), frames(*one)])


def blur(video: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of `video` (N, H, C, Hi, Wi) in [-1, 1], on black (zero padding in [0, 1])."""
    radius = int(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    line = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = torch.outer(line, line) / line.sum() ** 2
    flat = ((video + 1) / 2).reshape(-1, 1, *video.shape[-2:])
    blurred = F.conv2d(flat, kernel.view(1, 1, *kernel.shape), padding=radius)
    return (blurred * 2 - 1).reshape(video.shape)


def test_foreground_takes_the_brightest_channel():
    frame = torch.full((1, 1, 3, 2, 2), -1.0)
    frame[0, 0, 1, 0, 0] = 0.0  # brightness 0.5 in one channel only
    assert foreground_masks(frame).flatten().tolist() == [True, False, False, False]
    assert not foreground_masks(frame, threshold=0.6).any()


def test_exact_copy_persists_and_is_as_sharp():
    truth = moving_truth()
    assert object_persistence(truth.clone(), truth).all()
    assert torch.equal(sharpness_ratio(truth.clone(), truth), torch.ones(3))


def test_blurred_copy_is_less_sharp_and_a_dissolved_one_does_not_persist():
    truth = moving_truth()
    assert (sharpness_ratio(blur(truth, 1.0), truth) < 0.8).all()
    hazy = blur(truth, 3.0)
    assert not foreground_masks(hazy).any()
    assert not object_persistence(hazy, truth).any()


def test_a_removed_object_fails():
    truth = moving_truth()
    predicted = truth.clone()
    predicted[1, 2] = -1.0
    predicted[0, 1] = squares((2, 3, 4, 4))
    expected = torch.ones(2, 3, dtype=torch.bool)
    expected[1, 2] = expected[0, 1] = False
    assert torch.equal(object_persistence(predicted, truth), expected)


def test_the_component_count_catches_merged_and_split_objects_of_equal_mass():
    truth = frames(squares((2, 2, 4, 4), (2, 10, 4, 4)), squares((6, 6, 4, 4)))
    merged = squares((2, 2, 4, 8))  # one object of the mass of two
    split = squares((6, 6, 2, 4), (9, 6, 2, 4))  # two halves with a gap: the mass of one
    assert object_persistence(frames(merged, split), truth).tolist() == [[False, False]]
    assert object_persistence(frames(merged, split), truth, mass_tolerance=0.0).tolist() == [[False, False]]


def test_components_are_8_connected_and_specks_are_ignored():
    truth = frames(squares((2, 2, 4, 8)), squares((6, 6, 4, 4)))
    diagonal = squares((2, 2, 4, 4), (6, 6, 4, 4))  # touching at a corner: one object
    speck = squares((6, 6, 4, 4), (0, 15, 1, 1))
    assert object_persistence(frames(diagonal, speck), truth).tolist() == [[True, True]]
    assert object_persistence(frames(diagonal, speck), truth, min_component_pixels=1).tolist() == [[True, False]]


def test_mass_tolerance_is_relative_and_an_empty_truth_needs_an_empty_prediction():
    truth = frames(squares((2, 2, 4, 4)), squares())
    predicted = frames(squares((2, 2, 4, 6)), squares((2, 2, 1, 2)))  # 24 pixels for 16, 2 for 0
    assert object_persistence(predicted, truth, mass_tolerance=0.5).tolist() == [[True, False]]
    assert object_persistence(predicted, truth, mass_tolerance=0.4).tolist() == [[False, False]]


def test_high_frequency_energy_of_a_point():
    frame = torch.full((1, 1, 2, 5, 5), -1.0)
    frame[..., 2, 2] = 1.0  # Laplacian response -4 at the point, 1 at its 4 neighbours, over a 3 x 3 valid region
    assert torch.allclose(high_frequency_energy(frame), torch.tensor([[20 / 9]]))
    assert torch.equal(high_frequency_energy(torch.zeros(2, 3, 1, 4, 4)), torch.zeros(2, 3))


def test_sharpness_ratio_is_nan_where_the_truth_has_no_energy():
    truth = moving_truth()
    truth[:, 0] = -1.0
    ratio = sharpness_ratio(blur(truth, 1.0), truth)
    assert ratio[0].isnan() and (ratio[1:] < 0.8).all()


def test_best_of_k_picks_the_true_sample():
    truth = moving_truth()
    samples = torch.rand(2, 3, *truth.shape[1:]) * 2 - 1
    samples[0, 1], samples[1, 2] = truth[0], truth[1]
    best, mean, best_index = best_and_mean_of_k_error(samples, truth)
    assert best_index.tolist() == [1, 2]
    assert torch.equal(best, torch.zeros(3))
    assert (mean > 0).all()


def test_best_of_k_is_chosen_per_sequence_not_per_step():
    truth = torch.zeros(1, 2, 1, 2, 2)
    samples = torch.zeros(1, 2, 2, 1, 2, 2)
    samples[0, 0, 1] = 1.0  # errors [0, 0.25]: best at step 0, worst over the horizon
    samples[0, 1] = 0.5  # errors [0.0625, 0.0625]
    best, mean, best_index = best_and_mean_of_k_error(samples, truth)
    assert best_index.tolist() == [1]
    assert torch.allclose(best, torch.tensor([0.0625, 0.0625]))
    assert torch.allclose(mean, torch.tensor([0.03125, 0.15625]))


def test_best_of_k_is_at_most_mean_of_k_over_the_horizon():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        samples = torch.rand(4, 5, 6, 2, 3, 3, generator=generator) * 2 - 1
        truth = torch.rand(4, 6, 2, 3, 3, generator=generator) * 2 - 1
        best, mean, best_index = best_and_mean_of_k_error(samples, truth)
        assert best.shape == mean.shape == (6,) and best_index.shape == (4,)
        assert best.mean() <= mean.mean() + 1e-7


GOOD = torch.zeros(2, 3, 1, 4, 4)
NAN = GOOD.clone().index_fill_(0, torch.tensor([1]), torch.nan)
SAMPLES = torch.zeros(2, 2, 3, 1, 4, 4)


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: foreground_masks(GOOD[0]), "frames"),
        (lambda: foreground_masks(GOOD.long()), "frames"),
        (lambda: foreground_masks(NAN), "frames"),
        (lambda: foreground_masks(GOOD[:0]), "frames"),
        (lambda: foreground_masks(GOOD, threshold=0.0), "threshold"),
        (lambda: foreground_masks(GOOD, threshold=1.0), "threshold"),
        (lambda: object_persistence(GOOD[0], GOOD), "predicted"),
        (lambda: object_persistence(NAN, GOOD), "predicted"),
        (lambda: object_persistence(GOOD, NAN), "truth"),
        (lambda: object_persistence(GOOD, GOOD[:, :2]), "truth"),
        (lambda: object_persistence(GOOD, GOOD, mass_tolerance=-0.1), "mass_tolerance"),
        (lambda: object_persistence(GOOD, GOOD, mass_tolerance=float("nan")), "mass_tolerance"),
        (lambda: object_persistence(GOOD, GOOD, threshold=1.5), "threshold"),
        (lambda: object_persistence(GOOD, GOOD, min_component_pixels=0), "min_component_pixels"),
        (lambda: high_frequency_energy(GOOD[0]), "frames"),
        (lambda: high_frequency_energy(GOOD.clone().fill_(torch.inf)), "frames"),
        (lambda: high_frequency_energy(GOOD[..., :2]), "frames"),
        (lambda: sharpness_ratio(GOOD[0], GOOD), "predicted"),
        (lambda: sharpness_ratio(NAN, GOOD), "predicted"),
        (lambda: sharpness_ratio(GOOD, GOOD[..., :3]), "truth"),
        (lambda: sharpness_ratio(GOOD[..., :2], GOOD[..., :2]), "truth"),
        (lambda: best_and_mean_of_k_error(GOOD, GOOD), "samples"),
        (lambda: best_and_mean_of_k_error(SAMPLES[:, :0], GOOD), "samples"),
        (lambda: best_and_mean_of_k_error(SAMPLES.clone().fill_(torch.nan), GOOD), "samples"),
        (lambda: best_and_mean_of_k_error(SAMPLES, NAN), "truth"),
        (lambda: best_and_mean_of_k_error(SAMPLES, GOOD[:1]), "truth"),
        (lambda: best_and_mean_of_k_error(SAMPLES, GOOD[:, :2]), "truth"),
    ],
)
def test_bad_inputs_name_the_argument_the_expected_and_the_found(call, argument):
    with pytest.raises(ValueError, match=rf"^{argument}: expected .+, found .+"):
        call()
