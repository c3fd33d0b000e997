"""Benchmarks of the evolver (TRE), in the shape of BENCHMARKS.md; `scripts/benchmark_evolver.py` runs them.

- `mixer`: the selective-SSM mixer (`VeltrixSelectiveSSM`) against transformers' `Mamba2Mixer` (PyTorch path) at the
  same dimensions, tokens/s over sequence length, and its model-FLOPs utilisation against an fp32 matmul peak.
- `model`: the evolver against an SDPA `LlamaModel` of equal parameter count (±10 %), tokens/s over length, every
  length in the same interleaved rounds.
- `rollout`: open-loop steps/s at batch 1 against the Llama with its KV cache, and the peak memory of both over the
  horizon.
- `continuous_time` and `stability`: a small evolver trained on pendulum states at one frame rate, evaluated at twice
  that rate; and the same training with the Lyapunov-like regulariser, evaluated far past the training window.

Speed figures are ratios taken in one process, interleaved (A, B, A, B, …) after a warm-up, reported as the median
and min–max over repetitions; absolute times come along but only ratios are results on shared CPUs. With
`device="cuda"` the speed sections run on the GPU (every timed call ends with a synchronisation; the mixer is then
also timed on its PyTorch path, beside the mamba-ssm kernels) and their absolute rates are results too. The targets that
compare two rates (`tok_s_64k_over_1k`, `mixer_mfu_16k`, `rollout_step_speed_over_llama`) take the ratio of their
peaks over the same rounds (`peak_ratio`): load only ever slows a repetition down.
"""

import copy
import inspect
import os
import platform
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import DynamicCache, LlamaConfig, LlamaModel, Mamba2Config
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

from ..configuration_veltrix import VeltrixEvolverConfig
from ..modeling_veltrix_evolver import VeltrixEvolverModel, lyapunov_penalty, midpoint_rollout
from ..selective_ssm import VeltrixSelectiveSSM
from ..worlds import build_world_dataset

TOKEN_DEFINITION = (
    "Evolver tokens are unit-steps: a (B, T, U, D) input holds B·T·U tokens (one D-dim state unit at one time step). "
    "Mixer and Llama tokens are sequence positions of a batch-1 sequence."
)
FLOP_DEFINITION = (
    "Analytic FLOPs (2 per multiply-add) of the mixer's matrix products per token: in_proj, the causal convolution, "
    "the chunked SSD at chunk length Q (C·Bᵀ per group: Q·N, intra-chunk outputs: Q·H·P, chunk states and their "
    "read-out: 2·H·P·N) and out_proj; the same count for both implementations; element-wise work is not counted."
)


@dataclass
class EvolverBenchmarkSettings:
    """What `run_evolver_benchmarks` measures; `full()` is the reference run, `quick()` a smoke test."""

    repeats: int = 5
    mixer_lengths: tuple[int, ...] = (1024, 4096, 16384, 65536)
    mixer_hidden_size: int = 256
    mixer_state_size: int = 64
    mixer_head_dim: int = 64
    mixer_chunk_size: int = 64
    model_lengths: tuple[int, ...] = (1024, 4096, 16384, 65536)
    evolver_preset: str = "configuration/veltrix-tiny/evolver"
    matmul_size: int = 2048
    rollout_context: int = 8
    rollout_speed_steps: int = 200
    rollout_horizons: tuple[int, ...] = (100, 1000, 10000)
    world_train_trajectories: int = 256
    world_eval_trajectories: int = 64
    world_trajectory_length: int = 32
    world_context: int = 8
    world_window: int = 8
    world_eval_seconds: float = 3.0
    world_long_horizon: int = 200
    train_steps: int = 600
    train_batch_size: int = 32
    learning_rate: float = 3e-3
    time_consistency_weight: float = 2.0
    stability_weight: float = 1.0
    stability_perturbation: float = 1e-2
    compiled_rollout_step: bool = True
    seed: int = 0
    device: str = "cpu"
    sections: tuple[str, ...] = ("mixer", "model", "rollout", "world")

    @classmethod
    def full(cls, evolver_preset: str, **overrides) -> "EvolverBenchmarkSettings":
        """The reference run: about 10 minutes on 2 CPU cores."""
        return cls(evolver_preset=evolver_preset, **overrides)

    @classmethod
    def quick(cls, evolver_preset: str, **overrides) -> "EvolverBenchmarkSettings":
        """A smoke run of every section in seconds (the rollout step eager only, unless overridden: a compile takes
        tens of seconds); its figures are not results."""
        return cls(
            repeats=2,
            mixer_lengths=(256, 1024),
            mixer_hidden_size=64,
            mixer_state_size=16,
            mixer_head_dim=16,
            mixer_chunk_size=32,
            model_lengths=(1024, 2048),
            evolver_preset=evolver_preset,
            matmul_size=256,
            rollout_context=2,
            rollout_speed_steps=5,
            rollout_horizons=(5, 20),
            world_train_trajectories=8,
            world_eval_trajectories=4,
            world_trajectory_length=12,
            world_context=4,
            world_window=4,
            world_eval_seconds=0.6,
            world_long_horizon=12,
            train_steps=3,
            train_batch_size=4,
            **{"compiled_rollout_step": False} | overrides,
        )


