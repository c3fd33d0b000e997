"""Rollout evaluation: per-horizon error of Veltrix against copy-last-frame and mean-of-context baselines.

All errors are per future step `h = 1 … H`, averaged over held-out trajectories: mean squared errors in pixel space
(frames in [-1, 1]) and in latent space (the encoder's units of the true future frames), and the image quality (PSNR,
SSIM) of the predicted frames.
"""

from dataclasses import dataclass

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from tqdm.auto import tqdm

from ..pipeline_veltrix import VeltrixPipeline
from ..training import MODALITY_COLUMNS, observed_modalities
from ..worlds import caption_event

PREDICTORS = ("veltrix", "copy_last", "mean_frame")


@dataclass
class RolloutEvaluation:
    """The errors of every predictor (`PREDICTORS`) per horizon over N trajectories, and the frames of a few of them.

    pixel_mse, latent_mse: predictor -> `(H,)` mean squared error per horizon, the sum over the N trajectories / N.
    true_frames, predicted_frames: `(K, H, C, h, w)` in [-1, 1], the true and Veltrix's future frames of the first
        `K = min(num_example_trajectories, N)` trajectories.
    context_frames: `(K, T, C, h, w)` in [-1, 1], their context frames.
    psnr, ssim: predictor -> `(H,)` mean per-image PSNR (dB) and SSIM per horizon over the N trajectories (infinite
        PSNR where a prediction equals the truth exactly).
    pixel_mse_per_trajectory: `(N,)` Veltrix's pixel MSE of each trajectory, over all H horizons.
    num_trajectories: N.
    """

    pixel_mse: dict[str, np.ndarray]
    latent_mse: dict[str, np.ndarray]
    true_frames: torch.Tensor
    predicted_frames: torch.Tensor
    context_frames: torch.Tensor
    psnr: dict[str, np.ndarray]
    ssim: dict[str, np.ndarray]
    pixel_mse_per_trajectory: np.ndarray
    num_trajectories: int


def per_horizon_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, H, ...) x (N, H, ...) -> (N, H): MSE per trajectory and horizon."""
    return (prediction - target).pow(2).flatten(2).mean(-1)


def per_horizon_image_quality(prediction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, C, h, w) x (N, H, C, h, w) in [-1, 1] -> PSNR (dB) and SSIM per image, each (N, H); the metrics of
    `image_quality`, image by image."""
    x = (prediction.clamp(-1, 1).flatten(0, 1) + 1) / 2  # (N·H, C, h, w) in [0, 1]
    y = (target.flatten(0, 1) + 1) / 2
    psnr = peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(x, y, data_range=1.0, reduction="none")
    return psnr.view(prediction.shape[:2]), ssim.view(prediction.shape[:2])


