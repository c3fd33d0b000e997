"""Benchmark of the multimodal encoder (MPE): orthogonal fusion exactness, and a small multimodal encoder trained on
the speaking / captioning bouncing-balls world, measured on held-out trajectories (`scripts/benchmark_encoder.py`
describes the figures)."""

import platform
import time

import numpy as np
import torch

from ..configuration_veltrix import VeltrixEncoderConfig
from ..evaluation import evaluate_encoded_modalities
from ..modeling_veltrix_encoder import VeltrixEncoderModel
from ..orthogonal_fusion import VeltrixLinearEmbedding, VeltrixOrthogonalFusion
from ..worlds import get_world

CAPTION_LENGTH = 192


def fusion_exactness(seed: int) -> dict[str, float]:
    """Orthogonality and linear round-trip errors of a fusion whose Q was moved by gradient steps."""
    torch.manual_seed(seed)
    blocks = {"frames": 16, "text": 8, "audio": 4, "latent": 4}
    fusion = VeltrixOrthogonalFusion(blocks)
    optimizer = torch.optim.SGD(fusion.parameters(), lr=0.5)
    target = torch.randn(fusion.dim, fusion.dim)
    for _ in range(10):
        loss = (fusion.rotation_matrix - target).square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    embedding = VeltrixLinearEmbedding(in_features=24, num_units=8, unit_dim=blocks["audio"])
    with torch.no_grad():
        embedding.weight.add_(0.3 * torch.randn_like(embedding.weight))
        q = fusion.rotation_matrix
        names = list(blocks)
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        cross = max(float((fusion.basis(a).T @ fusion.basis(b)).abs().max()) for a, b in pairs)
        orthogonality = max(float((q.T @ q - torch.eye(fusion.dim)).abs().max()), cross)
        audio = torch.randn(4, 16, 24)
        parts = {"frames": torch.randn(4, 16, 8, 16), "text": torch.randn(4, 16, 4, 8), "audio": embedding(audio)}
        recovered = embedding.inverse(fusion.decompose(fusion.fuse(parts, 8), {"audio": 8})["audio"])
        roundtrip = float((recovered - audio).norm() / audio.norm())
    return {"orthogonality_error": orthogonality, "linear_roundtrip_error": roundtrip, "unit_dim": fusion.dim}


def world_tensors(num_trajectories: int, num_steps: int, seed: int) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    world = get_world("bouncing_balls", audio=True, captions=True, caption_length=CAPTION_LENGTH)
    batch = world.generate(num_trajectories, num_steps, seed)
    captions = batch.pop("captions")
    return {key: torch.from_numpy(value) for key, value in batch.items()}, captions


def flat_steps(data: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """Steps picked by flat index over (trajectory, step), each as its own length-1 trajectory: `(N, 1, ...)`."""
    keys = ("pixel_values", "input_ids", "attention_mask", "audio_values")
    return {key: data[key].flatten(0, 1)[index][:, None] for key in keys}


def encoder_config() -> VeltrixEncoderConfig:
    return VeltrixEncoderConfig(
        image_size=32,
        patch_size=4,
        hidden_size=64,
        unit_dim=32,
        unit_layout="resampler",
        num_resampled_units=8,
        modalities=["frames", "text", "audio"],
        frame_dim=16,
        text_dim=8,
        audio_dim=4,
        latent_dim=4,
        num_text_units=4,
        num_audio_units=8,
        text_max_length=CAPTION_LENGTH,
        nested_dropout=True,
        align_loss_weight=1.0,
    )


def train(model: VeltrixEncoderModel, data: dict[str, torch.Tensor], steps: int, batch_size: int, seed: int) -> list:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * step / steps))
    )
    total = data["pixel_values"].shape[0] * data["pixel_values"].shape[1]
    history = []
    model.train()
    for step in range(steps):
        index = torch.randint(0, total, (batch_size,), generator=generator)
        out = model(**flat_steps(data, index), return_loss=True)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        schedule.step()
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            terms = {name: round(value.item(), 4) for name, value in out.loss_terms.items()}
            history.append({"step": step, "loss": round(out.loss.item(), 4), **terms})
            print(f"[benchmark_encoder] step {step}: {history[-1]}", flush=True)
    return history


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of frames in [-1, 1] (peak-to-peak 2)."""
    return float(10 * torch.log10(4.0 / torch.mean((prediction.clamp(-1, 1) - target) ** 2)))


@torch.no_grad()
def evaluate(model: VeltrixEncoderModel, data: dict[str, torch.Tensor], captions: np.ndarray) -> dict:
    """Retrieval and read-back on every held-out step (`evaluate_encoded_modalities`), and the PSNR of the frame
    readout keeping the first k resampled frame units, per k."""
    model.eval()
    results = evaluate_encoded_modalities(model, data, captions)
    frames = data["pixel_values"]
    psnr_by_units = {}
    for k in range(1, model.config.num_resampled_units + 1):
        reconstruction = model.decode_frames(model(frames, num_resampled_units=k).units)
        psnr_by_units[str(k)] = round(psnr(reconstruction, frames), 3)
    return {**results, "psnr_by_num_units": psnr_by_units}


def run_encoder_benchmark(
    train_trajectories: int = 128,
    eval_trajectories: int = 16,
    num_steps: int = 16,
    train_steps: int = 3000,
    batch_size: int = 64,
    seed: int = 0,
) -> dict:
    """Trains the benchmark's encoder on `train_trajectories` speaking trajectories of `num_steps` steps for
    `train_steps` batches of `batch_size` steps and returns the report (BENCHMARKS.md shape) on `eval_trajectories`
    held-out ones, with the fusion exactness figures."""
    start = time.perf_counter()
    fusion = fusion_exactness(seed)
    train_data, _ = world_tensors(train_trajectories, num_steps, seed=seed)
    eval_seed = 1_000_000
    eval_data, eval_captions = world_tensors(eval_trajectories, num_steps, seed=eval_seed)
    torch.manual_seed(seed)
    model = VeltrixEncoderModel(encoder_config())
    history = train(model, train_data, train_steps, batch_size, seed)
    results = evaluate(model, eval_data, eval_captions)
    chance = results["retrieval_chance"]
    return {
        "environment": {
            "torch": torch.__version__,
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "kernel_path": "torch",
            "dtype": "float32",
            "wall_seconds": round(time.perf_counter() - start, 1),
        },
        "data": {
            "world": "bouncing_balls (audio=True, captions=True)",
            "train": {"seed": seed, "trajectories": train_trajectories, "steps": num_steps},
            "held_out": {"seed": eval_seed, "trajectories": eval_trajectories, "steps": num_steps},
        },
        "model": {
            "config": encoder_config().to_dict(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_steps": train_steps,
            "batch_size": batch_size,
        },
        "results": {"fusion": fusion, "held_out": results, "training_history": history},
        "targets": [
            {"name": "fusion_orthogonality_error", "value": fusion["orthogonality_error"], "op": "<=", "target": 1e-5},
            {
                "name": "fusion_linear_roundtrip_error",
                "value": fusion["linear_roundtrip_error"],
                "op": "<=",
                "target": 1e-5,
            },
            {
                "name": "retrieval_r1_over_chance_text_frame",
                "value": results["retrieval_r1_text_to_frame"] / chance,
                "op": ">=",
                "target": 5,
            },
            {
                "name": "caption_event_accuracy",
                "value": results["caption_event_accuracy"],
                "op": ">=",
                "target": 0.8,
            },
        ],
    }