def median_range(values: list[float]) -> dict[str, float]:
    """{"median", "min", "max"} of a list of measurements."""
    ordered = sorted(values)
    return {"median": float(np.median(ordered)), "min": ordered[0], "max": ordered[-1]}


def peak_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The ratio of the peaks (the fastest repetitions) of two rates measured in the same interleaved rounds: on a
    loaded machine a repetition is only ever slowed down, so the peak of each is its least disturbed figure."""
    return max(numerator) / max(denominator)


def interleaved_seconds(
    measures: dict[str, Callable[[], object]], repeats: int, device: torch.device | str = "cpu"
) -> dict[str, list[float]]:
    """Wall-clock seconds of each callable over `repeats` rounds A, B, A, B, … after one untimed warm-up round; on a
    CUDA `device` each call is timed from an idle GPU to the end of the work it queued."""
    seconds = {name: [] for name in measures}
    on_cuda = torch.device(device).type == "cuda"
    for round_index in range(repeats + 1):
        for name, measure in measures.items():
            if on_cuda:
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            measure()
            if on_cuda:
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - started
            if round_index:
                seconds[name].append(elapsed)
    return seconds


def matmul(size: int, device: torch.device | str = "cpu") -> tuple[Callable[[], torch.Tensor], float]:
    """An fp32 `torch.mm` of two random (size, size) matrices on `device` and its FLOPs (the machine's matmul
    peak)."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device) for _ in range(2))
    return (lambda: torch.mm(a, b)), 2.0 * size**3