@torch.no_grad()
def evaluate_rollouts(
    pipeline: VeltrixPipeline,
    dataset: datasets.Dataset,
    context_length: int,
    num_future_steps: int,
    num_inference_steps: int = 8,
    seed: int = 0,
    batch_size: int = 16,
    num_example_trajectories: int = 4,
) -> RolloutEvaluation:
    """Rolls the pipeline out from the first `context_length` steps of every trajectory of `dataset` (torch
    format) for `num_future_steps` steps, with the trajectory's own timestamps and actions (none when `dataset` has
    no `actions` column: the evolver's null condition), and measures errors.

    Memory does not grow with the dataset: per batch, the errors are added into per-horizon sums, and only the
    frames of the first `num_example_trajectories` trajectories are kept (for pictures of rollouts).
    The decoder's noise for batch `i` comes from `torch.Generator().manual_seed(seed + i)`.
    """
    total_length = context_length + num_future_steps
    if len(dataset) == 0:
        raise ValueError("`dataset` must hold at least one trajectory, got 0.")
    if num_example_trajectories < 0:
        raise ValueError(f"`num_example_trajectories` must be >= 0, got {num_example_trajectories}.")
    available = dataset[0]["pixel_values"].shape[0]
    if total_length > available:
        raise ValueError(
            f"`context_length + num_future_steps` must be <= the trajectory length {available}, got {total_length}."
        )
    sums = {
        metric: {name: torch.zeros(num_future_steps, dtype=torch.float64) for name in PREDICTORS}
        for metric in ("pixel_mse", "latent_mse", "psnr", "ssim")
    }
    per_trajectory, truths, predictions, contexts = [], [], [], []
    kept = 0
    encoder = pipeline.encoder
    for index, start in enumerate(tqdm(range(0, len(dataset), batch_size), desc="evaluating rollouts")):
        batch = dataset[start : start + batch_size]
        frames = batch["pixel_values"][:, :total_length]
        context, future = frames[:, :context_length], frames[:, context_length:]
        observed = observed_modalities(encoder, batch)
        context_observed = {name: value[:, :context_length] for name, value in observed.items()}
        future_observed = {name: value[:, context_length:total_length] for name, value in observed.items()}
        conditions = {name: batch[name][:, :total_length] for name in ("actions", "timestamps") if name in batch}
        output = pipeline(
            context,
            **context_observed,
            **conditions,
            num_future_steps=num_future_steps,
            num_inference_steps=num_inference_steps,
            generator=torch.Generator().manual_seed(seed + index),
            output_type="pt",
        )
        predicted = output.frames.cpu() * 2.0 - 1.0
        baselines = {
            "veltrix": predicted,
            "copy_last": context[:, -1:].expand_as(future),
            "mean_frame": context.mean(dim=1, keepdim=True).expand_as(future),
        }
        context_units = encoder(context.to(encoder.device), **context_observed).units.cpu()
        future_units = encoder(future.to(encoder.device), **future_observed).units.cpu()
        latent_predictions = {
            "veltrix": output.units.cpu(),
            "copy_last": context_units[:, -1:].expand_as(future_units),
            "mean_frame": context_units.mean(dim=1, keepdim=True).expand_as(future_units),
        }
        for name in PREDICTORS:
            pixel = per_horizon_mse(baselines[name], future)  # (B, H)
            psnr, ssim = per_horizon_image_quality(baselines[name], future)
            sums["pixel_mse"][name] += pixel.double().sum(0)
            sums["latent_mse"][name] += per_horizon_mse(latent_predictions[name], future_units).double().sum(0)
            sums["psnr"][name] += psnr.double().sum(0)
            sums["ssim"][name] += ssim.double().sum(0)
            if name == "veltrix":
                per_trajectory.append(pixel.double().mean(1))
        take = min(num_example_trajectories - kept, len(future))
        if take > 0:
            truths.append(future[:take])
            predictions.append(predicted[:take])
            contexts.append(context[:take])
            kept += take
    count = len(dataset)
    averages = {metric: {name: (value / count).numpy() for name, value in sums[metric].items()} for metric in sums}
    if not truths:  # no examples asked for: empty tensors of the frames' shapes
        truths, predictions, contexts = [future[:0]], [predicted[:0]], [context[:0]]
    return RolloutEvaluation(
        pixel_mse=averages["pixel_mse"],
        latent_mse=averages["latent_mse"],
        true_frames=torch.cat(truths),
        predicted_frames=torch.cat(predictions),
        context_frames=torch.cat(contexts),
        psnr=averages["psnr"],
        ssim=averages["ssim"],
        pixel_mse_per_trajectory=torch.cat(per_trajectory).numpy(),
        num_trajectories=count,
    )


