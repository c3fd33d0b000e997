"""`VeltrixEvolverModel.compile_step`: the in-place rollout step through `torch.compile` against the eager step (the
reference), which steps it serves, the recompile on a change of the weights, copies, and bad arguments. Each compile
takes seconds, so the tests share one evolver and its batch shapes."""

import copy
import pickle

import pytest
import torch
from conftest import randomize_, tiny_evolver_config

from modeling_veltrix import VeltrixEvolverModel, VeltrixIntervention
from modeling_veltrix.action_search import EvolverCandidates
from modeling_veltrix.compiled_step import WeightsWatch
from modeling_veltrix.unit_mixing import VeltrixConvUnitMixer

STEPS = 6


@pytest.fixture(scope="module")
def models() -> tuple[VeltrixEvolverModel, VeltrixEvolverModel]:
    """The eager reference and a copy with the compiled step (same weights)."""
    torch.manual_seed(0)
    eager = randomize_(VeltrixEvolverModel(tiny_evolver_config())).eval().requires_grad_(False)
    compiled = copy.deepcopy(eager)
    compiled.compile_step(fullgraph=True)  # one graph: the step has no graph break
    return eager, compiled


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    context = torch.randn(2, 3, 16, 8, generator=generator) * 0.5
    actions = torch.randn(2, 3 + STEPS, 2, generator=generator)
    return context, actions


@torch.no_grad()
def test_compiled_rollouts_match_the_eager_step_and_run_compiled(models, inputs):
    eager, compiled = models
    context, actions = inputs
    expected = eager.rollout(context, STEPS, actions=actions).units
    before = compiled.compiled_step_calls
    rolled = compiled.rollout(context, STEPS, actions=actions).units
    assert compiled.compiled_step_calls - before == STEPS - 1  # every step after the first, which forks the cache
    torch.testing.assert_close(rolled, expected, atol=1e-5, rtol=1e-4)
    streamed = torch.stack([units for _, units in compiled.rollout_stream(context, STEPS, actions=actions)], dim=1)
    torch.testing.assert_close(streamed, expected, atol=1e-5, rtol=1e-4)
    assert eager.compiled_step_calls == 0