class LiveTensorMemory(TorchDispatchMode):
    """Peak bytes of the tensors allocated inside the context that are alive at the same time.

    Every operator's output storage is counted once, from its allocation until the last tensor viewing it dies, so
    the cache, activations and outputs that a caller keeps are all counted; tensors that existed before the context
    (parameters, inputs) are not. CPU has no allocator statistics (`torch.cuda.max_memory_allocated`), hence this.
    """

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, list[int]] = {}  # storage address -> [bytes, tensors alive on it]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # A view or in-place result shares an input's storage: it is not a new allocation.
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        for tensor in _tensors(out):
            self._track(tensor, inputs)
        return out

    def _track(self, tensor: torch.Tensor, inputs: set[int]) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        entry = self._live.get(key)
        if entry is None:
            if key in inputs or storage.nbytes() == 0:
                return
            entry = self._live[key] = [storage.nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._live[key]
        entry[1] -= 1
        if not entry[1]:
            del self._live[key]
            self.current -= entry[0]


def _tensors(tree: object) -> list[torch.Tensor]:
    """The tensors in nested tuples, lists and dicts (operator arguments and results)."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [t for item in tree for t in _tensors(item)]
    if isinstance(tree, dict):
        return [t for item in tree.values() for t in _tensors(item)]
    return []


def mixer_config(settings: EvolverBenchmarkSettings) -> VeltrixEvolverConfig:
    """The dimensions of the mixer comparison (Mamba-2 defaults: expand 2, one group, conv 4)."""
    return VeltrixEvolverConfig(
        hidden_size=settings.mixer_hidden_size,
        state_size=settings.mixer_state_size,
        head_dim=settings.mixer_head_dim,
        expand=2,
        n_groups=1,
        conv_kernel=4,
        chunk_size=settings.mixer_chunk_size,
        unit_mixer="attention",
        num_attention_heads=1,
    )


def hf_mamba2_mixer(config: VeltrixEvolverConfig) -> Mamba2Mixer:
    """transformers' `Mamba2Mixer` with the same dimensions and chunk length as our mixer."""
    hf_config = Mamba2Config(
        hidden_size=config.hidden_size,
        state_size=config.state_size,
        head_dim=config.head_dim,
        num_heads=config.num_heads,
        expand=config.expand,
        n_groups=config.n_groups,
        conv_kernel=config.conv_kernel,
        chunk_size=config.chunk_size,
        num_hidden_layers=1,
        use_bias=False,
        use_conv_bias=True,
    )
    return Mamba2Mixer(hf_config, layer_idx=0)


def mixer_flops_per_token(config: VeltrixEvolverConfig) -> dict[str, float]:
    """Analytic FLOPs per token of the mixer (see `FLOP_DEFINITION`)."""
    d, inner, heads, p, n, g = (
        config.hidden_size,
        config.intermediate_ssm_size,
        config.num_heads,
        config.head_dim,
        config.state_size,
        config.n_groups,
    )
    q = config.chunk_size
    conv_dim = inner + 2 * g * n
    terms = {
        "in_proj": 2 * d * (inner + conv_dim + heads),
        "conv": 2 * config.conv_kernel * conv_dim,
        "ssd_chunked": 2 * (g * q * n + q * heads * p + 2 * heads * p * n),
        "out_proj": 2 * inner * d,
    }
    terms["total"] = sum(terms.values())
    return {name: float(value) for name, value in terms.items()}


def benchmark_mixer(settings: EvolverBenchmarkSettings) -> dict:
    """Tokens/s of our mixer and of `Mamba2Mixer` (batch 1) at every length, with an fp32 matmul in every round; where
    ours runs the mamba-ssm kernels (CUDA), its PyTorch path is timed in the same rounds as `ours_torch_path`."""
    device = torch.device(settings.device)
    config = mixer_config(settings)
    torch.manual_seed(settings.seed)
    ours = VeltrixSelectiveSSM(config).eval()
    ours.reset_ssm_parameters()
    ours.to(device)
    theirs = hf_mamba2_mixer(config).eval().to(device)
    modules = {"ours": ours, "hf_mamba2_mixer": theirs}
    if ours.uses_cuda_kernels(device):
        modules["ours_torch_path"] = copy.deepcopy(ours)
        modules["ours_torch_path"].use_mamba_kernels = False
    peak_call, peak_flops = matmul(settings.matmul_size, device)
    flops = mixer_flops_per_token(config)
    results, peaks = {}, []
    for length in settings.mixer_lengths:
        hidden = torch.randn(1, length, config.hidden_size, device=device)
        gaps = torch.ones(1, length, device=device)
        measures = {
            name: partial(module, hidden) if name == "hf_mamba2_mixer" else partial(module, hidden, gaps)
            for name, module in modules.items()
        }
        with torch.inference_mode():
            seconds = interleaved_seconds({**measures, "matmul": peak_call}, settings.repeats, device)
        gflops = [peak_flops / s / 1e9 for s in seconds["matmul"]]
        peaks += gflops
        ratios = [b / a for a, b in zip(seconds["ours"], seconds["hf_mamba2_mixer"], strict=True)]
        rates = {name: [length / s for s in seconds[name]] for name in modules}
        results[str(length)] = {
            "tokens_per_s": {name: median_range(values) for name, values in rates.items()},
            "speedup_vs_hf_mamba2_mixer": median_range(ratios),
            "matmul_gflops": median_range(gflops),
            # The peak tokens/s over the peak matmul rate of the same rounds (robust to load, see `peak_ratio`).
            "mfu": peak_ratio(rates["ours"], gflops) * flops["total"] / 1e9,
            "mfu_hf_mamba2_mixer": peak_ratio(rates["hf_mamba2_mixer"], gflops) * flops["total"] / 1e9,
        }
    peak = median_range(peaks)
    for entry in results.values():
        entry["mfu_of_medians"] = entry["tokens_per_s"]["ours"]["median"] * flops["total"] / (peak["median"] * 1e9)
    return {
        "kernel_path": "mamba_ssm" if ours.uses_cuda_kernels(device) else "torch",
        "dimensions": {
            "hidden_size": config.hidden_size,
            "expand": config.expand,
            "heads": config.num_heads,
            "head_dim": config.head_dim,
            "state_size": config.state_size,
            "n_groups": config.n_groups,
            "conv_kernel": config.conv_kernel,
            "chunk_size": config.chunk_size,
            "batch_size": 1,
        },
        "flops_per_token": flops,
        "flop_definition": FLOP_DEFINITION,
        "matmul_peak_gflops": {**peak, "size": settings.matmul_size},
        "by_length": results,
    }


def equal_parameter_llama(evolver: VeltrixEvolverModel, max_length: int) -> LlamaModel:
    """An SDPA `LlamaModel` with the evolver's width and depth, its MLP sized to the evolver's parameter count."""
    hidden, layers = evolver.config.hidden_size, evolver.config.num_hidden_layers
    target = sum(p.numel() for p in evolver.parameters())
    vocab = 16  # the benchmark feeds `inputs_embeds`; the token embedding only has to exist
    # Per layer: 4·h² attention + 3·h·i MLP + 2·h norms; plus embeddings and the final norm.
    intermediate = round((target / layers - 4 * hidden**2 - 2 * hidden - (vocab + 1) * hidden / layers) / (3 * hidden))
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=max(1, intermediate),
        num_hidden_layers=layers,
        num_attention_heads=evolver.config.num_attention_heads,
        num_key_value_heads=evolver.config.num_attention_heads,
        vocab_size=vocab,
        max_position_embeddings=max_length,
        attn_implementation="sdpa",
    )
    return LlamaModel(config).eval()