@torch.no_grad()
def evaluate_future_modalities(
    pipeline: VeltrixPipeline,
    dataset: datasets.Dataset,
    context_length: int,
    num_future_steps: int,
    batch_size: int = 16,
    num_samples: int | None = None,
    seed: int = 0,
) -> dict:
    """Reads captions and audio back from the evolved future states of held-out trajectories of a speaking,
    captioning world (`dataset` in torch format with `captions`, `input_ids`, `attention_mask`, `audio_values`), with
    the context's frames, captions and audio observed and the trajectory's own actions and timestamps.

    Returns, for the modalities the encoder models: the event clause accuracy of the future captions (all steps,
    steps where something happens, and the majority-class rate "nothing happens" for reference), the accuracy of the
    whole caption, and the agreement of the future audio codes with the codes of the true future audio; each also
    per horizon `h = 1 … num_future_steps`.

    With `num_samples = K` the evolver samples K futures per context (`sample=True`, noise from `seed`) and every
    score is over all K samples (each sample scored against its trajectory's truth); the captions' scores then also
    hold `caption_event_recall_any_of_k`: the fraction of eventful steps that at least one of the K samples captions
    right. Without it (the default) the evolver's mean prediction is read.
    """
    if num_samples is not None and not pipeline.evolver.can_sample:
        raise ValueError(
            f"`num_samples` needs an evolver with a sampling head (`sampling_head_layers > 0`), got num_samples="
            f"{num_samples} and sampling_head_layers={pipeline.evolver.config.sampling_head_layers}."
        )
    copies = 1 if num_samples is None else num_samples
    sampling = {} if num_samples is None else {"sample": True, "num_samples": num_samples}
    generator = torch.Generator().manual_seed(seed)
    encoder = pipeline.encoder
    modalities = [m for m in ("text", "audio") if m in encoder.config.modalities]
    if not modalities:
        raise ValueError(f"`pipeline.encoder` must model text or audio, got modalities {encoder.config.modalities}.")
    needed = {"text": ("captions", *MODALITY_COLUMNS["text"]), "audio": MODALITY_COLUMNS["audio"]}
    missing = [column for m in modalities for column in needed[m] if column not in dataset.column_names]
    if missing:
        raise ValueError(f"`dataset` must hold the columns {missing} (a speaking, captioning world), got none of them.")
    total_length = context_length + num_future_steps
    decoded, truth, code_hits = [], [], []
    for start in tqdm(range(0, len(dataset), batch_size), desc="evaluating future captions and audio"):
        batch = dataset[start : start + batch_size]
        observed = observed_modalities(encoder, batch)
        output = pipeline(
            batch["pixel_values"][:, :context_length],
            **{name: value[:, :context_length] for name, value in observed.items()},
            actions=batch["actions"][:, :total_length],
            timestamps=batch["timestamps"][:, :total_length],
            num_future_steps=num_future_steps,
            output_type="latent",
            output_modalities=tuple(modalities),
            generator=generator,
            **sampling,
        )
        if "text" in modalities:
            true_captions = np.array(batch["captions"], dtype=object)[:, context_length:total_length]
            truth.append(np.repeat(true_captions, copies, axis=0))
            decoded.append(np.array(output.captions, dtype=object))
        if "audio" in modalities:
            future_audio = observed["audio_values"][:, context_length:total_length]
            future = encoder(batch["pixel_values"][:, context_length:total_length], audio_values=future_audio)
            true_codes = future.audio_codes.cpu().repeat_interleave(copies, dim=0)
            code_hits.append((output.audio_codes.cpu() == true_codes).float().mean(-1).numpy())
    results: dict = {
        "num_trajectories": len(dataset),
        "context_length": context_length,
        "horizon": num_future_steps,
        "num_samples": num_samples,
    }
    if "text" in modalities:
        results |= caption_scores(np.concatenate(decoded), np.concatenate(truth), copies)
    if "audio" in modalities:
        codes = np.concatenate(code_hits)
        results["audio_code_accuracy"] = float(codes.mean())
        results["audio_code_accuracy_by_horizon"] = codes.mean(0).tolist()
    return results


def caption_scores(decoded: np.ndarray, truth: np.ndarray, num_samples: int = 1) -> dict:
    """Decoded vs true world captions, arrays of strings of one shape `(N, H)` (steps by horizon, or `(N, 1)`).

    Returns the accuracy of the event clause (`caption_event`), on all steps and on the steps where something
    happens, the majority-class rate ("nothing happens") for reference, the exact-match rate of whole captions and the
    event accuracy per column (horizon). With `num_samples = K > 1`, rows `n·K … n·K + K - 1` are K sampled futures of
    one trajectory (their `truth` rows equal), and `caption_event_recall_any_of_k` is the fraction of eventful steps
    that at least one of the K samples captions right.
    """
    if decoded.shape != truth.shape or decoded.shape[0] % num_samples:
        raise ValueError(
            f"`decoded` and `truth` must have one shape (N·K, H) with K = num_samples = {num_samples}, got "
            f"{decoded.shape} and {truth.shape}."
        )
    hits = np.vectorize(lambda a, b: caption_event(a) == caption_event(b), otypes=[bool])(decoded, truth)
    eventful = np.vectorize(lambda b: caption_event(b) != "nothing happens", otypes=[bool])(truth)
    scores = {
        "caption_event_accuracy": float(hits.mean()),
        "caption_event_accuracy_on_event_steps": float(hits[eventful].mean()) if eventful.any() else None,
        "caption_majority_class_rate": float(1 - eventful.mean()),
        "caption_exact_match": float((decoded == truth).mean()),
        "caption_event_accuracy_by_horizon": hits.mean(0).tolist(),
    }
    if num_samples > 1:
        any_hit = hits.reshape(-1, num_samples, hits.shape[-1]).any(1)
        trajectory_eventful = eventful[::num_samples]
        scores["caption_event_recall_any_of_k"] = (
            float(any_hit[trajectory_eventful].mean()) if trajectory_eventful.any() else None
        )
    return scores


