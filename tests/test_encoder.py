"""VeltrixEncoderModel: shapes, bounded units, readout, save/load, input validation."""

import pytest
import torch
from conftest import fused_config, fused_inputs, random_frames, randomize_, tiny_encoder_config
from transformers import AutoModel

from modeling_veltrix import VeltrixEncoderModel
from modeling_veltrix.frame_units import patchify, unpatchify
from modeling_veltrix.text_units import byte_tokenize


@pytest.mark.parametrize(("layout", "units"), [("grid", 16), ("resampler", 4)])
def test_units_shape_and_bounds(layout, units):
    model = randomize_(VeltrixEncoderModel(tiny_encoder_config(unit_layout=layout)))
    frames = random_frames()
    actions = torch.randn(2, 3, 2)
    out = model(frames, actions=actions, return_loss=True)
    assert out.units.shape == (2, 3, units, 8)
    assert out.units.abs().max() <= 1.0
    assert out.reconstruction.shape == frames.shape
    assert torch.equal(out.actions, actions)
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


def rotated_(model: VeltrixEncoderModel, seed: int = 0) -> VeltrixEncoderModel:
    """Sets the fusion's Q to a random rotation, so that tests do not pass only because Q is the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.fusion.rotation.weight = torch.linalg.qr(torch.randn(16, 16, generator=generator))[0]
    return model


@pytest.mark.parametrize("layout", ["grid", "resampler"])
def test_fused_units_decompose_into_each_modality(layout):
    model = rotated_(randomize_(VeltrixEncoderModel(fused_config(unit_layout=layout)))).eval()
    inputs = fused_inputs()
    out = model(**inputs, return_loss=True)
    units_per_step = 16 if layout == "grid" else 4
    assert out.units.shape == (2, 3, units_per_step, 16)
    assert set(out.loss_terms) == {"frames", "text", "align"}
    assert out.reconstruction.shape == inputs["pixel_values"].shape
    parts = model.decompose(out.units)
    assert {name: tuple(part.shape) for name, part in parts.items()} == {
        "frames": (2, 3, units_per_step, 8),
        "text": (2, 3, 2, 4),
        "audio": (2, 3, 4, 2),
        "latent": (2, 3, units_per_step, 2),
    }
    assert parts["latent"].abs().max() < 1e-5  # unobserved dynamics: zero at encoding
    # Each block equals what that modality alone puts there: the others do not leak into it.
    text_only = model(inputs["pixel_values"], input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    torch.testing.assert_close(model.decompose(text_only.units)["text"], parts["text"], atol=1e-5, rtol=0)
    assert model.decompose(text_only.units)["audio"].abs().max() < 1e-5


def test_audio_codes_round_trip_through_the_audio_subspace():
    model = rotated_(randomize_(VeltrixEncoderModel(fused_config()))).eval()
    inputs = fused_inputs()
    with torch.no_grad():
        units = model(inputs["pixel_values"], audio_codes=inputs["audio_codes"]).units
        features = model.audio_tokenizer.features_from_codes(inputs["audio_codes"])
        same = model(inputs["pixel_values"], audio_features=features).units
        decoded_features, decoded_codes = model.decode_audio(units)
    torch.testing.assert_close(same, units)  # codes and their features are the same input
    assert torch.equal(decoded_codes, inputs["audio_codes"])
    assert ((decoded_features - features).norm() / features.norm()).item() <= 1e-5


def test_audio_waveform_is_tokenized_and_trained():
    model = VeltrixEncoderModel(fused_config())
    waveform = torch.sin(torch.arange(320) * 0.3).expand(2, 3, 320) * 0.5
    out = model(random_frames(), audio_values=waveform, return_loss=True)
    assert out.audio_codes.shape == (2, 3, 2) and out.audio_codes.dtype == torch.int64
    assert {"audio", "align"} <= set(out.loss_terms)
    out.loss.backward()
    assert model.audio_tokenizer.to_latent.weight.grad.abs().sum() > 0


def test_fused_steps_are_encoded_independently():
    model = rotated_(VeltrixEncoderModel(fused_config())).eval()
    inputs = fused_inputs(steps=4)
    permutation = torch.tensor([2, 0, 3, 1])
    permuted = {name: value[:, permutation] for name, value in inputs.items()}
    torch.testing.assert_close(model(**permuted).units, model(**inputs).units[:, permutation])


def test_num_units_keeps_the_first_resampled_units():
    model = randomize_(VeltrixEncoderModel(fused_config(unit_layout="resampler"))).eval()
    inputs = fused_inputs()
    out = model(**inputs, num_resampled_units=1)
    parts = model.decompose(out.units)
    assert parts["frames"][:, :, 1:].abs().max() < 1e-5 and parts["frames"][:, :, 0].abs().max() > 1e-3
    assert parts["text"][:, :, 1:].abs().max() > 1e-3  # num_resampled_units keeps frame units only
    assert parts["audio"].abs().max() > 1e-3
    assert out.unit_mask[0, 0].tolist() == [True, True, True, True]  # audio fills every slot
    frames_only = VeltrixEncoderModel(tiny_encoder_config(unit_layout="resampler")).eval()
    units = frames_only(random_frames(), num_resampled_units=3).units
    assert units[:, :, 3:].abs().max() == 0 and units[:, :, :3].abs().max() > 0


def test_nested_dropout_in_training():
    torch.manual_seed(0)
    model = randomize_(VeltrixEncoderModel(fused_config(unit_layout="resampler", nested_dropout=True))).train()
    frames = model.decompose(model(**fused_inputs(batch=8, steps=4)).units)["frames"]  # (8, 4, 4, 8)
    kept = (frames.abs().amax(-1) > 1e-5).sum(-1)  # units kept per step (1e-5: the float error of Q)
    assert kept.min() >= 1 and kept.max() == 4 and len(kept.unique()) > 1
    assert torch.equal(frames.abs().amax(-1) > 1e-5, torch.arange(4) < kept[..., None])  # a prefix is kept


def test_fused_save_load_identical(tmp_path):
    model = rotated_(randomize_(VeltrixEncoderModel(fused_config()))).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    inputs = fused_inputs()
    assert torch.equal(loaded(**inputs).units, model(**inputs).units)
    assert torch.equal(loaded.fusion.rotation_matrix, model.fusion.rotation_matrix)


def test_caption_head_learns_captions():
    torch.manual_seed(0)
    model = VeltrixEncoderModel(fused_config(modalities=["frames", "text"], audio_dim=0, latent_dim=4))
    captions = ["red hits left", "blue hits top", "nothing", "green hits red"]
    ids, mask = (torch.from_numpy(a).reshape(2, 2, 24) for a in byte_tokenize(captions, 24))
    frames = random_frames(2, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = model(frames, input_ids=ids, attention_mask=mask, return_loss=True).loss_terms["text"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    decoded = model.generate_captions(model(frames, input_ids=ids, attention_mask=mask).units)
    assert [c for row in decoded for c in row] == captions


@pytest.mark.parametrize(
    ("change", "argument"),
    [
        ({"input_ids": torch.ones(2, 4, 24, dtype=torch.int64)}, "input_ids"),  # T differs from the frames'
        ({"attention_mask": torch.ones(2, 3, 20, dtype=torch.int64)}, "attention_mask"),  # wrong L
        ({"input_ids": torch.full((2, 3, 24), 300)}, "input_ids"),  # not a byte
        ({"attention_mask": torch.zeros(2, 3, 24, dtype=torch.int64)}, "attention_mask"),  # empty captions
        ({"audio_codes": torch.zeros(2, 3, 5, dtype=torch.int64)}, "audio_codes"),  # wrong K
        ({"audio_codes": torch.full((2, 3, 2), 16)}, "audio_codes"),  # out of range
        ({"audio_codes": torch.full((2, 3, 2), -1)}, "audio_codes"),
        ({"audio_codes": torch.zeros(2, 3, 2)}, "audio_codes"),  # float codes
        ({"audio_codes": None, "audio_features": torch.zeros(2, 3, 2, 4)}, "audio_features"),  # wrong V
        ({"audio_codes": None, "audio_features": torch.zeros(2, 2, 2, 3)}, "audio_features"),  # T differs
        ({"audio_features": torch.zeros(2, 3, 2, 3)}, "audio_"),  # two audio inputs
        ({"audio_codes": None, "audio_values": torch.zeros(2, 3, 100)}, "audio_values"),
        ({"num_resampled_units": 5}, "num_resampled_units"),
    ],
)
def test_bad_multimodal_inputs(change, argument):
    model = VeltrixEncoderModel(fused_config(unit_layout="resampler"))
    inputs = {**fused_inputs(), **change}
    with pytest.raises(ValueError, match=argument):
        model(**inputs)


def test_frames_only_encoder_rejects_other_modalities():
    model = VeltrixEncoderModel(tiny_encoder_config())
    with pytest.raises(ValueError, match="text"):
        model(random_frames(), input_ids=torch.ones(2, 3, 8, dtype=torch.int64), attention_mask=torch.ones(2, 3, 8))
    with pytest.raises(ValueError, match="num_resampled_units"):
        model(random_frames(), num_resampled_units=2)  # grid units are not resampled
    with pytest.raises(ValueError, match="decompose"):
        model.decompose(torch.zeros(2, 3, 16, 8))


@pytest.mark.parametrize(
    ("overrides", "argument"),
    [
        ({"latent_dim": 3}, "unit_dim"),  # blocks do not add up
        ({"modalities": ["text", "frames"]}, "modalities"),
        ({"modalities": ["frames", "smell"]}, "modalities"),
        ({"num_audio_units": 2}, "num_audio_units"),  # 2 * 2 < K * V = 6: not injective
        ({"num_text_units": 17}, "num_text_units"),
        ({"fusion_orthogonal_map": "householder"}, "fusion_orthogonal_map"),
    ],
)
def test_bad_multimodal_config(overrides, argument):
    with pytest.raises(ValueError, match=argument):
        fused_config(**overrides)