def preset_evolver(settings: EvolverBenchmarkSettings) -> VeltrixEvolverModel:
    """The evolver of `settings.evolver_preset` (a config folder) with seeded random weights, in eval mode, on
    `settings.device`."""
    torch.manual_seed(settings.seed)
    config = VeltrixEvolverConfig.from_pretrained(settings.evolver_preset)
    return VeltrixEvolverModel(config).eval().to(settings.device)


def benchmark_model(settings: EvolverBenchmarkSettings) -> dict:
    """Tokens/s of the evolver (`settings.evolver_preset`) and an equal-parameter SDPA Llama over length, every
    length and both models interleaved in the same rounds (so the length scaling compares rounds under one load)."""
    evolver = preset_evolver(settings)
    device = evolver.device
    units_per_step = evolver.config.num_units_per_step
    llama = equal_parameter_llama(evolver, max(settings.model_lengths)).to(device)
    counts = {"ours": sum(p.numel() for p in evolver.parameters()), "llama": sum(p.numel() for p in llama.parameters())}
    measures = {}
    for length in settings.model_lengths:
        steps = length // units_per_step
        units = torch.randn(1, steps, units_per_step, evolver.config.unit_dim, device=device)
        actions = torch.randn(1, steps, evolver.config.action_dim, device=device) if evolver.config.action_dim else None
        embeddings = torch.randn(1, length, llama.config.hidden_size, device=device)
        measures[f"ours/{length}"] = partial(evolver, units, actions=actions)
        measures[f"sdpa_llama/{length}"] = partial(llama, inputs_embeds=embeddings, use_cache=False)
    with torch.inference_mode():
        seconds = interleaved_seconds(measures, settings.repeats, device)
    results, rates = {}, {}
    for length in settings.model_lengths:
        rates[length] = {name: [length / s for s in seconds[f"{name}/{length}"]] for name in ("ours", "sdpa_llama")}
        ratios = [b / a for a, b in zip(seconds[f"ours/{length}"], seconds[f"sdpa_llama/{length}"], strict=True)]
        results[str(length)] = {
            "evolver_input_shape": [1, length // units_per_step, units_per_step, evolver.config.unit_dim],
            "tokens_per_s": {name: median_range(values) for name, values in rates[length].items()},
            "speedup_vs_sdpa": median_range(ratios),
        }
    shortest, longest = min(settings.model_lengths), max(settings.model_lengths)
    scaling = {
        "from_length": shortest,
        "to_length": longest,
        "peak_ratio": peak_ratio(rates[longest]["ours"], rates[shortest]["ours"]),
        "per_round_ratio": median_range(
            [b / a for a, b in zip(rates[shortest]["ours"], rates[longest]["ours"], strict=True)]
        ),
        "definition": (
            "the evolver's peak tokens/s at to_length over its peak at from_length, both measured in the same "
            "interleaved rounds (peak: the fastest repetition, the least disturbed by load)"
        ),
    }
    return {
        "evolver_preset": settings.evolver_preset,
        "parameters": {**counts, "ratio_llama_over_ours": counts["llama"] / counts["ours"]},
        "length_scaling": scaling,
        "llama_config": {
            "hidden_size": llama.config.hidden_size,
            "intermediate_size": llama.config.intermediate_size,
            "num_hidden_layers": llama.config.num_hidden_layers,
            "num_attention_heads": llama.config.num_attention_heads,
            "attn_implementation": llama.config._attn_implementation,
        },
        "by_length": results,
    }


def _llama_decode(llama: LlamaModel, context: torch.Tensor, num_steps: int) -> Callable[[], int]:
    """A closure running `num_steps` open-loop decode steps (one token each, fed its own last hidden state) after
    `context` (1, T, hidden) with a `DynamicCache`; returns the KV cache's bytes at the end."""

    # Newer transformers name the argument `cache` (there `past_key_values` warns, and goes in 5.40).
    cache_argument = "cache" if "cache" in inspect.signature(llama.forward).parameters else "past_key_values"

    def run() -> int:
        cache = DynamicCache(config=llama.config)
        kwargs = {cache_argument: cache, "use_cache": True}
        hidden = llama(inputs_embeds=context, **kwargs).last_hidden_state[:, -1:]
        for _ in range(num_steps):
            hidden = llama(inputs_embeds=hidden, **kwargs).last_hidden_state
        return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))

    return run


def _evolver_rollout(evolver: VeltrixEvolverModel, context: torch.Tensor, num_steps: int) -> Callable[[], None]:
    """A closure streaming a free `num_steps`-step rollout from `context` (1, T, U, D), keeping only the current
    state."""

    def run() -> None:
        for _ in evolver.rollout_stream(context, num_steps):
            pass

    return run