def retrieval_r1(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """`(N, E)` x `(N, E)` -> `(N,)` int64: for each query, the index of its most similar key (cosine)."""
    similarity = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T
    return similarity.argmax(-1)


@torch.no_grad()
def evaluate_encoded_modalities(encoder, trajectories: dict[str, torch.Tensor], captions: list | np.ndarray) -> dict:
    """Cross-modal retrieval and read-back on encoded held-out steps of a speaking, captioning world.

    Args:
        encoder: a multimodal `VeltrixEncoderModel` with text and audio.
        trajectories: `pixel_values (B, T, C, H, W)`, `input_ids`, `attention_mask (B, T, L)`, `audio_values
            (B, T, S)`; each of the `N = B·T` steps is encoded on its own.
        captions: the caption strings, `(B, T)` nested lists or an array.

    Returns R@1 of retrieving a step's frame embedding among all `N` from its caption's (and audio's) embedding,
    against chance `1 / N`; the same counting any frame whose step has the query's exact caption as a hit (several
    steps can share a caption); the caption read back from the text subspace (`caption_scores`); and the fraction of
    audio codes recovered exactly from the audio subspace.
    """
    names = ("pixel_values", *MODALITY_COLUMNS["text"], *MODALITY_COLUMNS["audio"])
    steps = {name: trajectories[name].flatten(0, 1)[:, None] for name in names}  # (N, 1, ...)
    captions = np.asarray(captions, dtype=object).reshape(-1).tolist()
    encoded = encoder(**steps)
    # Each embedding reads only its modality's subspace: the blocks are encoded independently and recovered exactly
    # by the projection, so no modality's embedding sees another's input.
    embeddings = {name: value[:, 0] for name, value in encoder.embed_for_retrieval(encoded.units).items()}
    count = len(captions)
    own = torch.arange(count)
    caption_array = np.array(captions, dtype=object)
    text_hits = retrieval_r1(embeddings["text"], embeddings["frames"])
    audio_hits = retrieval_r1(embeddings["audio"], embeddings["frames"])
    decoded = np.array([row[0] for row in encoder.generate_captions(encoded.units)], dtype=object)
    _, codes = encoder.decode_audio(encoded.units)
    scores = caption_scores(decoded[:, None], caption_array[:, None])
    scores.pop("caption_event_accuracy_by_horizon")
    return {
        "num_held_out_steps": count,
        "retrieval_chance": 1.0 / count,
        "retrieval_r1_text_to_frame": float((text_hits == own).float().mean()),
        "retrieval_r1_audio_to_frame": float((audio_hits == own).float().mean()),
        "retrieval_r1_text_to_frame_same_caption": float(np.mean(caption_array[text_hits.numpy()] == caption_array)),
        "distinct_captions": len(set(captions)),
        **scores,
        "audio_code_recovery_from_subspace": float((codes == encoded.audio_codes).float().mean()),
        "decoded_caption_examples": [
            {"decoded": a, "truth": b} for a, b in list(zip(decoded.tolist(), captions, strict=True))[:6]
        ],
    }


def rollout_targets(evaluation: RolloutEvaluation, window: int) -> list[dict]:
    """The demo's targets, computed from the pixel-space errors (BENCHMARKS.md `targets` entries).

    `mse_over_copy_last_within_window`: the largest ratio Veltrix / copy-last over horizons 1 … W.
    `mse_over_mean_frame_within_half_window`: the largest ratio Veltrix / mean-frame over horizons 1 … W/2.
    """
    pixel = evaluation.pixel_mse
    half = max(1, window // 2)
    over_copy = pixel["veltrix"][:window] / pixel["copy_last"][:window]
    over_mean = pixel["veltrix"][:half] / pixel["mean_frame"][:half]
    return [
        {"name": "mse_over_copy_last_within_window", "value": float(over_copy.max()), "op": "<", "target": 1.0},
        {"name": "mse_over_mean_frame_within_half_window", "value": float(over_mean.max()), "op": "<", "target": 1.0},
    ]


def image_quality(frames: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Mean per-image PSNR (dB) and SSIM of frames (N, C, H, W) in [-1, 1] against reference frames."""
    x, y = (frames.clamp(-1, 1) + 1) / 2, (reference + 1) / 2
    psnr = peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(x, y, data_range=1.0)
    return {"psnr": float(psnr.mean()), "ssim": float(ssim)}
