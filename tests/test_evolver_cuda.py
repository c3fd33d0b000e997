"""The mamba-ssm / causal-conv1d CUDA path of the evolver against its PyTorch path.

Runs only on a CUDA device with `mamba-ssm` and `causal-conv1d` installed (`pip install -e ".[cuda]"`); skipped
elsewhere. `pytest -s` prints the largest differences.
"""

import copy

import pytest
import torch
from conftest import randomize_, tiny_evolver_config

from modeling_veltrix import VeltrixEvolverModel
from modeling_veltrix.selective_ssm import VeltrixSelectiveSSM, mamba_kernels_available

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and mamba_kernels_available()),
    reason="needs a CUDA GPU with mamba-ssm and causal-conv1d installed",
)

# The Triton kernels use TF32 tensor-core products; the PyTorch path on the same GPU may too.
TOLERANCE = 3e-3


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / (1 + b.abs().max()))


def mixers() -> tuple[VeltrixSelectiveSSM, VeltrixSelectiveSSM]:
    """The same mixer twice: on the kernels, and with `use_mamba_kernels` off, on the PyTorch fallbacks."""
    torch.manual_seed(0)
    config = tiny_evolver_config(hidden_size=64, head_dim=16, state_size=16, chunk_size=16, time_step_max=0.5)
    ssm = VeltrixSelectiveSSM(config)
    ssm.reset_ssm_parameters()
    fast = randomize_(ssm, std=0.05).cuda().eval()
    slow = copy.deepcopy(fast)
    slow.use_mamba_kernels = False
    return fast, slow


def irregular_gaps(rows: int, length: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return (torch.rand(rows, length, generator=generator) * 1.5 + 0.25).cuda()  # Δt / Δt_ref in [0.25, 1.75]


def test_whole_sequence_kernels_match_torch():
    kernels, fallbacks = mixers()
    hidden = torch.randn(3, 45, 64, device="cuda")  # not a multiple of the chunk length
    gaps = irregular_gaps(3, 45)
    with torch.no_grad():
        fast, slow = kernels(hidden, gaps), fallbacks(hidden, gaps)
    errors = [relative_error(a, b) for a, b in zip(fast, slow, strict=True)]
    print(f"whole sequence: max relative difference (output, conv state, SSM state) = {errors}")
    assert max(errors) < TOLERANCE


def test_whole_sequence_kernel_gradients_match_torch():
    kernels, fallbacks = mixers()
    hidden = torch.randn(2, 40, 64, device="cuda")
    gaps = irregular_gaps(2, 40)
    grads = []
    for ssm in (kernels, fallbacks):
        output, _, state = ssm(hidden, gaps)
        (output.pow(2).sum() + state.sum()).backward()
        grads.append({name: p.grad.clone() for name, p in ssm.named_parameters()})
    for name in grads[0]:
        assert relative_error(grads[0][name], grads[1][name]) < 10 * TOLERANCE, name


def test_step_kernels_match_torch_and_leave_the_cache_intact():
    kernels, fallbacks = mixers()
    hidden = torch.randn(3, 12, 64, device="cuda")
    gaps = irregular_gaps(3, 12)
    with torch.no_grad():  # the step kernels run only without autograd
        _, conv_state, ssm_state = fallbacks(hidden[:, :7], gaps[:, :7])
        fast_states, slow_states = (conv_state, ssm_state), (conv_state, ssm_state)
        for t in range(7, 12):
            passed, before = fast_states, [s.clone() for s in fast_states]
            fast, *fast_states = kernels.step(hidden[:, t], gaps[:, t], *passed)
            slow, *slow_states = fallbacks.step(hidden[:, t], gaps[:, t], *slow_states)
            # The kernels update states in place; the step hands them copies, so a shared cache stays valid.
            assert all(torch.equal(p, b) for p, b in zip(passed, before, strict=True))
            assert relative_error(fast, slow) < TOLERANCE
        print(f"steps: max relative difference of the last output = {relative_error(fast, slow):.2e}")
        for a, b in zip(fast_states, slow_states, strict=True):
            assert relative_error(a, b) < TOLERANCE


def test_model_dispatch_and_rollout_match_torch():
    torch.manual_seed(0)
    model = randomize_(VeltrixEvolverModel(tiny_evolver_config(time_step_max=0.5)), std=0.05).cuda().eval()
    reference = copy.deepcopy(model)
    for layer in reference.layers:
        layer.ssm.use_mamba_kernels = False
    assert model.kernel_path == "mamba_ssm" and reference.kernel_path == "torch"
    generator = torch.Generator().manual_seed(2)
    units = (torch.rand(2, 20, 16, 8, generator=generator) * 2 - 1).cuda()
    timestamps = torch.cumsum(torch.rand(2, 20, generator=generator) * 0.1 + 0.05, dim=1).cuda()
    actions = torch.randn(2, 20, 2, generator=generator).cuda()
    with torch.no_grad():
        a = model(units, timestamps, actions).predicted_units
        b = reference(units, timestamps, actions).predicted_units
        assert relative_error(a, b) < TOLERANCE
        fast = model.rollout(units[:, :8], 12, actions=actions, timestamps=timestamps).units
        slow = reference.rollout(units[:, :8], 12, actions=actions, timestamps=timestamps).units
    print(f"model: forward {relative_error(a, b):.2e}, 12-step rollout {relative_error(fast, slow):.2e}")
    assert relative_error(fast, slow) < 10 * TOLERANCE