def benchmark_rollout(settings: EvolverBenchmarkSettings) -> dict:
    """Open-loop steps/s at batch 1 and peak live tensor memory over the horizon: the evolver (streaming, O(1)
    cache) against the equal-parameter Llama decoding one token per step with its KV cache."""
    evolver = preset_evolver(settings)
    device = evolver.device
    llama = equal_parameter_llama(evolver, settings.rollout_context + max(settings.rollout_horizons) + 1).to(device)
    context_shape = (1, settings.rollout_context, evolver.config.num_units_per_step, evolver.config.unit_dim)
    context = torch.randn(context_shape, device=device)
    llama_context = torch.randn(1, settings.rollout_context, llama.config.hidden_size, device=device)
    steps = settings.rollout_speed_steps
    measures = {"ours": _evolver_rollout(evolver, context, steps)}
    compile_seconds = None
    # `compile_step` compiles the PyTorch step; with the mamba-ssm kernels the step is theirs.
    use_compiled = settings.compiled_rollout_step and evolver.kernel_path == "torch"
    if use_compiled:
        compiled = copy.deepcopy(evolver)
        compiled.compile_step()
        started = time.perf_counter()
        with torch.inference_mode():
            _evolver_rollout(compiled, context, 2)()  # compiles (timed apart from the steps)
        compile_seconds = time.perf_counter() - started
        measures["ours_compiled_step"] = _evolver_rollout(compiled, context, steps)
    measures["sdpa_llama_kv_cache"] = _llama_decode(llama, llama_context, steps)
    with torch.inference_mode():
        seconds = interleaved_seconds(measures, settings.repeats, device)
    if use_compiled and compiled.compiled_step_calls == 0:
        raise RuntimeError("`compile_step()` was on, but no rollout step ran compiled.")
    speed = {name: median_range([steps / s for s in values]) for name, values in seconds.items()}
    # The target's figure: the compiled step when it ran (the fastest way to roll out), else the eager one.
    ours = "ours_compiled_step" if use_compiled else "ours"
    with torch.inference_mode():
        # The cache after the context has the size it keeps for any number of steps.
        evolver_cache_bytes = evolver(context, use_cache=True).cache.num_bytes()
    memory = {"ours": {}, "sdpa_llama_kv_cache": {}}
    for horizon in settings.rollout_horizons:
        for name, run in (
            ("ours", _evolver_rollout(evolver, context, horizon)),
            ("sdpa_llama_kv_cache", _llama_decode(llama, llama_context, horizon)),
        ):
            tracker = LiveTensorMemory()
            with torch.inference_mode(), tracker:
                cache_bytes = run()
            cache_bytes = evolver_cache_bytes if cache_bytes is None else cache_bytes
            memory[name][str(horizon)] = {"peak_live_tensor_bytes": tracker.peak, "cache_bytes": cache_bytes}
    first, last = (str(h) for h in (settings.rollout_horizons[0], settings.rollout_horizons[-1]))
    growth = {
        name: values[last]["peak_live_tensor_bytes"] / values[first]["peak_live_tensor_bytes"]
        for name, values in memory.items()
    }
    return {
        "kernel_path": evolver.kernel_path,
        "batch_size": 1,
        "context_steps": settings.rollout_context,
        "speed_steps": steps,
        "steps_per_s": speed,
        "speed_compared": ours,
        "compile_seconds": compile_seconds,
        "speed_ratio_ours_over_llama": median_range(
            [b / a for a, b in zip(seconds[ours], seconds["sdpa_llama_kv_cache"], strict=True)]
        ),
        # Steps/s of the two peaks (the fastest repetitions of the same interleaved rounds, see `peak_ratio`).
        "speed_ratio_of_peaks": peak_ratio(
            [steps / s for s in seconds[ours]], [steps / s for s in seconds["sdpa_llama_kv_cache"]]
        ),
        "eager_speed_ratio_of_peaks": peak_ratio(
            [steps / s for s in seconds["ours"]], [steps / s for s in seconds["sdpa_llama_kv_cache"]]
        ),
        "memory_by_horizon": memory,
        "memory_growth": {"from_horizon": int(first), "to_horizon": int(last), **growth},
        "definition": (
            "One step of ours predicts a whole state of U units from the last one (rollout_stream: the caller keeps "
            "each state only while it looks at it), eagerly (ours) and after `compile_step()` (ours_compiled_step, "
            "its compile timed apart; the target's figure); one Llama step decodes one token with a DynamicCache, "
            "eagerly, a lower bound on the cost of a U-token state. Memory: peak bytes of live tensors allocated "
            "during the rollout (LiveTensorMemory), parameters and inputs excluded."
        ),
    }


PENDULUM_OMEGA_SCALE = 2.0  # rad/s; brings the angular velocity to the range of sin and cos


def pendulum_units(physics: torch.Tensor) -> torch.Tensor:
    """Pendulum physics (N, T, P) -> units (N, T, 1, 3): (sin θ, cos θ, ω / 2) of one state unit per step."""
    angle, omega = physics[..., 0], physics[..., 1]
    return torch.stack([torch.sin(angle), torch.cos(angle), omega / PENDULUM_OMEGA_SCALE], dim=-1)[:, :, None]