@torch.no_grad()
def test_compiled_plans_match_eager_plans(models, inputs):
    eager, compiled = models
    context, actions = inputs
    goal = eager.rollout(context, 4, actions=actions[:, : 3 + 4]).units[:, -1]
    settings = dict(num_samples=24, num_iterations=2, top_k=4, context_actions=actions[:, :2])
    expected = eager.plan(context, goal, 4, generator=torch.Generator().manual_seed(0), **settings)
    before = compiled.compiled_step_calls
    planned = compiled.plan(context, goal, 4, generator=torch.Generator().manual_seed(0), **settings)
    assert compiled.compiled_step_calls - before == 2 * 4  # every step of every iteration
    torch.testing.assert_close(planned.objective, expected.objective, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(planned.units, expected.units, atol=1e-5, rtol=1e-4)


def test_steps_with_gradients_or_a_counterfactual_fork_stay_eager(models, inputs):
    _, compiled = models
    context, actions = inputs
    before = compiled.compiled_step_calls
    with torch.enable_grad():
        compiled.rollout(context.requires_grad_(True), STEPS, actions=actions)
    with torch.no_grad():
        edit = VeltrixIntervention(step=2, state_delta=torch.ones(2, 16, 8))
        compiled.rollout(context, STEPS, actions=actions, mode="counterfactual", interventions=edit)
    assert compiled.compiled_step_calls == before


class CountedContext:
    """A context manager counting how often it is entered."""

    def __init__(self, context):
        self.context, self.entered = context, 0

    def __enter__(self):
        self.entered += 1
        return self.context.__enter__()

    def __exit__(self, *exc_info):
        return self.context.__exit__(*exc_info)


@torch.no_grad()
def test_a_change_of_the_weights_compiles_again(inputs):
    torch.manual_seed(0)
    model = randomize_(VeltrixEvolverModel(tiny_evolver_config())).eval().requires_grad_(False)
    context, actions = inputs
    model.compile_step()
    patches = CountedContext(model._compiled_step._inductor_config)
    model._compiled_step._inductor_config = patches
    first = model.rollout(context[:1], STEPS, actions=actions[:1]).units
    model.velocity_head.weight.mul_(2.0)  # in place, as an optimizer or `load_state_dict` does
    second = model.rollout(context[:1], STEPS, actions=actions[:1]).units
    # Inductor's settings are patched in for the call that compiles, not for the later steps of that shape.
    assert patches.entered == 2 and model.compiled_step_calls == 2 * (STEPS - 1)
    model.compile_step(False)
    expected = model.rollout(context[:1], STEPS, actions=actions[:1]).units
    torch.testing.assert_close(second, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(first, second, atol=1e-3)


def test_copies_and_pickles_keep_the_setting_and_compile_on_their_own(models):
    _, compiled = models
    copied = copy.deepcopy(compiled)
    assert copied._compiled_step is not None and copied.compiled_step_calls == 0
    restored = pickle.loads(pickle.dumps(compiled._compiled_step))
    assert restored.compile_kwargs == compiled._compiled_step.compile_kwargs


@torch.no_grad()
def test_candidates_start_every_rollout_from_the_context_cache(models, inputs):
    eager, _ = models
    context, actions = inputs
    times, time_at = eager._rollout_times(context, None)
    cache = eager._prefill(context, times, actions[:, :2])
    goal = torch.zeros(2, 16, 8)
    candidates = EvolverCandidates(eager, context[:, -1], cache, time_at, goal, 4, 3, 0.0, None)
    trial = torch.randn(6, 4, 2, generator=torch.Generator().manual_seed(2))
    first, second = candidates.rollout(trial), candidates.rollout(trial)
    assert torch.equal(first, second)  # the working cache was refilled, not carried over
    # The start cache lies in the in-place step's memory orders (`step_layout`).
    assert candidates.cache.ssm_states[0].permute(0, 3, 1, 2).is_contiguous()
    assert candidates.cache.conv_states[0].transpose(1, 2).is_contiguous()


@pytest.mark.parametrize(
    ("enabled", "kwargs", "message"),
    [
        ("yes", {}, "`enabled` must be a bool"),
        (True, {"fullgraf": True}, "`compile_kwargs` must be `torch.compile` arguments"),
        (False, {"mode": "max-autotune"}, "`compile_kwargs` apply only with `enabled=True`"),
    ],
)
def test_bad_arguments_raise_a_value_error_naming_them(enabled, kwargs, message):
    model = VeltrixEvolverModel(tiny_evolver_config())
    with pytest.raises(ValueError, match=message):
        model.compile_step(enabled, **kwargs)
    assert model._compiled_step is None


def test_weights_made_under_inference_mode_are_refused_with_a_value_error():
    """Inference tensors keep no version counter, so their changes could not be seen: refused, named, at once."""
    with torch.inference_mode():
        model = VeltrixEvolverModel(tiny_evolver_config())
    with pytest.raises(ValueError, match=r"inference tensors, made under `torch.inference_mode\(\)`"):
        model.compile_step()
    assert model._compiled_step is None


def test_the_weights_watch_sees_in_place_changes_replacements_and_moves():
    model = VeltrixEvolverModel(tiny_evolver_config())
    watch = WeightsWatch()
    watch.reset(model)
    assert not watch.changed()
    with torch.no_grad():
        model.in_proj.weight.add_(1.0)
    assert watch.changed()
    watch.reset(model)
    model.in_proj.weight = torch.nn.Parameter(model.in_proj.weight.detach().clone())
    assert watch.changed()
    watch.reset(model)
    model.to(torch.float64)
    assert watch.changed()


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_the_compiled_unit_mixers_shifted_sum_equals_its_convolution(kernel_size):
    """The depthwise convolution over the unit grid that the compiled step computes as shifted, scaled copies."""
    torch.manual_seed(0)
    mixer = VeltrixConvUnitMixer(tiny_evolver_config(mixing_kernel_size=kernel_size))
    grid = torch.randn(3, mixer.grid_size, mixer.grid_size, mixer.depthwise.in_channels)
    expected = mixer.depthwise(grid.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(mixer._depthwise_by_shifts(grid), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("with_actions", [True, False])
def test_composed_step_modulations_equal_the_layer_by_layer_ones(with_actions):
    torch.manual_seed(0)
    model = randomize_(VeltrixEvolverModel(tiny_evolver_config()), std=0.3).eval()
    generator = torch.Generator().manual_seed(3)
    step_sizes = torch.rand(5, generator=generator) + 0.5
    actions = torch.randn(5, 2, generator=generator) if with_actions else None
    with torch.no_grad():
        model.condition_embedding.null_condition.normal_(generator=generator)
        for layer in model.layers:
            layer.modulation.bias.normal_(generator=generator)
        condition = model.condition_embedding(step_sizes, actions)
        expected = [layer._modulation(condition) for layer in model.layers]
        composed = model._step_modulations(step_sizes, actions)
    assert len(composed) == len(expected)
    for got, want in zip(composed, expected, strict=True):
        assert [tensor.shape for tensor in got] == [tensor.shape for tensor in want] == [(5, 1, 16)] * 6
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
