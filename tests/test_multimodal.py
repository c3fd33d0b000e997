"""Multimodal states end to end: alignment loss details, the pipeline's `output_modalities`, and the encoder and
evolver stages on the speaking, captioning world."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import fused_config, fused_inputs, random_frames, randomize_, tiny_decoder, tiny_evolver_config
from diffusers import FlowMatchEulerDiscreteScheduler

from modeling_veltrix import VeltrixEncoderModel, VeltrixEvolverModel, VeltrixPipeline
from modeling_veltrix.evaluation import (
    caption_scores,
    evaluate_encoded_modalities,
    evaluate_future_modalities,
    retrieval_r1,
)
from modeling_veltrix.modeling_veltrix_encoder import identical_rows, info_nce
from modeling_veltrix.text_units import caption_targets
from modeling_veltrix.training import VeltrixEvolverStage, VeltrixTrainingRecipe, build_datasets, train_stage
from modeling_veltrix.worlds import caption_event

UNIT_DIM, FRAME_DIM = 16, 8


def test_info_nce_leaves_duplicates_out_of_the_negatives():
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(4, 6, generator=generator), torch.randn(4, 6, generator=generator)
    captions = torch.tensor([[1, 2], [1, 2], [3, 4], [5, 6]])  # steps 0 and 1 share their caption
    scale = torch.tensor(5.0)
    masked = info_nce(first, second, scale, identical_rows(captions))
    logits = scale * F.normalize(first, dim=-1) @ F.normalize(second, dim=-1).T
    logits[0, 1] = logits[1, 0] = float("-inf")
    targets = torch.arange(4)
    expected = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
    torch.testing.assert_close(masked, expected)
    assert not torch.isclose(masked, info_nce(first, second, scale))


def test_caption_targets_keep_the_end_byte_only():
    ids = torch.tensor([[104, 105, 0, 0, 0], [120, 0, 0, 0, 0], [97, 98, 99, 100, 101]])
    assert caption_targets(ids).tolist() == [
        [104, 105, 0, -100, -100],
        [120, 0, -100, -100, -100],
        [97, 98, 99, 100, 101],
    ]


def test_text_units_ignore_padding_past_the_caption():
    model = randomize_(VeltrixEncoderModel(fused_config())).eval()
    inputs = fused_inputs()
    ids, mask = inputs["input_ids"].flatten(0, 1), inputs["attention_mask"].flatten(0, 1)
    full = model.text_encoder(ids, mask)
    cut = model.text_encoder(ids[:, :21], mask[:, :21])  # the captions hold 20 bytes
    torch.testing.assert_close(cut, full)


def fused_pipeline() -> VeltrixPipeline:
    torch.manual_seed(0)
    encoder = randomize_(VeltrixEncoderModel(fused_config())).eval()
    evolver = randomize_(VeltrixEvolverModel(tiny_evolver_config(unit_dim=UNIT_DIM))).eval()
    decoder = tiny_decoder(cross_attention_dim=FRAME_DIM).eval()
    pipe = VeltrixPipeline(
        encoder=encoder, evolver=evolver, decoder=decoder, scheduler=FlowMatchEulerDiscreteScheduler()
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_pipeline_reads_every_modality_back_from_the_evolved_states():
    pipe = fused_pipeline()
    inputs = fused_inputs()
    context = {name: value for name, value in inputs.items() if name != "pixel_values"}
    out = pipe(
        inputs["pixel_values"],
        **context,
        num_future_steps=2,
        num_inference_steps=2,
        output_type="pt",
        output_modalities=("frames", "audio", "text"),
    )
    assert out.frames.shape == (2, 2, 3, 16, 16)
    assert out.units.shape == (2, 2, 16, UNIT_DIM)
    assert len(out.captions) == 2 and all(
        len(row) == 2 and all(isinstance(c, str) for c in row) for row in out.captions
    )
    assert out.captions == pipe.encoder.generate_captions(out.units)
    features, codes = pipe.encoder.decode_audio(out.units)
    assert out.audio_features.shape == (2, 2, 2, 3) and torch.equal(out.audio_features, features)
    assert out.audio_codes.shape == (2, 2, 2) and torch.equal(out.audio_codes, codes)
    # Without "frames", nothing is rendered; the captions are the same.
    text_only = pipe(
        inputs["pixel_values"], **context, num_future_steps=2, output_type="latent", output_modalities=("text",)
    )
    assert text_only.frames is None and text_only.audio_codes is None
    assert text_only.captions == out.captions


def test_pipeline_decoder_reads_only_the_frame_subspace():
    pipe = fused_pipeline()
    units = torch.randn(3, 16, UNIT_DIM)
    latents = torch.randn(3, 3, 16, 16)
    parts = pipe.encoder.fusion.decompose(units)
    parts["text"] = torch.randn_like(parts["text"])  # another caption
    other = pipe.encoder.fusion.fuse(parts, 16)
    decoded = pipe.decode_units(units, 2, latents=latents)
    torch.testing.assert_close(pipe.decode_units(other, 2, latents=latents), decoded)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"output_modalities": ("frames", "smell")}, "output_modalities"),
        ({"output_modalities": ()}, "output_modalities"),
        ({"output_modalities": ("text", "text")}, "output_modalities"),
        ({"output_modalities": "text"}, "output_modalities"),
        ({"input_ids": torch.ones(2, 4, 24, dtype=torch.int64)}, "input_ids"),  # T differs from the frames'
        ({"audio_codes": torch.full((2, 3, 2), 99)}, "audio_codes"),  # out of the codebook
    ],
)
def test_pipeline_rejects_bad_multimodal_arguments(kwargs, argument):
    pipe = fused_pipeline()
    if "input_ids" in kwargs:
        kwargs["attention_mask"] = torch.ones_like(kwargs["input_ids"])
    with pytest.raises(ValueError, match=argument):
        pipe(random_frames(), num_future_steps=1, output_type="latent", **kwargs)


def test_frames_only_pipeline_rejects_text_output(tiny_pipeline):
    with pytest.raises(ValueError, match="output_modalities"):
        tiny_pipeline(random_frames(), num_future_steps=1, output_modalities=("frames", "text"))


def speaking_recipe(tmp_path) -> VeltrixTrainingRecipe:
    stage = {"max_steps": 2, "batch_size": 2, "save_steps": 2, "warmup_steps": 0}
    return VeltrixTrainingRecipe(
        world_options={
            "audio": True,
            "captions": True,
            "caption_length": 24,
            "image_size": 16,
            "num_balls": 1,
            "ball_radius": 2.0,
        },
        num_train_trajectories=4,
        num_eval_trajectories=2,
        trajectory_length=6,
        context_length=2,
        rollout_window=2,
        decoder_frames_per_trajectory=2,
        encoder=stage,
        evolver=stage,
    )


def test_encoder_and_evolver_stages_train_on_the_speaking_world(tmp_path):
    recipe = speaking_recipe(tmp_path)
    train, _ = build_datasets(recipe)
    assert {"input_ids", "attention_mask", "audio_values"} <= set(train.column_names)
    window = train[0]["audio_values"].shape[-1]
    torch.manual_seed(0)
    encoder = VeltrixEncoderModel(fused_config(audio_window=window, audio_sample_rate=16000))
    evolver = VeltrixEvolverModel(tiny_evolver_config(unit_dim=UNIT_DIM))
    models = (encoder, evolver, tiny_decoder(cross_attention_dim=FRAME_DIM))
    before = {name: value.clone() for name, value in encoder.text_encoder.state_dict().items()}
    metrics = train_stage("encoder", models, train, recipe, str(tmp_path), resume=False)
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    changed = [
        name for name, value in encoder.text_encoder.state_dict().items() if not torch.equal(value, before[name])
    ]
    assert changed, "the encoder stage must train the text encoder on the captions"
    metrics = train_stage("evolver", models, train, recipe, str(tmp_path), resume=False)
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert (tmp_path / "encoder" / "model.safetensors").exists() and (tmp_path / "evolver").is_dir()


def test_future_modalities_evaluation(tmp_path, tiny_pipeline):
    recipe = speaking_recipe(tmp_path)
    _, held_out = build_datasets(recipe)
    window = held_out[0]["audio_values"].shape[-1]
    torch.manual_seed(0)
    encoder = randomize_(VeltrixEncoderModel(fused_config(audio_window=window))).eval()
    evolver = randomize_(VeltrixEvolverModel(tiny_evolver_config(unit_dim=UNIT_DIM))).eval()
    pipe = VeltrixPipeline(
        encoder=encoder,
        evolver=evolver,
        decoder=tiny_decoder(cross_attention_dim=FRAME_DIM).eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    results = evaluate_future_modalities(pipe, held_out, context_length=2, num_future_steps=3)
    future_captions = [c for row in held_out["captions"] for c in row[2:5]]
    quiet = sum(caption_event(c) == "nothing happens" for c in future_captions) / len(future_captions)
    assert results["caption_majority_class_rate"] == pytest.approx(quiet)
    assert len(results["caption_event_accuracy_by_horizon"]) == 3
    assert results["caption_event_accuracy"] == pytest.approx(np.mean(results["caption_event_accuracy_by_horizon"]))
    assert 0.0 <= results["audio_code_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="encoder"):
        evaluate_future_modalities(tiny_pipeline, held_out, context_length=2, num_future_steps=3)
    with pytest.raises(ValueError, match="num_samples"):
        evaluate_future_modalities(pipe, held_out, context_length=2, num_future_steps=3, num_samples=2)


def test_future_modalities_of_sampled_futures(tmp_path):
    recipe = speaking_recipe(tmp_path)
    _, held_out = build_datasets(recipe)
    window = held_out[0]["audio_values"].shape[-1]
    torch.manual_seed(0)
    encoder = randomize_(VeltrixEncoderModel(fused_config(audio_window=window))).eval()
    evolver = VeltrixEvolverModel(tiny_evolver_config(unit_dim=UNIT_DIM, sampling_head_layers=1))
    pipe = VeltrixPipeline(
        encoder=encoder,
        evolver=randomize_(evolver, std=0.5).eval(),
        decoder=tiny_decoder(cross_attention_dim=FRAME_DIM).eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    arguments = (pipe, held_out, 2, 2)
    sampled = evaluate_future_modalities(*arguments, num_samples=3, seed=5)
    assert sampled == evaluate_future_modalities(*arguments, num_samples=3, seed=5)
    assert sampled["num_samples"] == 3 and sampled["num_trajectories"] == len(held_out)
    future_captions = [c for row in held_out["captions"] for c in row[2:4]]
    quiet = sum(caption_event(c) == "nothing happens" for c in future_captions) / len(future_captions)
    assert sampled["caption_majority_class_rate"] == pytest.approx(quiet)  # each sample against its own truth
    if sampled["caption_event_accuracy_on_event_steps"] is not None:
        assert sampled["caption_event_recall_any_of_k"] >= sampled["caption_event_accuracy_on_event_steps"]
    assert "caption_event_recall_any_of_k" not in evaluate_future_modalities(*arguments)


def test_retrieval_picks_the_most_similar_key():
    keys = torch.eye(4)
    queries = torch.tensor([[1.0, 0.1, 0, 0], [0, 0, 0, 2.0], [0, 0, 3.0, 0.5], [0, 1.0, 0, 0]])
    assert retrieval_r1(queries, keys).tolist() == [0, 3, 2, 1]


def test_caption_scores():
    truth = np.array(
        [["nothing happens. red is top.", "the red ball hits the top wall. red is top."]] * 2, dtype=object
    )
    decoded = np.array(
        [
            ["nothing happens. red is left.", "the red ball hits the top wall. red is top."],
            ["the red ball hits the left wall. red is top.", "nothing happens. red is top."],
        ],
        dtype=object,
    )
    scores = caption_scores(decoded, truth)
    assert scores["caption_event_accuracy"] == 0.5
    assert scores["caption_event_accuracy_on_event_steps"] == 0.5
    assert scores["caption_majority_class_rate"] == 0.5
    assert scores["caption_exact_match"] == 0.25
    assert scores["caption_event_accuracy_by_horizon"] == [0.5, 0.5]
    # The two rows as two samples of one trajectory: the eventful step is captioned right by one of them.
    assert caption_scores(decoded, truth, num_samples=2)["caption_event_recall_any_of_k"] == 1.0
    assert caption_scores(decoded[::-1], truth, num_samples=1).get("caption_event_recall_any_of_k") is None
    with pytest.raises(ValueError, match="num_samples"):
        caption_scores(decoded[:1], truth[:1], num_samples=2)


def test_encoded_modalities_evaluation(tmp_path):
    recipe = speaking_recipe(tmp_path)
    _, held_out = build_datasets(recipe)
    window = held_out[0]["audio_values"].shape[-1]
    encoder = randomize_(VeltrixEncoderModel(fused_config(audio_window=window))).eval()
    data = held_out[:]
    captions = [c for row in data["captions"] for c in row]
    results = evaluate_encoded_modalities(encoder, data, data["captions"])
    assert results["num_held_out_steps"] == len(captions) == 12
    assert results["retrieval_chance"] == pytest.approx(1 / 12)
    assert results["retrieval_r1_text_to_frame_same_caption"] >= results["retrieval_r1_text_to_frame"]
    assert results["distinct_captions"] == len(set(captions))
    assert results["audio_code_recovery_from_subspace"] == 1.0  # D_audio inverts φ_audio exactly


def test_evolver_stage_adds_the_caption_loss_of_predicted_states(tmp_path):
    recipe = speaking_recipe(tmp_path)
    train, _ = build_datasets(recipe)
    window = train[0]["audio_values"].shape[-1]
    encoder = randomize_(VeltrixEncoderModel(fused_config(audio_window=window)))
    stage = VeltrixEvolverStage(encoder, VeltrixEvolverModel(tiny_evolver_config(unit_dim=UNIT_DIM)), recipe)
    columns = ("pixel_values", "timestamps", "actions", "input_ids", "attention_mask", "audio_values")
    batch = {name: train[:2][name] for name in columns}
    losses = {}
    for weight in (0.0, 1.0):
        recipe.caption_loss_weight = weight
        torch.manual_seed(0)
        losses[weight] = stage(**batch)["loss"].item()
    torch.manual_seed(0)
    without_captions = stage(**{k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")})["loss"]
    assert losses[1.0] > losses[0.0] + 1.0  # byte cross-entropy of an untrained head: several nats
    assert without_captions.item() != losses[1.0]