def pendulum_trajectories(
    num_trajectories: int, num_steps: int, seed: int, frame_interval: float, **overrides
) -> dict[str, torch.Tensor]:
    """Units (N, T, 1, 3), timestamps (N, T) and actions (N, T, 1) of the built-in pendulum world."""
    dataset = build_world_dataset(
        "pendulum",
        num_trajectories=num_trajectories,
        num_steps=num_steps,
        seed=seed,
        frame_interval=frame_interval,
        **overrides,
    ).with_format("torch")
    rows = dataset[:]
    return {"units": pendulum_units(rows["physics"]), "timestamps": rows["timestamps"], "actions": rows["actions"]}


def pendulum_evolver_config(frame_interval: float) -> VeltrixEvolverConfig:
    """A small evolver for one 3-dim unit per step, its reference interval the training frame interval."""
    return VeltrixEvolverConfig(
        unit_dim=3,
        num_units_per_step=1,
        unit_mixer="attention",
        num_attention_heads=2,
        hidden_size=32,
        num_hidden_layers=2,
        state_size=8,
        head_dim=8,
        intermediate_size=64,
        condition_size=32,
        action_dim=1,
        chunk_size=16,
        dt_reference=frame_interval,
    )


def train_unit_evolver(
    config: VeltrixEvolverConfig,
    data: dict[str, torch.Tensor],
    settings: EvolverBenchmarkSettings,
    time_consistency_weight: float,
    stability_weight: float,
) -> VeltrixEvolverModel:
    """Trains an evolver on unit trajectories with the evolver stage's objective (`training.VeltrixEvolverStage`, in
    latent space): one-step teacher forcing over the whole trajectory + an open-loop rollout of `world_window` steps
    from `world_context` steps, plus `time_consistency_weight` × the same window at twice the frame rate
    (`midpoint_rollout`) and `stability_weight` × `lyapunov_penalty`. AdamW, cosine schedule, gradient clipping."""
    torch.manual_seed(settings.seed)
    model = VeltrixEvolverModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.train_steps)
    generator = torch.Generator().manual_seed(settings.seed)
    units, timestamps, actions = data["units"], data["timestamps"], data["actions"]
    context, window = settings.world_context, settings.world_window
    for _ in range(settings.train_steps):
        rows = torch.randint(0, units.shape[0], (settings.train_batch_size,), generator=generator)
        u, t, a = units[rows], timestamps[rows], actions[rows]
        teacher = model(u, t, a).predicted_units
        loss = F.mse_loss(teacher[:, :-1], u[:, 1:])
        start = int(torch.randint(0, u.shape[1] - context - window + 1, (), generator=generator))
        span = slice(start, start + context + window)
        rollout = model.rollout(u[:, start : start + context], window, actions=a[:, span], timestamps=t[:, span])
        target = u[:, start + context : start + context + window]
        loss = loss + F.mse_loss(rollout.units, target)
        if time_consistency_weight:
            midpoints = midpoint_rollout(
                model, u[:, start : start + context], window, actions=a[:, span], timestamps=t[:, span]
            )
            loss = loss + time_consistency_weight * F.mse_loss(midpoints, target)
        if stability_weight:
            penalty = lyapunov_penalty(
                model,
                u[:, start : start + context],
                rollout.units,
                actions=a[:, span],
                timestamps=t[:, span],
                perturbation=settings.stability_perturbation,
                generator=generator,
            )
            loss = loss + stability_weight * penalty
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def rollout_mse(model: VeltrixEvolverModel, data: dict[str, torch.Tensor], context: int) -> torch.Tensor:
    """Per-future-step MSE (H,) of a conditional rollout from the first `context` steps over the rest."""
    units = data["units"]
    horizon = units.shape[1] - context
    rollout = model.rollout(units[:, :context], horizon, actions=data["actions"], timestamps=data["timestamps"])
    return (rollout.units - units[:, context:]).pow(2).flatten(2).mean(-1).mean(0)


@torch.no_grad()
def perturbation_growth(model: VeltrixEvolverModel, data: dict[str, torch.Tensor], context: int) -> float:
    """Mean log growth per step of a 1e-3 perturbation of the context along the rollout (a Lyapunov exponent
    estimate per step; > 0: perturbations grow)."""
    units, horizon = data["units"], data["units"].shape[1] - context
    kwargs = {"actions": data["actions"], "timestamps": data["timestamps"]}
    reference = model.rollout(units[:, :context], horizon, **kwargs).units
    delta = 1e-3 * torch.randn(units[:, :context].shape, generator=torch.Generator().manual_seed(1))
    perturbed = model.rollout(units[:, :context] + delta, horizon, **kwargs).units
    start = delta[:, -1].flatten(1).norm(dim=-1)
    end = (perturbed[:, -1] - reference[:, -1]).flatten(1).norm(dim=-1)
    return float(torch.log(end / start).mean() / horizon)


