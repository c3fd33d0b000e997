"""VeltrixEncoderModel: shapes, bounded units, readout, save/load, input validation."""

import pytest
import torch
from conftest import random_frames, randomize_, tiny_encoder_config
from transformers import AutoModel

from modeling_veltrix import VeltrixEncoderModel
from modeling_veltrix.modeling_veltrix_encoder import patchify, unpatchify


@pytest.mark.parametrize(("layout", "units"), [("grid", 16), ("resampler", 4)])
def test_units_shape_and_bounds(layout, units):
    model = randomize_(VeltrixEncoderModel(tiny_encoder_config(unit_layout=layout)))
    frames = random_frames()
    actions = torch.randn(2, 3, 2)
    out = model(frames, actions=actions, return_loss=True)
    assert out.units.shape == (2, 3, units, 8)
    assert out.units.abs().max() <= 1.0
    assert out.reconstruction.shape == frames.shape
    assert torch.equal(out.conditions, actions)
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.reconstruction, frames))


def test_steps_are_encoded_independently():
    model = VeltrixEncoderModel(tiny_encoder_config()).eval()
    frames = random_frames(steps=4)
    permutation = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(model(frames[:, permutation]).units, model(frames).units[:, permutation])


def test_patchify_inverse():
    frames = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(unpatchify(patchify(frames, 4), 4, 3), frames)


def test_save_load_identical(tmp_path):
    model = randomize_(VeltrixEncoderModel(tiny_encoder_config(unit_layout="resampler"))).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, VeltrixEncoderModel)
    frames = random_frames()
    assert torch.equal(loaded(frames).units, model(frames).units)


def test_reconstruction_learns():
    torch.manual_seed(0)
    model = VeltrixEncoderModel(tiny_encoder_config())
    coarse = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    frames = torch.nn.functional.interpolate(coarse, size=16, mode="bilinear").reshape(4, 2, 3, 16, 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model(frames, return_loss=True).loss.item()
    for _ in range(60):
        loss = model(frames, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first


@pytest.mark.parametrize(
    ("frames", "argument"),
    [
        (torch.zeros(2, 3, 16, 16), "pixel_values"),  # missing time axis
        (torch.zeros(2, 3, 1, 16, 16), "pixel_values"),  # wrong channels
        (torch.zeros(2, 3, 3, 8, 8), "pixel_values"),  # wrong size
        (torch.full((1, 2, 3, 16, 16), float("nan")), "pixel_values"),
        (torch.full((1, 2, 3, 16, 16), 255.0), "pixel_values"),  # not in [-1, 1]
        (torch.zeros(1, 2, 3, 16, 16, dtype=torch.int64), "pixel_values"),
    ],
)
def test_bad_frames(frames, argument):
    model = VeltrixEncoderModel(tiny_encoder_config())
    with pytest.raises(ValueError, match=argument):
        model(frames)


def test_bad_actions():
    model = VeltrixEncoderModel(tiny_encoder_config())
    with pytest.raises(ValueError, match="actions"):
        model(random_frames(), actions=torch.zeros(2, 3, 5))