def benchmark_world(settings: EvolverBenchmarkSettings) -> dict:
    """Continuous time and stability on the pendulum world (units: `pendulum_units` of the world's physics).

    Three evolvers are trained identically on the world at its default frame interval (0.1 s): with the
    time-consistency objective (`midpoint_rollout`), with it and the Lyapunov-like regulariser, and with neither.
    Continuous time: held-out, impulse-free trajectories (the same initial states) are sampled at the native interval
    and at half of it; each model rolls them out from a context of the same duration, and the MSE is compared at the
    timestamps both rates share (the target uses the time-consistent model; the third model is the ablation).
    Stability: the time-consistent models with and without the regulariser roll out `world_long_horizon` steps.
    """
    interval = 0.1
    train_seed, eval_seed = 0, 1_000_000
    train = pendulum_trajectories(
        settings.world_train_trajectories, settings.world_trajectory_length, train_seed, interval
    )
    config = pendulum_evolver_config(interval)
    started = time.perf_counter()
    consistency = settings.time_consistency_weight
    models = {
        "time_consistent": train_unit_evolver(config, train, settings, consistency, 0.0),
        "time_consistent_regularised": train_unit_evolver(
            config, train, settings, consistency, settings.stability_weight
        ),
        "plain": train_unit_evolver(config, train, settings, 0.0, 0.0),
    }
    training_seconds = time.perf_counter() - started

    # The same physical trajectories at both rates: initial states depend on (seed, index) only; no impulses.
    context, horizon = settings.world_context, round(settings.world_eval_seconds / interval)
    free = {"impulse_probability": 0.0}
    native = pendulum_trajectories(settings.world_eval_trajectories, context + horizon, eval_seed, interval, **free)
    double = pendulum_trajectories(
        settings.world_eval_trajectories, 2 * (context + horizon), eval_seed, interval / 2, **free
    )
    rates = {}
    for name in ("time_consistent", "plain"):
        native_mse = rollout_mse(models[name], native, context)
        double_mse = rollout_mse(models[name], double, 2 * context)[::2]  # the future steps at native timestamps
        rates[name] = {
            "native_rate_mse": float(native_mse.mean()),
            "double_rate_mse": float(double_mse.mean()),
            "native_rate_mse_by_second": _by_second(native_mse, interval),
            "double_rate_mse_by_second": _by_second(double_mse, interval),
            "error_ratio_double_rate": float(double_mse.mean()) / float(native_mse.mean()),
        }
    copy_last = (native["units"][:, context:] - native["units"][:, context - 1 : context]).pow(2)
    continuous_time = {
        **rates["time_consistent"],
        "without_time_consistency": rates["plain"],
        "copy_last_mse": float(copy_last.mean()),
        "world": "pendulum",
        "units": "(sin θ, cos θ, ω / 2 rad/s) of the physics, one unit per step",
        "train": {
            "seed": train_seed,
            "trajectories": settings.world_train_trajectories,
            "steps": settings.world_trajectory_length,
            "frame_interval_s": interval,
            "train_steps": settings.train_steps,
            "time_consistency_weight": consistency,
        },
        "eval": {
            "seed": eval_seed,
            "trajectories": settings.world_eval_trajectories,
            "impulses": "none",
            "context_s": context * interval,
            "horizon_s": horizon * interval,
            "double_rate_interval_s": interval / 2,
        },
    }

    long = pendulum_trajectories(
        settings.world_eval_trajectories, context + settings.world_long_horizon, eval_seed + 1, interval
    )
    stability = {}
    for label, name in (
        ("without_regulariser", "time_consistent"),
        ("with_regulariser", "time_consistent_regularised"),
    ):
        mse = rollout_mse(models[name], long, context)
        at_10x = 10 * settings.world_window
        stability[label] = {
            "mse_within_window": float(mse[: settings.world_window].mean()),
            "mse_at_10x_window": float(mse[at_10x - 1]) if mse.shape[0] >= at_10x else None,
            "mse_last_step": float(mse[-1]),
            "mse_mean": float(mse.mean()),
            "perturbation_growth_per_step": perturbation_growth(models[name], long, context),
        }
    copy_last_long = (long["units"][:, context:] - long["units"][:, context - 1 : context]).pow(2)
    stability["copy_last_mse_mean"] = float(copy_last_long.mean())
    stability["setup"] = {
        "stability_weight": settings.stability_weight,
        "perturbation": settings.stability_perturbation,
        "train_steps": settings.train_steps,
        "training_window": settings.world_window,
        "horizon_steps": settings.world_long_horizon,
        "eval_seed": eval_seed + 1,
        "impulses": "as the world samples them, given as conditions",
    }
    return {"continuous_time": continuous_time, "stability": stability, "training_seconds": training_seconds}


def _by_second(mse: torch.Tensor, interval: float) -> dict[str, float]:
    """Per-step MSE (H,) at native steps -> MSE at each whole second of the horizon."""
    per_second = round(1.0 / interval)
    return {f"{(k + 1) // per_second}s": float(mse[k]) for k in range(per_second - 1, mse.shape[0], per_second)}


def _target(name: str, value: float, op: str, target: float, measured_at: str) -> dict:
    return {"name": name, "value": value, "op": op, "target": target, "measured_at": measured_at}


def evolver_targets(results: dict) -> list[dict]:
    """The issue's targets (BENCHMARKS.md `targets`) of the sections in `results`, each computed at the lengths it
    names, or at the nearest measured ones in a quick run (`measured_at` says which)."""
    targets = []
    if "mixer" in results:
        targets += _mixer_targets(results["mixer"]["by_length"])
    if "model" in results:
        targets += _model_targets(results["model"])
    if "rollout" in results:
        targets += _rollout_targets(results["rollout"])
    if "world" in results:
        ratio = results["world"]["continuous_time"]["error_ratio_double_rate"]
        targets.append(
            _target("error_ratio_double_rate", ratio, "<=", 1.5, "pendulum rollout MSE at 2x the training frame rate")
        )
    return targets


def _mixer_targets(mixer: dict) -> list[dict]:
    mixer_16k = "16384" if "16384" in mixer else max(mixer, key=int)
    return [
        _target(
            "speedup_vs_hf_mamba2_mixer_16k",
            mixer[mixer_16k]["speedup_vs_hf_mamba2_mixer"]["median"],
            ">=",
            1.2,
            f"mixer at {mixer_16k} tokens",
        ),
        _target(
            "mixer_mfu_16k",
            mixer[mixer_16k]["mfu"],
            ">=",
            0.4,
            f"mixer at {mixer_16k} tokens: peak tokens/s over the peak matmul rate of the same rounds",
        ),
    ]


def _model_targets(model: dict) -> list[dict]:
    model_64k = "65536" if "65536" in model["by_length"] else max(model["by_length"], key=int)
    scaling = model["length_scaling"]
    return [
        _target(
            "tok_s_64k_over_1k",
            scaling["peak_ratio"],
            ">=",
            0.8,
            f"evolver peak tokens/s at {scaling['to_length']} over {scaling['from_length']} tokens, interleaved",
        ),
        _target(
            "speedup_vs_sdpa_64k",
            model["by_length"][model_64k]["speedup_vs_sdpa"]["median"],
            ">=",
            5.0,
            f"evolver vs equal-parameter SDPA Llama at {model_64k} tokens",
        ),
    ]


def _rollout_targets(rollout: dict) -> list[dict]:
    growth = rollout["memory_growth"]
    return [
        _target(
            "rollout_step_speed_over_llama",
            rollout["speed_ratio_of_peaks"],
            ">=",
            1.0,
            f"batch-1 rollout steps/s ({rollout['speed_compared']}) over the SDPA Llama's cached decode steps/s "
            f"({rollout['speed_steps']} steps, interleaved, peaks)",
        ),
        _target(
            "rollout_memory_growth_10k",
            growth["ours"],
            "<=",
            1.05,
            f"peak memory at {growth['to_horizon']} steps over {growth['from_horizon']} steps",
        ),
    ]


SECTIONS: dict[str, Callable[[EvolverBenchmarkSettings], dict]] = {
    "mixer": benchmark_mixer,
    "model": benchmark_model,
    "rollout": benchmark_rollout,
    "world": benchmark_world,
}


def run_evolver_benchmarks(settings: EvolverBenchmarkSettings, log: Callable[[str], None] = print) -> dict:
    """Runs `settings.sections` (the world section trains on the CPU whatever `settings.device` is); returns
    `{"environment", "settings", "results", "targets"}` (BENCHMARKS.md)."""
    unknown = sorted(set(settings.sections) - set(SECTIONS))
    if unknown or not settings.sections:
        raise ValueError(f"`sections` must be a non-empty subset of {list(SECTIONS)}, got {list(settings.sections)}")
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device` is {settings.device!r}, but torch sees no CUDA device")
    results = {}
    for name in (name for name in SECTIONS if name in settings.sections):
        started = time.perf_counter()
        results[name] = SECTIONS[name](settings)
        results[name]["wall_seconds"] = time.perf_counter() - started
        log(f"[benchmark_evolver] {name}: {results[name]['wall_seconds']:.1f} s")
    environment = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "kernel_path": preset_evolver(settings).kernel_path,
        "dtype": "float32",
        "tokens": TOKEN_DEFINITION,
    }
    return {
        "environment": environment,
        "settings": asdict(settings),
        "results": results,
        "targets": evolver_targets(results),
    }
